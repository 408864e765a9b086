"""Import of matRad patients (``ct`` and ``cst``) from MATLAB .mat files, v5 and v7.3.

matRad (https://github.com/e0404/matRad) keeps a patient in two variables:

- ``ct``: a struct with ``cubeHU`` (a cell of 3-D arrays, HU) and / or ``cube`` (a cell of
  density cubes: relative electron density for photon plans, relative stopping power for
  particle plans), ``resolution`` (struct with ``x``, ``y``, ``z`` in mm), ``cubeDim`` =
  [ny nx nz] and, optionally, world coordinate vectors ``x``, ``y``, ``z`` (voxel centres, mm)
  or ``dicomInfo.ImagePositionPatient``. Files that went through matRad's
  ``matRad_calcWaterEqD`` also carry ``hlut``, the N x 2 (HU, density) lookup table that made
  ``cube`` from ``cubeHU``; older files may hold only ``cube``. :func:`load_matrad` records the
  table it uses on the patient (``density_table``, ``density_table_source``).
- ``cst``: an N x >=6 cell array, one row per structure: {index (0-based), name, type
  ('TARGET' / 'OAR' / 'IGNORED'), {voxel indices}, properties struct, objectives}. The voxel
  indices are 1-based MATLAB linear indices into the cube in column-major order. matRad types
  the body contour 'OAR'; rows named like a body (:data:`BODY_NAMES`) become helpers.

**Index order.** A matRad cube is indexed ``(y, x, z)``: rows are y, columns x, slices z, so a
linear index ``L`` (1-based) is ``L - 1 = iy + ny * (ix + nx * iz)``. bioplan arrays are
``[z, y, x]``; the cube is transposed accordingly and indices are unravelled in Fortran order with
shape ``(ny, nx, nz)``.

**Coordinates.** matRad's world coordinates are taken as DICOM patient coordinates (LPS, mm), as
matRad's own DICOM importer does. When ``ct.x/y/z`` are absent, positions follow
``matRad_getWorldAxes``: first voxel at ``ct.dicomInfo.ImagePositionPatient`` if present,
otherwise at ``-(cubeDim / 2) .* [res.x res.y res.z]`` (matRad multiplies ``cubeDim = [ny nx nz]``
element-wise with ``[res.x res.y res.z]``; the same is done here so positions match matRad's).

**File formats.** v4-v7 files are read with :func:`scipy.io.loadmat`, v7.3 files (HDF5) with
``h5py``, an optional dependency (see :mod:`optimizer.io._matfile`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..geometry import BODY_NAMES, HU_TO_RED_TABLE, Grid, Patient, Structure, is_body_name
from ._matfile import MatradError, load_mat_variables

__all__ = ["BODY_NAMES", "MatradError", "is_body_name", "load_matrad"]

_ROLES = {"TARGET": "target", "OAR": "oar", "IGNORED": "other"}

# -- interpreting ct and cst ------------------------------------------------------------------


def _first_cell(value):
    """The first element of a cell (object array), or the value itself."""
    while isinstance(value, np.ndarray) and value.dtype == object:
        if value.size == 0:
            return None
        value = value.ravel(order="F")[0]
    return value


def _scalar(value, what: str, path: str) -> float:
    v = _first_cell(value)
    try:
        arr = np.asarray(v, dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise MatradError(f"{path}: {what}: expected a number, got {v!r}") from exc
    if arr.size != 1 or not np.isfinite(arr[0]):
        raise MatradError(f"{path}: {what}: expected one finite number, got {v!r}")
    return float(arr[0])


def _cube(ct: dict, key: str, path: str) -> np.ndarray | None:
    """``ct.<key>`` (cubeHU or cube) as a float (y, x, z) array, or None when absent / empty."""
    if key not in ct:
        return None
    cell = ct[key]
    if isinstance(cell, np.ndarray) and cell.dtype == object and cell.size > 1:
        warnings.warn(f"{path}: ct.{key} has {cell.size} phases/scenarios; using the first", stacklevel=3)
    cube = _first_cell(cell)
    if cube is None:
        return None
    try:
        cube = np.asarray(cube, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MatradError(f"{path}: ct.{key}: not a numeric array") from exc
    if cube.size == 0:
        return None
    if cube.ndim == 2:  # MATLAB drops a trailing singleton dimension (one slice)
        cube = cube[:, :, None]
    if cube.ndim != 3:
        raise MatradError(f"{path}: ct.{key}: expected a 3-D (y, x, z) array, got shape {cube.shape}")
    if not np.all(np.isfinite(cube)):
        raise MatradError(f"{path}: ct.{key}: contains NaN or infinite values")
    return cube


def _hlut(ct: dict, path: str) -> tuple[np.ndarray | None, str]:
    """The file's HU -> density table ``ct.hlut`` (N x 2), or None and why not."""
    if "hlut" not in ct:
        return None, "the file has no ct.hlut"
    try:
        t = np.asarray(_first_cell(ct["hlut"]), dtype=float)
    except (TypeError, ValueError):
        return None, "the file's ct.hlut is not numeric"
    if t.ndim == 2 and t.shape[0] == 2 and t.shape[1] != 2:
        t = t.T  # tolerate a 2 x N table
    if t.ndim != 2 or t.shape[1] != 2 or t.shape[0] < 2:
        return None, f"the file's ct.hlut has shape {t.shape}, expected N x 2 (HU, density)"
    if not np.all(np.isfinite(t)):
        return None, "the file's ct.hlut holds NaN or infinite values"
    if np.any(np.diff(t[:, 0]) <= 0):
        return None, "the file's ct.hlut HU column is not strictly increasing"
    if np.any(t[:, 1] < 0):
        return None, "the file's ct.hlut holds negative densities"
    return t, ""


