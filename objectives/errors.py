"""Error types shared by both bioplan packages."""


class BioplanError(ValueError):
    """Base class of bioplan's own errors: bad input or a result that cannot be trusted."""


class BiologyError(BioplanError):
    """Invalid radiobiological input (alpha/beta, RSI, fractions, maps)."""


class TermError(BioplanError):
    """A planning term was given invalid arguments."""
