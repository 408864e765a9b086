"""DICOM import, kept for existing code: the readers now live in :mod:`optimizer.io`
(:mod:`optimizer.io.ct`, :mod:`optimizer.io.rtstruct`, :mod:`optimizer.io.rtdose`,
:mod:`optimizer.io.dicom_folder`); import them from there (or from :mod:`optimizer`)."""

from .io._dicom_common import (
    AXIAL_ORIENTATION,
    CT_IMAGE_STORAGE,
    RT_DOSE_STORAGE,
    RT_ION_PLAN_STORAGE,
    RT_STRUCTURE_SET_STORAGE,
    CTInfo,
    DicomError,
)
from .io.ct import CTSeries, load_ct_series
from .io.dicom_folder import load_dicom
from .io.rtdose import load_rtdose
from .io.rtstruct import load_rtstruct

__all__ = [
    "DicomError", "CTInfo", "CTSeries", "load_ct_series", "load_rtstruct", "load_dicom", "load_rtdose",
    "AXIAL_ORIENTATION", "CT_IMAGE_STORAGE", "RT_DOSE_STORAGE", "RT_ION_PLAN_STORAGE",
    "RT_STRUCTURE_SET_STORAGE",
]
