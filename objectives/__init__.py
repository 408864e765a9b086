"""bioplan objectives: radiobiology and the planning terms (soft objectives, hard constraints)."""

from .errors import BiologyError, BioplanError, TermError
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
from .terms import Term, TermContext

__all__ = [
    "BioplanError", "BiologyError", "TermError", "Term", "TermContext",
    "MaxDose", "MinDose", "MeanDose", "SquaredUnderdose", "SquaredOverdose", "SquaredDeviation",
    "DVHMax", "DVHMin", "GEUDMax",
]
