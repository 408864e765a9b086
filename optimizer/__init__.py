"""bioplan optimizer: geometry, beam models, problem assembly and solve, plans and evaluation."""

from .errors import BeamError, GeometryError, InfeasiblePlanError, PlanError, SolverError
from .geometry import Grid, Patient, Structure, hu_to_red
from .influence import InfluenceMatrix

__all__ = [
    "BeamError", "GeometryError", "InfeasiblePlanError", "PlanError", "SolverError",
    "Grid", "Patient", "Structure", "hu_to_red", "InfluenceMatrix",
]
