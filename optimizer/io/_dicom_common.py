"""What every DICOM object module shares: the error type, CT identifiers, SOP classes, and
reading one file (or a folder of files) with checked values.

Nothing here is public API; :mod:`optimizer.io` re-exports :class:`DicomError` and :class:`CTInfo`.
Writing helpers are in :mod:`optimizer.io._dicom_write`.
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
from pydicom.uid import CTImageStorage, RTDoseStorage, RTIonPlanStorage, RTPlanStorage, RTStructureSetStorage

from objectives.errors import BioplanError

# SOP classes (names kept from optimizer.dicom; the values are pydicom's UID constants)
CT_IMAGE_STORAGE = CTImageStorage
RT_DOSE_STORAGE = RTDoseStorage
RT_STRUCTURE_SET_STORAGE = RTStructureSetStorage
RT_ION_PLAN_STORAGE = RTIonPlanStorage

AXIAL_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_ORIENTATION_TOL = 1e-3  # direction cosines
_POSITION_TOL_MM = 0.01  # in-plane position agreement between slices
_SPACING_REL_TOL = 0.01  # slice-spacing uniformity, fraction of the spacing

_KIND_BY_SOP_CLASS = {
    CTImageStorage: "CT",
    RTStructureSetStorage: "RTSTRUCT",
    RTDoseStorage: "RTDOSE",
    RTIonPlanStorage: "RTPLAN",
    RTPlanStorage: "RTPLAN",
}


class DicomError(BioplanError):
    """A DICOM file or folder cannot be read into (or written from) bioplan geometry."""


@dataclass(frozen=True)
class CTInfo:
    """Identifiers of a CT series that other DICOM objects must reference.

    Returned by :func:`optimizer.io.write_ct_series` and by :func:`optimizer.io.load_ct_series`
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
    if sop in _KIND_BY_SOP_CLASS:
        return _KIND_BY_SOP_CLASS[sop]
    return str(ds.get("Modality", "") or "").strip().upper() or "UNKNOWN"


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


# -- checked values ---------------------------------------------------------------------------


def _floats(ds: Dataset, keyword: str, n: int, path: str) -> np.ndarray:
    """``n`` finite numbers of attribute ``keyword``, or DicomError naming file and attribute."""
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
    """Integer attribute ``keyword`` (``default`` when absent; required without one)."""
    if keyword not in ds or ds[keyword].value in (None, ""):
        if default is None:
            raise DicomError(f"{path}: missing {keyword}")
        return default
    try:
        return int(ds[keyword].value)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"{path}: {keyword} is not an integer ({ds[keyword].value!r})") from exc

