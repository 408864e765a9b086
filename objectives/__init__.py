"""bioplan objectives: radiobiology and the planning terms (soft objectives, hard constraints).

A term is a shape (``Max``, ``Min``, ``Mean``, ``CVaRMax``, ``SquaredOver``, ``Floor``, ...) applied
to a quantity (``Dose()``, ``BED(lq)``, ``EQD2(lq)``, ``GARD(rsi)``, ``LETxDose()``, ``Weights()``,
...); the historical names (``MaxDose``, ``BEDMax``, ``DVHMin``, ``LETdMax``, ...) are aliases.
"""

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
from .dose_rate import DADRDeficit, DADRMin
from .errors import BiologyError, BioplanError, TermError
from .immune import EDICModel, ImmuneMeanDose
from .let import DirtyDoseMax, LETdMax, LETDoseMax, dirty_dose_matrix
from .minibeam import PVDRMin, ValleyMax, ValleyMean
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
from .quantities import BED, EQD2, GARD, DirtyDose, Dose, LETdExcess, LETxDose, Quantity, Weights
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
from .robust import Robust, ScenarioDoses, scenario_form
from .shapes import CVaRMax, CVaRMin, Floor, FluenceSmoothness, Max, Mean, Min, SquaredOver, SquaredUnder
from .terms import Term, TermContext

__all__ = [
    "BioplanError", "BiologyError", "TermError", "Term", "TermContext",
    "Quantity", "Dose", "BED", "EQD2", "GARD", "LETxDose", "DirtyDose", "LETdExcess", "Weights",
    "Max", "Min", "Mean", "CVaRMax", "CVaRMin", "SquaredOver", "SquaredUnder", "Floor", "FluenceSmoothness",
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
    "DADRMin", "DADRDeficit", "EDICModel", "ImmuneMeanDose",
    "Robust", "ScenarioDoses", "scenario_form",
    "ValleyMax", "ValleyMean", "PVDRMin",
]
