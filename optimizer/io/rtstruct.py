"""RT Structure Set: :func:`load_rtstruct` rasterizes CLOSED_PLANAR contours onto a CT grid,
:func:`write_rtstruct` contours a patient's structure masks (marching squares).

Contours are in the DICOM patient coordinate system (LPS, mm); masks are ``[z, y, x]``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, RTStructureSetStorage, generate_uid

from ..geometry import Grid, Patient, Structure
from ._dicom_common import CTInfo, DicomError, _kind, _read_dataset
from ._dicom_write import _check_ct_info, _check_target, _ds, _new_dataset, _save, _study_reference, _text

__all__ = ["load_rtstruct", "write_rtstruct"]

# RTROIInterpretedType (3006,00A4) <-> bioplan role
_TARGET_TYPES = {"PTV", "CTV", "GTV"}
_OAR_TYPES = {"ORGAN", "AVOIDANCE"}
_ROLE_TO_TYPE = {"target": "PTV", "oar": "ORGAN", "other": ""}
_MAX_COORD_MM = 1e6  # contour coordinates beyond this are damage, not anatomy


# -- reading ----------------------------------------------------------------------------------


def _role(interpreted_type: str) -> str:
    t = (interpreted_type or "").strip().upper()
    if t in _TARGET_TYPES:
        return "target"
    if t in _OAR_TYPES:
        return "oar"
    return "other"


#: a voxel centre this close to a contour's edge (mm) counts as inside: far below any voxel
#: size, above float rounding of positions in mm
EDGE_TOLERANCE_MM = 1e-6


def _rasterize(polygons: list[np.ndarray], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Even-odd fill of polygons ((N, 2) x, y mm) at the voxel centres of one slice -> [y, x].
    A centre on a polygon's edge counts as inside it, whichever way the polygon runs: each is
    turned counter-clockwise and tested with a small positive radius (matplotlib's radius-0 test
    put edge points in or out by orientation: a square with its edges through voxel centres got
    20 voxels drawn one way, 12 the other, instead of 25, its centroid moved half a voxel)."""
    from matplotlib.path import Path as MplPath

    out = np.zeros((ys.size, xs.size), dtype=bool)
    for poly in polygons:
        x0, y0 = poly.min(axis=0) - EDGE_TOLERANCE_MM  # the centres the radius test can count in
        x1, y1 = poly.max(axis=0) + EDGE_TOLERANCE_MM
        ix = np.flatnonzero((xs >= x0) & (xs <= x1))
        iy = np.flatnonzero((ys >= y0) & (ys <= y1))
        if ix.size == 0 or iy.size == 0:
            continue
        gx, gy = np.meshgrid(xs[ix], ys[iy])
        x, y = poly[:, 0], poly[:, 1]
        if np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y) < 0:  # shoelace: clockwise
            poly = poly[::-1]
        # matplotlib (agg conv_contour) offsets the path by half the radius: 2 x the tolerance
        inside = MplPath(poly).contains_points(np.column_stack([gx.ravel(), gy.ravel()]),
                                               radius=2.0 * EDGE_TOLERANCE_MM)
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
    return _structures_from_dataset(_read_dataset(path), path, grid, frame_of_reference_uid, strict)


def _structures_from_dataset(ds: Dataset, path: str, grid: Grid, frame_of_reference_uid: str,
                             strict: bool) -> list[Structure]:
    """The structures of a read RT Structure Set that references ``frame_of_reference_uid``;
    anything unexpected in the dataset becomes a DicomError naming the file."""
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
    span = float(np.ptp(pts[:, 2]))
    if span > PLANAR_TOLERANCE_MM:  # placed on one slice, it could cancel a contour there
        return None, f"not planar: z spans {span:g} mm ({pts[:, 2].min():g} to {pts[:, 2].max():g} mm)", z
    return pts, None, float(np.mean(pts[:, 2]))


#: the most a CLOSED_PLANAR contour's z may vary (mm): rounding, far below any slice spacing
PLANAR_TOLERANCE_MM = 0.1


