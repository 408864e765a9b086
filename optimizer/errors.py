"""Errors raised by the optimizer package."""

from objectives.errors import BioplanError


class GeometryError(BioplanError):
    """Invalid grid, CT or structure input."""


class BeamError(BioplanError):
    """Invalid beam-model input (angles, energies, spacings, empty targets)."""


class PlanError(BioplanError):
    """A planning problem could not be assembled or solved."""


class InfeasiblePlanError(PlanError):
    """The hard constraints cannot all hold. ``terms`` names the ones in conflict."""

    def __init__(self, message: str, terms: list[str] | None = None):
        super().__init__(message)
        self.terms = list(terms or [])


class SolverError(PlanError):
    """The solver failed or returned an inaccurate or unbounded result."""
