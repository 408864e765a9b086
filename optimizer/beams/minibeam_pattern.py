"""Minibeam array geometry: the pattern of slits or pins, its collimator, grid checks, fine slabs.

A minibeam array is described in the beam's-eye view at the isocentre plane (IEC u = collimator
X across the gantry rotation, v = IEC Y along the patient's superior axis), mm:

* ``beam_width_mm`` (w): FWHM of a focused minibeam at the surface, or the projected slit width
  of a collimator; ``ctc_mm`` (c): centre-to-centre spacing, c > w;
* ``pattern``: ``"slit"`` (planar beams, modulation across ``across``, long along the other
  axis) or ``"pin"`` (a square lattice of round/square beams, modulation along both axes);
* ``across``: the beam's-eye axis the dose is modulated along ("u" or "v") for slits.

Published geometries (REFERENCES.md, Minibeams): proton minibeams 0.4-1 mm wide at 2-4 mm
centre-to-centre (Orsay brass multislit collimators: 0.4 mm slits at 3.2 mm, Guardiola et al.,
Med Phys 2017;44:1470, Peucelle et al., Med Phys 2015;42:7108; magnetically focused 1 mm FWHM at
4 mm, Schneider et al., Sci Rep 2020;10:1384); photon multislit collimators with 0.5-2 mm slits.

Peak and valley regions (:func:`peak_valley_labels`): a point is *peak* when it lies within a
quarter of the beam width of the projected centre line of a minibeam (the central half of the
beam), *valley* when it lies in the central half of the gap between two beams (distance to the
nearest centre >= c/2 - (c - w)/4). Both are at least half a voxel wide so coarse grids keep a
centre voxel. Points between are neither (penumbra).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BeamError, GeometryError
from ..geometry import Grid, Patient, Structure
from .raytrace import BeamGeometry, check_number

#: Fewest voxels per period across the modulation a grid must have to resolve peaks and valleys.
MIN_VOXELS_PER_PERIOD = 4


def _positive(value, name: str, expected: str = "a positive length in mm") -> float:
    return check_number(value, name, expected, lambda v: v > 0)


@dataclass(frozen=True)
class MinibeamPattern:
    """The array: beam width and spacing (mm, isocentre plane), slit or pin, modulation axis.

    Parameters
    ----------
    beam_width_mm : FWHM (focused) or projected slit width (collimated), mm, > 0
    ctc_mm : centre-to-centre spacing, mm, > beam_width_mm
    pattern : "slit" or "pin"
    across : "u" or "v": the beam's-eye axis across the slits (ignored for pins: both)
    offset_mm : shift of the array across the modulation, mm (interlacing, collimator position)
    segment_mm : slit length per column along the slit, mm; None = one column per slit
    """

    beam_width_mm: float
    ctc_mm: float
    pattern: str = "slit"
    across: str = "u"
    offset_mm: float = 0.0
    segment_mm: float | None = None

    def __post_init__(self):
        w = _positive(self.beam_width_mm, "beam_width_mm", "a positive beam width in mm (0.1-2 mm typical)")
        c = _positive(self.ctc_mm, "ctc_mm", "a positive centre-to-centre spacing in mm (1-4 mm typical)")
        if c <= w:
            raise BeamError(f"ctc_mm: the spacing must be larger than the beam width "
                            f"(expected ctc_mm > beam_width_mm = {w:g} mm), got {c:g} mm")
        if self.pattern not in ("slit", "pin"):
            raise BeamError(f"pattern: expected 'slit' or 'pin', got {self.pattern!r}")
        if self.across not in ("u", "v"):
            raise BeamError(f"across: expected 'u' or 'v', got {self.across!r}")
        off = check_number(self.offset_mm, "offset_mm", "a finite shift in mm")
        seg = None if self.segment_mm is None else _positive(self.segment_mm, "segment_mm")
        object.__setattr__(self, "beam_width_mm", w)
        object.__setattr__(self, "ctc_mm", c)
        object.__setattr__(self, "offset_mm", off)
        object.__setattr__(self, "segment_mm", seg)

    def centres(self, lo_mm: float, hi_mm: float, centre_mm: float) -> np.ndarray:
        """Beam centres (mm) across the modulation inside [lo, hi], on the lattice through
        ``centre_mm + offset_mm``; a :class:`BeamError` when no beam fits (the collimator
        blocks the whole field)."""
        c0 = centre_mm + self.offset_mm
        k0 = np.ceil((lo_mm - c0) / self.ctc_mm)
        k1 = np.floor((hi_mm - c0) / self.ctc_mm)
        if k1 < k0:
            raise BeamError(f"field_mm: the collimator blocks the whole field (no minibeam centre in "
                            f"[{lo_mm:.2f}, {hi_mm:.2f}] mm with ctc_mm = {self.ctc_mm:g}); expected a field "
                            f"at least one spacing wide or an offset_mm that places a beam in it")
        return c0 + self.ctc_mm * np.arange(k0, k1 + 1)

    def modulated_axes(self) -> tuple[str, ...]:
        return ("u", "v") if self.pattern == "pin" else (self.across,)


def _axis_spacing(grid: Grid, geom: BeamGeometry, axis: str) -> float:
    """Largest voxel extent projected on a beam's-eye axis (mm): max_k spacing_k |a_k|."""
    a = geom.u_axis if axis == "u" else geom.v_axis  # (x, y, z)
    dz, dy, dx = grid.spacing_mm
    return float(max(dx * abs(a[0]), dy * abs(a[1]), dz * abs(a[2])))


