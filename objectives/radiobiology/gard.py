"""GARD, the genomic-adjusted radiation dose (Scott et al., Lancet Oncol 2017;18:202-211): alpha
from the radiosensitivity index (RSI), GARD of a course, and its exact inverse (the dose floor
that reaches a GARD prescription).

GARD is the LQ log cell kill E = alpha D + beta D^2 / n of a course of n equal fractions;
:func:`_log_cell_kill` is the one place that formula is written (TCP uses it too).
"""

from __future__ import annotations

import numpy as np

from .._validate import _finite, _fractions, _nonneg, _out, _rsi, _scalar_positive
from ..errors import BiologyError
from .course_dose import check_course_dose

#: GARD model: beta fixed at 0.05 Gy^-2 for every patient (Scott et al., Lancet Oncol
#: 2017;18:202-211; alpha is derived per patient from RSI ~ SF2).
GARD_BETA_GY2 = 0.05


def _log_cell_kill(total_dose_Gy, fractions, alpha, beta):
    """LQ log cell kill (= GARD) of a total dose D in n equal fractions, n d (alpha + beta d) =
    D (alpha + beta D / n) with d = D / n; numpy broadcasting, no validation (callers validate).
    D in Gy, alpha in Gy^-1, beta in Gy^-2."""
    return total_dose_Gy * (alpha + beta * total_dose_Gy / fractions)


def alpha_from_rsi(rsi, beta_Gy2: float = GARD_BETA_GY2):
    """alpha (Gy^-1) from the radiosensitivity index, reading RSI as the surviving fraction at
    2 Gy: SF2 = exp(-2 alpha - 4 beta), so alpha = -ln(RSI)/2 - 2 beta (= -ln(RSI)/2 - 0.1 for
    the GARD beta 0.05 Gy^-2; Scott et al., Lancet Oncol 2017;18:202-211).

    RSI must lie in (0, 1). Note alpha < 0 for RSI > exp(-4 beta) (0.819 for beta 0.05).
    """
    r = _rsi(rsi)
    b = _scalar_positive(beta_Gy2, "beta_Gy2", "Gy^-2")
    return _out(-np.log(r) / 2.0 - 2.0 * b)


def _gard_alpha(rsi, alpha, beta_Gy2):
    if (rsi is None) == (alpha is None):
        raise BiologyError("rsi/alpha: give exactly one of rsi (in (0, 1)) or alpha (Gy^-1)")
    if rsi is not None:
        return np.asarray(alpha_from_rsi(rsi, beta_Gy2))
    return _finite(alpha, "alpha")


def gard(total_dose_Gy, fractions, rsi=None, alpha=None, beta_Gy2: float = GARD_BETA_GY2):
    """Genomic-adjusted radiation dose GARD = n d (alpha + beta d) with d = D / n
    (Scott et al., Lancet Oncol 2017;18:202-211). For 2 Gy fractions GARD = -n ln(RSI).

    Parameters
    ----------
    total_dose_Gy : total physical dose D, Gy (>= 0)
    fractions : integer n >= 1
    rsi : radiosensitivity index in (0, 1) (alpha is derived with :func:`alpha_from_rsi`), or
    alpha : alpha in Gy^-1 directly (exactly one of rsi / alpha)
    beta_Gy2 : beta in Gy^-2, default 0.05 (the GARD model's fixed value)

    Returns
    -------
    GARD (dimensionless, the LQ log cell kill), float or array.
    """
    D = _nonneg(total_dose_Gy, "total_dose_Gy")
    n = _fractions(fractions)
    b = _scalar_positive(beta_Gy2, "beta_Gy2", "Gy^-2")
    a = _gard_alpha(rsi, alpha, b)
    check_course_dose(D, n)
    return _out(_log_cell_kill(D, n, a, b))


def dose_for_gard(target_gard, fractions, rsi=None, alpha=None, beta_Gy2: float = GARD_BETA_GY2):
    """Total physical dose (Gy) in n fractions that reaches GARD ``target_gard`` (exact inverse
    of :func:`gard`): the larger root of (beta/n) D^2 + alpha D - G = 0,
    D = n (sqrt(alpha^2 + 4 beta G / n) - alpha) / (2 beta). For G > 0 every D >= 0 with
    GARD(D) >= G satisfies D >= this root (GARD is convex with GARD(0) = 0), so it is the exact
    dose floor even when alpha < 0. For G = 0 the floor is 0 (GARD(0) = 0 already meets it;
    the larger root, -n alpha / beta when alpha < 0, forced 28.4 Gy for RSI 0.9 in 30 fractions).

    Parameters
    ----------
    target_gard : GARD to reach (>= 0)
    fractions, rsi, alpha, beta_Gy2 : as for :func:`gard`
    """
    G = _nonneg(target_gard, "target_gard", "")
    n = _fractions(fractions)
    b = _scalar_positive(beta_Gy2, "beta_Gy2", "Gy^-2")
    a = _gard_alpha(rsi, alpha, b)
    s = np.sqrt(a * a + 4.0 * b * G / n)
    # rationalized form 2G / (alpha + s) when alpha > 0 (no cancellation), direct form otherwise
    positive = a > 0
    stable = 2.0 * G / np.where(positive, a + s, 1.0)
    return _out(np.where(G > 0, np.where(positive, stable, n * (s - a) / (2.0 * b)), 0.0))


def gard_prescription(target_gard, fractions, rsi, beta_Gy2: float = GARD_BETA_GY2):
    """Physical total dose (Gy) to prescribe in ``fractions`` fractions so that a tumour with
    radiosensitivity index ``rsi`` (scalar or per-voxel map) reaches ``target_gard``.

    With conventional ~2 Gy fractions choose n near target / (-ln RSI); the dose returned is
    exact for the given n (:func:`dose_for_gard`). Example: RSI 0.3, GARD 36.1, n = 30 gives
    about 60 Gy.
    """
    return dose_for_gard(target_gard, fractions, rsi=rsi, beta_Gy2=beta_Gy2)