def _invertible(table: np.ndarray) -> np.ndarray | None:
    """(density, HU) points to invert a table: flat runs keep their first HU; None when the
    density decreases somewhere (no unique HU for a density)."""
    keep = [0]
    for i in range(1, len(table)):
        if table[i, 1] > table[keep[-1], 1]:
            keep.append(i)
        elif table[i, 1] < table[keep[-1], 1]:
            return None
    return table[keep] if len(keep) >= 2 else None


def _axis(ct: dict, key: str, n: int, res: float, first: float, path: str) -> float:
    """Position of the first voxel centre along one axis, checked against ct.<key> if present."""
    if key not in ct or ct[key] is None or np.asarray(ct[key]).size == 0:
        return first
    try:
        v = np.asarray(ct[key], dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise MatradError(f"{path}: ct.{key}: expected a numeric coordinate vector") from exc
    if v.size != n or not np.all(np.isfinite(v)):
        raise MatradError(f"{path}: ct.{key}: {v.size} coordinates for {n} voxels along {key}")
    if n > 1 and np.max(np.abs(np.diff(v) - res)) > 0.01 * res:
        raise MatradError(
            f"{path}: ct.{key}: coordinate spacing {np.diff(v)[:3]} mm differs from "
            f"ct.resolution.{key} = {res} mm"
        )
    return float(v[0])


def _role(kind: str) -> str:
    return _ROLES.get(str(kind).strip().upper(), "other")


def _indices(value, n_total: int, name: str, path: str) -> np.ndarray:
    v = _first_cell(value)
    if v is None:
        return np.zeros(0, dtype=np.int64)
    try:
        idx = np.asarray(v, dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise MatradError(f"{path}: cst '{name}': voxel indices are not numeric") from exc
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.all(np.isfinite(idx)) or np.any(idx != np.round(idx)):
        raise MatradError(f"{path}: cst '{name}': voxel indices must be integers")
    idx = idx.astype(np.int64)
    if idx.min() < 1 or idx.max() > n_total:
        raise MatradError(
            f"{path}: cst '{name}': voxel indices {idx.min()}..{idx.max()} outside 1..{n_total} "
            "(1-based MATLAB linear indices into ct.cube)"
        )
    return idx


def _color(props) -> tuple[float, float, float] | None:
    if not isinstance(props, dict) or "visibleColor" not in props:
        return None
    try:
        c = np.asarray(props["visibleColor"], dtype=float).ravel()
    except (TypeError, ValueError):
        return None
    if c.size != 3 or not np.all(np.isfinite(c)):
        return None
    return tuple(float(min(max(v, 0.0), 1.0)) for v in c)


def _normalize(name: str) -> str:
    return "".join(str(name).split()).lower()


def _density_setup(ct: dict, hu_cube, density_cube, path: str):
    """The (y, x, z) HU cube, the density table and a sentence naming it.

    See :func:`load_matrad` (Returns) for the rules."""
    hlut, why_not = _hlut(ct, path)
    if hlut is not None:
        table = hlut
        source = (f"ct.hlut of the file ({len(hlut)} points, HU -> relative electron density as "
                  "matRad_calcWaterEqD stored it; for particle plans matRad stores relative stopping "
                  "power there)")
    else:
        table = HU_TO_RED_TABLE.copy()
        source = f"bioplan default HU_TO_RED_TABLE ({why_not})"
        if "hlut" in ct:
            warnings.warn(f"{path}: ct.hlut ignored: {why_not}; using bioplan's HU_TO_RED_TABLE",
                          stacklevel=3)
    if hu_cube is not None:
        if density_cube is not None:  # both present: do they agree under the table in use?
            diff = float(np.max(np.abs(np.interp(hu_cube, table[:, 0], table[:, 1]) - density_cube)))
            if diff > 0.01:
                warnings.warn(
                    f"{path}: ct.cube (the file's densities) differs from ct.cubeHU through the "
                    f"{'file' if hlut is not None else 'default'} HU -> density table by up to "
                    f"{diff:.3g}; patient.density_cube keeps the file's densities", stacklevel=3)
        return hu_cube, table, source
    # only ct.cube (densities): HU by inverting the table in use
    inverse = _invertible(table)
    if inverse is None:  # the file's table is not monotone in density: no unique HU
        why = "the file's ct.hlut density is not monotone in HU, so it cannot be inverted"
        table, inverse = HU_TO_RED_TABLE.copy(), _invertible(HU_TO_RED_TABLE)
        source = f"bioplan default HU_TO_RED_TABLE ({why})"
    lo, hi = float(inverse[0, 1]), float(inverse[-1, 1])
    n_out = int(np.count_nonzero((density_cube < lo - 1e-6) | (density_cube > hi + 1e-6)))
    used = "the file's ct.hlut" if table is hlut else "bioplan's default HU_TO_RED_TABLE"
    warnings.warn(
        f"{path}: ct has no cubeHU; HU derived from ct.cube (density) by inverting {used}"
        + (f"; {n_out} voxels outside its density range {lo:g}..{hi:g} were clamped" if n_out else ""),
        stacklevel=3)
    source += ("; the file has no ct.cubeHU: HU derived from ct.cube (densities) by inverting this "
               "table, the densities themselves are in patient.density_cube")
    return np.interp(density_cube, inverse[:, 1], inverse[:, 0]), table, source


def load_matrad(path: str | os.PathLike, name: str | None = None,
                body_names: Iterable[str] | None = None) -> Patient:
    """Read a matRad patient (``ct`` and ``cst``) from a MATLAB .mat file (v5 or v7.3).

    Parameters
    ----------
    path : the .mat file (e.g. matRad's ``TG119.mat``, ``PROSTATE.mat`` or a CORT case).
    name : patient label; default the file name without extension.
    body_names : names of body / external contours (case and whitespace ignored); a ``cst`` row
        of type OAR with one of these names is imported with role "other" (a helper structure,
        sampled in the optimization like every body contour in bioplan), with a warning. Default
        :data:`BODY_NAMES`; ``()`` keeps every OAR an OAR.

    Returns
    -------
    Patient
        Grid ``[z, y, x]`` with spacing from ``ct.resolution`` and origin as described in the
        module docstring; one structure per non-empty ``cst`` row (TARGET -> "target", OAR ->
        "oar" except body contours -> "other", anything else -> "other"). Empty structures are
        skipped with a warning; repeated names get a suffix " (2)", ...

        CT and densities: ``ct_hu`` is ``ct.cubeHU``. The returned patient also carries

        - ``density_table``: N x 2 float array (HU, relative density), the file's own
          ``ct.hlut`` (what matRad used to make ``ct.cube``) when present and valid, otherwise a
          copy of :data:`~optimizer.geometry.HU_TO_RED_TABLE` (a malformed ``ct.hlut`` gives a
          warning). Pass it as ``patient.relative_electron_density(patient.density_table)``.
        - ``density_table_source``: a sentence saying which table that is and why.
        - ``density_cube``: the file's ``ct.cube`` as ``[z, y, x]`` float32 (matRad's relative
          electron density, or stopping power in particle plans), or None when the file has
          none. When both cubes are present and disagree with the table by more than 0.01, a
          warning says so.

        When the file has only ``ct.cube``, ``ct_hu`` is derived by inverting ``density_table``
        (flat runs of the table map to their lowest HU; a table whose density is not monotone
        cannot be inverted and the default table is used instead), with a warning, and
        ``density_table_source`` says so.

    Raises
    ------
    FileNotFoundError if the file does not exist; MatradError for unreadable or inconsistent
    content (named field).
    """
    path = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = load_mat_variables(path, ("ct", "cst"))
    for key in ("ct", "cst"):
        if key not in data:
            raise MatradError(f"{path}: no variable '{key}' (a matRad patient file holds ct and cst)")
    ct = data["ct"]
    if isinstance(ct, list):
        ct = ct[0] if ct else None
    if not isinstance(ct, dict):
        raise MatradError(f"{path}: ct: expected a struct")
    hu_cube, density_cube = _cube(ct, "cubeHU", path), _cube(ct, "cube", path)
    if hu_cube is None and density_cube is None:
        raise MatradError(f"{path}: ct has neither cubeHU nor cube (fields: {sorted(ct)})")
    if hu_cube is not None and density_cube is not None and hu_cube.shape != density_cube.shape:
        raise MatradError(f"{path}: ct.cubeHU {hu_cube.shape} and ct.cube {density_cube.shape} differ "
                          "in size")
    key = "cubeHU" if hu_cube is not None else "cube"
    ny, nx, nz = (hu_cube if hu_cube is not None else density_cube).shape
    if "resolution" not in ct or not isinstance(ct["resolution"], dict):
        raise MatradError(f"{path}: ct.resolution: expected a struct with x, y, z (mm)")
    res = {a: _scalar(ct["resolution"].get(a), f"ct.resolution.{a}", path) for a in "xyz"}
    if any(v <= 0 for v in res.values()):
        raise MatradError(f"{path}: ct.resolution: voxel sizes must be positive, got {res}")
    if "cubeDim" in ct and np.asarray(ct["cubeDim"]).size:
        dim = np.asarray(ct["cubeDim"], dtype=float).ravel()
        expected = [ny, nx, nz] if dim.size == 3 else [ny, nx]
        if list(dim.astype(int)) != expected[: dim.size]:
            raise MatradError(f"{path}: ct.cubeDim {list(dim.astype(int))} does not match ct.{key} "
                              f"size [{ny} {nx} {nz}] (y, x, z)")
    dicom_info = ct.get("dicomInfo")
    first = None
    if isinstance(dicom_info, dict) and "ImagePositionPatient" in dicom_info:
        ipp = np.asarray(dicom_info["ImagePositionPatient"], dtype=float).ravel()
        if ipp.size == 3 and np.all(np.isfinite(ipp)):
            first = ipp
    if first is None:  # matRad_getWorldAxes: -(cubeDim / 2) .* [res.x res.y res.z]
        first = -np.array([ny, nx, nz], dtype=float) / 2 * np.array([res["x"], res["y"], res["z"]])
    x0 = _axis(ct, "x", nx, res["x"], float(first[0]), path)
    y0 = _axis(ct, "y", ny, res["y"], float(first[1]), path)
    z0 = _axis(ct, "z", nz, res["z"], float(first[2]), path)
    grid = Grid(shape=(nz, ny, nx), spacing_mm=(res["z"], res["y"], res["x"]), origin_mm=(z0, y0, x0))
    hu, table, source = _density_setup(ct, hu_cube, density_cube, path)
    ct_hu = np.ascontiguousarray(np.transpose(hu, (2, 0, 1)), dtype=np.float32)  # (y, x, z) -> [z, y, x]

    cst = data["cst"]
    if not isinstance(cst, np.ndarray) or cst.dtype != object or cst.ndim != 2:
        raise MatradError(f"{path}: cst: expected an N x 6 cell array")
    if cst.shape[1] < 4 and cst.shape[0] >= 4:
        cst = cst.T  # tolerate a transposed cst
    if cst.shape[1] < 4:
        raise MatradError(
            f"{path}: cst: expected at least 4 columns (index, name, type, voxels), got {cst.shape}"
        )
    structures: list[Structure] = []
    used: set[str] = set()
    n_total = nx * ny * nz
    for i in range(cst.shape[0]):
        raw_name = _first_cell(cst[i, 1])
        sname = str(raw_name).strip() if raw_name is not None else ""
        sname = sname or f"structure {i + 1}"
        idx = _indices(cst[i, 3], n_total, sname, path)
        if idx.size == 0:
            warnings.warn(f"{path}: cst '{sname}' has no voxels; skipped", stacklevel=2)
            continue
        iy, ix, iz = np.unravel_index(idx - 1, (ny, nx, nz), order="F")
        mask = np.zeros(grid.shape, dtype=bool)
        mask[iz, iy, ix] = True
        unique, k = sname, 2
        while "".join(unique.split()).lower() in used:
            unique, k = f"{sname} ({k})", k + 1
        if unique != sname:
            warnings.warn(f"{path}: cst name '{sname}' repeated; renamed '{unique}'", stacklevel=2)
        used.add("".join(unique.split()).lower())
        kind = _first_cell(cst[i, 2])
        props = _first_cell(cst[i, 4]) if cst.shape[1] > 4 else None
        role = _role(kind if kind is not None else "")
        if role == "oar" and is_body_name(sname, body_names):
            warnings.warn(f"{path}: cst '{unique}' (type OAR) is the body contour: imported with role "
                          "'other' (a helper structure); pass body_names=() to keep it an OAR",
                          stacklevel=2)
            role = "other"
        structures.append(Structure(unique, mask, role=role, color=_color(props)))
    patient = Patient(grid=grid, ct_hu=ct_hu, structures=structures, name=name or Path(path).stem)
    patient.density_table = np.array(table, dtype=float)
    patient.density_table_source = source
    patient.density_cube = (None if density_cube is None else
                            np.ascontiguousarray(np.transpose(density_cube, (2, 0, 1)), dtype=np.float32))
    return patient
