"""Fractionation: BED and EQD2 of a course of equal fractions, their exact inverses, tumour
repopulation and incomplete repair during protracted delivery (Lea-Catcheside)."""

from __future__ import annotations

import math

import numpy as np

from .._validate import _fractions, _nonneg, _out, _positive
from .course_dose import check_course_dose

#: Repopulation of head-and-neck squamous cell carcinoma: kick-off time Tk about 21-28 days and
#: potential doubling time Tpot about 3 days (REFERENCES.md; typical values, verify; e.g.
#: Withers et al., Acta Oncol 1988;27:131 for the onset of accelerated repopulation).
HN_KICKOFF_DAYS = 21.0
HN_TPOT_DAYS = 3.0

# Below this x the Lea-Catcheside factor is evaluated by its Taylor series (see g_factor).
_G_SERIES_X = 0.5


def bed(total_dose_Gy, fractions, alpha_beta_Gy):
    """Biologically effective dose BED = D (1 + D / (n alpha/beta)).

    Parameters
    ----------
    total_dose_Gy : total physical dose D of the course, Gy (>= 0), scalar or array
    fractions : number of equal fractions n (integer >= 1)
    alpha_beta_Gy : alpha/beta in Gy (> 0)

    Returns
    -------
    BED in Gy (float or array, broadcast shape).

    Warns
    -----
    PerFractionDoseWarning : if the doses look like per-fraction doses (:func:`check_course_dose`);
        the same holds for every function here that takes ``total_dose_Gy`` and ``fractions``.
    """
    D = _nonneg(total_dose_Gy, "total_dose_Gy")
    n = _fractions(fractions)
    ab = _positive(alpha_beta_Gy, "alpha_beta_Gy")
    check_course_dose(D, n)
    return _out(D * (1.0 + D / (n * ab)))


def eqd2(total_dose_Gy, fractions, alpha_beta_Gy):
    """Equivalent dose in 2 Gy fractions, EQD2 = BED / (1 + 2 / (alpha/beta)), Gy.

    Parameters are those of :func:`bed`.
    """
    ab = _positive(alpha_beta_Gy, "alpha_beta_Gy")
    return _out(np.asarray(bed(total_dose_Gy, fractions, ab)) / (1.0 + 2.0 / ab))


def dose_for_bed(bed_Gy, fractions, alpha_beta_Gy):
    """Total physical dose (Gy) in n fractions whose BED is ``bed_Gy``: the exact inverse of
    :func:`bed` on D >= 0 (BED is strictly increasing there),
    D = n (a/b) / 2 (sqrt(1 + 4 B / (n a/b)) - 1), evaluated as 2 B / (1 + sqrt(1 + 4 B/(n a/b)))
    to avoid cancellation for small B.

    Parameters
    ----------
    bed_Gy : BED in Gy (>= 0)
    fractions : integer >= 1
    alpha_beta_Gy : alpha/beta in Gy (> 0)
    """
    B = _nonneg(bed_Gy, "bed_Gy")
    n = _fractions(fractions)
    ab = _positive(alpha_beta_Gy, "alpha_beta_Gy")
    return _out(2.0 * B / (1.0 + np.sqrt(1.0 + 4.0 * B / (n * ab))))


def dose_for_eqd2(eqd2_Gy, fractions, alpha_beta_Gy):
    """Total physical dose (Gy) in n fractions whose EQD2 is ``eqd2_Gy`` (exact inverse of
    :func:`eqd2`): ``dose_for_bed(EQD2 (1 + 2/(a/b)), n, a/b)``."""
    E = _nonneg(eqd2_Gy, "eqd2_Gy")
    ab = _positive(alpha_beta_Gy, "alpha_beta_Gy")
    return dose_for_bed(E * (1.0 + 2.0 / ab), fractions, ab)


def bed_with_repopulation(total_dose_Gy, fractions, alpha_beta_Gy, alpha_Gy, overall_time_days,
                          kickoff_days, tpot_days):
    """BED (Gy) corrected for tumour repopulation during the course:
    BED = D (1 + D/(n a/b)) - ln2 max(T - Tk, 0) / (alpha Tpot).

    Typical head-and-neck SCC values are ``HN_KICKOFF_DAYS`` (Tk ~21-28 d) and ``HN_TPOT_DAYS``
    (Tpot ~3 d) (REFERENCES.md; verify). The result may be negative for short, low-dose courses
    with long overall times; it is returned as computed.

    Parameters
    ----------
    total_dose_Gy, fractions, alpha_beta_Gy : as for :func:`bed`
    alpha_Gy : alpha in Gy^-1 (> 0)
    overall_time_days : overall treatment time T, days (>= 0)
    kickoff_days : time Tk at which repopulation starts, days (>= 0)
    tpot_days : potential doubling time Tpot, days (> 0)
    """
    b = np.asarray(bed(total_dose_Gy, fractions, alpha_beta_Gy))
    alpha = _positive(alpha_Gy, "alpha_Gy", "Gy^-1")
    T = _nonneg(overall_time_days, "overall_time_days", "days")
    Tk = _nonneg(kickoff_days, "kickoff_days", "days")
    Tp = _positive(tpot_days, "tpot_days", "days")
    return _out(b - math.log(2.0) * np.maximum(T - Tk, 0.0) / (alpha * Tp))


def g_factor(x):
    """Lea-Catcheside dose-protraction factor G(x) = 2 (x - 1 + exp(-x)) / x^2 for
    x = mu t >= 0 (mu = ln2 / T_half the repair rate, t the delivery time of one fraction).

    G(0) = 1 (acute delivery); G -> 2/x for large x. Below x = 0.5 the Taylor series
    G = sum_k 2 (-x)^k / (k + 2)! is used (cancellation-free; truncation error < 1e-13).
    """
    x0 = _nonneg(x, "x", "")
    x = np.atleast_1d(x0)
    out = np.empty_like(x, dtype=float)
    small = x < _G_SERIES_X
    xs = x[small]
    series = np.zeros_like(xs)
    for k in range(12):  # terms 2 (-x)^k / (k+2)!
        series += 2.0 * (-xs) ** k / math.factorial(k + 2)
    out[small] = series
    xl = x[~small]
    out[~small] = 2.0 * (xl + np.expm1(-xl)) / xl ** 2
    return _out(out.reshape(x0.shape))


def bed_protracted(total_dose_Gy, fractions, alpha_beta_Gy, delivery_time_min, repair_half_time_min):
    """BED (Gy) of fractions each delivered at constant dose rate over ``delivery_time_min``,
    with mono-exponential sublethal-damage repair during delivery (Lea-Catcheside):
    BED = D (1 + G(mu t) D / (n a/b)), mu = ln2 / T_half.

    Parameters
    ----------
    total_dose_Gy, fractions, alpha_beta_Gy : as for :func:`bed`
    delivery_time_min : beam-on time t of one fraction, minutes (>= 0)
    repair_half_time_min : repair half-time T_half, minutes (> 0)
    """
    D = _nonneg(total_dose_Gy, "total_dose_Gy")
    n = _fractions(fractions)
    ab = _positive(alpha_beta_Gy, "alpha_beta_Gy")
    t = _nonneg(delivery_time_min, "delivery_time_min", "min")
    th = _positive(repair_half_time_min, "repair_half_time_min", "min")
    check_course_dose(D, n)
    g = np.asarray(g_factor(math.log(2.0) / th * t))
    return _out(D * (1.0 + g * D / (n * ab)))

