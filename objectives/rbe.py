"""Relative biological effectiveness (RBE) of protons: the clinical constant and the McNamara model.

Doses are physical doses in Gy; LETd is the dose-averaged LET in keV/um; (alpha/beta)x is the
alpha/beta of the tissue for the reference photon radiation, Gy. Functions are vectorized and
return a float when every input is a scalar; invalid input raises
:class:`~objectives.errors.BiologyError` naming the field.

RBE-weighted dose is not convex in the spot weights under a variable-RBE model (the RBE depends on
the LETd, a ratio of two linear forms, and on the dose). Plans are therefore optimized with the
linear surrogates in :mod:`objectives.let` (LETd and LET x dose limits) and evaluated with
:func:`rbe_weighted_dose`.
"""

from __future__ import annotations

import numpy as np

from ._validate import _fraction_count, _nonneg, _out, _positive
from .errors import BiologyError
from .radiobiology import check_course_dose

#: Clinical constant RBE of protons relative to 60Co / megavoltage photons (ICRU Report 78,
#: 2007; Paganetti, Phys Med Biol 2014;59:R419-R472 reviews the in-vitro data behind it).
RBE_CONSTANT = 1.1

# McNamara, Schuemann & Paganetti, Phys Med Biol 2015;60:8399-8416 (fit to 285 in-vitro
# experiments), the paper's RBEmax / RBEmin equations with its fitted parameters:
#   RBEmax = 0.99064 + 0.35605 LETd / (a/b)x ,  RBEmin = 1.1012 - 0.0038703 sqrt((a/b)x) LETd
# (LETd in keV/um, (a/b)x in Gy). p0 is 0.99064 as published (and as in TOPAS); some planning codes
# carry the typo 0.999064, which raises every RBEmax by 0.0084.
MCNAMARA_P0 = 0.99064
MCNAMARA_P1 = 0.35605  # Gy um / keV
MCNAMARA_P2 = 1.1012
MCNAMARA_P3 = -0.0038703  # Gy^-1/2 um / keV


def mcnamara_rbe_max(letd, alpha_beta_x):
    """RBEmax = 0.99064 + 0.35605 LETd / (a/b)x (McNamara et al. 2015); LETd keV/um, (a/b)x Gy."""
    let = _nonneg(letd, "letd", "keV/um")
    ab = _positive(alpha_beta_x, "alpha_beta_x", "Gy")
    return _out(MCNAMARA_P0 + MCNAMARA_P1 * let / ab)


def mcnamara_rbe_min(letd, alpha_beta_x):
    """RBEmin = 1.1012 - 0.0038703 sqrt((a/b)x) LETd (McNamara et al. 2015)."""
    let = _nonneg(letd, "letd", "keV/um")
    ab = _positive(alpha_beta_x, "alpha_beta_x", "Gy")
    return _out(MCNAMARA_P2 + MCNAMARA_P3 * np.sqrt(ab) * let)


def mcnamara_rbe(dose_per_fraction, letd, alpha_beta_x):
    """Variable RBE of McNamara, Schuemann & Paganetti (Phys Med Biol 2015;60:8399).

    RBE = [sqrt((a/b)^2 + 4 d (a/b) RBEmax + 4 d^2 RBEmin^2) - (a/b)] / (2 d), the LQ iso-effect
    with alpha_p = RBEmax alpha_x and beta_p = RBEmin^2 beta_x. Evaluated in the algebraically
    equal form 2 ((a/b) RBEmax + d RBEmin^2) / (sqrt(...) + (a/b)), which is finite at d = 0,
    where RBE = RBEmax.

    Parameters
    ----------
    dose_per_fraction : physical dose per fraction d, Gy (>= 0)
    letd : dose-averaged LET, keV/um (>= 0)
    alpha_beta_x : (alpha/beta)x of the tissue for photons, Gy (> 0)
    """
    d = _nonneg(dose_per_fraction, "dose_per_fraction", "Gy")
    let = _nonneg(letd, "letd", "keV/um")
    ab = _positive(alpha_beta_x, "alpha_beta_x", "Gy")
    try:
        d, let, ab = np.broadcast_arrays(d, let, ab)
    except ValueError:
        raise BiologyError(
            f"dose_per_fraction, letd, alpha_beta_x: shapes {np.shape(dose_per_fraction)}, "
            f"{np.shape(letd)}, {np.shape(alpha_beta_x)} do not broadcast") from None
    rmax = MCNAMARA_P0 + MCNAMARA_P1 * let / ab
    rmin = MCNAMARA_P2 + MCNAMARA_P3 * np.sqrt(ab) * let
    root = np.sqrt(ab * ab + 4.0 * d * ab * rmax + 4.0 * d * d * rmin * rmin)
    return _out(2.0 * (ab * rmax + d * rmin * rmin) / (root + ab))


def rbe_weighted_dose(dose_Gy, letd=None, alpha_beta_x=None, *, fractions: int,
                      model: str = "mcnamara"):
    """RBE-weighted dose (Gy(RBE)) of a total physical dose delivered in ``fractions`` fractions.

    Parameters
    ----------
    dose_Gy : total physical dose of the course, Gy (not the dose per fraction)
    letd : dose-averaged LET, keV/um (``model="mcnamara"``)
    alpha_beta_x : (alpha/beta)x, Gy (``model="mcnamara"``)
    fractions : number of equal fractions n, keyword only and required (no default: a course
        taken for one fraction gets the wrong RBE); the RBE is evaluated at d = dose_Gy / n
    model : "mcnamara" (variable RBE) or "constant" (1.1)

    Warns
    -----
    PerFractionDoseWarning : if ``dose_Gy`` looks like a per-fraction dose
        (:func:`objectives.radiobiology.check_course_dose`).
    """
    dose = _nonneg(dose_Gy, "dose_Gy", "Gy")
    n = _fraction_count(fractions)
    check_course_dose(dose, n, "dose_Gy")
    if model == "constant":
        return _out(RBE_CONSTANT * dose)
    if model != "mcnamara":
        raise BiologyError(f"model: expected 'mcnamara' or 'constant', got {model!r}")
    if letd is None or alpha_beta_x is None:
        raise BiologyError("letd, alpha_beta_x: both are required for model='mcnamara'")
    rbe = mcnamara_rbe(dose / float(n), letd, alpha_beta_x)
    return _out(np.asarray(rbe) * dose)
