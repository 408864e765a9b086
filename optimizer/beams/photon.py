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

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy import ndimage
from scipy.special import erf

from ..errors import BeamError
from ..geometry import Patient
from ..influence import InfluenceMatrix
from .raytrace import BeamGeometry, radiological_depth


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


class PhotonBeams:
    """Coplanar 6 MV photon IMRT beams with a regular beamlet grid per beam.

    Parameters
    ----------
    gantry_deg : gantry angles, degrees (IEC 61217)
    beamlet_mm : beamlet size in the isocentre plane, mm (default 5)
    margin_mm : extra margin around the target projection, mm (default 5)
    sad_mm : source-axis distance, mm
    kernel : the pencil-beam parameters
    cutoff_sigma : lateral truncation of each beamlet, in sigmas beyond the beamlet edge
    min_relative : entries below this fraction of the beamlet's on-axis value are dropped
    """

    def __init__(
        self,
        gantry_deg: Iterable[float],
        beamlet_mm: float = 5.0,
        margin_mm: float = 5.0,
        sad_mm: float = 1000.0,
        kernel: PhotonKernel | None = None,
        cutoff_sigma: float = 3.0,
        min_relative: float = 1e-3,
    ):
        try:
            self.gantry_deg = [float(g) for g in gantry_deg]
        except TypeError:
            self.gantry_deg = [float(gantry_deg)]
        if not self.gantry_deg:
            raise BeamError("gantry_deg: expected at least one gantry angle")
        if not all(np.isfinite(self.gantry_deg)):
            raise BeamError(f"gantry_deg: expected finite angles, got {self.gantry_deg}")
        if not (np.isfinite(beamlet_mm) and beamlet_mm > 0):
            raise BeamError(f"beamlet_mm: expected a positive size in mm, got {beamlet_mm}")
        if not (np.isfinite(margin_mm) and margin_mm >= 0):
            raise BeamError(f"margin_mm: expected a margin >= 0 mm, got {margin_mm}")
        self.beamlet_mm = float(beamlet_mm)
        self.margin_mm = float(margin_mm)
        self.sad_mm = float(sad_mm)
        self.kernel = kernel or PhotonKernel()
        self.cutoff_sigma = float(cutoff_sigma)
        self.min_relative = float(min_relative)

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

    # -- dose -----------------------------------------------------------------------------------
    def influence(
        self,
        patient: Patient,
        target: str | None = None,
        isocenter_mm: tuple[float, float, float] | None = None,
        dose_mask: np.ndarray | None = None,
        fields: dict[int, np.ndarray] | None = None,
        progress: bool = False,
    ) -> InfluenceMatrix:
        """Dose-influence matrix of all beams on the patient grid.

        Parameters
        ----------
        patient : geometry with CT (HU -> relative electron density via ``hu_to_red``)
        target : structure whose projection the beamlets cover (default: the first structure
            with role "target")
        isocenter_mm : (x, y, z) LPS, mm; default the target's centroid
        dose_mask : [z, y, x] boolean mask of voxels to compute dose in; default voxels with
            relative electron density > 0.05 (inside the patient)
        fields : optional {beam number: boolean open-beamlet map} that replaces the automatic
            placement (for commissioning fields such as 10 x 10 cm2)
        progress : print one line per beam
        """
        grid = patient.grid
        if target is None:
            targets = [s.name for s in patient.structures if s.role == "target"]
            if not targets and fields is None:
                raise BeamError("target: the patient has no structure with role 'target'; name one")
            target = targets[0] if targets else None
        target_mask = patient.structure(target).mask if target is not None else None
        if target_mask is not None and not target_mask.any():
            raise BeamError(f"target '{target}': structure is empty")
        if isocenter_mm is None:
            if target_mask is None:
                raise BeamError("isocenter_mm: required when no target is given")
            isocenter_mm = tuple(grid.positions_mm(np.flatnonzero(target_mask.ravel())).mean(axis=0))
        density = patient.relative_electron_density()
        if dose_mask is None:
            dose_mask = density > 0.05
        dose_mask = np.asarray(dose_mask, dtype=bool)
        if dose_mask.shape != grid.shape:
            raise BeamError(f"dose_mask: shape {dose_mask.shape} does not match grid.shape {grid.shape}")
        voxels = np.flatnonzero(dose_mask.ravel())
        positions = grid.positions_mm(voxels)
        target_xyz = None
        if target_mask is not None:
            target_xyz = grid.positions_mm(np.flatnonzero(target_mask.ravel()))

        rows, cols, vals = [], [], []
        table = {k: [] for k in ("beam", "row", "col", "u_mm", "v_mm")}
        beams, n_cols = [], 0
        for b, gantry in enumerate(self.gantry_deg):
            t_start = time.perf_counter()
            geom = BeamGeometry(gantry, isocenter_mm, self.sad_mm)
            if fields is not None and b in fields:
                open_map = np.asarray(fields[b], dtype=bool)
                nv, nu = open_map.shape
                u0 = -(nu - 1) / 2 * self.beamlet_mm
                v0 = -(nv - 1) / 2 * self.beamlet_mm
            else:
                if target_xyz is None:
                    raise BeamError(f"fields: no field given for beam {b} and no target to cover")
                open_map, u0, v0 = self.beamlet_map(geom, target_xyz)
            r, c = np.nonzero(open_map)
            index_map = -np.ones(open_map.shape, dtype=np.int64)
            index_map[r, c] = n_cols + np.arange(len(r))
            vr, vc, vv = self._beam_dose(geom, density, patient, positions, index_map, u0, v0)
            rows.append(voxels[vr])
            cols.append(vc)
            vals.append(vv)
            table["beam"].append(np.full(len(r), b))
            table["row"].append(r)
            table["col"].append(c)
            table["u_mm"].append(u0 + c * self.beamlet_mm)
            table["v_mm"].append(v0 + r * self.beamlet_mm)
            beams.append({"gantry_deg": gantry, "couch_deg": 0.0, "isocenter_mm": list(isocenter_mm),
                          "sad_mm": self.sad_mm, "map_shape": list(open_map.shape),
                          "beamlet_mm": self.beamlet_mm, "u0_mm": u0, "v0_mm": v0,
                          "energy": "6MV"})
            n_cols += len(r)
            if progress:
                print(f"  beam {b + 1}/{len(self.gantry_deg)} gantry {gantry:5.1f} deg: {len(r)} beamlets, "
                      f"{len(vv)} nonzeros, {time.perf_counter() - t_start:.1f} s", flush=True)
        rows = np.concatenate(rows)
        cols = np.concatenate(cols)
        vals = np.concatenate(vals)
        voxel_index, row_pos = np.unique(rows, return_inverse=True)
        matrix = sp.csr_matrix((vals.astype(np.float32), (row_pos, cols)), shape=(len(voxel_index), n_cols))
        return InfluenceMatrix(matrix, voxel_index, grid, {k: np.concatenate(v) for k, v in table.items()},
                               beams, "photon")

    def _beam_dose(self, geom, density, patient, positions, index_map, u0, v0):
        """Nonzeros (point index, beamlet column, value) of one beam, vectorized over points."""
        w = self.beamlet_mm
        nv, nu = index_map.shape
        k = self.kernel
        u, v, t = geom.to_beam(positions)
        # keep points whose projection can be reached by any beamlet of this beam
        sig_max = k.sigma_mm(400.0) * self.sad_mm / t.min()
        reach = w / 2 + self.cutoff_sigma * sig_max
        near = ((u >= u0 - reach) & (u <= u0 + (nu - 1) * w + reach)
                & (v >= v0 - reach) & (v <= v0 + (nv - 1) * w + reach))
        pts = np.flatnonzero(near)
        if len(pts) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        u, v, t, depth = radiological_depth(density, patient.grid, geom, positions[pts])
        sigma_iso = k.sigma_mm(depth) * self.sad_mm / t
        axial = (self.sad_mm / t) ** 2 * k.depth_dose(depth)
        ci = np.floor((u - u0) / w + 0.5).astype(np.int64)
        ri = np.floor((v - v0) / w + 0.5).astype(np.int64)
        K = int(np.ceil((w / 2 + self.cutoff_sigma * sigma_iso.max()) / w))
        # 1-D profiles for each neighbour offset (separable kernel)
        pu = {d: _profile(u - (u0 + (ci + d) * w), w / 2, sigma_iso) for d in range(-K, K + 1)}
        pv = {d: _profile(v - (v0 + (ri + d) * w), w / 2, sigma_iso) for d in range(-K, K + 1)}
        centre = _profile(np.zeros(1), w / 2, sigma_iso) ** 2  # on-axis value of a beamlet
        out_p, out_c, out_v = [], [], []
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
                out_p.append(pts[idx])
                out_c.append(col)
                out_v.append((axial[idx] * lat[idx]).astype(np.float32))
        return np.concatenate(out_p), np.concatenate(out_c), np.concatenate(out_v)
