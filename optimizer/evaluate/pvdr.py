"""Minibeam evaluation: peak and valley regions, PVDR per depth and per structure, profiles, plots.

Peak and valley voxels come from the collimator pattern of one beam of a minibeam influence set
projected to each voxel (:func:`optimizer.beams.minibeam_pattern.peak_valley_labels`: peak = the
central half of a beam, valley = the central half of a gap, in the isocentre-plane coordinates of
the diverging beam). Depth is the distance along the beam axis from the first voxel of the
``within`` region (default: every voxel of the dose grid that has dose), binned by ``bin_mm``.
Doses are total course doses in Gy (any dose array of the grid's shape works: a plan's dose, one
beam's dose). PVDR = mean peak dose / mean valley dose (dimensionless).
"""

from __future__ import annotations

import numpy as np

from ..beams.minibeam_pattern import MinibeamPattern, _axis_spacing, peak_valley_labels
from ..beams.raytrace import BeamGeometry
from ..errors import EvaluationError
from ..geometry import Grid, Patient, Structure
from .dose_volume import _number


def _beam(influence, beam: int):
    beams = getattr(influence, "beams", None)
    if getattr(influence, "modality", None) != "minibeam" or not beams:
        raise EvaluationError("influence: expected a minibeam influence set (modality 'minibeam')")
    if not (isinstance(beam, (int, np.integer)) and 0 <= beam < len(beams)):
        raise EvaluationError(f"beam: expected an index in [0, {len(beams) - 1}], got {beam!r}")
    b = beams[beam]
    pattern = MinibeamPattern(b["beam_width_mm"], b["ctc_mm"], b["pattern"], b["across"], b["offset_mm"])
    geom = BeamGeometry(b["gantry_deg"], tuple(b["isocenter_mm"]), b["sad_mm"])
    return pattern, geom


def beam_coordinates(grid: Grid, influence, beam: int = 0):
    """(a, b, t) of every grid voxel ([z, y, x] arrays, mm): across / along the modulation at the
    isocentre plane, and distance from the source along the axis."""
    pattern, geom = _beam(influence, beam)
    u, v, t = geom.to_beam(grid.positions_mm())
    a, b = (u, v) if pattern.across == "u" else (v, u)
    return a.reshape(grid.shape), b.reshape(grid.shape), t.reshape(grid.shape)


