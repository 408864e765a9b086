"""DICOM export: CT series, RT Structure Set, RT Dose and RT Ion Plan (proton PBS).

All objects written for one patient share the patient, study and frame of reference of the CT
(pass the :class:`~optimizer.dicom.CTInfo` returned by :func:`write_ct_series`, or
``load_ct_series(folder).info`` for an imported CT). UIDs come from
:func:`pydicom.uid.generate_uid`. Files are written as Explicit VR Little Endian with the DICOM
file meta header, each atomically (:func:`optimizer._files.atomic_write`: a reader never sees a
half-written file, a symlink at the target is never written through). Nothing is overwritten
unless ``overwrite=True``; of two concurrent writers to one path without it, exactly one succeeds
and the other gets :class:`FileExistsError`.

Text values are refused with :class:`DicomError` (naming the file and the attribute), never
silently changed, when DICOM would read them back differently: a backslash (the value
delimiter, it would make the value multi-valued), control characters, characters outside the
character set ISO_IR 100 (Latin-1), or more characters than the attribute's VR allows (LO and
PN 64, SH 16). CT numbers are stored within :data:`CT_HU_RANGE` (see :func:`write_ct_series`).

Typical use::

    info = write_ct_series(patient, "out/ct")
    ss_uid = write_rtstruct(patient, "out/ct/RS.dcm", info)
    plan_uid = write_rt_ion_plan("out/RN.dcm", spots, beams, weights, patient, info,
                                 mu_per_weight=1.0, structure_set_uid=ss_uid)
    write_rtdose(dose_Gy, patient, "out/RD.dcm", info, referenced_plan_uid=plan_uid)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import unicodedata
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from ._files import atomic_write
from .dicom import (
    CT_IMAGE_STORAGE,
    RT_DOSE_STORAGE,
    RT_ION_PLAN_STORAGE,
    RT_STRUCTURE_SET_STORAGE,
    CTInfo,
    DicomError,
    _kind,
)
from .geometry import Grid, Patient

__all__ = ["write_ct_series", "write_rtstruct", "write_rtdose", "write_rt_ion_plan", "CT_HU_RANGE"]

#: CT numbers (HU) that :func:`write_ct_series` stores exactly (to the nearest HU); values
#: outside are clipped to this range with a warning. Air is -1000 HU, padding outside the
#: scanner's field of view -1024 to -3024 HU, and the densest metals on extended-scale CT stay
#: well below 55000 HU. The range is narrower than 65536 HU, so 16-bit integers with
#: RescaleSlope 1 always hold it.
CT_HU_RANGE = (-10000.0, 55000.0)
_CT_FILE_NAME = re.compile(r"CT_\d{4,}\.dcm")  # write_ct_series' own slice files
_CHARSET = "ISO_IR 100"  # SpecificCharacterSet of every file written: Latin-1
_MAX_CHARS = {"LO": 64, "SH": 16, "PN": 64, "CS": 16}

_PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])
_STUDY_COMPONENT_SOP = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (as TPSs reference a study)
_MANUFACTURER = "bioplan"
_SOFTWARE_VERSION = "0.1.0"
_ROLE_TO_TYPE = {"target": "PTV", "oar": "ORGAN", "other": ""}


# -- helpers ----------------------------------------------------------------------------------


def _ds(x: float) -> str:
    """A DS (decimal string, <= 16 characters) for a finite number."""
    x = float(x)
    if x == 0:
        return "0"
    return format_number_as_ds(x)


def _ds_list(values) -> list[str]:
    return [_ds(v) for v in np.asarray(values, dtype=float).ravel()]


def _check_target(path: Path, overwrite: bool) -> None:
    """Early, friendly refusal (the atomic write checks again when it publishes the file).

    A symlink counts as existing, dangling or not: it is never written through."""
    if path.is_dir() and not path.is_symlink():
        raise FileExistsError(f"{path}: is a folder, expected a file path")
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"{path}: exists; pass overwrite=True to replace it")


def _text(value, field: str, vr: str, where: str | os.PathLike) -> str:
    """``value`` as a DICOM text value of VR ``vr``, or DicomError naming ``where`` and ``field``.

    Refused, not changed: a backslash (the DICOM value delimiter), control characters (ESC
    included: the files are ISO_IR 100, without code extensions), characters ISO_IR 100 cannot
    encode, and more characters than the VR allows (PN: per component group).
    """
    s = str(value)
    if "\\" in s:
        raise DicomError(
            f"{where}: {field} {s!r} contains a backslash, the DICOM value delimiter (it would be read "
            f"back as {s.count(chr(92)) + 1} values); choose a name without it"
        )
    control = sorted({f"U+{ord(ch):04X}" for ch in s if unicodedata.category(ch) == "Cc"})
    if control:
        raise DicomError(f"{where}: {field} {s!r} contains control character(s) {', '.join(control)}; "
                         "choose a name without them")
    try:
        s.encode("latin-1")
    except UnicodeEncodeError:
        odd = "".join(sorted({ch for ch in s if ord(ch) > 255}))
        raise DicomError(f"{where}: {field} {s!r} has characters the character set {_CHARSET} (Latin-1) "
                         f"cannot encode: {odd!r}") from None
    limit = _MAX_CHARS[vr]
    if vr == "PN":
        groups = s.split("=")
        if len(groups) > 3 or any(len(g.split("^")) > 5 for g in groups):
            raise DicomError(f"{where}: {field} {s!r}: a person name has at most 3 '='-separated groups "
                             "of at most 5 '^'-separated components")
        longest = max(len(g) for g in groups)
        if longest > limit:
            raise DicomError(f"{where}: {field} {s!r} has {longest} characters in a component group; "
                             f"PN allows at most {limit}")
    elif len(s) > limit:
        raise DicomError(f"{where}: {field} {s!r} has {len(s)} characters; {vr} allows at most {limit}")
    return s


def _now() -> tuple[str, str]:
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _patient_fields(patient: Patient, ct_info: CTInfo | None, where) -> tuple[str, str, str]:
    """PatientName (PN), PatientID (LO) and StudyID (SH), checked (see :func:`_text`)."""
    name = str((ct_info.patient_name if ct_info and ct_info.patient_name else patient.name) or "bioplan")
    pid = (ct_info.patient_id if ct_info and ct_info.patient_id else patient.name) or "bioplan"
    study_id = (ct_info.study_id if ct_info and ct_info.study_id else "1")
    if "^" not in name and len(name) < _MAX_CHARS["PN"]:
        name += "^"  # family name component only
    return (_text(name, "PatientName", "PN", where), _text(pid, "PatientID", "LO", where),
            _text(study_id, "StudyID", "SH", where))


def _new_dataset(sop_class: str, sop_uid: str, modality: str, series_uid: str, series_number: int,
                 patient: Patient, ct_info: CTInfo | None, study_uid: str, frame_uid: str,
                 description: str, where: str | os.PathLike = "") -> FileDataset:
    """A file dataset with the Patient, General Study, series, Frame of Reference, General
    Equipment and SOP Common attributes filled in (``where``: the file, for error messages)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "BIOPLAN_010"
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    date, time = _now()
    name, pid, study_id = _patient_fields(patient, ct_info, where)
    # SOP Common
    ds.SpecificCharacterSet = _CHARSET
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    # General Study
    ds.StudyDate = date
    ds.StudyTime = time
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = _MANUFACTURER
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = description
    # Patient
    ds.PatientName = name
    ds.PatientID = pid
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.SoftwareVersions = _SOFTWARE_VERSION
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study_id
    ds.SeriesNumber = series_number
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    return ds


