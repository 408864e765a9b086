"""DICOM import: CT series, RT Structure Set and RT Dose into bioplan geometry.

Reads what a treatment-planning system exports into a :class:`~optimizer.geometry.Patient`:

- :func:`load_ct_series` — one axial CT series from a folder (``[z, y, x]`` HU array and its grid),
- :func:`load_rtstruct` — CLOSED_PLANAR contours of an RT Structure Set rasterized on that grid,
- :func:`load_dicom` — both in one call,
- :func:`load_rtdose` — an RT Dose grid (for comparing doses computed elsewhere).

Writing is in :mod:`optimizer.dicom_export`. Everything that is wrong with the files (damaged or
truncated DICOM, mixed series, missing or duplicate slices, tilted or non-axial orientation, a
structure set from another frame of reference) raises :class:`DicomError` naming the file. Files
in a series folder that are not DICOM at all are skipped with a warning naming them. Contours that
cannot be used (fewer than 3 points, NaN or far-off coordinates, broken ContourData, off the CT
slices) are dropped with a warning naming the ROI, the slice and the reason, or refused with
``strict=True``.

Positions are in the DICOM patient coordinate system (LPS, mm); only axial images with
``ImageOrientationPatient`` = [1, 0, 0, 0, 1, 0] (head-first or feet-first supine) are accepted.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID

from objectives.errors import BioplanError

from .geometry import Grid, Patient, Structure

__all__ = [
    "DicomError", "CTInfo", "CTSeries", "load_ct_series", "load_rtstruct", "load_dicom", "load_rtdose",
]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RT_ION_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.8"

AXIAL_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_ORIENTATION_TOL = 1e-3  # direction cosines
_POSITION_TOL_MM = 0.01  # in-plane position agreement between slices
_SPACING_REL_TOL = 0.01  # slice-spacing uniformity, fraction of the spacing

# RTROIInterpretedType (3006,00A4) -> bioplan role
_TARGET_TYPES = {"PTV", "CTV", "GTV"}
_OAR_TYPES = {"ORGAN", "AVOIDANCE"}


class DicomError(BioplanError):
    """A DICOM file or folder cannot be read into (or written from) bioplan geometry."""


@dataclass(frozen=True)
class CTInfo:
    """Identifiers of a CT series that other DICOM objects must reference.

    Returned by :func:`optimizer.dicom_export.write_ct_series` and by :func:`load_ct_series`
    (``.info``); passed to the RTSTRUCT, RTDOSE and RT Ion Plan writers so that they share the
    patient, study and frame of reference of the CT.

    ``sop_instance_uids`` and ``slice_z_mm`` are in slice order (index ``z`` of the arrays).
    """

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]
    slice_z_mm: tuple[float, ...]
    patient_name: str = "bioplan"
    patient_id: str = "bioplan"
    study_id: str = "1"


@dataclass
class CTSeries:
    """An imported CT series: grid, HU array ``[z, y, x]`` (float32) and identifiers."""

    grid: Grid
    ct_hu: np.ndarray
    info: CTInfo
    files: tuple[str, ...]


# -- reading single files ---------------------------------------------------------------------


def _signature(path: str | os.PathLike) -> str:
    """What the first bytes of a file say: 'dicom', 'truncated' or 'not dicom'.

    - 'dicom': the 128-byte preamble is followed by "DICM"; or the preamble is all zero bytes
      (a damaged prefix); or the file starts with a group 0x0002 / 0x0008 element tag (DICOM
      without preamble, as pydicom's own ``rtstruct.dcm``);
    - 'truncated': shorter than preamble + "DICM" and a zero preamble (and a start of "DICM")
      so far, including an empty file;
    - 'not dicom': anything else (a README, a spreadsheet, a screenshot, ...).
    """
    with open(path, "rb") as f:
        head = f.read(132)
    if len(head) < 132 and not head[:128].strip(b"\0") and b"DICM".startswith(head[128:]):
        return "truncated"
    if head[128:132] == b"DICM" or not head[:128].strip(b"\0"):
        return "dicom"
    if len(head) >= 4 and int.from_bytes(head[:2], "little") in (0x0002, 0x0008):
        return "dicom"
    return "not dicom"


def _short_element(ds: Dataset) -> str | None:
    """The first element whose value is shorter than its declared length (a truncated file).

    pydicom reads a value cut by the end of the file without complaint; the raw (not yet
    decoded) elements still carry the length their header declared.
    """
    for elem in ds._dict.values():  # raw elements: value bytes and declared length
        value, length = getattr(elem, "value", None), getattr(elem, "length", None)
        if (isinstance(value, (bytes, bytearray)) and isinstance(length, int) and length != 0xFFFFFFFF
                and len(value) < length):
            return f"element {Tag(elem.tag)} declares {length} bytes, the file holds {len(value)}"
        if isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, Dataset):
                    found = _short_element(item)
                    if found:
                        return found
    return None


def _read_dataset(path: str | os.PathLike) -> Dataset:
    """Read one file as DICOM, or raise DicomError naming it.

    Files without the 128-byte preamble and "DICM" prefix (old exports, pydicom's own
    ``rtstruct.dcm``) are accepted when they parse as a dataset that has a SOP Class UID.
    A file that ends inside an element (or before the "DICM" prefix) is reported as truncated.
    """
    path = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path)
            except InvalidDicomError:
                ds = pydicom.dcmread(path, force=True)
                if "SOPClassUID" not in ds or not str(ds.SOPClassUID).strip():
                    if _signature(path) == "truncated":
                        raise DicomError(
                            f"{path}: truncated DICOM file ({os.path.getsize(path)} bytes, ends before "
                            "the 'DICM' header)"
                        ) from None
                    raise DicomError(
                        f"{path}: not a DICOM file (no 'DICM' header and no SOP Class UID)"
                    ) from None
            short = _short_element(ds)
            if short:
                raise DicomError(f"{path}: truncated DICOM file: {short}")
            for _ in ds.iterall():  # decode every element now, so damage surfaces here
                pass
    except DicomError:
        raise
    except Exception as exc:  # pydicom raises many types on damaged input
        raise DicomError(
            f"{path}: not a readable DICOM file, damaged or truncated ({type(exc).__name__}: {exc})"
        ) from exc
    return ds


def _kind(ds: Dataset) -> str:
    """'CT', 'RTSTRUCT', 'RTDOSE', 'RTPLAN', ... from the SOP class, else from Modality."""
    sop = str(ds.get("SOPClassUID", "") or "")
    meta = getattr(ds, "file_meta", None)
    if not sop and meta is not None:
        sop = str(meta.get("MediaStorageSOPClassUID", "") or "")
    by_sop = {
        CT_IMAGE_STORAGE: "CT",
        RT_STRUCTURE_SET_STORAGE: "RTSTRUCT",
        RT_DOSE_STORAGE: "RTDOSE",
        RT_ION_PLAN_STORAGE: "RTPLAN",
        "1.2.840.10008.5.1.4.1.1.481.5": "RTPLAN",
    }
    if sop in by_sop:
        return by_sop[sop]
    return str(ds.get("Modality", "") or "").strip().upper() or "UNKNOWN"


def _floats(ds: Dataset, keyword: str, n: int, path: str) -> np.ndarray:
    if keyword not in ds or ds[keyword].value is None or ds[keyword].value == "":
        raise DicomError(f"{path}: missing {keyword}")
    value = ds[keyword].value
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        arr = np.array([float(v) for v in values], dtype=float)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"{path}: {keyword} is not numeric ({value!r})") from exc
    if arr.size != n or not np.all(np.isfinite(arr)):
        raise DicomError(f"{path}: {keyword} must be {n} finite numbers, got {value!r}")
    return arr


def _int(ds: Dataset, keyword: str, path: str, default: int | None = None) -> int:
    if keyword not in ds or ds[keyword].value in (None, ""):
        if default is None:
            raise DicomError(f"{path}: missing {keyword}")
        return default
    try:
        return int(ds[keyword].value)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"{path}: {keyword} is not an integer ({ds[keyword].value!r})") from exc


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
    ts = UID(str(ts)) if ts else UID("1.2.840.10008.1.2")
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
    arr = np.frombuffer(data, dtype=dtype, count=rows * cols).reshape(rows, cols).astype(float)
    bits_stored = _int(ds, "BitsStored", path, bits)
    if 0 < bits_stored < bits:  # mask unused high bits, sign-extend when signed
        iv = np.frombuffer(data, dtype=dtype, count=rows * cols).astype(np.int64).reshape(rows, cols)
        iv &= (1 << bits_stored) - 1
        if signed:
            iv = np.where(iv >= 1 << (bits_stored - 1), iv - (1 << bits_stored), iv)
        arr = iv.astype(float)
    return arr


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
                f"{list(AXIAL_ORIENTATION)}; only axial, supine (HFS/FFS) CT is supported"
            )
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


def _scan_folder(folder: str | os.PathLike) -> dict[str, list[tuple[str, Dataset]]]:
    """Read every (non-hidden) file of a folder, grouped by kind ('CT', 'RTSTRUCT', ...)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomError(f"{folder}: not a folder")
    groups: dict[str, list[tuple[str, Dataset]]] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        try:
            signature = _signature(p)
        except OSError as exc:
            raise DicomError(f"{p}: cannot be read ({exc})") from exc
        if signature == "not dicom":
            warnings.warn(f"{p}: not a DICOM file (no 'DICM' header, no DICOM element at the start); "
                          "skipped", stacklevel=3)
            continue
        ds = _read_dataset(p)
        try:
            kind = _kind(ds)
        except Exception as exc:
            raise DicomError(f"{p}: cannot read SOP Class UID / Modality ({exc})") from exc
        if kind == "UNKNOWN":
            raise DicomError(f"{p}: DICOM file without SOP Class UID or Modality (truncated or damaged?)")
        groups.setdefault(kind, []).append((str(p), ds))
    return groups


# -- CT series --------------------------------------------------------------------------------


def _series_from_datasets(items: list[tuple[str, Dataset]], folder: str) -> CTSeries:
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
    if len(slices) == 1:
        dz = first.thickness
        if dz is None:
            raise DicomError(f"{first.path}: single-slice series without a positive SliceThickness")
    else:
        dzs = np.diff(z)
        dup = np.flatnonzero(dzs <= _POSITION_TOL_MM)
        if dup.size:
            pairs = "; ".join(
                f"{slices[i].path} and {slices[i + 1].path} at z = {z[i]:g} mm" for i in dup[:5]
            )
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


# -- RT Structure Set -------------------------------------------------------------------------


def _role(interpreted_type: str) -> str:
    t = (interpreted_type or "").strip().upper()
    if t in _TARGET_TYPES:
        return "target"
    if t in _OAR_TYPES:
        return "oar"
    return "other"


def _rasterize(polygons: list[np.ndarray], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Even-odd fill of polygons ((N, 2) x, y mm) at the voxel centres of one slice -> [y, x]."""
    from matplotlib.path import Path as MplPath

    out = np.zeros((ys.size, xs.size), dtype=bool)
    for poly in polygons:
        x0, y0 = poly.min(axis=0)
        x1, y1 = poly.max(axis=0)
        ix = np.flatnonzero((xs >= x0) & (xs <= x1))
        iy = np.flatnonzero((ys >= y0) & (ys <= y1))
        if ix.size == 0 or iy.size == 0:
            continue
        gx, gy = np.meshgrid(xs[ix], ys[iy])
        inside = MplPath(poly).contains_points(np.column_stack([gx.ravel(), gy.ravel()]))
        out[iy[0]: iy[-1] + 1, ix[0]: ix[-1] + 1] ^= inside.reshape(iy.size, ix.size)
    return out


def _check_rtstruct_frame(ds: Dataset, path: str, frame_of_reference_uid: str) -> None:
    refs = set()
    for item in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        uid = str(item.get("FrameOfReferenceUID", "") or "")
        if uid:
            refs.add(uid)
    for roi in ds.get("StructureSetROISequence", []) or []:
        uid = str(roi.get("ReferencedFrameOfReferenceUID", "") or "")
        if uid:
            refs.add(uid)
    if "FrameOfReferenceUID" in ds and ds.FrameOfReferenceUID:
        refs.add(str(ds.FrameOfReferenceUID))
    if not refs:
        raise DicomError(f"{path}: the structure set names no FrameOfReferenceUID")
    if refs != {str(frame_of_reference_uid)}:
        raise DicomError(
            f"{path}: structure set frame of reference {sorted(refs)} does not match the CT's "
            f"FrameOfReferenceUID {frame_of_reference_uid}"
        )


_MAX_COORD_MM = 1e6  # contour coordinates beyond this are damage, not anatomy


def load_rtstruct(path: str | os.PathLike, grid: Grid, frame_of_reference_uid: str,
                  strict: bool = False) -> list[Structure]:
    """Rasterize the CLOSED_PLANAR contours of an RT Structure Set onto a grid.

    Each contour is assigned to the slice whose centre is nearest to its z (it must lie within a
    quarter of the slice spacing). All polygons of one ROI on one slice are filled with the
    even-odd rule (XOR), so inner contours cut holes. A voxel belongs to the ROI when its centre
    is inside. Roles come from ``RTROIInterpretedType``: PTV/CTV/GTV -> "target",
    ORGAN/AVOIDANCE -> "oar", anything else -> "other". ROIs without any voxel (points, empty or
    outside the grid) are skipped with a warning; a repeated name gets a suffix " (2)",
    " (3)", ... with a warning. Contours of other geometric types (POINT, OPEN_PLANAR) are not
    areas and are ignored.

    A CLOSED_PLANAR contour that cannot be used is dropped, never half-used: fewer than 3
    points, ContourData not made of (x, y, z) triplets, a NaN or infinite coordinate, a
    coordinate beyond +-1e6 mm (far outside any CT), a z outside the CT slices or between
    them, or x, y entirely outside the CT. Each ROI with dropped contours gives one warning
    naming the file, the ROI, and every dropped contour's z and reason.

    Parameters
    ----------
    path : the RTSTRUCT file.
    grid : the CT grid (axial, LPS mm) to rasterize on.
    frame_of_reference_uid : the CT's FrameOfReferenceUID; the structure set must reference it.
    strict : raise :class:`DicomError` instead of warning when a contour is dropped.

    Returns
    -------
    list of Structure, in the file's StructureSetROISequence order.
    """
    path = str(path)
    ds = _read_dataset(path)
    try:
        if _kind(ds) != "RTSTRUCT":
            raise DicomError(f"{path}: not an RT Structure Set (SOP class / modality {_kind(ds)})")
        _check_rtstruct_frame(ds, path, frame_of_reference_uid)
        return _structures_from_rtstruct(ds, path, grid, strict)
    except DicomError:
        raise
    except Exception as exc:
        raise DicomError(f"{path}: cannot read structure set ({type(exc).__name__}: {exc})") from exc


def _contour_points(contour: Dataset) -> tuple[np.ndarray | None, str | None, float | None]:
    """(points (n, 3), None, z) of a usable contour, else (None, reason, z or None)."""
    raw = contour.get("ContourData", None)
    values = [] if raw is None else list(raw) if isinstance(raw, (list, tuple, MultiValue)) else [raw]
    data = np.full(len(values), np.nan)
    non_numeric = 0
    for i, v in enumerate(values):
        try:
            data[i] = float(v)
        except (TypeError, ValueError):
            non_numeric += 1
    zs = data[2::3]
    usable_z = zs[np.isfinite(zs) & (np.abs(zs) <= _MAX_COORD_MM)]
    z = float(usable_z[0]) if usable_z.size else None
    n = data.size
    if n == 0:
        return None, "no ContourData", z
    if n % 3:
        return None, f"ContourData has {n} values, not a multiple of 3 (x, y, z triplets)", z
    if n < 9:
        return None, f"only {n // 3} point(s); a closed contour needs at least 3", z
    if non_numeric:
        return None, f"{non_numeric} non-numeric coordinate(s)", z
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        return None, f"{bad} NaN or infinite coordinate(s)", z
    far = float(np.max(np.abs(data)))
    if far > _MAX_COORD_MM:
        return None, f"coordinate(s) beyond +-{_MAX_COORD_MM:g} mm ({far:g} mm), far outside any CT", z
    pts = data.reshape(-1, 3)
    return pts, None, float(np.mean(pts[:, 2]))


def _dropped_message(path: str, name: str, dropped: list[tuple[str, float | None]]) -> str:
    by_reason: dict[str, list[str]] = {}
    for reason, z in dropped:
        by_reason.setdefault(reason, []).append("?" if z is None else f"{z:g}")
    details = "; ".join(f"{reason} at z = {', '.join(zs)} mm" for reason, zs in by_reason.items())
    return f"{path}: ROI '{name}': {len(dropped)} contour(s) dropped: {details}"


def _structures_from_rtstruct(ds: Dataset, path: str, grid: Grid, strict: bool = False) -> list[Structure]:
    zs, ys, xs = grid.axes_mm()
    dz, dy, dx = grid.spacing_mm
    x_lo, x_hi = xs[0] - dx / 2, xs[-1] + dx / 2
    y_lo, y_hi = ys[0] - dy / 2, ys[-1] + dy / 2
    # mandatory; a file cut between elements parses without them (and would load empty or role-less)
    missing = [k for k in ("StructureSetROISequence", "ROIContourSequence", "RTROIObservationsSequence")
               if k not in ds]
    if missing:
        raise DicomError(f"{path}: no {', '.join(missing)} (file truncated?)")
    names = {}
    for roi in ds.get("StructureSetROISequence", []) or []:
        names[int(roi.ROINumber)] = str(roi.get("ROIName", "") or f"ROI {roi.ROINumber}").strip()
    types = {}
    for obs in ds.get("RTROIObservationsSequence", []) or []:
        types[int(obs.ReferencedROINumber)] = str(obs.get("RTROIInterpretedType", "") or "")
    contours = {}
    for item in ds.get("ROIContourSequence", []) or []:
        contours[int(item.ReferencedROINumber)] = item
    structures: list[Structure] = []
    used: set[str] = set()
    for number, name in names.items():
        item = contours.get(number)
        per_slice: dict[int, list[np.ndarray]] = {}
        dropped: list[tuple[str, float | None]] = []
        for c in (item.get("ContourSequence", []) or []) if item is not None else []:
            if str(c.get("ContourGeometricType", "")).strip().upper() != "CLOSED_PLANAR":
                continue
            pts, reason, z = _contour_points(c)
            if pts is None:
                dropped.append((reason, z))
                continue
            k = int(np.rint((z - zs[0]) / dz))
            if k < 0 or k >= zs.size:
                dropped.append((f"outside the CT slices (z {zs[0]:g} to {zs[-1]:g} mm)", z))
                continue
            if abs(zs[k] - z) > 0.25 * dz:
                dropped.append((f"between CT slices (nearest slice z = {zs[k]:g} mm)", z))
                continue
            (px0, py0), (px1, py1) = pts[:, :2].min(axis=0), pts[:, :2].max(axis=0)
            if px1 < x_lo or px0 > x_hi or py1 < y_lo or py0 > y_hi:
                dropped.append(("x, y entirely outside the CT", z))
                continue
            per_slice.setdefault(k, []).append(pts[:, :2])
        if dropped:
            message = _dropped_message(path, name, dropped)
            if strict:
                raise DicomError(message + " (strict=True)")
            warnings.warn(message, stacklevel=3)
        mask = np.zeros(grid.shape, dtype=bool)
        for k, polygons in per_slice.items():
            mask[k] = _rasterize(polygons, xs, ys)
        if not mask.any():
            warnings.warn(f"{path}: ROI '{name}' has no voxel on the CT grid; skipped", stacklevel=3)
            continue
        unique, n = name or f"ROI {number}", 2
        while "".join(unique.split()).lower() in used:
            unique, n = f"{name} ({n})", n + 1
        if unique != name:
            warnings.warn(f"{path}: ROI name '{name}' repeated; renamed '{unique}'", stacklevel=3)
        used.add("".join(unique.split()).lower())
        color = None
        if item is not None and "ROIDisplayColor" in item:
            try:
                rgb = [float(v) for v in item.ROIDisplayColor]
                if len(rgb) == 3:
                    color = tuple(min(max(v / 255.0, 0.0), 1.0) for v in rgb)
            except (TypeError, ValueError):
                color = None
        structures.append(Structure(unique, mask, role=_role(types.get(number, "")), color=color))
    return structures


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
        :func:`load_rtstruct`).

    Raises
    ------
    DicomError
        As :func:`load_ct_series` and :func:`load_rtstruct`, and when there are several
        structure sets (they are listed; load the one you want with :func:`load_rtstruct`).
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
        try:
            _check_rtstruct_frame(ds, path, series.info.frame_of_reference_uid)
            structures = _structures_from_rtstruct(ds, path, series.grid, strict)
        except DicomError:
            raise
        except Exception as exc:
            raise DicomError(f"{path}: cannot read structure set ({type(exc).__name__}: {exc})") from exc
    label = name or series.info.patient_id or series.info.patient_name or Path(folder).name
    return Patient(grid=series.grid, ct_hu=series.ct_hu, structures=structures, name=label)


# -- RT Dose ----------------------------------------------------------------------------------


def load_rtdose(path: str | os.PathLike) -> tuple[np.ndarray, Grid]:
    """Read an axial RT Dose grid.

    Returns
    -------
    dose : float64 ``[z, y, x]`` in the file's DoseUnits (Gy, or relative when RELATIVE), i.e.
        stored values times DoseGridScaling.
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
        return arr * scaling, grid
    except DicomError:
        raise
    except Exception as exc:
        raise DicomError(f"{path}: cannot read RT Dose ({type(exc).__name__}: {exc})") from exc
