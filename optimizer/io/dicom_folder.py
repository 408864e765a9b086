"""A whole DICOM folder: :func:`load_dicom` reads one CT series and its RT Structure Set into a
:class:`~optimizer.geometry.Patient`."""

from __future__ import annotations

import os
from pathlib import Path

from ..geometry import Patient, Structure
from ._dicom_common import DicomError, _scan_folder
from .ct import _series_from_datasets
from .rtstruct import _structures_from_dataset

__all__ = ["load_dicom"]


def load_dicom(folder: str | os.PathLike, name: str | None = None, strict: bool = False) -> Patient:
    """Read a folder holding one CT series and, optionally, one RT Structure Set.

    Other RT objects in the folder (dose, plan) are ignored, and so (with a warning) are files
    that are not DICOM at all. For the CT identifiers needed to write a dose or plan that
    references this CT, use ``load_ct_series(folder).info``.

    Parameters
    ----------
    folder : the folder.
    name : patient label; default: PatientID, else PatientName, else the folder name.
    strict : raise instead of warning when a contour of the structure set is dropped (see
        :func:`~optimizer.io.load_rtstruct`).

    Raises
    ------
    DicomError
        As :func:`~optimizer.io.load_ct_series` and :func:`~optimizer.io.load_rtstruct`, and
        when there are several structure sets (they are listed; load the one you want with
        :func:`~optimizer.io.load_rtstruct`).
    """
    groups = _scan_folder(folder)
    series = _series_from_datasets(groups.get("CT", []), str(folder))
    structures: list[Structure] = []
    rtstructs = groups.get("RTSTRUCT", [])
    if len(rtstructs) > 1:
        raise DicomError(
            f"{folder}: {len(rtstructs)} RT Structure Sets ({', '.join(p for p, _ in rtstructs)}); "
            "keep one or call load_rtstruct on the one you want"
        )
    if rtstructs:
        path, ds = rtstructs[0]
        structures = _structures_from_dataset(ds, path, series.grid, series.info.frame_of_reference_uid,
                                              strict)
    label = name or series.info.patient_id or series.info.patient_name or Path(folder).name
    return Patient(grid=series.grid, ct_hu=series.ct_hu, structures=structures, name=label)
