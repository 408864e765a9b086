"""Dose grids coarser than the CT: resampling a patient onto a coarser grid, and a dose back.

Rules (stated here once, used everywhere):

- The coarse grid covers the same box as the fine one: its first voxel starts at the fine grid's
  first voxel edge, and it has ``ceil(extent / spacing)`` voxels per axis (the last may reach a
  little past the fine grid).
- CT numbers: trilinear interpolation of the fine CT at the coarse voxel centres (points outside
  the fine grid take the nearest edge value).
- The target grid is either a voxel size (the grid above) or any :class:`Grid` that overlaps the
  fine one (axis-aligned, as every grid here).
- Structures: the **centre-point rule** - a coarse voxel belongs to a structure when its centre
  lies in a fine voxel of the structure (nearest fine voxel). A centre on the boundary of two fine
  voxels (within ``TIE_VOXELS`` of a voxel, float noise of DICOM spacings included: every
  integer spacing ratio puts all centres there) belongs to the upper one (higher index), on
  every axis and at every ratio. With ``target_rule="support"``
  targets (role "target") follow the **support rule** instead - a coarse voxel belongs to the
  target when it enters the trilinear interpolation of any fine target voxel - so the dose
  brought back onto the fine grid is, in every fine target voxel, a mix of optimized target
  voxels only and a dose floor met on the coarse target holds on the fine one. The price is a
  target grown by up to one coarse voxel: on the C-shape (2.5 mm CT, 5 mm dose grid, 9 beams)
  CT-grid PTV D95 51.4 Gy but core D10 40 Gy (the rim reaches the core), where the centre
  point keeps the core goal and loses ~5 Gy of CT-grid PTV D95 at the edge. A structure with
  no coarse voxel is left out with a warning naming it (a finer dose grid keeps it).
- Dose back onto another grid: trilinear interpolation, 0 outside the source grid
  (:func:`resample_dose` for a whole grid; :func:`interpolation_matrix` gives the same values as a
  sparse operator for chosen voxels, so a planning problem can optimize the interpolated dose).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from scipy import ndimage

from .errors import GeometryError
from .geometry import Grid, Patient, Structure

#: a coarse centre this close to a fine voxel boundary (in fine voxels) is a tie, given to the
#: upper voxel (``np.rint`` rounded ties to even: ratio 2 took the lower voxel, ratio 4 the upper,
#: and 0.976562 mm DICOM spacings alternated with float noise)
TIE_VOXELS = 1e-6


def coarse_grid(grid: Grid, spacing_mm, field: str = "spacing_mm") -> Grid:
    """The grid of voxel size ``spacing_mm`` (one number or (dz, dy, dx), mm) covering ``grid``;
    ``field``: the argument's name in error messages."""
    raw = np.asarray(spacing_mm, dtype=object).ravel()
    try:
        # numbers only: True would be 1 mm and "12" 12 mm
        if any(isinstance(v, (bool, np.bool_, str, bytes)) for v in raw):
            raise TypeError
        spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,)).copy()
    except (TypeError, ValueError):
        raise GeometryError(f"{field}: expected a voxel size in mm, 3 of them (dz, dy, dx) or an "
                            f"optimizer.Grid, got {spacing_mm!r}") from None
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise GeometryError(f"{field}: expected positive finite sizes in mm, got {spacing_mm!r}")
    fine = np.asarray(grid.spacing_mm)
    extent = np.asarray(grid.shape) * fine
    shape = np.maximum(np.ceil(extent / spacing - 1e-9).astype(int), 1)
    start = np.asarray(grid.origin_mm) - fine / 2  # first voxel edge
    return Grid(tuple(int(s) for s in shape), tuple(spacing), tuple(start + spacing / 2))


def target_grid(grid: Grid, spec, field: str = "spacing_mm") -> Grid:
    """The grid ``spec`` names for resampling ``grid``: a :class:`Grid` as it is (it must overlap
    ``grid``), else a voxel size (:func:`coarse_grid`); ``field``: the argument's name in errors."""
    if not isinstance(spec, Grid):
        return coarse_grid(grid, spec, field)
    lo = [np.asarray(g.origin_mm) - np.asarray(g.spacing_mm) / 2 for g in (grid, spec)]
    hi = [a + np.asarray(g.shape) * np.asarray(g.spacing_mm) for a, g in zip(lo, (grid, spec))]
    if np.any(np.minimum(hi[0], hi[1]) <= np.maximum(lo[0], lo[1])):
        raise GeometryError(f"{field}: the grid spans {_span(lo[1], hi[1])} mm (z, y, x) and does not "
                            f"overlap the patient's grid, {_span(lo[0], hi[0])} mm")
    return spec


def _span(lo, hi) -> str:
    return ", ".join(f"[{a:.1f}, {b:.1f}]" for a, b in zip(lo, hi))


