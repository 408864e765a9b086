"""What every DICOM writer shares: decimal strings, checked text values, the common modules of
a new dataset (patient, study, series, frame of reference, equipment, SOP common), and the safe
save (:func:`optimizer._files.atomic_write`).

Files are Explicit VR Little Endian with the DICOM file meta header, character set ISO_IR 100.
Text values are refused with :class:`~optimizer.io.DicomError` (naming the file and the
attribute), never silently changed, when DICOM would read them back differently.
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata
import inspect
import numbers
import os
import unicodedata
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, RTStructureSetStorage
from pydicom.valuerep import format_number_as_ds

from .._files import atomic_write
from ..geometry import Grid, Patient
from ..plan import Plan
from ._dicom_common import CTInfo, DicomError

_CHARSET = "ISO_IR 100"  # SpecificCharacterSet of every file written: Latin-1
_MAX_CHARS = {"LO": 64, "SH": 16, "PN": 64}
_PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])
# Detached Study Management (retired; TPSs reference a study with it; pydicom has no constant)
_STUDY_COMPONENT_SOP = "1.2.840.10008.3.1.2.3.1"
_MANUFACTURER = "bioplan"
_IS_MAX = 2**31 - 1  # largest value of an IS (integer string) attribute


@functools.cache
def _software_version() -> str:
    """The installed bioplan version (SoftwareVersions), "unknown" when not installed."""
    try:
        return importlib.metadata.version("bioplan")
    except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown"


def _implementation_version_name() -> str:
    """ImplementationVersionName (SH, at most 16 characters): "BIOPLAN_010" for 0.1.0."""
    return f"BIOPLAN_{_software_version().replace('.', '')}"[:16]


# -- values -----------------------------------------------------------------------------------


def _ds(x: float) -> str:
    """A DS (decimal string, <= 16 characters) for a finite number."""
    x = float(x)
    if x == 0:
        return "0"
    return format_number_as_ds(x)


def _ds_list(values) -> list[str]:
    return [_ds(v) for v in np.asarray(values, dtype=float).ravel()]


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


# -- targets and arguments --------------------------------------------------------------------


def _check_target(path: Path, overwrite: bool) -> None:
    """Early, friendly refusal (the atomic write checks again when it publishes the file).

    A symlink counts as existing, dangling or not: it is never written through."""
    if path.is_dir() and not path.is_symlink():
        raise FileExistsError(f"{path}: is a folder, expected a file path")
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"{path}: exists; pass overwrite=True to replace it")


def _check_ct_info(ct_info: CTInfo, grid: Grid, what: str) -> None:
    if not isinstance(ct_info, CTInfo):
        raise DicomError(f"{what}: ct_info must be the CTInfo of the CT series (write_ct_series result)")
    if len(ct_info.sop_instance_uids) != grid.shape[0]:
        raise DicomError(
            f"{what}: ct_info lists {len(ct_info.sop_instance_uids)} CT slices, the patient grid has "
            f"{grid.shape[0]}"
        )
    # the same count on another z (a shifted grid) wrote contours and dose planes that reference
    # the wrong CT slices; a quarter slice is what the RTSTRUCT reader accepts (rtstruct.py)
    z_grid = np.asarray(grid.axes_mm()[0], dtype=float)
    z_ct = np.asarray(ct_info.slice_z_mm, dtype=float)
    off = np.abs(z_ct - z_grid) if z_ct.shape == z_grid.shape else np.array([np.inf])
    dz = float(grid.spacing_mm[0])
    if not float(off.max()) <= 0.25 * dz:
        raise DicomError(
            f"{what}: ct_info's slice positions are not the patient grid's: they differ by up to "
            f"{float(off.max()):.3g} mm (slice spacing {dz:g} mm); pass the CTInfo of this patient's CT "
            f"series (write_ct_series / load_ct_series result)")


def _call_form(name: str, of_plan: Callable, of_arrays: Callable, index: int, args: tuple,
               kwargs: dict) -> Callable:
    """The call form of a writer that accepts a :class:`~optimizer.plan.Plan` or raw arrays.

    The argument at position ``index`` (or keyword ``plan``) decides: a Plan selects
    ``of_plan``, anything else ``of_arrays``. The arguments are checked against the chosen
    form's signature, so a wrong call is a TypeError naming the public writer.
    """
    data = args[index] if len(args) > index else kwargs.get("plan")
    form = of_plan if isinstance(data, Plan) else of_arrays
    try:
        inspect.signature(form).bind(*args, **kwargs)
    except TypeError as exc:
        shown = "a Plan" if form is of_plan else "arrays"
        raise TypeError(f"{name} (called with {shown}): {exc}; see help({name})") from None
    return form


# -- a new dataset and its safe save ----------------------------------------------------------


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
                 description: str, where: str | os.PathLike) -> FileDataset:
    """A file dataset with the Patient, General Study, series, Frame of Reference, General
    Equipment and SOP Common attributes filled in (``where``: the file, for error messages)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = _implementation_version_name()
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
    ds.SoftwareVersions = _text(_software_version(), "SoftwareVersions", "LO", where)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study_id
    ds.SeriesNumber = series_number
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    return ds


