"""bioplan objectives: radiobiology and the planning terms (soft objectives, hard constraints)."""

from .biological import (
    BEDCVaRMax,
    BEDFloor,
    BEDMax,
    EQD2Floor,
    EQD2Max,
    GARDFloor,
    GEUDEQD2Max,
    MeanBEDMax,
    MeanEQD2Max,
    SquaredBEDOverdose,
)
from .errors import BiologyError, BioplanError, TermError
from .let import DirtyDoseMax, LETdMax, LETDoseMax, dirty_dose_matrix
from .physical import (
    DVHMax,
    DVHMin,
    GEUDMax,
    MaxDose,
    MeanDose,
    MinDose,
    SquaredDeviation,
    SquaredOverdose,
    SquaredUnderdose,
)
from .radiobiology import (
    LQ,
    NTCP_PARAMETERS,
    PerFractionDoseWarning,
    alpha_from_rsi,
    alpha_map_from_hypoxia,
    bed,
    bed_protracted,
    bed_with_repopulation,
    dose_for_bed,
    dose_for_eqd2,
    dose_for_gard,
    eqd2,
    g_factor,
    gard,
    gard_prescription,
    log_tcp,
    ntcp_lkb,
    oer,
    tcp_poisson,
)
from .rbe import RBE_CONSTANT, mcnamara_rbe, mcnamara_rbe_max, mcnamara_rbe_min, rbe_weighted_dose
from .terms import Term, TermContext

__all__ = [
    "BioplanError", "BiologyError", "TermError", "Term", "TermContext",
    "MaxDose", "MinDose", "MeanDose", "SquaredUnderdose", "SquaredOverdose", "SquaredDeviation",
    "DVHMax", "DVHMin", "GEUDMax",
    "BEDMax", "EQD2Max", "MeanBEDMax", "MeanEQD2Max", "SquaredBEDOverdose", "BEDCVaRMax",
    "GEUDEQD2Max", "BEDFloor", "EQD2Floor", "GARDFloor",
    "LQ", "NTCP_PARAMETERS", "PerFractionDoseWarning", "alpha_from_rsi", "alpha_map_from_hypoxia",
    "bed", "bed_protracted",
    "bed_with_repopulation", "dose_for_bed", "dose_for_eqd2", "dose_for_gard", "eqd2", "g_factor",
    "gard", "gard_prescription", "log_tcp", "ntcp_lkb", "oer", "tcp_poisson",
    "LETDoseMax", "LETdMax", "DirtyDoseMax", "dirty_dose_matrix",
    "RBE_CONSTANT", "mcnamara_rbe", "mcnamara_rbe_max", "mcnamara_rbe_min", "rbe_weighted_dose",
]
