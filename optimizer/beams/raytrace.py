"""Beam geometry (IEC 61217) and radiological depth by ray tracing through a density cube.

Coordinates: patient LPS (x to the patient's left, y posterior, z superior), mm, for a
head-first-supine patient. IEC 61217 gantry angle theta: the source sits at
``iso + SAD (sin theta, -cos theta, 0)`` - above the patient (anterior) at 0 deg and on the
patient's left at 90 deg. Beam's-eye-view axes: ``u`` (IEC beam-limiting-device X) and ``v``
(IEC Y, towards the gantry = superior). Positions in the beam's eye view are given in the
isocentre plane (projected along the diverging ray), so a beamlet grid there diverges like the
real collimator aperture.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import BeamError
from ..geometry import Grid


@dataclass(frozen=True)
class BeamGeometry:
    """One beam direction.

    Parameters
    ----------
    gantry_deg : IEC 61217 gantry angle, degrees
    isocenter_mm : (x, y, z) LPS position of the isocentre, mm
    sad_mm : source-axis distance, mm (photons 1000; for protons a virtual source distance)
    couch_deg : IEC 61217 patient-support angle; only 0 is supported for now
    """

    gantry_deg: float
    isocenter_mm: tuple[float, float, float]
    sad_mm: float = 1000.0
    couch_deg: float = 0.0

    def __post_init__(self):
        gantry = check_number(self.gantry_deg, "gantry_deg", "a finite angle in degrees")
        couch = check_real(self.couch_deg, "couch_deg", "0 (only coplanar beams are supported)")
        if couch != 0:
            raise BeamError(f"couch_deg: only 0 (coplanar beams) is supported, got {self.couch_deg}")
        iso = check_point(self.isocenter_mm, "isocenter_mm")
        sad = check_number(self.sad_mm, "sad_mm", "a positive distance in mm", lambda v: v > 0)
        for name, value in (("gantry_deg", gantry), ("couch_deg", couch), ("isocenter_mm", iso),
                            ("sad_mm", sad)):
            object.__setattr__(self, name, value)

    @property
    def _theta(self) -> float:
        return np.deg2rad(self.gantry_deg)

    @property
    def direction(self) -> np.ndarray:
        """Unit vector from the source towards the isocentre (LPS)."""
        return np.array([-np.sin(self._theta), np.cos(self._theta), 0.0])

    @property
    def u_axis(self) -> np.ndarray:
        """Beam's-eye-view u axis (IEC X of the collimator), unit vector in LPS."""
        return np.array([np.cos(self._theta), np.sin(self._theta), 0.0])

    @property
    def v_axis(self) -> np.ndarray:
        """Beam's-eye-view v axis (IEC Y, towards the gantry: patient superior), LPS."""
        return np.array([0.0, 0.0, 1.0])

    @property
    def source_mm(self) -> np.ndarray:
        return np.asarray(self.isocenter_mm) - self.sad_mm * self.direction

    def to_beam(self, positions_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Beam coordinates of points (N, 3) in LPS mm.

        Returns ``(u_iso, v_iso, t)``: lateral position projected to the isocentre plane (mm)
        and distance from the source along the central axis (mm).
        """
        rel = np.asarray(positions_xyz, dtype=float) - self.source_mm
        t = rel @ self.direction
        if np.any(t <= 0):
            raise BeamError("positions: some points lie behind the source; increase sad_mm")
        scale = self.sad_mm / t
        return (rel @ self.u_axis) * scale, (rel @ self.v_axis) * scale, t

    def from_beam(self, u_iso, v_iso, t) -> np.ndarray:
        """LPS positions (..., 3) of beam coordinates (inverse of :meth:`to_beam`)."""
        u_iso, v_iso, t = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (u_iso, v_iso, t)))
        f = (t / self.sad_mm)[..., None]
        ray = self.direction + (u_iso[..., None] * self.u_axis + v_iso[..., None] * self.v_axis) / self.sad_mm
        return self.source_mm + f * self.sad_mm * ray


def _grid_bounds_t(grid: Grid, geom: BeamGeometry) -> tuple[float, float]:
    """Range of central-axis distance t covered by the grid's bounding box corners."""
    axes = grid.axes_mm()
    lo = [a[0] - s / 2 for a, s in zip(axes, grid.spacing_mm)]
    hi = [a[-1] + s / 2 for a, s in zip(axes, grid.spacing_mm)]
    corners = np.array([[x, y, z] for z in (lo[0], hi[0]) for y in (lo[1], hi[1]) for x in (lo[2], hi[2])])
    t = (corners - geom.source_mm) @ geom.direction
    return float(t.min()), float(t.max())


def _fan_axis(x: np.ndarray, spacing: float) -> np.ndarray:
    """Ray positions (isocentre plane, mm) covering ``x`` with one ray to spare on either side,
    on the lattice ``k * spacing`` (k integer) fixed to the central axis."""
    lo = math.floor(float(np.min(x)) / spacing) - 1
    hi = math.ceil(float(np.max(x)) / spacing) + 1
    return np.arange(lo, hi + 1) * spacing


def radiological_depth(
    density: np.ndarray,
    grid: Grid,
    geom: BeamGeometry,
    positions_xyz: np.ndarray,
    ray_spacing_mm: float | None = None,
    step_mm: float | None = None,
    *,
    exact_surface: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Water-equivalent depth of points along the diverging rays from the source.

    A fan of rays, one per ``ray_spacing_mm`` in the isocentre plane, is sampled every
    ``step_mm`` along the central axis (trilinear density interpolation, density 0 outside the
    grid) and integrated by the midpoint rule; each point then takes the value interpolated
    between the neighbouring rays and steps, among the samples that see the grid's density (a
    ray beside the grid, beyond its last slice, does not lower the depth of the edge slices).
    The rays lie on a lattice fixed to the beam axis, so a point's depth does not depend on
    which other points are traced. Vectorized: no Python loop over voxels or rays.

    Parameters
    ----------
    density : [z, y, x] relative density (electron density for photons, stopping power for
        protons), dimensionless, water = 1
    grid : the grid of ``density``
    geom : beam geometry
    positions_xyz : (N, 3) LPS points, mm
    ray_spacing_mm, step_mm : default: the smallest voxel size, and half of it
    exact_surface : False (default): trilinear density with 0 outside the grid and samples
        starting on the grid boundary, so a medium that fills the grid up to its edge starts only
        at the first voxel centre, ramped (a grid starting at the water surface loses a quarter
        voxel of depth: 0.5 mm at 2 mm voxels). True: every voxel is a box of its own density out
        to the grid boundary (nearest-edge density inside the grid's bounding box, 0 outside) and
        the samples are segment midpoints from the boundary, so the depth of a voxel centre
        behind a grid-edge surface is exact (half a voxel for the first voxel); interior
        interfaces are treated as before (linear ramp between voxel centres, the same integral)

    Returns
    -------
    u_iso, v_iso, t : beam coordinates of the points (see :meth:`BeamGeometry.to_beam`), mm
    depth_mm : radiological (water-equivalent) depth of each point from the source side, mm
    """
    density = np.asarray(density, dtype=np.float32)
    if density.shape != grid.shape:
        raise BeamError(f"density: shape {density.shape} does not match grid.shape {grid.shape}")
    h = min(grid.spacing_mm)
    ray_spacing_mm = check_number(h if ray_spacing_mm is None else ray_spacing_mm, "ray_spacing_mm",
                                  "a positive spacing in mm", lambda x: x > 0)
    step_mm = check_number(h / 2 if step_mm is None else step_mm, "step_mm", "a positive step in mm",
                           lambda x: x > 0)
    u, v, t = geom.to_beam(positions_xyz)
    if len(t) == 0:
        return u, v, t, np.zeros(0)

    t0, t1 = _grid_bounds_t(grid, geom)
    t0 = max(t0, 1e-3)
    ts = np.arange(t0, t1 + step_mm, step_mm)
    if exact_surface:
        ts = ts + 0.5 * step_mm  # segment midpoints: the segments tile [t0, ...) from the boundary
    # rays on a lattice fixed to the beam axis (multiples of ray_spacing_mm), not to the points'
    # extent: a point's interpolated depth must not depend on which other points are traced
    us = _fan_axis(u, ray_spacing_mm)
    vs = _fan_axis(v, ray_spacing_mm)
    U, V, T = np.meshgrid(us, vs, ts, indexing="ij")
    pts = geom.from_beam(U, V, T)  # (nu, nv, nt, 3) in x, y, z
    idx = [(pts[..., 2 - k] - grid.origin_mm[k]) / grid.spacing_mm[k] for k in range(3)]
    # where the samples see the grid's density: its bounding box (voxel coordinates -0.5 .. n - 0.5)
    # with exact_surface, else between the outer voxel centres (map_coordinates' "constant" mode
    # gives 0 beyond them)
    edge = 0.5 if exact_surface else 0.0
    inside = np.ones(U.shape, dtype=bool)
    for k in range(3):
        inside &= (idx[k] >= -edge) & (idx[k] <= grid.shape[k] - 1 + edge)
    if exact_surface:
        rho = ndimage.map_coordinates(density, idx, order=1, mode="nearest")
        rho *= inside
    else:
        rho = ndimage.map_coordinates(density, idx, order=1, mode="constant", cval=0.0)
    del pts, idx
    # path length per unit of t along a diverging ray
    stretch = np.sqrt(1.0 + (U[..., :1] ** 2 + V[..., :1] ** 2) / geom.sad_mm**2)
    seg = rho * step_mm * stretch
    cum = np.cumsum(seg, axis=2) - 0.5 * seg  # depth at sample centres
    iu = (u - us[0]) / ray_spacing_mm
    iv = (v - vs[0]) / ray_spacing_mm
    it = (t - ts[0]) / step_mm
    # a point takes its depth from the neighbouring ray samples that see the grid's density only:
    # a ray passing beside the grid (beyond its first / last slice) has depth 0 there, and mixed in
    # it took up to half the depth off the edge slices' points (35 mm at a 6 mm dose grid)
    weight = ndimage.map_coordinates(inside.astype(np.float32), [iu, iv, it], order=1, mode="nearest")
    beside = weight <= 1e-6  # points with no such sample near them keep the plain interpolation
    plain = ndimage.map_coordinates(cum, [iu[beside], iv[beside], it[beside]], order=1, mode="nearest")
    cum *= inside  # in place: the fan is the largest array here
    depth = ndimage.map_coordinates(cum, [iu, iv, it], order=1, mode="nearest") / np.maximum(weight, 1e-6)
    depth[beside] = plain
    return u, v, t, np.maximum(depth, 0.0)


def fan_samples(grid: Grid, geom: BeamGeometry, u: np.ndarray, v: np.ndarray,
                ray_spacing_mm: float | None = None, step_mm: float | None = None) -> int:
    """Number of density samples :func:`radiological_depth` takes for points with these
    isocentre-plane coordinates (same defaults): the size of its ray fan, without building it."""
    if len(u) == 0:
        return 0
    h = min(grid.spacing_mm)
    rs = h if ray_spacing_mm is None else float(ray_spacing_mm)
    st = h / 2 if step_mm is None else float(step_mm)
    t0, t1 = _grid_bounds_t(grid, geom)
    t0 = max(t0, 1e-3)
    n_u = len(_fan_axis(u, rs))
    n_v = len(_fan_axis(v, rs))
    n_t = math.ceil((t1 - t0 + st) / st)
    return n_u * n_v * max(n_t, 1)


def coarse_depth(density: np.ndarray, grid: Grid, geom: BeamGeometry, positions_xyz: np.ndarray,
                 max_rays: int = 1024, max_steps: int = 128) -> np.ndarray:
    """Radiological depth of points traced on a coarse fan (at most ``max_rays`` rays of at most
    ``max_steps`` samples, never finer than :func:`radiological_depth`'s defaults): cheap at any
    problem size, for memory estimates."""
    u, v, t = geom.to_beam(positions_xyz)
    if len(t) == 0:
        return np.zeros(0)
    h = min(grid.spacing_mm)
    area = (float(u.max() - u.min()) + 3 * h) * (float(v.max() - v.min()) + 3 * h)
    rs = max(h, math.sqrt(area / max_rays))
    t0, t1 = _grid_bounds_t(grid, geom)
    st = max(h / 2, (t1 - max(t0, 1e-3)) / max_steps)
    return radiological_depth(density, grid, geom, positions_xyz, rs, st)[3]


# -- argument checks shared by the beam models -----------------------------------------------------
#: Bytes :func:`radiological_depth` holds per sample of its ray fan at its peak (U, V, T, the
#: sample positions, the interpolation coordinates and their stacked copy, the densities;
#: measured with tracemalloc).
FAN_BYTES_PER_SAMPLE = 104


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_real(value, name: str, expected: str) -> float:
    """A real scalar (Python or NumPy int/float, or a 0-d array of them) as a float, NaN and inf
    included; strings, booleans, None, sequences and other types raise :class:`BeamError`."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
        raise BeamError(f"{name}: expected {expected}, got {_show(value)}")
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        return float(value)
    raise BeamError(f"{name}: expected {expected}, got {_show(value)}")


def check_number(value, name: str, expected: str, ok=None, allow_inf: bool = False) -> float:
    """A finite real scalar (inf too with ``allow_inf``) for which ``ok(value)`` holds."""
    v = check_real(value, name, expected)
    if math.isnan(v) or (math.isinf(v) and not allow_inf) or (ok is not None and not ok(v)):
        raise BeamError(f"{name}: expected {expected}, got {_show(value)}")
    return v


def _angle_list(values, name: str, what: str) -> list[float]:
    """One angle or a flat sequence of angles (degrees) as a list of finite floats."""
    expected = f"a {what} angle or a sequence of {what} angles in degrees"
    if isinstance(values, (numbers.Real, np.ndarray)) and np.ndim(values) == 0:
        return [check_number(values, name, "a finite angle in degrees")]
    scalar_like = isinstance(values, (str, bytes, bool, np.bool_)) or values is None
    if scalar_like or not isinstance(values, Iterable):
        raise BeamError(f"{name}: expected {expected}, got {_show(values)}")
    return [check_number(g, f"{name}[{i}]", "a finite angle in degrees") for i, g in enumerate(values)]


def _same_angle(a: float, b: float) -> bool:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d) < 1e-6


def check_beam_angles(gantry_deg, couch_deg=0.0, name: str = "gantry_deg",
                      couch_name: str = "couch_deg") -> tuple[list[float], list[float]]:
    """Gantry and couch angles of a set of beams (degrees, IEC 61217) as two equal-length lists of
    floats, in the given order.

    ``gantry_deg``: one number or a flat sequence of numbers; ``couch_deg``: one number for every
    beam or one per beam. Every angle must be finite. Two beams whose gantry and couch angles are
    both equal modulo 360 deg would count one beam direction twice and are refused, naming the
    duplicates."""
    gantry = _angle_list(gantry_deg, name, "gantry")
    if not gantry:
        raise BeamError(f"{name}: expected at least one gantry angle")
    if isinstance(couch_deg, (numbers.Real, np.ndarray)) and np.ndim(couch_deg) == 0:
        couch = _angle_list(couch_deg, couch_name, "couch") * len(gantry)
    else:
        couch = _angle_list(couch_deg, couch_name, "couch")
        if len(couch) != len(gantry):
            raise BeamError(f"{couch_name}: expected one couch angle or one per beam ({len(gantry)}), "
                            f"got {len(couch)}")
    dups, couches = [], set()
    for i in range(len(gantry)):
        for j in range(i + 1, len(gantry)):
            if _same_angle(gantry[i], gantry[j]) and _same_angle(couch[i], couch[j]):
                dups.append(f"{gantry[i]:g} and {gantry[j]:g} (beams {i} and {j})")
                couches.add(f"{couch[i]:g}")
    if dups:
        raise BeamError(
            f"{name}: duplicate gantry angles (equal modulo 360 deg at couch {', '.join(sorted(couches))} "
            f"deg): {'; '.join(dups)}; each would add the same beam twice. Give each direction once")
    return gantry, couch


def _as_array(value, name: str, expected: str) -> np.ndarray:
    """``value`` as an array; strings, None and ragged input are refused naming the field."""
    if isinstance(value, (str, bytes)) or value is None:
        raise BeamError(f"{name}: expected {expected}, got {_show(value)}")
    try:
        return np.asarray(value)
    except (TypeError, ValueError):
        raise BeamError(f"{name}: expected {expected}, got {_show(value)}") from None


def check_point(value, name: str = "isocenter_mm") -> tuple[float, float, float]:
    """Three finite numbers (x, y, z), mm."""
    expected = "3 finite numbers (x, y, z) in mm"
    arr = _as_array(value, name, expected)
    if arr.shape != (3,) or arr.dtype.kind not in "iuf" or not np.all(np.isfinite(arr)):
        raise BeamError(f"{name}: expected {expected}, got {_show(value)}")
    return tuple(float(c) for c in arr)


def check_bool_array(value, name: str, expected: str) -> np.ndarray:
    """A boolean array from booleans or from numbers that are all exactly 0 or 1 (NaN, 0.5 and
    other values are refused rather than read as True)."""
    arr = _as_array(value, name, expected)
    if arr.dtype.kind == "b":
        return arr
    if arr.dtype.kind not in "iuf":
        raise BeamError(f"{name}: expected {expected}, got an array of {arr.dtype}")
    if not np.all((arr == 0) | (arr == 1)):
        raise BeamError(f"{name}: expected {expected}; values other than 0 and 1 (or NaN) found")
    return arr.astype(bool)


def check_dose_mask(value, shape: tuple[int, int, int], name: str = "dose_mask") -> np.ndarray:
    """A non-empty [z, y, x] boolean mask of the grid shape."""
    mask = check_bool_array(value, name, f"a boolean [z, y, x] array of the grid shape {shape}")
    if mask.shape != tuple(shape):
        raise BeamError(f"{name}: shape {mask.shape} does not match grid.shape {tuple(shape)}")
    if not mask.any():
        raise BeamError(f"{name}: no voxels to compute dose in (the mask is all False)")
    return mask


def check_max_memory(value) -> float | None:
    """``max_memory_mb``: None (use the available memory) or a positive number of MB; inf
    switches the check off."""
    if value is None:
        return None
    return check_number(value, "max_memory_mb", "None or a positive number of MB (math.inf: no check)",
                        lambda v: v > 0, allow_inf=True)


def available_memory_mb(meminfo: str = "/proc/meminfo") -> float | None:
    """Memory available to a new computation, MB: ``MemAvailable`` of ``/proc/meminfo`` on Linux,
    else the free physical pages from ``os.sysconf``; None when neither is known."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages, page_size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    if pages <= 0 or page_size <= 0:
        return None
    return pages * page_size / 2**20


def _mb(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.3g}"


def refuse_if_too_large(estimate, max_memory_mb: float | None, available_mb: float | None,
                        hint: str) -> dict | None:
    """Raise :class:`BeamError` when the estimated peak memory exceeds ``max_memory_mb`` (when
    given) or else ``available_mb`` (when known). ``estimate``: a function returning a dict with
    ``peak_mb``, ``matrix_mb`` and ``nnz``, called only when there is a finite limit; returns
    its result (None when not called)."""
    if max_memory_mb is not None:
        limit, where = max_memory_mb, f"max_memory_mb is {_mb(max_memory_mb)} MB"
    elif available_mb is not None:
        limit, where = available_mb, f"only {_mb(available_mb)} MB available (MemAvailable)"
    else:
        return None
    if math.isinf(limit):
        return None
    estimate = estimate()
    if estimate["peak_mb"] <= limit:
        return estimate
    raise BeamError(
        f"max_memory_mb: building this influence matrix needs about {_mb(estimate['peak_mb'])} MB of "
        f"memory (estimate: {estimate['nnz']:,.0f} nonzeros, {_mb(estimate['matrix_mb'])} MB for the "
        f"finished float32 CSR matrix) but {where}. {hint}; or raise max_memory_mb (math.inf skips "
        "this check)")