def _save(ds: FileDataset, path: Path, overwrite: bool) -> None:
    """Write ``ds`` to ``path`` atomically (:func:`optimizer._files.atomic_write`): never a
    half-written file, never through a symlink; without ``overwrite`` an existing name (also one
    created meanwhile by a concurrent writer) raises FileExistsError."""

    def write(f) -> None:
        if _PYDICOM_MAJOR >= 3:
            ds.save_as(f, enforce_file_format=True)
        else:  # pydicom 2.x
            ds.is_little_endian, ds.is_implicit_VR = True, False
            ds.save_as(f, write_like_original=False)

    atomic_write(path, write, overwrite)


def _check_ct_info(ct_info: CTInfo, grid: Grid, what: str) -> None:
    if not isinstance(ct_info, CTInfo):
        raise DicomError(f"{what}: ct_info must be the CTInfo of the CT series (write_ct_series result)")
    if len(ct_info.sop_instance_uids) != grid.shape[0]:
        raise DicomError(
            f"{what}: ct_info lists {len(ct_info.sop_instance_uids)} CT slices, the patient grid has "
            f"{grid.shape[0]}"
        )


def _referenced_frame_sequence(ct_info: CTInfo) -> DicomSequence:
    images = []
    for uid in ct_info.sop_instance_uids:
        img = Dataset()
        img.ReferencedSOPClassUID = CT_IMAGE_STORAGE
        img.ReferencedSOPInstanceUID = uid
        images.append(img)
    series = Dataset()
    series.SeriesInstanceUID = ct_info.series_instance_uid
    series.ContourImageSequence = DicomSequence(images)
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_COMPONENT_SOP
    study.ReferencedSOPInstanceUID = ct_info.study_instance_uid
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = ct_info.frame_of_reference_uid
    frame.RTReferencedStudySequence = DicomSequence([study])
    return DicomSequence([frame])


