"""DICOM export, kept for existing code: the writers now live in :mod:`optimizer.io`
(:mod:`optimizer.io.ct`, :mod:`optimizer.io.rtstruct`, :mod:`optimizer.io.rtdose`,
:mod:`optimizer.io.rtplan`); import them from there (or from :mod:`optimizer`)."""

from .io._dicom_common import CTInfo, DicomError  # noqa: F401 - importable from here, as before
from .io.ct import CT_HU_RANGE, write_ct_series
from .io.rtdose import write_rtdose
from .io.rtplan import write_rt_ion_plan
from .io.rtstruct import write_rtstruct

__all__ = ["write_ct_series", "write_rtstruct", "write_rtdose", "write_rt_ion_plan", "CT_HU_RANGE"]
