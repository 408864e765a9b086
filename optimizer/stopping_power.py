"""CT number (HU) -> proton stopping power relative to water (RSP).

Proton ranges in the patient are water-equivalent path lengths: the line integral of the RSP.
The calibration below is a representative piecewise-linear curve of the stoichiometric kind
introduced by Schneider, Pedroni & Lomax (Phys Med Biol 1996;41:111-124): tissue substitutes of
known composition are scanned, the Bethe-Bloch stopping power of each (body) tissue is computed
from its composition, and line segments join the lung, adipose/soft-tissue and bone groups.
The values are typical of published curves, not of a scanner:

===========  ======  =====  ===============================================
tissue       HU      RSP    note
===========  ======  =====  ===============================================
air          -1000   0.001  (1.06e-3 for dry air at 20 C)
lung          -800   0.20   inflated lung
adipose       -100   0.95   adipose ~0.95-0.98
water            0   1.00   by definition
soft tissue    100   1.07   muscle ~1.04 at +40 HU
bone          1000   1.55   dense bone ~1.5-1.6; cortical bone ~1.7-1.8 near 1500 HU
(extrapol.)   3000   2.60   keeps the curve monotone for very dense material
===========  ======  =====  ===============================================

Every scanner and protocol must be commissioned with its own stoichiometric calibration (CT of
tissue substitutes; e.g. AAPM TG-66, Mutic et al., Med Phys 2003;30:2762, and the ESTRO/EPTN
consensus of Peters et al., Radiother Oncol 2023); pass your own table to :func:`hu_to_rsp` or
to the proton beam model. The range uncertainty of a stoichiometric calibration is of the order
of 1-3 % of the range (Paganetti, Phys Med Biol 2012;57:R99).
"""

from __future__ import annotations

import numpy as np

from .errors import GeometryError
from .geometry import check_hu_table

#: HU -> RSP (water = 1), N x 2, strictly increasing HU; see the module docstring for sources.
HU_TO_RSP_TABLE = np.array(
    [
        [-1000.0, 0.001],  # air
        [-800.0, 0.20],  # inflated lung
        [-100.0, 0.95],  # adipose
        [0.0, 1.00],  # water
        [100.0, 1.07],  # soft tissue / muscle
        [1000.0, 1.55],  # dense bone
        [3000.0, 2.60],  # extrapolation for very dense material
    ]
)


def hu_to_rsp(hu, table=None) -> np.ndarray:
    """Relative stopping power (water = 1) of CT numbers in HU.

    Parameters
    ----------
    hu : array of CT numbers, HU (any shape, finite)
    table : optional (N, 2) calibration (HU, RSP) with strictly increasing HU; default
        :data:`HU_TO_RSP_TABLE`. Linear interpolation, clamped at the ends.

    Returns
    -------
    float32 array of the shape of ``hu``.
    """
    t = HU_TO_RSP_TABLE if table is None else check_hu_table(table, "relative stopping power")
    try:
        h = np.asarray(hu, dtype=float)
    except (TypeError, ValueError):
        raise GeometryError(f"hu: expected numeric CT numbers, got {type(hu).__name__}") from None
    if not np.all(np.isfinite(h)):
        raise GeometryError(f"hu: contains {int((~np.isfinite(h)).sum())} NaN or infinite values")
    return np.interp(h, t[:, 0], t[:, 1]).astype(np.float32)
