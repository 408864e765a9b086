"""Error types shared by both bioplan packages.

:class:`BioplanError` is the base of every public bioplan error; it is a ``ValueError`` because
most of them report bad input (``except ValueError`` and ``pytest.raises(ValueError)`` keep
working). The optimizer package adds one subclass per room in :mod:`optimizer.errors`
(``GeometryError``, ``BeamError``, ``PlanError``, ``SolverError``, ``EvaluationError``,
``PlotError``); DICOM and matRad readers add ``DicomError`` and ``MatradError``.
"""


class BioplanError(ValueError):
    """Base class of bioplan's own errors: bad input or a result that cannot be trusted."""


class BiologyError(BioplanError):
    """Invalid radiobiological input (alpha/beta, RSI, fractions, maps)."""


class TermError(BioplanError):
    """A planning term was given invalid arguments."""