# -- CT -------------------------------------------------------------------------------------


def _ct_storage(hu: np.ndarray, where: Path) -> tuple[np.ndarray, float, float]:
    """Stored int16 values, RescaleSlope and RescaleIntercept for a CT in HU.

    Values outside :data:`CT_HU_RANGE` are clipped to it (with a warning giving their number);
    the rest are rounded to the nearest HU. The slope is 1; the intercept is 0 when the CT fits
    in [-32768, 32767] HU, else the CT minimum + 32768, so that int16 holds the data range.
    """
    hu = np.asarray(hu, dtype=float)
    if not np.all(np.isfinite(hu)):
        raise DicomError(f"{where}: ct_hu has {int((~np.isfinite(hu)).sum())} NaN or infinite values")
    lo, hi = CT_HU_RANGE
    outside = int(np.count_nonzero((hu < lo) | (hu > hi)))
    if outside:
        warnings.warn(
            f"{where}: {outside} CT voxel(s) outside the representable range [{lo:g}, {hi:g}] HU "
            f"(min {hu.min():g}, max {hu.max():g} HU) clipped to it",
            stacklevel=3,
        )
        hu = np.clip(hu, lo, hi)
    q = np.rint(hu)
    slope, intercept = 1.0, 0.0
    if q.size and (q.min() < -32768 or q.max() > 32767):
        intercept = float(q.min()) + 32768.0
    stored = q - intercept
    if stored.size and (stored.min() < -32768 or stored.max() > 32767):  # cannot happen: range < 65536
        raise DicomError(f"{where}: CT range {q.min():g} to {q.max():g} HU does not fit 16 bits")
    stored = stored.astype("<i2")
    error = float(np.max(np.abs(stored * slope + intercept - hu))) if hu.size else 0.0
    if error > 1.0:
        raise DicomError(f"{where}: CT numbers would be stored {error:g} HU off; not written")
    return stored, slope, intercept


def _remove_stale_slices(folder: Path, keep: set[str]) -> None:
    """Remove CT images named like this writer's slices (CT_0000.dcm, ...) that the series just
    written does not include. Other files, and files that are not CT images, stay."""
    for p in sorted(folder.iterdir()):
        if p.name in keep or not _CT_FILE_NAME.fullmatch(p.name) or not (p.is_file() or p.is_symlink()):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                is_ct = _kind(pydicom.dcmread(p, stop_before_pixels=True)) == "CT"
        except Exception:  # not readable: not a CT image of ours
            is_ct = False
        if not is_ct:
            warnings.warn(f"{p}: named like a CT slice but not a readable CT image; left in place "
                          "(the folder will not load while it is there)", stacklevel=3)
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)  # a symlink is removed, its target never


