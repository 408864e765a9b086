"""Analytic 6 MV photon pencil-beam model and photon IMRT influence matrices.

Dose of beamlet j (width w x w in the isocentre plane, centre (u_j, v_j)) at a point with beam
coordinates (u, v, t) and radiological depth d:

    D = (SAD / t)^2 * P(d) * p(u - u_j; sigma_iso) * p(v - v_j; sigma_iso)
    p(x; s) = [erf((x + w/2) / (sqrt2 s)) - erf((x - w/2) / (sqrt2 s))] / 2

* P(d): broad-field depth dose, ``exp(-mu d) (1 - (1 - s0) exp(-k d))``: build-up from a surface
  dose s0 to a maximum, then effective attenuation. Parameters fitted so that a 10 x 10 cm2
  field at SSD 100 cm has d_max 1.5 cm and PDD(10 cm) 66.5 %, the 6 MV values in BJR Suppl. 25
  (1996) and REFERENCES.md (PDD10 ~66-67 %, d_max ~1.5 cm), surface dose ~45 %.
* sigma: lateral spread at depth, ``sqrt(sigma0^2 + (c d)^2)`` in mm at the point, projected to the
  isocentre plane; sigma0 (source size + lateral electron transport) and c (growth of scatter
  with depth) chosen to give an 80-20 % penumbra of ~5 mm at 10 cm depth, inside the 3-5 mm
  (d_max) to 5-8 mm (deep) range reported for 6 MV linacs (REFERENCES.md, BJR Suppl. 25).
* Heterogeneities enter through the radiological depth only (no lateral scatter changes), the
  classic pencil-beam approximation. Field-size dependence of phantom scatter is not modelled:
  P(d) is the 10 x 10 cm2 curve, so very small fields (< 3 x 3 cm2) are overestimated.

Units: a beamlet weight of 1 on every beamlet of a broad field gives 1 Gy per fraction at d_max
at 100 cm from the source.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from numbers import Integral

import numpy as np
import scipy.sparse as sp
from scipy import ndimage
from scipy.special import erf

from ..errors import BeamError
from ..geometry import Patient
from ..influence import InfluenceMatrix, InfluenceSet
from .base import BeamModel, BeamSetup
from .raytrace import (
    FAN_BYTES_PER_SAMPLE,
    BeamGeometry,
    check_bool_array,
    check_number,
    coarse_depth,
    fan_samples,
    radiological_depth,
)

#: Peak memory of :meth:`PhotonBeams.influence` per nonzero of the result, bytes: the per-beam
#: (voxel, column, value) triplets (int64, int64, float32), their concatenation, the row
#: renumbering (``np.unique``) and the COO -> CSR conversion. Measured as the growth of the
#: resident set size with the number of nonzeros (91 B; tracemalloc alone: 69 B).
BYTES_PER_NONZERO = 92
#: Memory per dose-mask voxel held during the computation (positions, flat indices, beam
#: coordinates), bytes.
BYTES_PER_VOXEL = 100


@dataclass(frozen=True)
class PhotonKernel:
    """Parameters of the analytic 6 MV pencil beam (see module docstring for sources).

    mu_per_mm : effective attenuation, 1/mm
    buildup_per_mm : build-up rate k, 1/mm
    surface_dose : relative dose at the surface, s0
    sigma0_mm : lateral spread at the surface, mm
    sigma_slope : growth of the lateral spread with depth, mm per mm
    """

    mu_per_mm: float = 0.0032
    buildup_per_mm: float = 0.2075
    surface_dose: float = 0.45
    sigma0_mm: float = 2.6
    sigma_slope: float = 0.02

    def __post_init__(self):
        checks = {
            "mu_per_mm": ("an attenuation > 0 per mm", lambda v: v > 0),
            "buildup_per_mm": ("a build-up rate > 0 per mm", lambda v: v > 0),
            "surface_dose": ("a relative surface dose in [0, 1]", lambda v: 0 <= v <= 1),
            "sigma0_mm": ("a lateral spread > 0 mm", lambda v: v > 0),
            "sigma_slope": ("a spread growth >= 0 mm per mm", lambda v: v >= 0),
        }
        for f in dataclass_fields(self):
            expected, ok = checks[f.name]
            value = check_number(getattr(self, f.name), f"kernel.{f.name}", expected, ok)
            object.__setattr__(self, f.name, value)

    def depth_dose(self, depth_mm: np.ndarray) -> np.ndarray:
        """Relative broad-field depth dose P(d), 1 at d_max. ``depth_mm``: radiological depth."""
        d = np.maximum(np.asarray(depth_mm, dtype=float), 0.0)
        raw = np.exp(-self.mu_per_mm * d) * (1 - (1 - self.surface_dose) * np.exp(-self.buildup_per_mm * d))
        return raw / self._peak

    @property
    def _peak(self) -> float:
        dmax = self.dmax_mm
        return float(np.exp(-self.mu_per_mm * dmax)
                     * (1 - (1 - self.surface_dose) * np.exp(-self.buildup_per_mm * dmax)))

    @property
    def dmax_mm(self) -> float:
        """Depth of maximum (mm) of P(d): where d/dd [e^{-mu d} - (1-s0) e^{-(mu+k) d}] = 0."""
        mu, k, s0 = self.mu_per_mm, self.buildup_per_mm, self.surface_dose
        arg = (1 - s0) * (mu + k) / mu
        return float(np.log(arg) / k) if arg > 1 else 0.0

    def sigma_mm(self, depth_mm: np.ndarray) -> np.ndarray:
        """Lateral Gaussian spread (mm, at the point) at radiological depth ``depth_mm``."""
        d = np.maximum(np.asarray(depth_mm, dtype=float), 0.0)
        return np.sqrt(self.sigma0_mm**2 + (self.sigma_slope * d) ** 2)


def _profile(x: np.ndarray, half_width: float, sigma: np.ndarray) -> np.ndarray:
    s = np.sqrt(2.0) * sigma
    return 0.5 * (erf((x + half_width) / s) - erf((x - half_width) / s))


class PhotonBeams(BeamModel):
    """Coplanar 6 MV photon IMRT beams with a regular beamlet grid per beam.

    Parameters
    ----------
    gantry_deg : gantry angles, degrees (IEC 61217)
    beamlet_mm : beamlet size in the isocentre plane, mm (default 5)
    margin_mm : extra margin around the target projection, mm (default 5)
    sad_mm : source-axis distance, mm
    kernel : the pencil-beam parameters
    cutoff_sigma : lateral truncation of each beamlet, in sigmas beyond the beamlet edge (> 0)
    min_relative : entries below this fraction of the beamlet's on-axis value are dropped, in
        [0, 1)
    couch_deg : patient-support angle(s), degrees; only 0 (coplanar) is supported

    Every argument is checked here (type, NaN, range; gantry angles equal modulo 360 deg are
    refused as duplicates) and :class:`~optimizer.errors.BeamError` names the one at fault.
    :meth:`influence` (see :class:`~optimizer.beams.base.BeamModel`) returns an
    :class:`~optimizer.influence.InfluenceSet` with the form "dose" only.
    """

    modality = "photon"
    form_names = ("dose",)
    _memory_hint = ("Use a coarser dose grid (resample the patient), a larger beamlet_mm, a smaller "
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
    ):
        super().__init__(gantry_deg, couch_deg)
        self.beamlet_mm = check_number(beamlet_mm, "beamlet_mm", "a positive size in mm", lambda v: v > 0)
        self.margin_mm = check_number(margin_mm, "margin_mm", "a margin >= 0 mm", lambda v: v >= 0)
        self.sad_mm = check_number(sad_mm, "sad_mm", "a positive distance in mm", lambda v: v > 0)
        if kernel is None:
            kernel = PhotonKernel()
        if not isinstance(kernel, PhotonKernel):
            raise BeamError(f"kernel: expected a PhotonKernel or None, got {type(kernel).__name__}")
        self.kernel = kernel
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
        fields: dict[int, np.ndarray] | None = None,
    ) -> InfluenceSet:
        """Dose-influence set of all beams on the patient grid: "dose", Gy per fraction per unit
        beamlet weight.

        Parameters
        ----------
        patient : geometry with CT (HU -> relative electron density via the patient's table)
        target, isocenter_mm, dose_mask, max_memory_mb, progress : as in
            :meth:`optimizer.beams.base.BeamModel.influence` (the beamlets cover the target's
            projection; the default dose mask is relative electron density > 0.05)
        fields : optional {beam number: 2-D boolean open-beamlet map (rows = v, cols = u)} that
            replaces the automatic placement (for commissioning fields such as 10 x 10 cm2);
            every map needs at least one open beamlet. With a field for every beam no target is
            needed (give ``isocenter_mm``).

        The beamlet table has ``beam, row, col, u_mm, v_mm`` (row indexes v, col indexes u on
        the beam's beamlet grid; u/v: beamlet centre in the isocentre plane, mm).
        """
        return self._run(patient, target, isocenter_mm, dose_mask, max_memory_mb, progress, fields=fields)

    def estimate_memory(
        self,
        patient: Patient,
        target: str | None = None,
        *,
        isocenter_mm: tuple[float, float, float] | None = None,
        dose_mask: np.ndarray | None = None,
        fields: dict[int, np.ndarray] | None = None,
    ) -> dict[str, float]:
        """Size of the matrix :meth:`influence` would build with these arguments, before building it.

        The beamlets are placed as in :meth:`influence`; the dose-mask voxels (a random sample
        of at most ``base.ESTIMATE_SAMPLE``, scaled up) are traced on a coarse ray fan for their
        radiological depth, and each is paired with the open beamlets by the same lateral
        reach and ``min_relative`` cut as the dose. Returns ``nnz`` (nonzeros), ``matrix_mb``
        (nnz x 8 bytes: float32 value + int32 column index of CSR) and ``peak_mb`` (the peak
        memory of the computation: :data:`BYTES_PER_NONZERO` per nonzero, the per-voxel arrays
        and the largest per-beam ray fan).
        """
        return self._estimate_for(patient, target, isocenter_mm, dose_mask, fields=fields)

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
        rows, cols, vals = [], [], []
        table = {k: [] for k in ("beam", "row", "col", "u_mm", "v_mm")}
        beams, n_cols = [], 0
        with self._progress(progress) as bar:
            for b, (geom, (open_map, u0, v0)) in enumerate(zip(setup.geometries, placed)):
                started = time.perf_counter()
                r, c = np.nonzero(open_map)
                index_map = -np.ones(open_map.shape, dtype=np.int64)
                index_map[r, c] = n_cols + np.arange(len(r))
                vr, vc, vv = self._beam_dose(geom, setup.density, setup.patient, positions, index_map, u0, v0)
                rows.append(voxels[vr])
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
                              "u0_mm": u0, "v0_mm": v0, "energy": "6MV"})
                n_cols += len(r)
                self._beam_done(bar, b, started, f"{len(r)} beamlets, {len(vv)} nonzeros")
        rows = np.concatenate(rows)
        cols = np.concatenate(cols)
        vals = np.concatenate(vals)
        voxel_index, row_pos = np.unique(rows, return_inverse=True)
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
            fan = fan_samples(grid, geom, u[near], v[near])
            depth = coarse_depth(setup.density, grid, geom, positions[near])
            n_pairs, n_offsets = 0, 0
            for idx, _, _ in self._pairs(u[near], v[near], t[near], depth, index_map, u0, v0):
                n_pairs += len(idx)
                n_offsets += 1
            nnz += scale * n_pairs
            # per beam: the ray fan, then per near voxel its beam coordinates, depth and the two
            # 1-D profiles per neighbour offset (float64)
            per_point = 64 + 16 * math.isqrt(n_offsets)
            transient = max(transient, fan * FAN_BYTES_PER_SAMPLE + scale * near.sum() * per_point)
        # the ray fans and profiles of a beam coexist with the triplets of the beams before it
        # (20 B per nonzero), not with the final assembly
        peak = len(voxels) * BYTES_PER_VOXEL + max(nnz * BYTES_PER_NONZERO, nnz * 20 + transient)
        return {"nnz": nnz, "matrix_mb": nnz * 8 / 2**20, "peak_mb": peak / 2**20}

    def _near(self, u, v, t, map_shape, u0, v0) -> np.ndarray:
        """Points whose projection can be reached by some beamlet of a map of ``map_shape``."""
        w = self.beamlet_mm
        nv, nu = map_shape
        sig_max = self.kernel.sigma_mm(400.0) * self.sad_mm / t.min()
        reach = w / 2 + self.cutoff_sigma * sig_max
        return ((u >= u0 - reach) & (u <= u0 + (nu - 1) * w + reach)
                & (v >= v0 - reach) & (v <= v0 + (nv - 1) * w + reach))

    def _pairs(self, u, v, t, depth, index_map, u0, v0):
        """(point positions, beamlet columns, lateral factors) of the nonzeros, one neighbour
        offset at a time (separable kernel, truncated at ``cutoff_sigma`` and ``min_relative``)."""
        w = self.beamlet_mm
        nv, nu = index_map.shape
        sigma_iso = self.kernel.sigma_mm(depth) * self.sad_mm / t
        ci = np.floor((u - u0) / w + 0.5).astype(np.int64)
        ri = np.floor((v - v0) / w + 0.5).astype(np.int64)
        K = int(np.ceil((w / 2 + self.cutoff_sigma * sigma_iso.max()) / w))
        # 1-D profiles for each neighbour offset (separable kernel)
        pu = {d: _profile(u - (u0 + (ci + d) * w), w / 2, sigma_iso) for d in range(-K, K + 1)}
        pv = {d: _profile(v - (v0 + (ri + d) * w), w / 2, sigma_iso) for d in range(-K, K + 1)}
        centre = _profile(np.zeros(1), w / 2, sigma_iso) ** 2  # on-axis value of a beamlet
        for di in range(-K, K + 1):
            for dj in range(-K, K + 1):
                r = ri + di
                c = ci + dj
                ok = (r >= 0) & (r < nv) & (c >= 0) & (c < nu)
                lat = pu[dj] * pv[di]
                ok &= lat > self.min_relative * centre
                idx = np.flatnonzero(ok)
                col = index_map[r[idx], c[idx]]
                open_ = col >= 0
                idx, col = idx[open_], col[open_]
                yield idx, col, lat[idx]

    def _beam_dose(self, geom, density, patient, positions, index_map, u0, v0):
        """Nonzeros (point index, beamlet column, value) of one beam, vectorized over points."""
        u, v, t = geom.to_beam(positions)
        # keep points whose projection can be reached by any beamlet of this beam
        pts = np.flatnonzero(self._near(u, v, t, index_map.shape, u0, v0))
        if len(pts) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        u, v, t, depth = radiological_depth(density, patient.grid, geom, positions[pts])
        axial = (self.sad_mm / t) ** 2 * self.kernel.depth_dose(depth)
        out_p, out_c, out_v = [], [], []
        for idx, col, lat in self._pairs(u, v, t, depth, index_map, u0, v0):
            out_p.append(pts[idx])
            out_c.append(col)
            out_v.append((axial[idx] * lat).astype(np.float32))
        return np.concatenate(out_p), np.concatenate(out_c), np.concatenate(out_v)
