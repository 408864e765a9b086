"""6 MV photon pencil-beam model and photon IMRT influence matrices.

Dose of beamlet j (width w x w in the isocentre plane, centre (u_j, v_j)) at a point with beam
coordinates (u, v, t), radiological depth d and smoothed relative electron density rho:

    D = (SAD / t)^2 * sum_k A_k(d) * p(u - u_j; s_k) * p(v - v_j; s_k)
    p(x; s) = [erf((x + w/2) / (sqrt2 s)) - erf((x - w/2) / (sqrt2 s))] / 2
    s_k = sigma_k(d) / rho (density-scaled components) * SAD / t   (projected to the isocentre plane)

* Default kernel (:class:`~optimizer.beams.photon_kernel.PhotonScatterKernel`): primary, near
  scatter, far scatter (incl. head scatter) and electron contamination, fitted to published 6 MV
  PDDs, surface doses, output factors (2 x 2 to 20 x 20 cm2) and penumbra
  (``tools/fit_photon_kernel.py``; data and sources in ``optimizer/beams/data/``). Narrow fields
  lose the wide components (output factors); the lateral spread scales with 1 / density, so the
  penumbra widens in lung; heterogeneities also enter through the radiological depth.
* Legacy kernel (``kernel="gaussian"`` or a :class:`PhotonKernel`): one Gaussian with the 10 x 10
  cm2 depth dose (no field-size dependence, no density scaling), kept for comparison and for the
  regression of older results.

Sparse cut-off (multi-component kernel): a voxel takes entries from the beamlets whose centre lies
within ``cutoff_mm`` (default 20 mm, isocentre plane) of its own beamlet's and whose lateral factor
exceeds ``min_relative`` (1e-3) of the beamlet's on-axis value there. The far scatter (sigma
~4-5 cm) cannot be held by a sparse matrix at this cost: on the axis of a 10 x 10 cm2 field the
cut-off leaves out ~7 % of the dose at d_max (1.5 cm), ~14 % at 10 cm and ~18 % at 20 cm
(``truncation="drop"``). With ``truncation="calibrated"`` (default) that missing tail is folded,
per voxel, into the kept entries of its outer shell: entries whose beamlet centre lies farther than
``cutoff_mm - SHELL_MARGIN_MM`` = 18 mm from the voxel take a share that grows linearly over one
beamlet width, so that a 10 x 10 cm2 field centred on the voxel gets the full kernel's dose while
the inner entries stay exact. The reference field and its PDD are exact and fields up to 3 x 3
cm2 keep the full kernel's output factor (2 x 2 / 3 x 3 cm2: 0.784 / 0.828 in the matrix, 0.784 /
0.830 full kernel, IROC 0.78 / 0.835); 4 x 4 cm2 reaches the shell and comes out too hot (0.93
vs 0.87), fields of 5 x 5 cm2 and more get the 10 x 10 cm2 output and depth dose. The folded
tail lies on a few beamlets: across a profile the matrix differs from the full kernel by up to
~5 % (2 x 2 cm2, 1-3 cm outside the field) and ~8 % of the axis dose (10 x 10 cm2, ripple on
the shoulder and just outside the edge; ``truncation="uniform"``: 17 % and 8 %).
``truncation="uniform"`` is the former calibration (every kept entry scaled by full / kept:
reference field exact, but the 2 x 2 cm2 output factor 0.92). ``cutoff_mm=math.inf,
min_relative=0`` gives the full kernel. ``benchmarks/bench_dose.py`` prints these fractions and
the cost.

Units: with the default kernel, a beamlet weight of 1 on every beamlet of a 10 x 10 cm2 field at
SSD 100 cm gives 1 Gy per fraction at d_max on the axis (legacy kernel: of a broad field).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from numbers import Integral

import numpy as np
import scipy.sparse as sp
from scipy import ndimage

from ..errors import BeamError
from ..geometry import Patient
from ..influence import InfluenceMatrix, InfluenceSet
from .base import BeamModel, BeamSetup
from .photon_kernel import (
    CALIBRATION_FIELD_MM,
    DENSITY_CLIP,
    PhotonKernel,
    PhotonScatterKernel,
)
from .photon_sparse import kernel_at, neighbour_pairs, smoothed_density
from .raytrace import (
    FAN_BYTES_PER_SAMPLE,
    BeamGeometry,
    check_bool_array,
    check_number,
    coarse_depth,
)

#: Peak memory of :meth:`PhotonBeams.influence` per nonzero of the result, bytes: the per-beam
#: (voxel, column, value) triplets (int64, int64, float32), their concatenation, the row
#: renumbering (``np.unique``) and the COO -> CSR conversion. Measured as the growth of the
#: resident set size with the number of nonzeros (91 B; tracemalloc alone: 69 B).
BYTES_PER_NONZERO = 92
#: Memory per dose-mask voxel held during the computation (positions, flat indices, beam
#: coordinates), bytes.
BYTES_PER_VOXEL = 100
#: Default lateral reach of the multi-component kernel: beamlets whose centre is more than this
#: far (mm, isocentre plane, along u or v) from a point's own beamlet contribute nothing to it.
DEFAULT_CUTOFF_MM = 20.0
#: ``truncation="calibrated"``: the far-scatter tail beyond the cut-off is folded into the kept
#: entries whose beamlet centre lies more than ``cutoff_mm - SHELL_MARGIN_MM`` from the point (mm,
#: isocentre plane; their share grows linearly over one beamlet width beyond). 2 mm with the
#: default 20 mm cut-off puts the shell at 18 mm, just outside the farthest beamlet centre of a
#: 3 x 3 cm2 field of 5 mm beamlets seen from its axis (17.7 mm), so fields up to 3 x 3 cm2 keep
#: the full kernel's output factor (benchmarks/bench_dose.py). With ``cutoff_mm`` >= ~35 mm the
#: ``min_relative`` cut empties the shell and the calibration falls back to "uniform".
SHELL_MARGIN_MM = 2.0
KERNELS = ("scatter", "gaussian")
TRUNCATIONS = ("calibrated", "uniform", "drop")


class PhotonBeams(BeamModel):
    """Coplanar 6 MV photon IMRT beams with a regular beamlet grid per beam.

    Parameters
    ----------
    gantry_deg : gantry angles, degrees (IEC 61217)
    beamlet_mm : beamlet size in the isocentre plane, mm (default 5)
    margin_mm : extra margin around the target projection, mm (default 5)
    sad_mm : source-axis distance, mm
    kernel : "scatter" (default; the fitted multi-component 6 MV kernel,
        :class:`~optimizer.beams.photon_kernel.PhotonScatterKernel`), "gaussian" (the legacy
        single Gaussian, :class:`PhotonKernel`) or a kernel object of either class
    cutoff_sigma : legacy kernel: lateral truncation of each beamlet, in sigmas beyond the
        beamlet edge (> 0)
    min_relative : entries below this fraction of the beamlet's on-axis value (at that point) are
        dropped, in [0, 1)
    cutoff_mm : multi-component kernel: largest distance (mm, isocentre plane) between the centre
        of a point's own beamlet and that of a contributing beamlet (default
        :data:`DEFAULT_CUTOFF_MM`; ``math.inf``: no limit but ``min_relative``)
    truncation : multi-component kernel, what happens to the kernel beyond the cut-offs:
        "calibrated" (default; with ``cutoff_mm`` <= 50 mm) folds the dose each point misses
        from a 10 x 10 cm2 field centred on it into its outer shell of kept entries (beamlet
        centres beyond ``cutoff_mm - SHELL_MARGIN_MM``): the reference field stays exact and
        fields up to 3 x 3 cm2 (with the defaults) keep the full kernel's output factor;
        "uniform" rescales all kept entries by full / kept instead (reference field exact, small
        fields too hot: the former default); "drop" leaves the truncated tails out (dose of
        broad fields too low). ``cutoff_mm=math.inf,
        min_relative=0`` is the full kernel (slow, dense; what the validation tests check)
    couch_deg : patient-support angle(s), degrees; only 0 (coplanar) is supported

    Every argument is checked here (type, NaN, range; gantry angles equal modulo 360 deg are
    refused as duplicates) and :class:`~optimizer.errors.BeamError` names the one at fault.
    :meth:`influence` (see :class:`~optimizer.beams.base.BeamModel`) returns an
    :class:`~optimizer.influence.InfluenceSet` with the form "dose" only.
    """

    modality = "photon"
    form_names = ("dose",)
    _memory_hint = ("Use a coarser dose grid (dose_grid=), a larger beamlet_mm, a smaller "
                    "dose_mask or fewer beams")

    def __init__(
        self,
        gantry_deg: Iterable[float],
        beamlet_mm: float = 5.0,
        margin_mm: float = 5.0,
        sad_mm: float = 1000.0,
        kernel: PhotonKernel | None = None,
        cutoff_sigma: float = 3.0,
        min_relative: float = 1e-3,
        *,
        couch_deg: Iterable[float] | float = 0.0,
        cutoff_mm: float = DEFAULT_CUTOFF_MM,
        truncation: str = "calibrated",
    ):
        super().__init__(gantry_deg, couch_deg)
        self.beamlet_mm = check_number(beamlet_mm, "beamlet_mm", "a positive size in mm", lambda v: v > 0)
        self.margin_mm = check_number(margin_mm, "margin_mm", "a margin >= 0 mm", lambda v: v >= 0)
        self.sad_mm = check_number(sad_mm, "sad_mm", "a positive distance in mm", lambda v: v > 0)
        if kernel is None or (isinstance(kernel, str) and kernel == "scatter"):
            kernel = PhotonScatterKernel.default()
        elif isinstance(kernel, str) and kernel == "gaussian":
            kernel = PhotonKernel()
        if not isinstance(kernel, (PhotonKernel, PhotonScatterKernel)):
            raise BeamError(f"kernel: expected one of {', '.join(map(repr, KERNELS))}, a PhotonKernel, a "
                            f"PhotonScatterKernel or None, got {kernel!r}")
        self.kernel = kernel
        self.cutoff_mm = check_number(cutoff_mm, "cutoff_mm", "a distance > 0 mm (math.inf: no limit)",
                                      lambda v: v > 0, allow_inf=True)
        if not isinstance(truncation, str) or truncation not in TRUNCATIONS:
            raise BeamError(f"truncation: expected one of {', '.join(map(repr, TRUNCATIONS))}, "
                            f"got {truncation!r}")
        self.truncation = truncation
        self.cutoff_sigma = check_number(cutoff_sigma, "cutoff_sigma", "a number of sigmas > 0",
                                         lambda v: v > 0)
        self.min_relative = check_number(min_relative, "min_relative", "a fraction in [0, 1)",
                                         lambda v: 0 <= v < 1)

    @property
    def source_axis_distance_mm(self) -> float:
        return self.sad_mm

    # -- beamlet placement ----------------------------------------------------------------------
    def beamlet_map(self, geom: BeamGeometry, target_xyz: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Open beamlets of one beam: boolean map [row=v, col=u] and the (u, v) of cell [0, 0].

        A beamlet is open when its cell holds the projection of a target voxel, after dilating
        the projected target by ``margin_mm``.
        """
        u, v, _ = geom.to_beam(target_xyz)
        w = self.beamlet_mm
        pad = int(np.ceil(self.margin_mm / w)) + 1
        iu0 = int(np.floor(u.min() / w + 0.5)) - pad
        iv0 = int(np.floor(v.min() / w + 0.5)) - pad
        nu = int(np.floor(u.max() / w + 0.5)) + pad - iu0 + 1
        nv = int(np.floor(v.max() / w + 0.5)) + pad - iv0 + 1
        hit = np.zeros((nv, nu), dtype=bool)
        hit[np.floor(v / w + 0.5).astype(int) - iv0, np.floor(u / w + 0.5).astype(int) - iu0] = True
        if self.margin_mm > 0:
            dist = ndimage.distance_transform_edt(~hit, sampling=w)
            hit = dist <= self.margin_mm
        return hit, iu0 * w, iv0 * w

    # -- public ---------------------------------------------------------------------------------
    def influence(
        self,
        patient: Patient,
        target: str | None = None,
        *,
        isocenter_mm: tuple[float, float, float] | None = None,
        dose_mask: np.ndarray | None = None,
        max_memory_mb: float | None = None,
        progress: bool = False,
        dose_grid=None,
        target_rule: str = "centre",
        fields: dict[int, np.ndarray] | None = None,
    ) -> InfluenceSet:
        """Dose-influence set of all beams on the patient grid: "dose", Gy per fraction per unit
        beamlet weight.

        Parameters
        ----------
        patient : geometry with CT (HU -> relative electron density via the patient's table)
        target, isocenter_mm, dose_mask, max_memory_mb, progress, dose_grid, target_rule : as in
            :meth:`optimizer.beams.base.BeamModel.influence` (the beamlets cover the target's
            projection)
        fields : optional {beam number: 2-D boolean open-beamlet map (rows = v, cols = u)} that
            replaces the automatic placement (for commissioning fields such as 10 x 10 cm2);
            every map needs at least one open beamlet. With a field for every beam no target is
            needed (give ``isocenter_mm``).

        The beamlet table has ``beam, row, col, u_mm, v_mm`` (row indexes v, col indexes u on
        the beam's beamlet grid; u/v: beamlet centre in the isocentre plane, mm).
        """
        return self._run(patient, target, isocenter_mm, dose_mask, max_memory_mb, progress, dose_grid,
                         target_rule, fields=fields)

    def estimate_memory(
        self,
        patient: Patient,
        target: str | None = None,
        *,
        isocenter_mm: tuple[float, float, float] | None = None,
        dose_mask: np.ndarray | None = None,
        dose_grid=None,
        target_rule: str = "centre",
        fields: dict[int, np.ndarray] | None = None,
    ) -> dict[str, float]:
        """Size of the matrix :meth:`influence` would build with these arguments (``dose_grid``
        and ``target_rule`` included), before building it.

        The beamlets are placed as in :meth:`influence`; the dose-mask voxels (a random sample
        of at most ``base.ESTIMATE_SAMPLE``, scaled up) are traced on a coarse ray fan for their
        radiological depth, and each is paired with the open beamlets by the same lateral
        reach and ``min_relative`` cut as the dose. Returns ``nnz`` (nonzeros), ``matrix_mb``
        (nnz x 8 bytes: float32 value + int32 column index of CSR) and ``peak_mb`` (the peak
        memory of the computation: :data:`BYTES_PER_NONZERO` per nonzero, the per-voxel arrays
        and the largest per-beam ray fan).
        """
        return self._estimate_for(patient, target, isocenter_mm, dose_mask, dose_grid, target_rule,
                                  fields=fields)

    # -- the physics (see BeamModel) --------------------------------------------------------------
    def _options(self, fields=None) -> dict:
        return {"fields": self._check_fields(fields)}

    def _target_required(self, fields=None) -> bool:
        return fields is None or len(fields) < self.n_beams

    def _density(self, patient: Patient) -> np.ndarray:
        return patient.relative_electron_density()

    def _place(self, setup: BeamSetup, fields=None) -> list[tuple[np.ndarray, float, float]]:
        """(open-beamlet map, u0, v0) of every beam: the given field or the target's projection."""
        target_xyz = setup.target_positions_mm() if setup.target_mask is not None else None
        maps = []
        for b, geom in enumerate(setup.geometries):
            if fields is not None and b in fields:
                open_map = fields[b]
                nv, nu = open_map.shape
                maps.append((open_map, -(nu - 1) / 2 * self.beamlet_mm, -(nv - 1) / 2 * self.beamlet_mm))
            else:
                if target_xyz is None:
                    raise BeamError(f"fields: no field given for beam {b} and no target to cover")
                maps.append(self.beamlet_map(geom, target_xyz))
        return maps

    def _compute(self, setup: BeamSetup, placed: list, progress: bool, fields=None) -> InfluenceSet:
        grid, voxels, iso = setup.grid, setup.voxels, setup.isocenter_mm
        positions = grid.positions_mm(voxels)
        rho = (smoothed_density(setup.density, grid, voxels) if any(self.kernel.density_scaled)
               else None)
        rows, cols, vals = [], [], []
        table = {k: [] for k in ("beam", "row", "col", "u_mm", "v_mm")}
        beams, n_cols = [], 0
        with self._progress(progress) as bar:
            for b, (geom, (open_map, u0, v0)) in enumerate(zip(setup.geometries, placed)):
                started = time.perf_counter()
                r, c = np.nonzero(open_map)
                index_map = -np.ones(open_map.shape, dtype=np.int64)
                index_map[r, c] = n_cols + np.arange(len(r))
                vr, vc, vv = self._beam_dose(geom, setup, positions, index_map, u0, v0, rho)
                rows.append(vr)
                cols.append(vc)
                vals.append(vv)
                table["beam"].append(np.full(len(r), b))
                table["row"].append(r)
                table["col"].append(c)
                table["u_mm"].append(u0 + c * self.beamlet_mm)
                table["v_mm"].append(v0 + r * self.beamlet_mm)
                beams.append({"gantry_deg": self.gantry_deg[b], "couch_deg": self.couch_deg[b],
                              "isocenter_mm": list(iso), "sad_mm": self.sad_mm,
                              "map_shape": list(open_map.shape), "beamlet_mm": self.beamlet_mm,
                              "u0_mm": u0, "v0_mm": v0, "energy": "6MV", "kernel": self.kernel.name})
                n_cols += len(r)
                self._beam_done(bar, b, started, f"{len(r)} beamlets, {len(vv)} nonzeros")
        rows = np.concatenate(rows)
        cols = np.concatenate(cols)
        vals = np.concatenate(vals)
        # rows: positions in ``voxels`` (ascending); renumber the touched ones without a sort
        touched = np.zeros(len(voxels), dtype=bool)
        touched[rows] = True
        renumber = np.cumsum(touched) - 1
        voxel_index, row_pos = voxels[touched], renumber[rows]
        del renumber
        matrix = sp.csr_matrix((vals.astype(np.float32), (row_pos, cols)), shape=(len(voxel_index), n_cols))
        dose = InfluenceMatrix(matrix, voxel_index, grid, {k: np.concatenate(v) for k, v in table.items()},
                               beams, self.modality)
        return InfluenceSet(dose)

    def _check_fields(self, fields) -> dict[int, np.ndarray] | None:
        """``fields`` as {beam number: non-empty 2-D boolean map}, or None."""
        if fields is None:
            return None
        n = len(self.gantry_deg)
        beams = "beam 0" if n == 1 else f"beams 0-{n - 1}"
        if not isinstance(fields, Mapping):
            raise BeamError(f"fields: expected a dict {{beam number: 2-D boolean open-beamlet map}}, "
                            f"got {type(fields).__name__}")
        out = {}
        for key, value in fields.items():
            if isinstance(key, bool) or not isinstance(key, Integral) or not 0 <= int(key) < n:
                raise BeamError(f"fields: key {key!r} is not a beam number; this PhotonBeams has {beams}")
            b = int(key)
            name = f"fields[{b}]"
            what = f"the open-beamlet map of beam {b} (gantry {self.gantry_deg[b]:g} deg)"
            open_map = check_bool_array(value, name, f"{what} as a 2-D boolean array (rows = v, cols = u)")
            if open_map.ndim != 2 or open_map.size == 0:
                raise BeamError(f"{name}: expected {what} as a non-empty 2-D boolean array (rows = v, "
                                f"cols = u), got shape {open_map.shape}")
            if not open_map.any():
                raise BeamError(f"{name}: {what} has no open beamlet (all False); open at least one, or "
                                "leave the beam out of fields to cover the target")
            out[b] = open_map
        return out

    def _estimate(self, setup: BeamSetup, placed: list, fields=None) -> dict[str, float]:
        grid, voxels = setup.grid, setup.voxels
        positions, scale = setup.estimate_sample()
        nnz, transient = 0.0, 0.0
        for geom, (open_map, u0, v0) in zip(setup.geometries, placed):
            index_map = np.where(open_map, 0, -1)
            u, v, t = geom.to_beam(positions)
            near = self._near(u, v, t, open_map.shape, u0, v0)
            if not near.any():
                continue
            fan = setup.fan_samples(geom, u[near], v[near])
            depth = coarse_depth(setup.density, grid, geom, positions[near])
            n_pairs, n_offsets = 0, 0
            for idx, _, _ in self._pairs(u[near], v[near], t[near], depth, index_map, u0, v0):
                n_pairs += len(idx)
                n_offsets += 1
            nnz += scale * n_pairs
            # per beam: the ray fan, then per near voxel its beam coordinates, depth and the two
            # 1-D profiles per neighbour offset and kernel component (float64)
            per_point = 64 + 16 * len(self.kernel.density_scaled) * math.isqrt(n_offsets)
            transient = max(transient, fan * FAN_BYTES_PER_SAMPLE + scale * near.sum() * per_point)
        # the ray fans and profiles of a beam coexist with the triplets of the beams before it
        # (20 B per nonzero), not with the final assembly
        peak = len(voxels) * BYTES_PER_VOXEL + max(nnz * BYTES_PER_NONZERO, nnz * 20 + transient)
        return {"nnz": nnz, "matrix_mb": nnz * 8 / 2**20, "peak_mb": peak / 2**20}

    def _reach_rings(self, sigma_cap_iso: float) -> int:
        """Largest neighbour ring (in beamlets) any point may use."""
        w = self.beamlet_mm
        if isinstance(self.kernel, PhotonKernel):  # legacy: cutoff_sigma sigmas beyond the edge
            return int(np.ceil((w / 2 + self.cutoff_sigma * sigma_cap_iso) / w))
        if math.isinf(self.cutoff_mm):
            return int(np.ceil((w / 2 + 4.0 * sigma_cap_iso) / w))
        return int(np.ceil(self.cutoff_mm / w))

    def _near(self, u, v, t, map_shape, u0, v0) -> np.ndarray:
        """Points whose projection can be reached by some beamlet of a map of ``map_shape``."""
        w = self.beamlet_mm
        nv, nu = map_shape
        sig_max = self.kernel.max_sigma_mm(400.0) * self.sad_mm / t.min()
        if isinstance(self.kernel, PhotonKernel):
            reach = w / 2 + self.cutoff_sigma * sig_max
        else:
            if any(self.kernel.density_scaled):
                sig_max /= DENSITY_CLIP[0]
            reach = w / 2 + self._reach_rings(sig_max) * w
        reach += 1e-6  # a point exactly at the reach (a mirrored beam's too) is in, not left to rounding
        return ((u >= u0 - reach) & (u <= u0 + (nu - 1) * w + reach)
                & (v >= v0 - reach) & (v <= v0 + (nv - 1) * w + reach))

    def _kernel_at(self, t, depth, rho):
        return kernel_at(self.kernel, self.sad_mm, t, depth, rho)

    def _pairs(self, u, v, t, depth, index_map, u0, v0, rho=None, scale_out=None, shell_out=None,
               shell_log=None):
        """The nonzeros of one beam, one neighbour offset at a time (see
        :func:`~optimizer.beams.photon_sparse.neighbour_pairs`)."""
        legacy = isinstance(self.kernel, PhotonKernel)
        radial = None if legacy or math.isinf(self.cutoff_mm) else self.cutoff_mm
        return neighbour_pairs(u, v, t, depth, index_map, u0, v0, kernel=self.kernel, sad_mm=self.sad_mm,
                               beamlet_mm=self.beamlet_mm, min_relative=self.min_relative,
                               reach_rings=self._reach_rings, radial_mm=radial, rho=rho, scale_out=scale_out,
                               shell_mm=self._shell_mm if shell_out is not None else None,
                               shell_out=shell_out, shell_log=shell_log, shell_ramp_mm=self.beamlet_mm)

    def _beam_dose(self, geom, setup, positions, index_map, u0, v0, rho=None):
        """Nonzeros (point index, beamlet column, value) of one beam, vectorized over points."""
        u, v, t = geom.to_beam(positions)
        # keep points whose projection can be reached by any beamlet of this beam
        pts = np.flatnonzero(self._near(u, v, t, index_map.shape, u0, v0))
        if len(pts) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        u, v, t, depth = setup.depth(geom, positions[pts])
        rho_pts = None if rho is None else rho[pts]
        axial = self._kernel_at(t, depth, rho_pts)[0]
        scale = np.ones(len(pts)) if self._calibrated else None
        shell = np.ones(len(pts)) if self._shell_mode else None
        log: list[bool] = []
        out_p, out_c, out_v = [], [], []
        for idx, col, lat in self._pairs(u, v, t, depth, index_map, u0, v0, rho_pts, scale, shell, log):
            out_p.append(idx)
            out_c.append(col)
            out_v.append(lat)
        if scale is not None:  # the calibration is known once every entry is visited
            for k, idx in enumerate(out_p):
                out_v[k] = out_v[k] * (shell[idx] if log and log[k] else scale[idx])
        idx = np.concatenate([np.zeros(0, np.int64), *out_p])
        cols = np.concatenate([np.zeros(0, np.int64), *out_c])
        vals = np.concatenate([np.zeros(0), *out_v])
        return pts[idx], cols, (axial[idx] * vals).astype(np.float32)

    @property
    def _calibrated(self) -> bool:
        """Whether the truncated kernel is rescaled so a 10 x 10 cm2 field is exact on its axis."""
        return (not isinstance(self.kernel, PhotonKernel) and self.truncation in ("calibrated", "uniform")
                and self.cutoff_mm <= CALIBRATION_FIELD_MM / 2)

    @property
    def _shell_mode(self) -> bool:
        """Whether the truncated tail is folded into the outer shell (``truncation="calibrated"``)."""
        return self._calibrated and self.truncation == "calibrated"

    @property
    def _shell_mm(self) -> float:
        """Inner radius (mm, isocentre plane) of the shell that carries the folded-back tail."""
        return self.cutoff_mm - SHELL_MARGIN_MM
