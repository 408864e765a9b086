"""Radiobiology on numpy: linear-quadratic (LQ) parameters, BED / EQD2 and their inverses,
repopulation, incomplete repair, GARD / RSI, Poisson TCP, LKB NTCP and a hypoxia model.

One job per module; everything is importable from here:

- :mod:`.lq` : :class:`LQ` (alpha/beta and alpha per structure or per voxel), typical alpha/beta
- :mod:`.fractionation` : BED, EQD2, their exact inverses, repopulation, Lea-Catcheside G factor
- :mod:`.gard` : GARD and its inverse, alpha from RSI
- :mod:`.outcome` : Poisson TCP, gEUD, LKB NTCP and its parameter table
- :mod:`.hypoxia` : oxygen enhancement ratio, alpha / beta maps from a pO2 map
- :mod:`.course_dose` : the per-fraction-dose plausibility warning shared by all of them

Input validation lives in :mod:`objectives._validate`.

Conventions (see DESIGN.md): doses are the **total physical dose of the course** in Gy, delivered
in ``fractions`` equal fractions (always an explicit, required argument: there is no default number
of fractions); alpha in Gy^-1, beta in Gy^-2, alpha/beta in Gy; times in the unit named by the
argument. Functions are vectorized (numpy broadcasting) and return a float when every input is a
scalar. Invalid input raises :class:`~objectives.errors.BiologyError` naming the field. A course
dose that looks like a dose per fraction (largest dose per fraction > 0 but below
:data:`PER_FRACTION_WARNING_GY`) raises a :class:`PerFractionDoseWarning` (see
:func:`check_course_dose`).

Sources of the model formulas and constants are given next to each; values marked (verify)
are typical literature values that a study should confirm for its own site and endpoint.
"""

from __future__ import annotations

# Private helpers re-exported for objectives.biological and optimizer.bio_evaluate (and for
# every name this module had before it became a package).
from .._validate import (  # noqa: F401
    _array,
    _finite,
    _first_bad,
    _fmt,
    _fractions,
    _nonneg,
    _out,
    _positive,
    _rsi,
    _scalar_positive,
    _unit,
    _voxel_index,
    _voxel_map,
)
from ..errors import BiologyError
from .course_dose import (  # noqa: F401
    _COURSE_DOSE_CHECKED,
    _LIBRARY_DIRS,
    PER_FRACTION_WARNING_GY,
    PerFractionDoseWarning,
    _course_dose_checked,
    check_course_dose,
)
from .fractionation import (  # noqa: F401
    _G_SERIES_X,
    HN_KICKOFF_DAYS,
    HN_TPOT_DAYS,
    bed,
    bed_protracted,
    bed_with_repopulation,
    dose_for_bed,
    dose_for_eqd2,
    eqd2,
    g_factor,
)
from .gard import (  # noqa: F401
    GARD_BETA_GY2,
    _gard_alpha,
    _log_cell_kill,
    alpha_from_rsi,
    dose_for_gard,
    gard,
    gard_prescription,
)
from .hypoxia import OER_K_MMHG, OER_MAX, alpha_map_from_hypoxia, oer
from .lq import LQ, TYPICAL_ALPHA_BETA_GY, _normalize, _StructureTable  # noqa: F401
from .outcome import (  # noqa: F401
    _DOSE_KINDS,
    NTCP_PARAMETERS,
    LKBParameters,
    _lq_beta,
    geud,
    log_tcp,
    ntcp_lkb,
    tcp_poisson,
)

__all__ = [
    "BiologyError",
    "GARD_BETA_GY2", "HN_KICKOFF_DAYS", "HN_TPOT_DAYS", "OER_K_MMHG", "OER_MAX", "PER_FRACTION_WARNING_GY",
    "TYPICAL_ALPHA_BETA_GY",
    "LQ", "LKBParameters", "NTCP_PARAMETERS", "PerFractionDoseWarning",
    "check_course_dose",
    "bed", "eqd2", "dose_for_bed", "dose_for_eqd2", "bed_with_repopulation", "g_factor", "bed_protracted",
    "alpha_from_rsi", "gard", "dose_for_gard", "gard_prescription",
    "log_tcp", "tcp_poisson", "geud", "ntcp_lkb",
    "oer", "alpha_map_from_hypoxia",
]

# The public functions are documented, pickled (by reference, e.g. by Dask) and audited
# (tests/test_biology_safety.py: no default number of fractions) as objectives.radiobiology.<name>,
# their home before the split into modules; the classes keep their defining module so that
# inspect.getsource still finds them.
for _name in __all__:
    _obj = globals()[_name]
    if callable(_obj) and not isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
