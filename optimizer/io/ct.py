"""CT Image series: :func:`load_ct_series` reads an axial series from a folder,
:func:`write_ct_series` writes a patient's CT as one file per slice.

Only axial images (``ImageOrientationPatient`` = [1, 0, 0, 0, 1, 0]) are read. The beam geometry
places IEC gantry angles for a head-first supine patient: a ``PatientPosition`` other than HFS (or
none given) loads with a warning, as beams on it would be mirrored or turned. Positions are in the
DICOM patient coordinate system (LPS, mm) and arrays are ``[z, y, x]``.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, CTImageStorage, ImplicitVRLittleEndian, generate_uid

from ..geometry import Grid, Patient
from ._dicom_common import (
    _ORIENTATION_TOL,
    _POSITION_TOL_MM,
    _SPACING_REL_TOL,
    AXIAL_ORIENTATION,
    CTInfo,
    DicomError,
    _floats,
    _int,
    _kind,
    _scan_folder,
)
from ._dicom_write import _check_target, _ds, _ds_list, _new_dataset, _patient_fields, _save

__all__ = ["CTSeries", "CT_HU_RANGE", "load_ct_series", "write_ct_series"]

#: CT numbers (HU) that :func:`write_ct_series` stores exactly (to the nearest HU); values
#: outside are clipped to this range with a warning. Air is -1000 HU, padding outside the
#: scanner's field of view -1024 to -3024 HU, and the densest metals on extended-scale CT stay
#: well below 55000 HU. The range is narrower than 65536 HU, so 16-bit integers with
#: RescaleSlope 1 always hold it.
CT_HU_RANGE = (-10000.0, 55000.0)
_CT_FILE_NAME = re.compile(r"CT_\d{4,}\.dcm")  # write_ct_series' own slice files


@dataclass
class CTSeries:
    """An imported CT series: grid, HU array ``[z, y, x]`` (float32) and identifiers."""

    grid: Grid
    ct_hu: np.ndarray
    info: CTInfo
    files: tuple[str, ...]


# -- reading ----------------------------------------------------------------------------------


def _pixels(ds: Dataset, path: str) -> np.ndarray:
    """Stored pixel values (rows, columns) of a single-frame monochrome image, as float64."""
    rows, cols = _int(ds, "Rows", path), _int(ds, "Columns", path)
    if rows < 1 or cols < 1:
        raise DicomError(f"{path}: Rows/Columns must be positive, got {rows} x {cols}")
    if _int(ds, "SamplesPerPixel", path, 1) != 1:
        raise DicomError(f"{path}: only single-sample (monochrome) images are supported")
    if _int(ds, "NumberOfFrames", path, 1) != 1:
        raise DicomError(f"{path}: multi-frame CT images are not supported")
    if "PixelData" not in ds:
        raise DicomError(f"{path}: no PixelData (file truncated?)")
    bits = _int(ds, "BitsAllocated", path)
    signed = _int(ds, "PixelRepresentation", path, 0) == 1
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    ts = UID(str(ts)) if ts else ImplicitVRLittleEndian
    if ts.is_compressed:
        try:
            arr = np.asarray(ds.pixel_array, dtype=float)
        except Exception as exc:
            raise DicomError(f"{path}: cannot decode compressed PixelData ({exc})") from exc
        if arr.shape != (rows, cols):
            raise DicomError(f"{path}: decoded PixelData has shape {arr.shape}, expected {(rows, cols)}")
        return arr
    if bits not in (8, 16, 32):
        raise DicomError(f"{path}: BitsAllocated {bits} not supported (8, 16 or 32)")
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits // 8}")
    dtype = dtype.newbyteorder(">" if not ts.is_little_endian else "<")
    data = ds.PixelData
    if not isinstance(data, (bytes, bytearray)):
        raise DicomError(f"{path}: PixelData is not a byte string")
    need = rows * cols * dtype.itemsize
    if len(data) < need:
        raise DicomError(
            f"{path}: PixelData has {len(data)} bytes, {rows} x {cols} x {bits} bits needs {need} "
            "(file truncated?)"
        )
    values = np.frombuffer(data, dtype=dtype, count=rows * cols).reshape(rows, cols)
    bits_stored = _int(ds, "BitsStored", path, bits)
    if 0 < bits_stored < bits:  # mask unused high bits, sign-extend when signed
        iv = values.astype(np.int64) & ((1 << bits_stored) - 1)
        if signed:
            iv = np.where(iv >= 1 << (bits_stored - 1), iv - (1 << bits_stored), iv)
        return iv.astype(float)
    return values.astype(float)


@dataclass
class _Slice:
    path: str
    position: np.ndarray  # (x, y, z) mm
    spacing: tuple[float, float]  # (row spacing dy, column spacing dx)
    shape: tuple[int, int]
    hu: np.ndarray
    series_uid: str
    frame_uid: str
    study_uid: str
    sop_uid: str
    thickness: float | None
    patient_name: str
    patient_id: str
    study_id: str


def _parse_ct_slice(ds: Dataset, path: str) -> _Slice:
    try:
        orientation = _floats(ds, "ImageOrientationPatient", 6, path)
        if np.max(np.abs(orientation - AXIAL_ORIENTATION)) > _ORIENTATION_TOL:
            raise DicomError(
                f"{path}: ImageOrientationPatient {list(np.round(orientation, 6))} is not axial "
                f"{list(AXIAL_ORIENTATION)}; only axial CT is supported"
            )
        patient_position = str(ds.get("PatientPosition", "") or "").strip().upper()
        if patient_position not in ("", "HFS"):
            # BeamGeometry puts gantry 90 deg at the patient's left (+x): true for HFS only (feet
            # first: the right; prone: gantry 0 is posterior). The image itself is right (LPS), so
            # it loads, but beams planned on it are placed as for HFS: said, not silent.
            warnings.warn(
                f"CT PatientPosition {patient_position!r}: the CT loads in patient coordinates, but "
                f"beam gantry angles are placed for head-first supine (HFS): for this position they "
                f"are mirrored or turned against the machine's", UserWarning, stacklevel=2)
        position = _floats(ds, "ImagePositionPatient", 3, path)
        spacing = _floats(ds, "PixelSpacing", 2, path)
        if np.any(spacing <= 0):
            raise DicomError(f"{path}: PixelSpacing must be positive, got {list(spacing)}")
        slope = float(_floats(ds, "RescaleSlope", 1, path)[0]) if "RescaleSlope" in ds else 1.0
        intercept = float(_floats(ds, "RescaleIntercept", 1, path)[0]) if "RescaleIntercept" in ds else 0.0
        hu = (_pixels(ds, path) * slope + intercept).astype(np.float32)
        if not np.all(np.isfinite(hu)):
            raise DicomError(f"{path}: HU values are not finite (RescaleSlope/Intercept?)")
        thickness = None
        if "SliceThickness" in ds and ds.SliceThickness not in (None, ""):
            t = float(ds.SliceThickness)
            thickness = t if np.isfinite(t) and t > 0 else None
        frame_uid = str(ds.get("FrameOfReferenceUID", "") or "")
        if not frame_uid:
            raise DicomError(f"{path}: missing FrameOfReferenceUID")
        return _Slice(
            path=path,
            position=position,
            spacing=(float(spacing[0]), float(spacing[1])),
            shape=hu.shape,
            hu=hu,
            series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
            frame_uid=frame_uid,
            study_uid=str(ds.get("StudyInstanceUID", "") or ""),
            sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
            thickness=thickness,
            patient_name=str(ds.get("PatientName", "") or ""),
            patient_id=str(ds.get("PatientID", "") or ""),
            study_id=str(ds.get("StudyID", "") or ""),
        )
    except DicomError:
        raise
    except Exception as exc:  # damaged values surface lazily as assorted exception types
        raise DicomError(f"{path}: cannot read CT slice ({type(exc).__name__}: {exc})") from exc


def _check_one_series(items: list[tuple[str, Dataset]], folder: str) -> None:
    if not items:
        raise DicomError(f"{folder}: no CT images (CT Image Storage) found")
    for path, ds in items:  # a file cut between elements parses; it lacks the trailing PixelData
        if "PixelData" not in ds:
            raise DicomError(f"{path}: truncated CT image file: it ends before the PixelData")
    series = {}
    for path, ds in items:
        uid = str(ds.get("SeriesInstanceUID", "") or "<none>")
        series.setdefault(uid, []).append(path)
    if len(series) > 1:
        listing = "; ".join(
            f"{uid}: {len(paths)} files (e.g. {os.path.basename(paths[0])})" for uid, paths in series.items()
        )
        raise DicomError(
            f"{folder}: CT images of {len(series)} different series (SeriesInstanceUID): {listing}; "
            "put one series per folder"
        )


def _slice_spacing(slices: list[_Slice], z: np.ndarray, folder: str) -> float:
    """The uniform slice spacing (mm) of slices sorted by z, or DicomError naming the files."""
    if len(slices) == 1:
        if slices[0].thickness is None:
            raise DicomError(f"{slices[0].path}: single-slice series without a positive SliceThickness")
        return slices[0].thickness
    dzs = np.diff(z)
    dup = np.flatnonzero(dzs <= _POSITION_TOL_MM)
    if dup.size:
        pairs = "; ".join(f"{slices[i].path} and {slices[i + 1].path} at z = {z[i]:g} mm" for i in dup[:5])
        raise DicomError(f"{folder}: duplicate slices (same ImagePositionPatient): {pairs}")
    dz0 = float(dzs.min())
    dz = float(np.median(dzs[dzs <= dz0 * (1 + _SPACING_REL_TOL)]))
    tol = _SPACING_REL_TOL * dz
    steps = np.rint(dzs / dz)
    gaps = np.flatnonzero((steps >= 2) & (np.abs(dzs - steps * dz) <= steps * tol))
    if gaps.size:
        details = "; ".join(
            f"{int(steps[i]) - 1} missing between {slices[i].path} (z = {z[i]:g} mm) and "
            f"{slices[i + 1].path} (z = {z[i + 1]:g} mm)"
            for i in gaps[:5]
        )
        raise DicomError(f"{folder}: missing slices (spacing {dz:g} mm): {details}")
    if np.any(np.abs(dzs - dz) > tol):
        i = int(np.argmax(np.abs(dzs - dz)))
        raise DicomError(
            f"{folder}: non-uniform slice spacing: {dzs[i]:g} mm between {slices[i].path} and "
            f"{slices[i + 1].path}, smallest spacing {dz:g} mm"
        )
    # each step within 1 % can still add up: a spacing 0.99 % longer over half a 100-slice series
    # put the last slice 1.2 mm off the uniform grid. A tenth of a slice is the most allowed.
    drift = np.abs(z - (z[0] + dz * np.arange(z.size)))
    if float(drift.max()) > _DRIFT_FRACTION * dz:
        i = int(np.argmax(drift))
        raise DicomError(
            f"{folder}: slice positions drift from a uniform {dz:g} mm grid: {slices[i].path} "
            f"(z = {z[i]:g} mm) lies {drift[i]:.3g} mm off it (at most {_DRIFT_FRACTION:g} of a slice "
            f"accepted)")
    return dz


#: largest distance (fraction of the slice spacing) of a slice from the uniform grid built on it
_DRIFT_FRACTION = 0.1


def _series_from_datasets(items: list[tuple[str, Dataset]], folder: str) -> CTSeries:
    _check_one_series(items, folder)
    slices = [_parse_ct_slice(ds, path) for path, ds in items]
    first = slices[0]
    for s in slices[1:]:
        if s.shape != first.shape:
            raise DicomError(f"{s.path}: {s.shape[0]} x {s.shape[1]} pixels, {first.path} has {first.shape}")
        if not np.allclose(s.spacing, first.spacing, atol=1e-4):
            raise DicomError(f"{s.path}: PixelSpacing {s.spacing} differs from {first.path} {first.spacing}")
        if s.frame_uid != first.frame_uid:
            raise DicomError(
                f"{s.path}: FrameOfReferenceUID {s.frame_uid} differs from {first.path} {first.frame_uid}"
            )
        if np.max(np.abs(s.position[:2] - first.position[:2])) > _POSITION_TOL_MM:
            raise DicomError(
                f"{s.path}: ImagePositionPatient x, y {list(s.position[:2])} differ from "
                f"{first.path} {list(first.position[:2])} (tilted or shifted slices are not supported)"
            )
    # axial orientation: slice normal = row x column direction = +z
    slices.sort(key=lambda s: s.position[2])
    z = np.array([s.position[2] for s in slices])
    dz = _slice_spacing(slices, z, folder)
    dy, dx = first.spacing
    grid = Grid(shape=(len(slices), *first.shape), spacing_mm=(dz, dy, dx),
                origin_mm=(float(z[0]), float(first.position[1]), float(first.position[0])))
    ct = np.stack([s.hu for s in slices]).astype(np.float32)
    info = CTInfo(
        study_instance_uid=first.study_uid,
        series_instance_uid=first.series_uid,
        frame_of_reference_uid=first.frame_uid,
        sop_instance_uids=tuple(s.sop_uid for s in slices),
        slice_z_mm=tuple(float(v) for v in z),
        patient_name=first.patient_name,
        patient_id=first.patient_id,
        study_id=first.study_id,
    )
    return CTSeries(grid=grid, ct_hu=ct, info=info, files=tuple(s.path for s in slices))


def load_ct_series(folder: str | os.PathLike) -> CTSeries:
    """Read the axial CT series in a folder.

    Non-hidden files that are not DICOM at all (a README, a screenshot: no "DICM" header and no
    DICOM element at the start) are skipped with a warning naming them; a DICOM file that is
    damaged or truncated raises. Objects other than CT images (RT Structure Set, RT Dose, RT
    Plan, ...) are ignored. Slices are sorted by
    ``ImagePositionPatient`` along the slice normal and ``RescaleSlope``/``RescaleIntercept``
    are applied.

    Parameters
    ----------
    folder : path of the folder holding the series.

    Returns
    -------
    CTSeries
        ``grid`` (origin = centre of the first voxel, LPS mm, ``(z, y, x)``), ``ct_hu`` float32
        ``[z, y, x]`` in HU, ``info`` (:class:`CTInfo`, for the writers) and ``files`` in slice order.

    Raises
    ------
    DicomError
        Naming the file or files: damaged or truncated, not axial, several series, duplicate
        positions, missing slices, non-uniform spacing, inconsistent rows/columns/spacing.
    """
    return _series_from_datasets(_scan_folder(folder).get("CT", []), str(folder))


# -- writing ----------------------------------------------------------------------------------


def _ct_storage(hu: np.ndarray, where: Path) -> tuple[np.ndarray, float]:
    """Stored int16 values and RescaleIntercept (RescaleSlope is 1) for a CT in HU.

    Values outside :data:`CT_HU_RANGE` are clipped to it (with a warning giving their number);
    the rest are rounded to the nearest HU, so the stored CT is within 0.5 HU of the input. The
    intercept is 0 when the CT fits in [-32768, 32767] HU, else the CT minimum + 32768; int16
    then holds the data range, as :data:`CT_HU_RANGE` spans fewer than 65536 HU.
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
    intercept = 0.0
    if q.size and (q.min() < -32768 or q.max() > 32767):
        intercept = float(q.min()) + 32768.0
    return (q - intercept).astype("<i2"), intercept


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
    stored, intercept = _ct_storage(patient.ct_hu, folder)
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
            ds = _new_dataset(CTImageStorage, sop_uids[k], "CT", series_uid, 1, patient, info,
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
            ds.RescaleSlope = _ds(1.0)
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
