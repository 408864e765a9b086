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
        if not np.isfinite(self.gantry_deg):
            raise BeamError(f"gantry_deg: expected a finite angle in degrees, got {self.gantry_deg}")
        if self.couch_deg != 0:
            raise BeamError(f"couch_deg: only 0 (coplanar beams) is supported, got {self.couch_deg}")
        iso = np.asarray(self.isocenter_mm, dtype=float)
        if iso.shape != (3,) or not np.all(np.isfinite(iso)):
            raise BeamError(f"isocenter_mm: expected 3 finite values (x, y, z), got {self.isocenter_mm}")
        if not (np.isfinite(self.sad_mm) and self.sad_mm > 0):
            raise BeamError(f"sad_mm: expected a positive distance in mm, got {self.sad_mm}")
        object.__setattr__(self, "isocenter_mm", tuple(float(v) for v in iso))

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


def radiological_depth(
    density: np.ndarray,
    grid: Grid,
    geom: BeamGeometry,
    positions_xyz: np.ndarray,
    ray_spacing_mm: float | None = None,
    step_mm: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Water-equivalent depth of points along the diverging rays from the source.

    A fan of rays, one per ``ray_spacing_mm`` in the isocentre plane, is sampled every
    ``step_mm`` along the central axis (trilinear density interpolation, density 0 outside the
    grid) and integrated by the midpoint rule; each point then takes the value interpolated
    between the neighbouring rays and steps. Vectorized: no Python loop over voxels or rays.

    Parameters
    ----------
    density : [z, y, x] relative density (electron density for photons, stopping power for
        protons), dimensionless, water = 1
    grid : the grid of ``density``
    geom : beam geometry
    positions_xyz : (N, 3) LPS points, mm
    ray_spacing_mm, step_mm : default: the smallest voxel size, and half of it

    Returns
    -------
    u_iso, v_iso, t : beam coordinates of the points (see :meth:`BeamGeometry.to_beam`), mm
    depth_mm : radiological (water-equivalent) depth of each point from the source side, mm
    """
    density = np.asarray(density, dtype=np.float32)
    if density.shape != grid.shape:
        raise BeamError(f"density: shape {density.shape} does not match grid.shape {grid.shape}")
    h = min(grid.spacing_mm)
    ray_spacing_mm = h if ray_spacing_mm is None else float(ray_spacing_mm)
    step_mm = h / 2 if step_mm is None else float(step_mm)
    u, v, t = geom.to_beam(positions_xyz)
    if len(t) == 0:
        return u, v, t, np.zeros(0)

    t0, t1 = _grid_bounds_t(grid, geom)
    t0 = max(t0, 1e-3)
    ts = np.arange(t0, t1 + step_mm, step_mm)
    us = np.arange(u.min() - ray_spacing_mm, u.max() + 2 * ray_spacing_mm, ray_spacing_mm)
    vs = np.arange(v.min() - ray_spacing_mm, v.max() + 2 * ray_spacing_mm, ray_spacing_mm)
    U, V, T = np.meshgrid(us, vs, ts, indexing="ij")
    pts = geom.from_beam(U, V, T)  # (nu, nv, nt, 3) in x, y, z
    idx = [(pts[..., 2 - k] - grid.origin_mm[k]) / grid.spacing_mm[k] for k in range(3)]
    rho = ndimage.map_coordinates(density, idx, order=1, mode="constant", cval=0.0)
    del pts, idx
    # path length per unit of t along a diverging ray
    stretch = np.sqrt(1.0 + (U[..., :1] ** 2 + V[..., :1] ** 2) / geom.sad_mm**2)
    seg = rho * step_mm * stretch
    cum = np.cumsum(seg, axis=2) - 0.5 * seg  # depth at sample centres
    iu = (u - us[0]) / ray_spacing_mm
    iv = (v - vs[0]) / ray_spacing_mm
    it = (t - ts[0]) / step_mm
    depth = ndimage.map_coordinates(cum, [iu, iv, it], order=1, mode="nearest")
    return u, v, t, np.maximum(depth, 0.0)
