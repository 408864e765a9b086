"""matRad import, kept for existing code: it now lives in :mod:`optimizer.io.matrad`; import it
from there (or from :mod:`optimizer`)."""

from .io.matrad import BODY_NAMES, MatradError, is_body_name, load_matrad

__all__ = ["BODY_NAMES", "MatradError", "is_body_name", "load_matrad"]