def peak_valley_masks(grid: Grid, influence, beam: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """([z, y, x] peak mask, valley mask) of ``beam``'s pattern on ``grid``."""
    pattern, geom = _beam(influence, beam)
    u, v, t = geom.to_beam(grid.positions_mm())
    # one voxel across the modulation, in isocentre-plane mm at the most magnified depth, so every
    # beam keeps a peak voxel at every depth
    h = max(_axis_spacing(grid, geom, ax) for ax in pattern.modulated_axes()) * float((geom.sad_mm / t).max())
    lab = peak_valley_labels(u, v, pattern, (0.0, 0.0), h).reshape(grid.shape)
    return lab == 1, lab == -1


def add_peak_valley_structures(patient: Patient, name: str, influence, beam: int = 0) -> tuple[str, str]:
    """Add structures "<name> peak" and "<name> valley" (the structure's peak / valley voxels,
    role "oar") so that any term applies to them (``MaxDose("OAR valley", 5)``, ``BEDMax``...).
    Returns their names."""
    peak, valley = peak_valley_masks(patient.grid, influence, beam)
    mask = patient.structure(name).mask
    out = []
    for label, m in (("peak", peak), ("valley", valley)):
        if not (m & mask).any():
            raise EvaluationError(f"structure '{name}': has no {label} voxel for beam {beam}; "
                                  "use a finer grid")
        patient.add_structure(Structure(f"{name} {label}", m & mask, "oar"), replace=True)
        out.append(f"{name} {label}")
    return out[0], out[1]


def _dose(dose, grid: Grid) -> np.ndarray:
    d = np.asarray(dose, dtype=float)
    if d.shape != grid.shape:
        raise EvaluationError(f"dose: expected an array of grid.shape {grid.shape}, got {d.shape}")
    if not np.all(np.isfinite(d)) or d.min() < 0:
        raise EvaluationError("dose: expected finite doses >= 0 in Gy")
    return d


def pvdr(dose, grid: Grid, influence, *, beam: int = 0, within: np.ndarray | None = None,
         bin_mm: float | None = None, structures: dict | None = None, edge_mm: float | None = None) -> dict:
    """Peak dose, valley dose and PVDR per depth and per structure.

    Parameters
    ----------
    dose : [z, y, x] dose, Gy
    grid : the dose grid
    influence : the minibeam influence set (its beam table carries the pattern)
    beam : which beam's pattern defines peaks, valleys and depth
    within : [z, y, x] bool region of the depth table (default: voxels with dose > 0); the outer
        ``edge_mm`` (default one spacing, >= 0) of the array's field is excluded across the
        modulation, and half of it along the array (from a slit's ends, or the outer pins),
        so voxels that only the tails reach are left out
    bin_mm : depth bin, mm (> 0; default the grid's largest spacing)
    structures : {name: [z, y, x] mask} evaluated over their whole volume

    Returns
    -------
    {"by_depth": [{"depth_mm", "peak_Gy", "valley_Gy", "pvdr"}], "structures": {name:
    {"peak_mean_Gy", "valley_mean_Gy", "valley_max_Gy", "pvdr"}}}; PVDR is inf for a zero valley
    """
    d = _dose(dose, grid)
    pattern, _ = _beam(influence, beam)
    peak, valley = peak_valley_masks(grid, influence, beam)
    a, b, t = beam_coordinates(grid, influence, beam)
    region = d > 0 if within is None else _mask(within, grid, "within")
    if not region.any():
        raise EvaluationError(f"within: expected a non-empty bool mask of grid.shape {grid.shape}")
    bm = influence.beams[beam]
    mine = np.asarray(influence.beamlets["beam"]) == beam
    centres = np.asarray(influence.beamlets["u_mm" if bm["across"] == "u" else "v_mm"])[mine]
    along = np.asarray(influence.beamlets["v_mm" if bm["across"] == "u" else "u_mm"])[mine]
    edge = pattern.ctc_mm if edge_mm is None else _number(edge_mm, "edge_mm", "a finite number >= 0 mm",
                                                          lambda x: x >= 0)
    region = region & (a >= centres.min() + edge - 1e-9) & (a <= centres.max() - edge + 1e-9)
    # along the array too: past a slit's ends (or the outer pins) only the tails reach, which
    # pulled the peak and valley means of every depth down (3x with 8 mm slits on a 24 mm grid)
    # (half the edge: a 3-row pin array keeps its valley rows between the pins)
    half = 0.0 if pattern.pattern == "pin" else float(bm.get("half_length_mm", 0.0))
    lo, hi = along.min() - half + edge / 2, along.max() + half - edge / 2
    region = region & (b >= lo - 1e-9) & (b <= hi + 1e-9)
    if not (region & peak).any() or not (region & valley).any():
        raise EvaluationError("within: no peak or no valley voxel inside the array's field; widen the field")
    step = max(grid.spacing_mm) if bin_mm is None else _number(bin_mm, "bin_mm", "a finite number > 0 mm",
                                                               lambda x: x > 0)
    t0 = t[region].min()
    k = np.floor((t - t0) / step + 1e-9).astype(int)
    rows = []
    for b in np.unique(k[region]):  # one row per depth bin
        sel = region & (k == b)
        p, v = d[sel & peak], d[sel & valley]
        if len(p) and len(v):
            rows.append({"depth_mm": float(np.mean(t[sel] - t0)), "peak_Gy": float(p.mean()),
                         "valley_Gy": float(v.mean()), "pvdr": _ratio(p.mean(), v.mean())})
    out_s = {}
    for name, m in (structures or {}).items():
        m = _mask(m, grid, f"structures['{name}']")
        p, v = d[m & peak], d[m & valley]
        if not len(p) or not len(v):
            raise EvaluationError(f"structures['{name}']: no peak or no valley voxel in it")
        out_s[name] = {"peak_mean_Gy": float(p.mean()), "valley_mean_Gy": float(v.mean()),
                       "valley_max_Gy": float(v.max()), "pvdr": _ratio(p.mean(), v.mean())}
    return {"by_depth": rows, "structures": out_s}


def _mask(mask, grid: Grid, name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype != bool or m.shape != grid.shape:
        raise EvaluationError(f"{name}: expected a bool mask of grid.shape {grid.shape} [z, y, x], got "
                              f"{m.dtype} of shape {m.shape}")
    return m


def _ratio(p, v) -> float:
    return float(p / v) if v > 0 else float("inf")


def lateral_profile(dose, grid: Grid, influence, depth_mm: float, *, beam: int = 0,
                    within: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Dose across the modulation at one depth (mm from the first voxel of ``within``): positions
    a (mm, isocentre plane) and the mean dose (Gy) of the voxels at each a."""
    d = _dose(dose, grid)
    a, _, t = beam_coordinates(grid, influence, beam)
    region = d > 0 if within is None else np.asarray(within, bool)
    _, geom = _beam(influence, beam)
    pattern = _beam(influence, beam)[0]
    t0 = t[region].min()
    dz, dy, dx = grid.spacing_mm
    step = max(dx * abs(geom.direction[0]), dy * abs(geom.direction[1]), dz * abs(geom.direction[2]))
    sel = region & (np.abs(t - t0 - depth_mm) <= step / 2 + 1e-9)
    if not sel.any():
        raise EvaluationError(f"depth_mm: no voxel at {depth_mm:g} mm depth")
    h = _axis_spacing(grid, geom, pattern.across)  # bins of one voxel across the modulation
    key = np.round(a[sel] / h).astype(np.int64)
    ks, inv = np.unique(key, return_inverse=True)
    return ks * h, np.bincount(inv, d[sel]) / np.bincount(inv)


# -- plots ---------------------------------------------------------------------------------------
def plot_profiles(dose, grid: Grid, influence, depths_mm, *, beam: int = 0, within=None, title: str = ""):
    """Lateral profiles at several depths (one line each); returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for z in depths_mm:
        x, y = lateral_profile(dose, grid, influence, z, beam=beam, within=within)
        ax.plot(x, y, label=f"{z:g} mm")
    ax.set_xlabel("position across the minibeams (mm, isocentre plane)")
    ax.set_ylabel("dose (Gy)")
    ax.set_title(title or "Lateral profiles")
    ax.legend(title="depth")
    fig.tight_layout()
    return fig


def plot_pvdr(result: dict, title: str = ""):
    """PVDR (log scale) and peak / valley dose vs depth from :func:`pvdr`; returns the Figure."""
    import matplotlib.pyplot as plt

    rows = result["by_depth"]
    z = [r["depth_mm"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.semilogy(z, [r["pvdr"] for r in rows], "k.-")
    a1.axhline(1.0, color="grey", lw=0.8)
    a1.set_xlabel("depth (mm)")
    a1.set_ylabel("PVDR")
    a2.plot(z, [r["peak_Gy"] for r in rows], "r.-", label="peak")
    a2.plot(z, [r["valley_Gy"] for r in rows], "b.-", label="valley")
    a2.set_xlabel("depth (mm)")
    a2.set_ylabel("dose (Gy)")
    a2.legend()
    fig.suptitle(title or "Peak-to-valley dose ratio")
    fig.tight_layout()
    return fig


def plot_colorwash(dose, grid: Grid, z_index: int | None = None, contours: dict | None = None,
                   title: str = ""):
    """Dose colorwash of one axial slice of the (fine) grid, with structure contours; the Figure."""
    import matplotlib.pyplot as plt

    d = _dose(dose, grid)
    k = grid.shape[0] // 2 if z_index is None else int(z_index)
    _, ys, xs = grid.axes_mm()
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(d[k], origin="lower", cmap="jet", aspect="auto", interpolation="nearest",
                   extent=(xs[0], xs[-1], ys[0], ys[-1]))
    for m in (contours or {}).values():
        ax.contour(xs, ys, np.asarray(m)[k].astype(float), levels=[0.5], colors="w", linewidths=1)
    fig.colorbar(im, ax=ax, label="dose (Gy)")
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.set_title(title or "Dose")
    fig.tight_layout()
    return fig