def check_resolution(grid: Grid, geom: BeamGeometry, pattern: MinibeamPattern,
                     name: str = "grid.spacing_mm") -> None:
    """Refuse a grid with fewer than :data:`MIN_VOXELS_PER_PERIOD` voxels per period across the
    modulation of ``pattern`` seen from ``geom`` (a :class:`~optimizer.errors.BeamError` naming
    ``name``, the grid spacing and the finest spacing allowed)."""
    for axis in pattern.modulated_axes():
        h = _axis_spacing(grid, geom, axis)
        need = pattern.ctc_mm / MIN_VOXELS_PER_PERIOD
        if h > need + 1e-9:
            raise BeamError(
                f"{name}: {tuple(grid.spacing_mm)} mm gives {h:g} mm across the minibeams "
                f"(beam axis {axis}, gantry {geom.gantry_deg:g} deg); expected <= {need:g} mm "
                f"(at least {MIN_VOXELS_PER_PERIOD} voxels per {pattern.ctc_mm:g} mm period; "
                f"0.1-0.25 mm resolves sub-millimetre peaks): use fine_slab()")


def distance_to_centre(coord_mm: np.ndarray, pattern: MinibeamPattern, centre_mm: float) -> np.ndarray:
    """Distance (mm) from a beam's-eye coordinate to the nearest beam centre of the lattice."""
    x = (np.asarray(coord_mm, dtype=float) - centre_mm - pattern.offset_mm) / pattern.ctc_mm
    return np.abs(x - np.round(x)) * pattern.ctc_mm


def peak_valley_labels(u_mm: np.ndarray, v_mm: np.ndarray, pattern: MinibeamPattern,
                       centre_uv_mm: tuple[float, float], voxel_mm: float = 0.0) -> np.ndarray:
    """Per point: 1 peak, -1 valley, 0 neither (module docstring), from beam's-eye coordinates
    projected to the isocentre plane (mm); ``voxel_mm``: the grid's spacing across the
    modulation (peak and valley regions are at least half of it wide)."""
    w, c = pattern.beam_width_mm, pattern.ctc_mm
    peak_half = max(w / 4.0, voxel_mm / 2.0)
    valley_from = min(c / 2.0 - (c - w) / 4.0, c / 2.0 - voxel_mm / 2.0)
    coords = {"u": (u_mm, centre_uv_mm[0]), "v": (v_mm, centre_uv_mm[1])}
    dists = [distance_to_centre(coords[a][0], pattern, coords[a][1]) for a in pattern.modulated_axes()]
    if len(dists) == 1:
        d = dists[0]
        return np.where(d <= peak_half + 1e-9, 1, np.where(d >= valley_from - 1e-9, -1, 0)).astype(np.int8)
    du, dv = dists  # pins: peak inside a beam, valley where both coordinates are mid-gap
    peak = (du <= peak_half + 1e-9) & (dv <= peak_half + 1e-9)
    valley = (du >= valley_from - 1e-9) & (dv >= valley_from - 1e-9)
    return np.where(peak, 1, np.where(valley, -1, 0)).astype(np.int8)


def fine_slab(patient: Patient, spacing_mm, bounds_mm: dict) -> Patient:
    """The part of ``patient`` inside ``bounds_mm`` on a finer (usually anisotropic) grid: only the
    slab the minibeams cross is fine, so memory stays bounded.

    Parameters
    ----------
    patient : the coarse patient
    spacing_mm : (dz, dy, dx) of the fine grid, mm (e.g. 0.2 mm across the modulation, 1-2 mm
        along it)
    bounds_mm : {"x": (lo, hi), "y": ..., "z": ...} in LPS mm; an axis left out keeps the
        patient's extent. Structures without a voxel in the slab are left out.
    """
    from ..resample import resample_patient

    if not isinstance(patient, Patient):
        raise GeometryError(f"patient: expected an optimizer.Patient, got {type(patient).__name__}")
    if not isinstance(bounds_mm, dict) or set(bounds_mm) - {"x", "y", "z"}:
        raise GeometryError(f"bounds_mm: expected a dict with keys among 'x', 'y', 'z', got {bounds_mm!r}")
    g = patient.grid
    sl = []
    for k, name in enumerate("zyx"):
        axis = g.axes_mm()[k]
        lo, hi = bounds_mm.get(name, (axis[0], axis[-1]))
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise GeometryError(f"bounds_mm['{name}']: expected (lo, hi) with lo < hi in mm, got {(lo, hi)}")
        i0 = int(np.clip(np.floor((lo - g.origin_mm[k]) / g.spacing_mm[k]) - 1, 0, g.shape[k] - 1))
        i1 = int(np.clip(np.ceil((hi - g.origin_mm[k]) / g.spacing_mm[k]) + 1, i0, g.shape[k] - 1))
        sl.append(slice(i0, i1 + 1))
    origin = tuple(g.axes_mm()[k][sl[k].start] for k in range(3))
    sub = Grid(tuple(s.stop - s.start for s in sl), g.spacing_mm, origin)
    structures = [Structure(s.name, s.mask[tuple(sl)], s.role, s.color)
                  for s in patient.structures if s.mask[tuple(sl)].any()]
    crop = Patient(sub, patient.ct_hu[tuple(sl)], structures, name=f"{patient.name} slab")
    table = getattr(patient, "density_table", None)
    if table is not None:
        crop.density_table = table
    return resample_patient(crop, spacing_mm)
