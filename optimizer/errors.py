"""Errors raised by the optimizer package.

Every public error subclasses :class:`objectives.errors.BioplanError` (itself a ``ValueError``, so
``except ValueError`` keeps catching bad input), one class per room of the data flow:

=========================  =====================================================================
``GeometryError``          invalid grid, CT, HU table or structure input (``optimizer.geometry``)
``BeamError``              invalid beam-model input (``optimizer.beams``)
``PlanError``              a planning problem could not be assembled or solved
``InfeasiblePlanError``    (a ``PlanError``) the hard terms cannot all hold; ``.terms`` names them
``SolverError``            (a ``PlanError`` and a ``RuntimeError``) the solver failed
``EvaluationError``        a plan could not be evaluated: bad goals, metrics, doses (``evaluate``)
``PlotError``              a figure could not be drawn from its input (``optimizer.plots``)
=========================  =====================================================================

Biology input (alpha/beta, RSI, LQ maps) raises :class:`objectives.errors.BiologyError` wherever it
is read, planning terms raise :class:`objectives.errors.TermError`.
"""

from objectives.errors import BioplanError


class GeometryError(BioplanError):
    """Invalid grid, CT, HU-to-density table or structure input."""


class BeamError(BioplanError):
    """Invalid beam-model input (angles, energies, spacings, empty targets)."""


class PlanError(BioplanError):
    """A planning problem could not be assembled or solved."""


class InfeasiblePlanError(PlanError):
    """The hard constraints cannot all hold. ``terms`` names the ones in conflict."""

    def __init__(self, message: str, terms: list[str] | None = None):
        super().__init__(message)
        self.terms = list(terms or [])


class SolverError(PlanError, RuntimeError):
    """The solver failed: it returned an unbounded, inaccurate or uncertified result, or none.

    Not a statement about the user's input but about the solve, hence also a ``RuntimeError``
    (``except RuntimeError`` catches it). It stays a :class:`PlanError` (and so, through
    :class:`~objectives.errors.BioplanError`, a ``ValueError``) so that ``except PlanError`` keeps
    catching every way ``PlanProblem.solve`` can fail. :class:`InfeasiblePlanError` is not a
    ``SolverError``: infeasibility is a property of the hard terms, not a solver failure.
    """


class EvaluationError(BioplanError):
    """A plan could not be evaluated: an unknown metric or goal operator, a malformed goal, a
    structure without voxels, NaN or negative doses, mismatched voxel values or limits."""


class PlotError(BioplanError):
    """A figure could not be drawn: input missing what the plot needs (e.g. a proton beamlet
    table), an unknown beam index, or labels that do not match the plans."""