def write_ct_series(patient: Patient, folder: str | os.PathLike, overwrite: bool = False) -> CTInfo:
    """Write the patient's CT as a DICOM CT Image series, one file per slice.

    Files are ``CT_0000.dcm``, ``CT_0001.dcm``, ... (slice ``z`` index). HU are stored as signed
    16-bit integers with ``RescaleSlope`` 1, i.e. rounded to the nearest HU (read back within
    0.5 HU). The representable range is :data:`CT_HU_RANGE`, [-10000, 55000] HU: values outside
    it are clipped to it, with a warning giving their number. ``RescaleIntercept`` is 0 when the
    CT fits in [-32768, 32767] HU, else the CT minimum + 32768.

    With ``overwrite=True`` the folder's earlier series is replaced as a whole: after the new
    slices are written, the CT images named ``CT_<number>.dcm`` that are not part of the new
    series are removed (a shorter series leaves no stale slice behind; files named otherwise, and
    files that are not CT images, are left alone). Without it, an existing slice file raises
    FileExistsError before anything is written, and a slice file created meanwhile by another
    writer raises it with the slices written so far removed again.

    Returns
    -------
    CTInfo
        The new study, series and frame-of-reference UIDs and the per-slice SOP Instance UIDs,
        to pass to the other writers.
    """
    if not isinstance(patient, Patient):
        raise DicomError("patient: expected a bioplan Patient")
    folder = Path(folder)
    grid = patient.grid
    nz, ny, nx = grid.shape
    paths = [folder / f"CT_{k:04d}.dcm" for k in range(nz)]
    for p in paths:
        _check_target(p, overwrite)
    _patient_fields(patient, None, folder)  # refuse names DICOM would change before writing anything
    stored, slope, intercept = _ct_storage(patient.ct_hu, folder)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    sop_uids = [generate_uid() for _ in range(nz)]
    zs, _, _ = grid.axes_mm()
    dz, dy, dx = grid.spacing_mm
    oz, oy, ox = grid.origin_mm
    info = CTInfo(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        frame_of_reference_uid=frame_uid,
        sop_instance_uids=tuple(sop_uids),
        slice_z_mm=tuple(float(z) for z in zs),
        patient_name=str(patient.name),
        patient_id=str(patient.name),
        study_id="1",
    )
    written: list[Path] = []
    try:
        for k in range(nz):
            ds = _new_dataset(CT_IMAGE_STORAGE, sop_uids[k], "CT", series_uid, 1, patient, info,
                              study_uid, frame_uid, "bioplan CT", paths[k])
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.PatientPosition = "HFS"
            ds.Laterality = ""
            ds.ManufacturerModelName = "bioplan"
            ds.InstanceNumber = k + 1
            ds.AcquisitionNumber = 1
            ds.ContentDate, ds.ContentTime = ds.StudyDate, ds.StudyTime
            ds.KVP = ""
            ds.SliceThickness = _ds(dz)
            ds.ImagePositionPatient = _ds_list([ox, oy, zs[k]])
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.SliceLocation = _ds(zs[k])
            ds.PixelSpacing = _ds_list([dy, dx])
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = ny, nx
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.PixelRepresentation = 1
            ds.RescaleIntercept = _ds(intercept)
            ds.RescaleSlope = _ds(slope)
            ds.RescaleType = "HU"
            ds.WindowCenter, ds.WindowWidth = "40", "400"
            ds.PixelData = stored[k].tobytes()
            _save(ds, paths[k], overwrite)
            written.append(paths[k])
    except BaseException:
        if not overwrite:  # no half series of ours left behind
            for p in written:
                with contextlib.suppress(OSError):
                    p.unlink()
        raise
    if overwrite:
        _remove_stale_slices(folder, {p.name for p in paths})
    return info


# -- RT Structure Set -------------------------------------------------------------------------


def _drop_collinear(pts: np.ndarray) -> np.ndarray:
    """Remove points lying on the straight segment between their neighbours (closed polygon)."""
    if len(pts) < 4:
        return pts
    prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    a, b = pts - prev, nxt - pts
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    keep = np.abs(cross) > 1e-9
    return pts[keep] if keep.sum() >= 3 else pts