def _nearest(c: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The fine voxel of fractional indices ``c`` (ties to the upper voxel, TIE_VOXELS) and
    whether it lies in the grid (n voxels)."""
    i = np.floor(c + 0.5 + TIE_VOXELS).astype(np.int64)
    inside = (i >= 0) & (i < n)
    return np.clip(i, 0, n - 1), inside


def _in_source(c, n: int):
    """Where fractional indices ``c`` into an axis of ``n`` voxels lie within its voxels (the
    interpolated dose is 0 elsewhere: :func:`resample_dose`)."""
    return (c > -0.5) & (c < n - 0.5)


def _fine_index(fine: Grid, coarse: Grid) -> tuple[np.ndarray, ...]:
    """Fractional [z, y, x] indices into ``fine`` of every ``coarse`` voxel centre."""
    axes = coarse.axes_mm()
    idx = [(a - o) / s for a, o, s in zip(axes, fine.origin_mm, fine.spacing_mm)]
    return np.meshgrid(*idx, indexing="ij")


def _fractional_index(of: Grid, into: Grid, axis: int, i) -> np.ndarray:
    """Fractional index into ``into`` along ``axis`` of the centres of the voxels ``i`` of ``of``."""
    pos = of.origin_mm[axis] + i * of.spacing_mm[axis]
    return (pos - into.origin_mm[axis]) / into.spacing_mm[axis]


TARGET_RULES = ("centre", "support")


def support_mask(mask: np.ndarray, fine: Grid, coarse: Grid) -> np.ndarray:
    """Coarse voxels with a non-zero trilinear weight at some fine voxel of ``mask``; fine voxels
    outside the coarse grid read none (their interpolated dose is 0: :func:`resample_dose`),
    rather than the edge voxel they would clamp to."""
    idx = np.nonzero(mask)
    out = np.zeros(coarse.shape, bool)
    frac_idx = [_fractional_index(fine, coarse, axis, i) for axis, i in enumerate(idx)]
    inside = np.ones(len(idx[0]), bool)
    for axis, c in enumerate(frac_idx):
        inside &= _in_source(c, coarse.shape[axis])
    corners = []
    for axis, c in enumerate(frac_idx):
        c = c[inside]
        # a fine centre on a coarse centre (to TIE_VOXELS) is on it: its index as computed may be
        # a hair below, and the lower neighbour with a weight of 1e-16 joined the target
        # (1.2 mm CT, 3.6 mm dose grid: coarse [0, 1] for a voxel on centre 1)
        whole = np.round(c)
        c = np.where(np.abs(c - whole) < TIE_VOXELS, whole, c)
        lo = np.floor(c).astype(int)
        frac = c - lo
        n = coarse.shape[axis]
        # the upper neighbour only where it carries weight; map_coordinates clamps at the edges
        corners.append((np.clip(lo, 0, n - 1), np.clip(np.where(frac > TIE_VOXELS, lo + 1, lo), 0, n - 1)))
    for a in corners[0]:
        for b in corners[1]:
            for c in corners[2]:
                out[a, b, c] = True
    return out


def resample_patient(patient: Patient, spacing_mm, target_rule: str = "centre") -> Patient:
    """The patient on a coarser (or finer) grid of voxel size ``spacing_mm``, or on the
    :class:`Grid` given (see the module rules: ``target_rule`` "support" or "centre" for
    role-"target" structures); the density table an importer set travels with it."""
    if target_rule not in TARGET_RULES:
        raise GeometryError(f"target_rule: expected one of {TARGET_RULES}, got {target_rule!r}")
    grid = target_grid(patient.grid, spacing_mm)
    zi, yi, xi = _fine_index(patient.grid, grid)
    coords = np.stack([zi, yi, xi])
    ct = ndimage.map_coordinates(patient.ct_hu.astype(float), coords, order=1, mode="nearest")
    nearest, inside = [], np.ones(grid.shape, bool)
    for c, n in zip((zi, yi, xi), patient.grid.shape):
        i, ok = _nearest(c, n)
        nearest.append(i)
        inside &= ok
    nearest = tuple(nearest)
    structures = []
    for s in patient.structures:
        mask = s.mask[nearest] & inside
        if s.role == "target" and target_rule == "support":
            mask |= support_mask(s.mask, patient.grid, grid)
        if not mask.any():
            warnings.warn(f"structure '{s.name}': no voxel of the {tuple(grid.spacing_mm)} mm grid has its "
                          f"centre inside it; left out (use a finer dose grid)", stacklevel=2)
            continue
        kept = covered_fraction(grid, patient.grid, s.mask)
        if kept < 1.0:  # a grid that covers the structure only partly: the rest is cut off
            warnings.warn(f"structure '{s.name}': only {100 * kept:.1f} % of its volume lies inside the "
                          f"{tuple(float(v) for v in grid.spacing_mm)} mm grid of shape {grid.shape}; the "
                          f"rest is left out", stacklevel=2)
        structures.append(Structure(s.name, mask, s.role, s.color))
    out = Patient(grid, ct.astype(np.float32), structures,
                  name=f"{patient.name} ({grid.spacing_mm[2]:g} mm)")
    table = getattr(patient, "density_table", None)
    if table is not None:
        out.density_table = table
    return out


def resample_dose(dose: np.ndarray, from_grid: Grid, to_grid: Grid) -> np.ndarray:
    """A dose (Gy, ``from_grid.shape``) on ``to_grid`` by trilinear interpolation; 0 outside."""
    dose = np.asarray(dose, dtype=float)
    if dose.shape != from_grid.shape:
        raise GeometryError(f"dose: shape {dose.shape} does not match from_grid.shape {from_grid.shape}")
    zi, yi, xi = _fine_index(from_grid, to_grid)
    # within half a voxel beyond the outer centres the edge value holds (mode "nearest")
    out = ndimage.map_coordinates(dose, np.stack([zi, yi, xi]), order=1, mode="nearest")
    inside = np.ones(to_grid.shape, bool)
    for c, n in zip((zi, yi, xi), from_grid.shape):
        inside &= _in_source(c, n)
    return np.where(inside, out, 0.0)


def covered_fraction(from_grid: Grid, to_grid: Grid, mask: np.ndarray) -> float:
    """The fraction of the voxels of ``mask`` (on ``to_grid``) that take their dose from
    ``from_grid`` in :func:`resample_dose` (the others lie outside it and get 0); 1 for an
    empty mask."""
    idx = np.nonzero(mask)
    if not len(idx[0]):
        return 1.0
    ok = np.ones(len(idx[0]), bool)
    for axis, i in enumerate(idx):
        c = _fractional_index(to_grid, from_grid, axis, i)
        ok &= _in_source(c, from_grid.shape[axis])
    return float(ok.mean())


def inside_of(from_grid: Grid, to_grid: Grid, mask: np.ndarray) -> bool:
    """Whether every voxel of ``mask`` (on ``to_grid``) takes its dose from ``from_grid`` in
    :func:`resample_dose` (the others get 0)."""
    return covered_fraction(from_grid, to_grid, mask) == 1.0


def interpolation_matrix(from_grid: Grid, to_grid: Grid, flat_index) -> sp.csr_matrix:
    """The trilinear interpolation of :func:`resample_dose` as a sparse matrix P, for the voxels
    ``flat_index`` (flat C-order indices of ``to_grid``): ``P @ dose.ravel()`` equals
    ``resample_dose(dose, from_grid, to_grid).ravel()[flat_index]`` for every dose on
    ``from_grid``. Rows: the voxels (at most 8 entries, weights summing to 1; an empty row outside
    ``from_grid``), columns: ``from_grid``'s flat indices. Kept beside ``resample_dose`` (which
    interpolates whole grids with ``ndimage.map_coordinates``) because a whole CT grid as a
    matrix would hold 8 entries per CT voxel."""
    flat_index = np.asarray(flat_index)
    if flat_index.ndim != 1 or (flat_index.size and not np.issubdtype(flat_index.dtype, np.integer)):
        raise GeometryError(f"flat_index: expected a 1-D array of integer voxel indices, got "
                            f"{flat_index.dtype} of shape {flat_index.shape}")
    n_to = int(np.prod(to_grid.shape))
    if flat_index.size and (flat_index.min() < 0 or flat_index.max() >= n_to):
        raise GeometryError(f"flat_index: indices must lie in [0, {n_to}) for to_grid of shape "
                            f"{to_grid.shape}")
    ijk = np.unravel_index(flat_index, to_grid.shape)
    inside = np.ones(len(flat_index), bool)
    lows, fracs = [], []
    for axis, i in enumerate(ijk):
        c = _fractional_index(to_grid, from_grid, axis, i)
        n = from_grid.shape[axis]
        inside &= _in_source(c, n)
        c = np.clip(c, 0.0, n - 1)  # mode "nearest": the edge value holds half a voxel beyond
        lo = np.minimum(np.floor(c).astype(np.int64), max(n - 2, 0))
        lows.append(lo)
        fracs.append(c - lo)
    rows, cols, vals = [], [], []
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                w = np.ones(len(flat_index))
                idx = []
                for axis, d in enumerate((dz, dy, dx)):
                    w = w * (fracs[axis] if d else 1.0 - fracs[axis])
                    idx.append(np.minimum(lows[axis] + d, from_grid.shape[axis] - 1))
                keep = inside & (w > 0)
                rows.append(np.flatnonzero(keep))
                cols.append(np.ravel_multi_index(tuple(a[keep] for a in idx), from_grid.shape))
                vals.append(w[keep])
    P = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(len(flat_index), int(np.prod(from_grid.shape))))
    P.sum_duplicates()
    return P