def _dropped_message(path: str, name: str, dropped: list[tuple[str, float | None]]) -> str:
    by_reason: dict[str, list[str]] = {}
    for reason, z in dropped:
        by_reason.setdefault(reason, []).append("?" if z is None else f"{z:g}")
    details = "; ".join(f"{reason} at z = {', '.join(zs)} mm" for reason, zs in by_reason.items())
    return f"{path}: ROI '{name}': {len(dropped)} contour(s) dropped: {details}"


def _roi_polygons(item: Dataset | None, grid: Grid) -> tuple[dict[int, list[np.ndarray]], list]:
    """The usable CLOSED_PLANAR polygons of one ROI by slice index, and the dropped contours
    as (reason, z) pairs."""
    zs, ys, xs = grid.axes_mm()
    dz, dy, dx = grid.spacing_mm
    x_lo, x_hi = xs[0] - dx / 2, xs[-1] + dx / 2
    y_lo, y_hi = ys[0] - dy / 2, ys[-1] + dy / 2
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
        polygon = pts[:, :2]
        if any(_same_polygon(p, polygon) for p in per_slice.get(k, [])):
            # the even-odd fill would cancel the two copies: the ROI lost the area on this slice
            dropped.append(("repeats another contour of the ROI on this slice", z))
            continue
        per_slice.setdefault(k, []).append(polygon)
    return per_slice, dropped