def _slice_contours(mask2d: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> list[np.ndarray]:
    """Closed iso-0.5 contours (marching squares, contourpy) of a [y, x] mask, in (x, y) mm.

    The mask is padded with a ring of zeros so every contour closes. Contour vertices lie half
    way between voxel centres, so re-filling with the even-odd rule reproduces the mask exactly.
    """
    import contourpy

    padded = np.pad(mask2d.astype(np.float64), 1)
    dx = xs[1] - xs[0] if xs.size > 1 else 1.0
    dy = ys[1] - ys[0] if ys.size > 1 else 1.0
    px = np.concatenate([[xs[0] - dx], xs, [xs[-1] + dx]])
    py = np.concatenate([[ys[0] - dy], ys, [ys[-1] + dy]])
    gen = contourpy.contour_generator(px, py, padded, line_type=contourpy.LineType.Separate)
    out = []
    for line in gen.lines(0.5):
        line = np.asarray(line, dtype=float)
        if len(line) > 1 and np.allclose(line[0], line[-1]):
            line = line[:-1]
        line = _drop_collinear(line)
        if len(line) >= 3:
            out.append(line)
    return out


def write_rtstruct(patient: Patient, path: str | os.PathLike, ct_info: CTInfo,
                   structure_names: Sequence[str] | None = None, overwrite: bool = False) -> str:
    """Write structures as an RT Structure Set referencing the CT series of ``ct_info``.

    Each structure's mask is contoured slice by slice with marching squares at the 0.5 level
    (voxel-centre inclusion; holes become separate inner contours, to be filled even-odd),
    coordinates in LPS mm. ``RTROIInterpretedType`` is PTV for role "target", ORGAN for "oar" and
    empty for "other".

    Parameters
    ----------
    structure_names : the structures to write (default: all), looked up like ``patient.structure``.

    Returns
    -------
    str : the SOP Instance UID of the structure set (for ``write_rt_ion_plan``).
    """
    path = Path(path)
    _check_target(path, overwrite)
    grid = patient.grid
    _check_ct_info(ct_info, grid, "write_rtstruct")
    names = patient.structure_names if structure_names is None else list(structure_names)
    structures = [patient.structure(n) for n in names]
    roi_names = [_text(s.name, "ROIName", "LO", path) for s in structures]
    sop_uid = generate_uid()
    ds = _new_dataset(RT_STRUCTURE_SET_STORAGE, sop_uid, "RTSTRUCT", generate_uid(), 2, patient, ct_info,
                      ct_info.study_instance_uid, ct_info.frame_of_reference_uid, "bioplan structures",
                      path)
    ds.OperatorsName = ""
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "bioplan"
    ds.StructureSetDate, ds.StructureSetTime = ds.StudyDate, ds.StudyTime
    ds.ReferencedFrameOfReferenceSequence = _referenced_frame_sequence(ct_info)
    zs, ys, xs = grid.axes_mm()
    rois, contours, observations = [], [], []
    palette = [(1.0, 0.0, 0.0), (0.0, 0.6, 1.0), (0.0, 0.8, 0.0), (1.0, 0.8, 0.0), (0.8, 0.0, 0.8)]
    for number, s in enumerate(structures, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = ct_info.frame_of_reference_uid
        roi.ROIName = roi_names[number - 1]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        rois.append(roi)
        items = []
        for k in np.flatnonzero(s.mask.any(axis=(1, 2))):
            for poly in _slice_contours(s.mask[k], xs, ys):
                c = Dataset()
                img = Dataset()
                img.ReferencedSOPClassUID = CT_IMAGE_STORAGE
                img.ReferencedSOPInstanceUID = ct_info.sop_instance_uids[k]
                c.ContourImageSequence = DicomSequence([img])
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(poly)
                c.ContourNumber = len(items) + 1
                xyz = np.column_stack([poly, np.full(len(poly), zs[k])])
                c.ContourData = [_ds(round(v, 4)) for v in xyz.ravel()]
                items.append(c)
        rc = Dataset()
        color = s.color if s.color is not None else palette[(number - 1) % len(palette)]
        rc.ROIDisplayColor = [int(round(255 * min(max(float(v), 0.0), 1.0))) for v in color]
        rc.ContourSequence = DicomSequence(items)
        rc.ReferencedROINumber = number
        contours.append(rc)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = _ROLE_TO_TYPE.get(s.role, "")
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    ds.ApprovalStatus = "UNAPPROVED"
    _save(ds, path, overwrite)
    return sop_uid


# -- RT Dose --------------------------------------------------------------------------------


def write_rtdose(dose_Gy: np.ndarray, patient: Patient, path: str | os.PathLike, ct_info: CTInfo,
                 overwrite: bool = False, referenced_plan_uid: str | None = None,
                 grid: Grid | None = None) -> str:
    """Write a physical dose distribution (Gy, ``[z, y, x]``) as an RT Dose.

    DoseUnits GY, DoseType PHYSICAL, DoseSummationType PLAN; 32-bit unsigned PixelData with
    ``DoseGridScaling`` = max dose / (2^32 - 1) (rounded to a decimal string), so every voxel is
    reproduced within DoseGridScaling / 2. Frames follow the grid's z, ``GridFrameOffsetVector``
    relative to the first frame.

    Parameters
    ----------
    dose_Gy : finite, non-negative, shape ``grid.shape``.
    grid : the dose grid; default ``patient.grid``. It must be axial; its frame of reference is
        the CT's.
    referenced_plan_uid : SOP Instance UID of the plan this dose belongs to (see
        :func:`write_rt_ion_plan`). The RT Dose IOD requires a plan reference for summation type
        PLAN; when omitted a new UID is generated and referenced, so pass it as
        ``sop_instance_uid`` when the plan is written later.

    Returns
    -------
    str : the SOP Instance UID of the dose.
    """
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
    scaling = float(_ds(max_dose / 4294967295.0)) if max_dose > 0 else 1.0
    while max_dose / scaling > 4294967295.0:  # the decimal string rounded down
        scaling = float(_ds(scaling * (1 + 1e-9)))
    stored = np.clip(np.rint(dose / scaling), 0, 4294967295).astype("<u4")
    sop_uid = generate_uid()
    plan_uid = referenced_plan_uid or generate_uid()
    ds = _new_dataset(RT_DOSE_STORAGE, sop_uid, "RTDOSE", generate_uid(), 3, patient, ct_info,
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
    ds.FrameIncrementPointer = Tag(0x3004, 0x000C)
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
    plan.ReferencedSOPClassUID = RT_ION_PLAN_STORAGE
    plan.ReferencedSOPInstanceUID = plan_uid
    ds.ReferencedRTPlanSequence = DicomSequence([plan])
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_COMPONENT_SOP
    study.ReferencedSOPInstanceUID = ct_info.study_instance_uid
    ds.ReferencedStudySequence = DicomSequence([study])
    ds.PixelData = stored.tobytes()
    _save(ds, path, overwrite)
    return sop_uid


# -- RT Ion Plan ----------------------------------------------------------------------------

_SPOT_KEYS = ("beam", "layer", "energy_MeV", "u_mm", "v_mm")
_BEAM_KEYS = ("gantry_deg", "couch_deg", "isocenter_mm")


def _validate_spots(spots: Mapping, weights, beams: Sequence[Mapping]) -> dict[str, np.ndarray]:
    if not isinstance(spots, Mapping):
        raise DicomError(f"spots: expected a dict of arrays with keys {_SPOT_KEYS}")
    missing = [k for k in _SPOT_KEYS if k not in spots]
    if missing:
        raise DicomError(f"spots: missing key(s) {missing}; expected {_SPOT_KEYS}")
    out = {k: np.asarray(spots[k]).ravel() for k in _SPOT_KEYS}
    n = out["beam"].size
    for k, v in out.items():
        if v.size != n:
            raise DicomError(f"spots['{k}']: {v.size} values, spots['beam'] has {n}")
    w = np.asarray(weights, dtype=float).ravel()
    if w.size != n:
        raise DicomError(f"weights: {w.size} values for {n} spots")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise DicomError("weights: expected finite, non-negative spot weights")
    out["weight"] = w
    for k in ("energy_MeV", "u_mm", "v_mm"):
        out[k] = out[k].astype(float)
        if not np.all(np.isfinite(out[k])):
            raise DicomError(f"spots['{k}']: contains NaN or infinite values")
    if np.any(out["energy_MeV"] <= 0):
        raise DicomError("spots['energy_MeV']: energies must be positive (MeV)")
    for k in ("beam", "layer"):
        if not np.all(np.equal(np.mod(out[k].astype(float), 1), 0)):
            raise DicomError(f"spots['{k}']: expected integer indices")
        out[k] = out[k].astype(np.int64)
    if n and (out["beam"].min() < 0 or out["beam"].max() >= len(beams)):
        raise DicomError(f"spots['beam']: indices must be in 0..{len(beams) - 1} (len(beams))")
    for i, b in enumerate(beams):
        miss = [k for k in _BEAM_KEYS if k not in b]
        if miss:
            raise DicomError(f"beams[{i}]: missing key(s) {miss}; expected {_BEAM_KEYS}")
        iso = np.asarray(b["isocenter_mm"], dtype=float).ravel()
        if iso.size != 3 or not np.all(np.isfinite(iso)):
            raise DicomError(f"beams[{i}]['isocenter_mm']: expected 3 finite numbers (x, y, z) LPS mm")
        for k in ("gantry_deg", "couch_deg"):
            if not np.isfinite(float(b[k])):
                raise DicomError(f"beams[{i}]['{k}']: expected a finite angle in degrees")
    return out


def _angle(deg: float) -> str:
    return _ds(float(deg) % 360.0)


def write_rt_ion_plan(path: str | os.PathLike, spots: Mapping[str, np.ndarray], beams: Sequence[Mapping],
                      weights: np.ndarray, patient: Patient, ct_info: CTInfo,
                      mu_per_weight: float = 1.0, fractions: int = 1, overwrite: bool = False,
                      structure_set_uid: str | None = None, sop_instance_uid: str | None = None,
                      plan_label: str = "bioplan", machine_name: str = "bioplan",
                      spot_tune_id: str = "1.0") -> str:
    """Write a proton pencil-beam-scanning plan as an RT Ion Plan (RadiationType PROTON,
    ScanMode MODULATED).

    MU calibration: one unit of spot weight (the optimizer's beamlet weight, i.e. per fraction)
    is ``mu_per_weight`` monitor units. ``ScanSpotMetersetWeights`` hold the weights themselves,
    ``FinalCumulativeMetersetWeight`` is their sum per beam and ``BeamMeterset`` (per fraction,
    MU) is that sum times ``mu_per_weight``, so a spot receives ``weight * mu_per_weight`` MU.
    The default 1.0 means the weights are already MU; a real machine needs its own commissioned
    factor (e.g. from absolute dosimetry of a reference field). The calibration is also written to
    RTPlanDescription.

    Each energy layer is a pair of control points: the first carries the energy, the spot
    positions (``ScanSpotPositionMap``, (u, v) pairs in mm in the isocentre plane, beam's-eye
    view / IEC gantry X, Y) and the weights, with ``CumulativeMetersetWeight`` before the layer;
    the second repeats energy and positions with zero weights and the cumulative weight after
    the layer. Layers are written in ascending ``layer`` index; spots with zero weight are
    dropped, and beams without any positive weight are omitted with a warning.

    Parameters
    ----------
    spots : dict of equal-length arrays: ``beam`` (int, index into ``beams``), ``layer`` (int),
        ``energy_MeV`` (nominal energy, constant within a layer), ``u_mm``, ``v_mm``.
    beams : list of dicts with ``gantry_deg``, ``couch_deg`` (IEC 61217) and ``isocenter_mm``
        (x, y, z LPS mm); optional ``name``.
    weights : spot weights (>= 0), same length as the spot arrays.
    mu_per_weight : MU per unit weight (see above).
    fractions : NumberOfFractionsPlanned.
    structure_set_uid : SOP Instance UID of the RT Structure Set (from :func:`write_rtstruct`);
        with it RTPlanGeometry is PATIENT and the structure set is referenced, without it
        TREATMENT_DEVICE.
    sop_instance_uid : the plan's UID, e.g. one an RT Dose already references; default new.

    Returns
    -------
    str : the plan's SOP Instance UID.
    """
    path = Path(path)
    _check_target(path, overwrite)
    _check_ct_info(ct_info, patient.grid, "write_rt_ion_plan")
    if not (np.isfinite(mu_per_weight) and mu_per_weight > 0):
        raise DicomError(
            f"mu_per_weight: expected a positive number of MU per unit weight, got {mu_per_weight}"
        )
    if int(fractions) < 1:
        raise DicomError(f"fractions: expected a positive integer, got {fractions}")
    beams = list(beams)
    if not beams:
        raise DicomError("beams: expected at least one beam")
    sp = _validate_spots(spots, weights, beams)
    label = _text(plan_label, "RTPlanLabel", "SH", path)
    _text(plan_label, "RTPlanName", "LO", path)
    machine = _text(machine_name, "TreatmentMachineName", "SH", path)
    tune_id = _text(spot_tune_id, "ScanSpotTuneID", "SH", path)
    keep = sp["weight"] > 0
    sp = {k: v[keep] for k, v in sp.items()}
    sop_uid = sop_instance_uid or generate_uid()
    ds = _new_dataset(RT_ION_PLAN_STORAGE, sop_uid, "RTPLAN", generate_uid(), 4, patient, ct_info,
                      ct_info.study_instance_uid, ct_info.frame_of_reference_uid, "bioplan proton plan",
                      path)
    ds.OperatorsName = ""
    ds.InstanceNumber = 1
    ds.RTPlanLabel = label
    ds.RTPlanName = label
    ds.RTPlanDescription = (
        f"bioplan proton PBS plan. MU calibration: {mu_per_weight:g} MU per unit optimizer spot weight "
        "(per fraction); ScanSpotMetersetWeights are the spot weights, "
        "BeamMeterset = FinalCumulativeMetersetWeight x MU per weight."
    )
    ds.RTPlanDate, ds.RTPlanTime = ds.StudyDate, ds.StudyTime
    if structure_set_uid:
        ds.RTPlanGeometry = "PATIENT"
        ref = Dataset()
        ref.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
        ref.ReferencedSOPInstanceUID = structure_set_uid
        ds.ReferencedStructureSetSequence = DicomSequence([ref])
    else:
        ds.RTPlanGeometry = "TREATMENT_DEVICE"
    setup = Dataset()
    setup.PatientSetupNumber = 1
    setup.PatientPosition = "HFS"
    ds.PatientSetupSequence = DicomSequence([setup])
    ion_beams, ref_beams = [], []
    for b_index, b in enumerate(beams):
        sel = np.flatnonzero(sp["beam"] == b_index)
        if sel.size == 0:
            warnings.warn(f"write_rt_ion_plan: beam {b_index} has no spot with positive weight; omitted",
                          stacklevel=2)
            continue
        number = len(ion_beams) + 1
        layers = np.unique(sp["layer"][sel])
        total = float(sp["weight"][sel].sum())
        iso = _ds_list(np.asarray(b["isocenter_mm"], dtype=float).ravel())
        cps, cumulative = [], 0.0
        for layer in layers:
            ls = sel[sp["layer"][sel] == layer]
            energies = sp["energy_MeV"][ls]
            if np.ptp(energies) > 1e-6:
                raise DicomError(
                    f"spots: beam {b_index} layer {layer} mixes energies {sorted(set(energies.tolist()))} MeV"
                )
            pos = np.column_stack([sp["u_mm"][ls], sp["v_mm"][ls]]).astype(np.float32).ravel()
            w = sp["weight"][ls]
            for half in (0, 1):
                cp = Dataset()
                cp.ControlPointIndex = len(cps)
                cp.NominalBeamEnergy = _ds(energies[0])
                if not cps:
                    cp.GantryAngle = _angle(b["gantry_deg"])
                    cp.GantryRotationDirection = "NONE"
                    cp.BeamLimitingDeviceAngle = "0"
                    cp.BeamLimitingDeviceRotationDirection = "NONE"
                    cp.PatientSupportAngle = _angle(b["couch_deg"])
                    cp.PatientSupportRotationDirection = "NONE"
                    cp.TableTopPitchAngle = 0.0
                    cp.TableTopPitchRotationDirection = "NONE"
                    cp.TableTopRollAngle = 0.0
                    cp.TableTopRollRotationDirection = "NONE"
                    cp.IsocenterPosition = iso
                    cp.SnoutPosition = 0.0
                    cp.MetersetRate = 0.0
                cp.CumulativeMetersetWeight = _ds(cumulative if half == 0 else cumulative + w.sum())
                cp.ScanSpotTuneID = tune_id
                cp.NumberOfScanSpotPositions = int(ls.size)
                cp.ScanSpotPositionMap = pos.tolist()
                cp_w = w if half == 0 else np.zeros_like(w)
                cp.ScanSpotMetersetWeights = cp_w.astype(np.float32).tolist()
                cp.NumberOfPaintings = 1
                cps.append(cp)
            cumulative += float(w.sum())
        ib = Dataset()
        ib.BeamNumber = number
        ib.BeamName = _text(b.get("name", f"B{number}"), f"BeamName (beams[{b_index}])", "LO", path)
        ib.BeamDescription = (
            f"gantry {float(b['gantry_deg']) % 360:g} deg, couch {float(b['couch_deg']) % 360:g} deg, "
            f"{mu_per_weight:g} MU per unit weight"
        )
        ib.BeamType = "STATIC"
        ib.RadiationType = "PROTON"
        ib.TreatmentMachineName = machine
        ib.Manufacturer = _MANUFACTURER
        ib.PrimaryDosimeterUnit = "MU"
        ib.TreatmentDeliveryType = "TREATMENT"
        ib.NumberOfWedges = 0
        ib.NumberOfCompensators = 0
        ib.NumberOfBoli = 0
        ib.NumberOfBlocks = 0
        ib.NumberOfRangeShifters = 0
        ib.NumberOfLateralSpreadingDevices = 0
        ib.NumberOfRangeModulators = 0
        ib.PatientSupportType = "TABLE"
        ib.ReferencedPatientSetupNumber = 1
        ib.ScanMode = "MODULATED"
        ib.ModulatedScanModeType = "STATIONARY"  # beam off while moving between spots
        ib.VirtualSourceAxisDistances = [2000.0, 2000.0]
        ib.FinalCumulativeMetersetWeight = _ds(total)
        ib.NumberOfControlPoints = len(cps)
        ib.IonControlPointSequence = DicomSequence(cps)
        ion_beams.append(ib)
        rb = Dataset()
        rb.ReferencedBeamNumber = number
        rb.BeamMeterset = _ds(total * mu_per_weight)
        ref_beams.append(rb)
    if not ion_beams:
        raise DicomError("weights: no spot has a positive weight; nothing to write")
    fg = Dataset()
    fg.FractionGroupNumber = 1
    fg.NumberOfFractionsPlanned = int(fractions)
    fg.NumberOfBeams = len(ion_beams)
    fg.NumberOfBrachyApplicationSetups = 0
    fg.ReferencedBeamSequence = DicomSequence(ref_beams)
    ds.FractionGroupSequence = DicomSequence([fg])
    ds.IonBeamSequence = DicomSequence(ion_beams)
    ds.ApprovalStatus = "UNAPPROVED"
    _save(ds, path, overwrite)
    return sop_uid
