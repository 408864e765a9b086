"""Personalization by hypoxia: the oxygen enhancement ratio and per-voxel LQ parameter maps of a
hypoxic tumour from a pO2 map."""

from __future__ import annotations

import numpy as np

from .._validate import _nonneg, _out, _scalar_positive
from ..errors import BiologyError

#: Oxygen effect (Alper & Howard-Flanders, Nature 1956;178:978; parameters as used by
#: Wouters & Brown, Radiat Res 1997;147:541-550 and Titz & Jeraj, Phys Med Biol 2008;53:4471):
#: maximum oxygen enhancement ratio m ~ 3 and half-effect oxygen tension K ~ 3 mmHg (verify).
OER_MAX = 3.0
OER_K_MMHG = 3.0


def oer(po2_mmHg, oer_max: float = OER_MAX, k_mmHg: float = OER_K_MMHG):
    """Oxygen enhancement of radiosensitivity relative to anoxia (Alper & Howard-Flanders,
    Nature 1956;178:978): OER(pO2) = (m pO2 + K) / (pO2 + K), 1 at pO2 = 0, -> m when oxic.

    Parameters
    ----------
    po2_mmHg : oxygen partial pressure, mmHg (>= 0)
    oer_max : m, maximum OER (> 1 typically; default 3)
    k_mmHg : K, pO2 of half-maximum effect, mmHg (> 0; default 3)
    """
    p = _nonneg(po2_mmHg, "po2_mmHg", "mmHg")
    m = _scalar_positive(oer_max, "oer_max", "")
    K = _scalar_positive(k_mmHg, "k_mmHg", "mmHg")
    return _out((m * p + K) / (p + K))


def alpha_map_from_hypoxia(po2_mmHg_map, alpha_oxic: float, beta_oxic: float,
                           oer_max: float = OER_MAX, k_mmHg: float = OER_K_MMHG):
    """Per-voxel LQ parameters of a hypoxic tumour from a pO2 map.

    Hypoxia is modelled as dose modification (Wouters & Brown, Radiat Res 1997;147:541;
    Titz & Jeraj, Phys Med Biol 2008;53:4471): a voxel at pO2 needs OMF times the oxic dose,
    OMF = OER_max / OER(pO2) (:func:`oer`), so alpha = alpha_oxic / OMF and
    beta = beta_oxic / OMF^2 (alpha/beta grows by OMF).

    Parameters
    ----------
    po2_mmHg_map : 3-D [z, y, x] array of pO2 in mmHg (>= 0)
    alpha_oxic : alpha of well-oxygenated cells, Gy^-1 (> 0)
    beta_oxic : beta of well-oxygenated cells, Gy^-2 (> 0)
    oer_max, k_mmHg : the OER model's m and K (defaults 3 and 3 mmHg, verify)

    Returns
    -------
    (alpha_map Gy^-1, beta_map Gy^-2), arrays of the input shape; pass them to
    ``LQ(alpha_map=..., beta_map=...)``.
    """
    p = _nonneg(po2_mmHg_map, "po2_mmHg_map", "mmHg")
    if p.ndim != 3:
        raise BiologyError(f"po2_mmHg_map: expected a 3-D [z, y, x] array, got shape {p.shape}")
    a = _scalar_positive(alpha_oxic, "alpha_oxic", "Gy^-1")
    b = _scalar_positive(beta_oxic, "beta_oxic", "Gy^-2")
    m = _scalar_positive(oer_max, "oer_max", "")
    omf = m / np.asarray(oer(p, m, k_mmHg))
    return a / omf, b / omf ** 2