def _study_reference(ct_info: CTInfo) -> Dataset:
    """An item referencing the CT's study (ReferencedStudySequence, RTReferencedStudySequence)."""
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_COMPONENT_SOP
    study.ReferencedSOPInstanceUID = ct_info.study_instance_uid
    return study


def _plan_header(ds: FileDataset, label: str, description: str, structure_set_uid: str | None) -> None:
    """The RT (Ion) Plan module's identification: label, name, description, date, and the
    geometry (PATIENT with a structure-set reference, else TREATMENT_DEVICE); one patient setup
    (head first supine)."""
    ds.OperatorsName = ""
    ds.InstanceNumber = 1
    ds.RTPlanLabel = label
    ds.RTPlanName = label
    ds.RTPlanDescription = description
    ds.RTPlanDate, ds.RTPlanTime = ds.StudyDate, ds.StudyTime
    if structure_set_uid:
        ds.RTPlanGeometry = "PATIENT"
        ref = Dataset()
        ref.ReferencedSOPClassUID = RTStructureSetStorage
        ref.ReferencedSOPInstanceUID = structure_set_uid
        ds.ReferencedStructureSetSequence = DicomSequence([ref])
    else:
        ds.RTPlanGeometry = "TREATMENT_DEVICE"
    setup = Dataset()
    setup.PatientSetupNumber = 1
    setup.PatientPosition = "HFS"
    ds.PatientSetupSequence = DicomSequence([setup])


def _check_fractions(value, name: str = "fractions") -> int:
    """A number of fractions as an int >= 1: a Python or numpy integer, or an integral float
    (25.0). Booleans, strings, NaN, infinities and non-integral numbers are refused, never
    rounded or truncated."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise DicomError(f"{name}: expected a positive integer number of fractions, got {value!r} "
                         f"({type(value).__name__})")
    if not (np.isfinite(value) and float(value).is_integer() and 1 <= value <= _IS_MAX):
        raise DicomError(f"{name}: expected a positive integer number of fractions (at most {_IS_MAX}, "
                         f"the DICOM IS limit), got {value!r}")
    return int(value)


def _check_positive_number(value, name: str, unit: str) -> float:
    """One finite real number > 0 as a float (booleans and strings refused), or DicomError
    naming ``name`` and the unit."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise DicomError(f"{name}: expected a positive number ({unit}), got {value!r} "
                         f"({type(value).__name__})")
    if not (np.isfinite(value) and value > 0):
        raise DicomError(f"{name}: expected a positive number ({unit}), got {value!r}")
    return float(value)


def _fraction_group(ds: FileDataset, fractions: int, beam_meterset: list[tuple[int, float]],
                    name: str = "fractions") -> None:
    """One fraction group: the number of fractions (checked by :func:`_check_fractions`, refused
    naming ``name``) and each beam's (number, MU per fraction)."""
    fractions = _check_fractions(fractions, name)
    refs = []
    for number, mu in beam_meterset:
        rb = Dataset()
        rb.ReferencedBeamNumber = number
        rb.BeamMeterset = _ds(mu)
        refs.append(rb)
    fg = Dataset()
    fg.FractionGroupNumber = 1
    fg.NumberOfFractionsPlanned = fractions
    fg.NumberOfBeams = len(refs)
    fg.NumberOfBrachyApplicationSetups = 0
    fg.ReferencedBeamSequence = DicomSequence(refs)
    ds.FractionGroupSequence = DicomSequence([fg])
    ds.ApprovalStatus = "UNAPPROVED"


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
