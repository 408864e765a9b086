"""Outcome models: Poisson LQ tumour control probability (TCP), generalized equivalent uniform
dose (gEUD), Lyman-Kutcher-Burman normal-tissue complication probability (NTCP) and a table of
published LKB parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from .._validate import _fractions, _nonneg, _positive, _scalar_positive
from ..errors import BiologyError
from .course_dose import _course_dose_checked, check_course_dose
from .fractionation import eqd2
from .gard import _log_cell_kill


def _lq_beta(alpha, beta, alpha_beta):
    if (beta is None) == (alpha_beta is None):
        raise BiologyError("beta/alpha_beta: give exactly one of beta (Gy^-2) or alpha_beta (Gy)")
    if beta is not None:
        return _nonneg(beta, "beta", "Gy^-2")
    return alpha / _positive(alpha_beta, "alpha_beta", "Gy")


def log_tcp(total_dose_Gy, fractions, alpha, beta=None, *, alpha_beta=None,
            clonogen_density_per_cc, voxel_volumes_cc):
    """Natural log of the Poisson LQ tumour control probability,
    ln TCP = -sum_i N_i SF_i, N_i = rho_i V_i, SF_i = exp(-(alpha D_i + beta D_i^2 / n))
    (n equal fractions of D_i / n each, no repopulation).

    Parameters
    ----------
    total_dose_Gy : total dose per voxel, Gy (>= 0), shape (k,)
    fractions : integer n >= 1
    alpha : Gy^-1 (> 0), scalar or per voxel
    beta : Gy^-2 (>= 0), or give ``alpha_beta`` (Gy) instead
    clonogen_density_per_cc : clonogens per cm^3 (>= 0), scalar or per voxel (1e7 /cc is a
        common modelling value, e.g. Webb & Nahum, Phys Med Biol 1993;38:653; verify)
    voxel_volumes_cc : voxel volumes in cm^3 (>= 0), scalar or per voxel

    Returns
    -------
    ln TCP (<= 0), float.
    """
    D = _nonneg(total_dose_Gy, "total_dose_Gy")
    n = _fractions(fractions)
    a = _positive(alpha, "alpha", "Gy^-1")
    b = _lq_beta(a, beta, alpha_beta)
    rho = _nonneg(clonogen_density_per_cc, "clonogen_density_per_cc", "per cc")
    vol = _nonneg(voxel_volumes_cc, "voxel_volumes_cc", "cc")
    try:
        D, a, b, rho, vol = np.broadcast_arrays(D, a, b, rho, vol)
    except ValueError:
        raise BiologyError("voxel_volumes_cc/clonogen_density_per_cc/alpha: shapes do not match "
                           "total_dose_Gy") from None
    check_course_dose(D, n)
    log_kill = _log_cell_kill(D, n, a, b)
    with np.errstate(divide="ignore"):
        log_n = np.log(rho * vol)
    return float(-np.sum(np.exp(log_n - log_kill)))


def tcp_poisson(total_dose_Gy, fractions, alpha, beta=None, *, alpha_beta=None,
                clonogen_density_per_cc, voxel_volumes_cc):
    """Poisson LQ tumour control probability TCP = prod_i exp(-N_i SF_i) = exp(:func:`log_tcp`).

    Parameters are those of :func:`log_tcp`. Returns TCP in [0, 1] (float).
    """
    return math.exp(log_tcp(total_dose_Gy, fractions, alpha, beta, alpha_beta=alpha_beta,
                            clonogen_density_per_cc=clonogen_density_per_cc,
                            voxel_volumes_cc=voxel_volumes_cc))


def geud(doses_Gy, volumes, a: float) -> float:
    """Generalized equivalent uniform dose (sum_i v_i d_i^a)^(1/a), v normalized to sum 1, Gy.

    Parameters
    ----------
    doses_Gy : voxel (or DVH-bin) doses, Gy (>= 0)
    volumes : relative or absolute volumes (>= 0, not all zero), same length
    a : volume-effect exponent (> 0 here; a = 1 gives the mean dose)
    """
    d = _nonneg(doses_Gy, "doses_Gy").ravel()
    v = _nonneg(volumes, "volumes", "").ravel()
    if d.shape != v.shape:
        raise BiologyError(f"volumes: expected shape {d.shape} to match doses_Gy, got {v.shape}")
    a = _scalar_positive(a, "a", "")
    total = v.sum()
    if total <= 0:
        raise BiologyError("volumes: expected a positive total volume")
    dmax = d.max() if d.size else 0.0
    if dmax == 0:
        return 0.0
    v = v / total
    return float(dmax * np.sum(v * (d / dmax) ** a) ** (1.0 / a))


_DOSE_KINDS = ("EQD2", "physical")


def ntcp_lkb(doses_Gy, volumes, td50_Gy: float, m: float, n_volume: float, *, dose_kind: str,
             fractions=None, alpha_beta_Gy=None) -> float:
    """Lyman-Kutcher-Burman NTCP in the gEUD form: NTCP = Phi((gEUD - TD50) / (m TD50)),
    gEUD with exponent a = 1 / n (Kutcher & Burman, IJROBP 1989;16:1623; Niemierko 1999),
    evaluated on **EQD2** doses.

    The published parameters (:data:`NTCP_PARAMETERS`, Burman/Emami-type and QUANTEC fits) were
    fitted to conventionally fractionated (~2 Gy) doses, so the gEUD is taken over EQD2. Which dose
    ``doses_Gy`` holds is stated by the required ``dose_kind`` (there is no default):

    * ``dose_kind="EQD2"`` : the doses are already EQD2 (Gy); ``fractions`` and ``alpha_beta_Gy``
      must not be given;
    * ``dose_kind="physical"`` : the doses are total physical doses of a course of ``fractions``
      equal fractions; they are converted first with :func:`eqd2` and the organ's
      ``alpha_beta_Gy`` (both required).

    Parameters
    ----------
    doses_Gy : voxel (or DVH-bin) doses, Gy, of the kind named by ``dose_kind``
    volumes : relative or absolute volumes of those voxels/bins
    td50_Gy : uniform EQD2 giving 50 % complication probability, Gy (> 0)
    m : slope parameter (> 0)
    n_volume : volume-effect parameter n (> 0); a = 1/n
    dose_kind : "EQD2" or "physical" (case-insensitive), keyword only, required
    fractions : integer >= 1, only with ``dose_kind="physical"``
    alpha_beta_Gy : alpha/beta of the organ in Gy (> 0, scalar or per voxel), only with
        ``dose_kind="physical"``

    Returns
    -------
    NTCP in [0, 1] (float).
    """
    kind = next((k for k in _DOSE_KINDS if isinstance(dose_kind, str) and dose_kind.strip().lower()
                 == k.lower()), None)
    if kind is None:
        raise BiologyError(f"dose_kind: expected 'EQD2' (doses already EQD2) or 'physical' (total "
                           f"physical doses, with fractions and alpha_beta_Gy), got {dose_kind!r}")
    if kind == "EQD2":
        for field, value in (("fractions", fractions), ("alpha_beta_Gy", alpha_beta_Gy)):
            if value is not None:
                raise BiologyError(f"{field}: expected None with dose_kind='EQD2' (the doses are "
                                   f"already EQD2); use dose_kind='physical' to convert physical doses")
    else:
        for field, value, form in (("fractions", fractions, "an integer >= 1"),
                                   ("alpha_beta_Gy", alpha_beta_Gy, "the organ's alpha/beta in Gy (> 0)")):
            if value is None:
                raise BiologyError(f"{field}: expected {form} with dose_kind='physical' (needed to "
                                   f"convert the physical doses to EQD2)")
    td50 = _scalar_positive(td50_Gy, "td50_Gy", "Gy")
    m = _scalar_positive(m, "m", "")
    n = _scalar_positive(n_volume, "n_volume", "")
    doses = doses_Gy
    if kind == "physical":
        d = _nonneg(doses_Gy, "doses_Gy")
        n_fx = _fractions(fractions)
        check_course_dose(d, n_fx, "doses_Gy")
        with _course_dose_checked():
            doses = eqd2(d, n_fx, _positive(alpha_beta_Gy, "alpha_beta_Gy"))
    g = geud(doses, volumes, 1.0 / n)
    return float(ndtr((g - td50) / (m * td50)))


@dataclass(frozen=True)
class LKBParameters:
    """LKB parameters of one organ and endpoint (doses in Gy, EQD2 for other fractionations)."""

    td50_Gy: float
    m: float
    n: float
    endpoint: str
    source: str


#: Commonly used LKB parameters. Keys are lower-case organ names. Check the endpoint and the
#: source before use; entries marked (verify) have not been re-checked against the original.
NTCP_PARAMETERS: dict[str, LKBParameters] = {
    # Burman et al., IJROBP 1991;21:123-135 (fit to Emami et al., IJROBP 1991;21:109)
    "spinal cord": LKBParameters(66.5, 0.175, 0.05, "myelitis / necrosis", "Burman 1991"),
    # Burman 1991 (verify)
    "brainstem": LKBParameters(65.0, 0.14, 0.16, "necrosis / infarction", "Burman 1991 (verify)"),
    # Burman 1991 (verify)
    "heart": LKBParameters(48.0, 0.10, 0.35, "pericarditis", "Burman 1991 (verify)"),
    # Burman 1991 (verify)
    "liver": LKBParameters(40.0, 0.15, 0.32, "liver failure", "Burman 1991 (verify)"),
    # QUANTEC parotid, Deasy et al., IJROBP 2010;76(3 Suppl):S58-S63 (verify)
    "parotid": LKBParameters(39.9, 0.40, 1.0, "xerostomia (saliva flow < 25 %)", "Deasy 2010 (verify)"),
    # QUANTEC rectum, Michalski et al., IJROBP 2010;76(3 Suppl):S123-S129 (verify)
    "rectum": LKBParameters(76.9, 0.13, 0.09, "grade >= 2 late rectal toxicity", "Michalski 2010 (verify)"),
    # Seppenwoolde et al., IJROBP 2003;55:724, quoted by QUANTEC lung, Marks et al.,
    # IJROBP 2010;76(3 Suppl):S70-S76 (verify)
    "lung": LKBParameters(30.8, 0.37, 0.99, "radiation pneumonitis grade >= 2",
                          "Seppenwoolde 2003 / Marks 2010 (verify)"),
}