def _same_polygon(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two polygons have the same vertices in the same cyclic order, from any start
    point and run either way round (a closing vertex repeating the first is ignored)."""
    a, b = (p[:-1] if len(p) > 1 and np.array_equal(p[0], p[-1]) else p for p in (a, b))
    if a.shape != b.shape:
        return False
    for start in np.flatnonzero(np.all(b == a[0], axis=1)):
        rolled = np.roll(b, -start, axis=0)
        if np.array_equal(rolled, a) or np.array_equal(np.roll(rolled[::-1], 1, axis=0), a):
            return True
    return False


def _display_color(item: Dataset | None) -> tuple[float, float, float] | None:
    if item is None or "ROIDisplayColor" not in item:
        return None
    try:
        rgb = [float(v) for v in item.ROIDisplayColor]
    except (TypeError, ValueError):
        return None
    return tuple(min(max(v / 255.0, 0.0), 1.0) for v in rgb) if len(rgb) == 3 else None


def _roi_label(names: dict[int, str], number: int) -> str:
    """'name' of ROI ``number`` for messages, or a note that no StructureSetROISequence item has it."""
    return f"'{names[number]}'" if number in names else "not in the StructureSetROISequence"


def _structures_from_rtstruct(ds: Dataset, path: str, grid: Grid, strict: bool = False) -> list[Structure]:
    # mandatory; a file cut between elements parses without them (and would load empty or role-less)
    missing = [k for k in ("StructureSetROISequence", "ROIContourSequence", "RTROIObservationsSequence")
               if k not in ds]
    if missing:
        raise DicomError(f"{path}: no {', '.join(missing)} (file truncated?)")
    names = {}
    for roi in ds.get("StructureSetROISequence", []) or []:
        name = str(roi.get("ROIName", "") or f"ROI {roi.ROINumber}").strip()
        if int(roi.ROINumber) in names:  # keyed by number: the second would replace the first
            raise DicomError(f"{path}: ROINumber {int(roi.ROINumber)} is used by two ROIs, "
                             f"'{names[int(roi.ROINumber)]}' and '{name}'; ROI numbers must be unique")
        names[int(roi.ROINumber)] = name
    types = {}
    for obs in ds.get("RTROIObservationsSequence", []) or []:
        if int(obs.ReferencedROINumber) in types:
            number = int(obs.ReferencedROINumber)
            raise DicomError(f"{path}: two RT ROI Observations items refer to ROINumber {number} "
                             f"(ROI {_roi_label(names, number)}); expected one per ROI")
        types[int(obs.ReferencedROINumber)] = str(obs.get("RTROIInterpretedType", "") or "")
    contours = {}
    for item in ds.get("ROIContourSequence", []) or []:
        if int(item.ReferencedROINumber) in contours:
            number = int(item.ReferencedROINumber)
            raise DicomError(f"{path}: two ROI Contour items refer to ROINumber {number} "
                             f"(ROI {_roi_label(names, number)}); expected one per ROI")
        contours[int(item.ReferencedROINumber)] = item
    for label, numbers in (("RT ROI Observations", types), ("ROI Contour", contours)):
        orphans = sorted(set(numbers) - set(names))
        if orphans:  # e.g. an ROI deleted from StructureSetROISequence only
            warnings.warn(f"{path}: {label} items refer to ROINumber {', '.join(map(str, orphans))}, which "
                          f"no StructureSetROISequence item has; ignored", stacklevel=4)
    zs, ys, xs = grid.axes_mm()
    structures: list[Structure] = []
    used: set[str] = set()
    for number, name in names.items():
        item = contours.get(number)
        per_slice, dropped = _roi_polygons(item, grid)
        if dropped:
            message = _dropped_message(path, name, dropped)
            if strict:
                raise DicomError(message + " (strict=True)")
            warnings.warn(message, stacklevel=4)
        mask = np.zeros(grid.shape, dtype=bool)
        for k, polygons in per_slice.items():
            mask[k] = _rasterize(polygons, xs, ys)
        if not mask.any():
            warnings.warn(f"{path}: ROI '{name}' has no voxel on the CT grid; skipped", stacklevel=4)
            continue
        unique, n = name or f"ROI {number}", 2
        while "".join(unique.split()).lower() in used:
            unique, n = f"{name} ({n})", n + 1
        if unique != name:
            warnings.warn(f"{path}: ROI name '{name}' repeated; renamed '{unique}'", stacklevel=4)
        used.add("".join(unique.split()).lower())
        if number not in types:
            warnings.warn(f"{path}: ROI '{name}' has no RT ROI Observations item (its type, e.g. PTV); "
                          f"loaded with role '{_role('')}'", stacklevel=4)
        structures.append(Structure(unique, mask, role=_role(types.get(number, "")),
                                    color=_display_color(item)))
    return structures


# -- writing ----------------------------------------------------------------------------------


def _referenced_frame_sequence(ct_info: CTInfo) -> DicomSequence:
    images = []
    for uid in ct_info.sop_instance_uids:
        img = Dataset()
        img.ReferencedSOPClassUID = CTImageStorage
        img.ReferencedSOPInstanceUID = uid
        images.append(img)
    series = Dataset()
    series.SeriesInstanceUID = ct_info.series_instance_uid
    series.ContourImageSequence = DicomSequence(images)
    study = _study_reference(ct_info)
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = ct_info.frame_of_reference_uid
    frame.RTReferencedStudySequence = DicomSequence([study])
    return DicomSequence([frame])


def _drop_collinear(pts: np.ndarray) -> np.ndarray:
    """Remove points lying on the straight segment between their neighbours (closed polygon)."""
    if len(pts) < 4:
        return pts
    prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    a, b = pts - prev, nxt - pts
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    keep = np.abs(cross) > 1e-9
    return pts[keep] if keep.sum() >= 3 else pts


def _slice_contours(mask2d: np.ndarray, xs: np.ndarray, ys: np.ndarray, dy: float,
                    dx: float) -> list[np.ndarray]:
    """Closed iso-0.5 contours (marching squares, contourpy) of a [y, x] mask, in (x, y) mm;
    ``dy``, ``dx``: the grid spacing (mm; a one-voxel axis has no neighbour to take it from).

    The mask is padded with a ring of zeros so every contour closes. Contour vertices lie half
    way between voxel centres, so re-filling with the even-odd rule reproduces the mask exactly.
    """
    import contourpy

    padded = np.pad(mask2d.astype(np.float64), 1)
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
    ds = _new_dataset(RTStructureSetStorage, sop_uid, "RTSTRUCT", generate_uid(), 2, patient, ct_info,
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
            for poly in _slice_contours(s.mask[k], xs, ys, *grid.spacing_mm[1:]):
                c = Dataset()
                img = Dataset()
                img.ReferencedSOPClassUID = CTImageStorage
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
