"""RT Dose: :func:`load_rtdose` reads an axial dose grid, :func:`write_rtdose` writes a plan's
(or any) total physical dose of the course, Gy, ``[z, y, x]``."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import overload

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import RTDoseStorage, RTIonPlanStorage, RTPlanStorage, generate_uid

from ..geometry import Grid, Patient
from ..plan import Plan
from ._dicom_common import (
    _ORIENTATION_TOL,
    _SPACING_REL_TOL,
    AXIAL_ORIENTATION,
    CTInfo,
    DicomError,
    _floats,
    _int,
    _kind,
    _read_dataset,
)
from ._dicom_write import (
    _call_form,
    _check_ct_info,
    _check_target,
    _ds,
    _ds_list,
    _new_dataset,
    _save,
    _study_reference,
)

__all__ = ["load_rtdose", "write_rtdose"]

_MAX_STORED = 4294967295.0  # 2^32 - 1: 32-bit unsigned PixelData
#: the smallest maximum dose (Gy) written: below it DoseGridScaling = max / _MAX_STORED is subnormal
_MIN_MAX_DOSE_GY = 1e-290
#: The SOP class of the plan an RT Dose references, by plan modality: RT Plan for photons, RT Ion
#: Plan for protons (and other ions).
_PLAN_CLASS = {"photon": RTPlanStorage, "proton": RTIonPlanStorage}


def _plan_class(modality) -> str:
    if modality not in _PLAN_CLASS:
        raise DicomError(f"plan_modality: expected one of {tuple(_PLAN_CLASS)} (the plan the dose belongs "
                         f"to: RT Plan for photons, RT Ion Plan for protons), got {modality!r}")
    return _PLAN_CLASS[modality]


def load_rtdose(path: str | os.PathLike) -> tuple[np.ndarray, Grid]:
    """Read an axial RT Dose grid.

    Returns
    -------
    dose : float64 ``[z, y, x]`` in the file's DoseUnits (Gy, or relative when RELATIVE), i.e.
        stored values times DoseGridScaling. DoseUnits other than GY and a DoseType other than
        PHYSICAL (EFFECTIVE: RBE-weighted; ERROR) give a warning naming them.
    grid : the dose grid (origin = centre of the first voxel, LPS mm).
    """
    path = str(path)
    ds = _read_dataset(path)
    try:
        if _kind(ds) != "RTDOSE":
            raise DicomError(f"{path}: not an RT Dose (SOP class / modality {_kind(ds)})")
        orientation = _floats(ds, "ImageOrientationPatient", 6, path)
        if np.max(np.abs(orientation - AXIAL_ORIENTATION)) > _ORIENTATION_TOL:
            raise DicomError(f"{path}: ImageOrientationPatient {list(orientation)} is not axial")
        position = _floats(ds, "ImagePositionPatient", 3, path)
        spacing = _floats(ds, "PixelSpacing", 2, path)
        frames = _int(ds, "NumberOfFrames", path, 1)
        offsets = _floats(ds, "GridFrameOffsetVector", frames, path) if frames > 1 else np.zeros(1)
        if offsets[0] != 0.0:  # absolute z positions (allowed by the standard when first == IPP z)
            offsets = offsets - position[2]
        if frames > 1:
            d = np.diff(offsets)
            dz = float(np.median(d))
            if dz <= 0 or np.any(np.abs(d - dz) > _SPACING_REL_TOL * abs(dz)):
                raise DicomError(f"{path}: GridFrameOffsetVector is not uniformly increasing")
        else:
            dz = float(ds.get("SliceThickness", 0) or 0) or 1.0
        scaling = float(_floats(ds, "DoseGridScaling", 1, path)[0])
        arr = np.asarray(ds.pixel_array, dtype=float).reshape(frames, _int(ds, "Rows", path),
                                                              _int(ds, "Columns", path))
        grid = Grid(shape=arr.shape, spacing_mm=(dz, float(spacing[0]), float(spacing[1])),
                    origin_mm=(float(position[2]), float(position[1]), float(position[0])))
        units = str(ds.get("DoseUnits", "") or "").strip().upper()
        kind = str(ds.get("DoseType", "") or "").strip().upper()
        if units != "GY":  # the caller gets bare numbers: say what they are
            warnings.warn(f"{path}: DoseUnits {units or 'missing'!r}: the values are not in Gy "
                          f"(RELATIVE: relative to an unstated reference)", UserWarning, stacklevel=2)
        if kind not in ("", "PHYSICAL"):
            warnings.warn(f"{path}: DoseType {kind!r}: not physical dose (EFFECTIVE: RBE-weighted, Gy(RBE); "
                          f"ERROR: a dose difference)", UserWarning, stacklevel=2)
        return arr * scaling, grid
    except DicomError:
        raise
    except Exception as exc:
        raise DicomError(f"{path}: cannot read RT Dose ({type(exc).__name__}: {exc})") from exc


@overload
def write_rtdose(plan: Plan, path: str | os.PathLike, ct_info: CTInfo, *, overwrite: bool = False,
                 referenced_plan_uid: str | None = None) -> str: ...


@overload
def write_rtdose(dose_Gy: np.ndarray, patient: Patient, path: str | os.PathLike, ct_info: CTInfo,
                 overwrite: bool = False, referenced_plan_uid: str | None = None,
                 grid: Grid | None = None, *, plan_modality: str = "photon") -> str: ...


def write_rtdose(*args, **kwargs) -> str:
    """Write a physical dose distribution (Gy, ``[z, y, x]``) as an RT Dose.

    Two call forms::

        write_rtdose(plan, path, ct_info, *, overwrite=False, referenced_plan_uid=None)
        write_rtdose(dose_Gy, patient, path, ct_info, overwrite=False, referenced_plan_uid=None,
                     grid=None, *, plan_modality="photon")

    The first writes ``plan.dose`` (an :class:`~optimizer.plan.Plan`'s total dose of the course)
    on ``plan.patient``'s grid; the second any dose array.

    DoseUnits GY, DoseType PHYSICAL, DoseSummationType PLAN; 32-bit unsigned PixelData with
    ``DoseGridScaling`` = max dose / (2^32 - 1) (rounded to a decimal string), so every voxel is
    reproduced within DoseGridScaling / 2. Frames follow the grid's z, ``GridFrameOffsetVector``
    relative to the first frame.

    Parameters
    ----------
    plan : a solved plan; its ``dose`` and ``patient`` are written.
    dose_Gy : finite, non-negative, shape ``grid.shape``.
    patient : the patient of the CT series of ``ct_info``.
    path : the file to write; an existing file is replaced only with ``overwrite=True``.
    ct_info : the CT series' identifiers (:func:`~optimizer.io.write_ct_series` or
        ``load_ct_series(folder).info``).
    grid : the dose grid; default ``patient.grid``. It must be axial; its frame of reference is
        the CT's.
    referenced_plan_uid : SOP Instance UID of the plan this dose belongs to (see
        :func:`~optimizer.io.rtplan_photon.write_rt_plan` for photons,
        :func:`~optimizer.io.write_rt_ion_plan` for protons). It is referenced with the SOP class
        of that plan: RT Plan for a photon plan, RT Ion Plan for a proton plan (the Plan's
        ``modality``; with a dose array, ``plan_modality``, "photon" or "proton"). The RT Dose
        IOD requires a plan reference for summation type PLAN; when omitted a new UID is
        generated and referenced, so pass it as ``sop_instance_uid`` when the plan is written
        later.

    Returns
    -------
    str : the SOP Instance UID of the dose.
    """
    return _call_form("write_rtdose", _rtdose_of_plan, _rtdose_of_array, 0, args, kwargs)(*args, **kwargs)


def _rtdose_of_plan(plan: Plan, path: str | os.PathLike, ct_info: CTInfo, *, overwrite: bool = False,
                    referenced_plan_uid: str | None = None) -> str:
    # protons (and other ion plans) are RT Ion Plans; photon plans RT Plans
    modality = "proton" if str(plan.modality).lower() in ("proton", "ion", "carbon", "helium") else "photon"
    if isinstance(ct_info, CTInfo) and len(ct_info.sop_instance_uids) != plan.patient.grid.shape[0]:
        raise DicomError(
            f"write_rtdose: ct_info lists {len(ct_info.sop_instance_uids)} CT slices, the plan's grid has "
            f"{plan.patient.grid.shape[0]} (a plan on a dose grid?): write plan.on_patient(ct_patient) for "
            f"its dose on the CT grid, or write_rtdose(plan.dose, ct_patient, path, ct_info, "
            f"grid=plan.patient.grid) for the dose grid itself")
    return _rtdose_of_array(plan.dose, plan.patient, path, ct_info, overwrite, referenced_plan_uid,
                            plan_modality=modality)


def _rtdose_of_array(dose_Gy: np.ndarray, patient: Patient, path: str | os.PathLike, ct_info: CTInfo,
                     overwrite: bool = False, referenced_plan_uid: str | None = None,
                     grid: Grid | None = None, *, plan_modality: str = "photon") -> str:
    plan_class = _plan_class(plan_modality)
    path = Path(path)
    _check_target(path, overwrite)
    grid = patient.grid if grid is None else grid
    _check_ct_info(ct_info, patient.grid, "write_rtdose")
    dose = np.asarray(dose_Gy, dtype=float)
    if dose.shape != grid.shape:
        raise DicomError(f"dose_Gy: shape {dose.shape} does not match the dose grid shape {grid.shape}")
    if not np.all(np.isfinite(dose)):
        raise DicomError("dose_Gy: contains NaN or infinite values")
    if np.any(dose < 0):
        raise DicomError(f"dose_Gy: contains negative doses (min {dose.min():g} Gy)")
    max_dose = float(dose.max())
    if 0 < max_dose < _MIN_MAX_DOSE_GY:  # the scaling would be subnormal: the loop below never ended
        raise DicomError(f"dose_Gy: maximum {max_dose:g} Gy is below {_MIN_MAX_DOSE_GY:g} Gy, too small for "
                         f"DoseGridScaling; write zeros (np.zeros_like) or the dose in other units")
    scaling = float(_ds(max_dose / _MAX_STORED)) if max_dose > 0 else 1.0
    while max_dose / scaling > _MAX_STORED:  # the decimal string rounded down
        scaling = float(_ds(scaling * (1 + 1e-9)))
    stored = np.clip(np.rint(dose / scaling), 0, _MAX_STORED).astype("<u4")
    sop_uid = generate_uid()
    ds = _new_dataset(RTDoseStorage, sop_uid, "RTDOSE", generate_uid(), 3, patient, ct_info,
                      ct_info.study_instance_uid, ct_info.frame_of_reference_uid, "bioplan dose", path)
    ds.OperatorsName = ""
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = ds.StudyDate, ds.StudyTime
    nz, ny, nx = grid.shape
    dz, dy, dx = grid.spacing_mm
    oz, oy, ox = grid.origin_mm
    ds.SliceThickness = _ds(dz)
    ds.ImagePositionPatient = _ds_list([ox, oy, oz])
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = _ds_list([dy, dx])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = nz
    ds.FrameIncrementPointer = Tag(0x3004, 0x000C)  # GridFrameOffsetVector
    ds.Rows, ds.Columns = ny, nx
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = "PLAN"
    ds.DoseComment = "bioplan total physical dose of the course"
    ds.GridFrameOffsetVector = _ds_list(np.arange(nz) * dz)
    ds.DoseGridScaling = _ds(scaling)
    plan = Dataset()
    plan.ReferencedSOPClassUID = plan_class
    plan.ReferencedSOPInstanceUID = referenced_plan_uid or generate_uid()
    ds.ReferencedRTPlanSequence = DicomSequence([plan])
    ds.ReferencedStudySequence = DicomSequence([_study_reference(ct_info)])
    ds.PixelData = stored.tobytes()
    _save(ds, path, overwrite)
    return sop_uid
