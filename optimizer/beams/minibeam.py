"""Minibeam beam models: arrays of sub-millimetre proton or photon beams (``modality="minibeam"``).

Columns of the influence matrices are minibeams (x segments along a slit, x energy layers for
protons), on the lattice of a :class:`~optimizer.beams.minibeam_pattern.MinibeamPattern`. Every
column's lateral dose is separable in the beam's-eye coordinates (a across the modulation, b along
it) and a sum of components, each a box of half-width h blurred by a Gaussian of sigma s:

    P(x; h, s) = [erf((x + h) / (sqrt2 s)) - erf((x - h) / (sqrt2 s))] / 2

(:func:`~optimizer.beams.photon_kernel.field_profile`; a pure Gaussian for h = 0).

**Protons** (:class:`ProtonMinibeams`), on the pencil-beam physics of this package:

    D_j(a, b, z) = K IDD_E(z) sum_c f_c(z) p(a - a_j; h_a, s_c(z)) p(b - b_j; h_b, s_c(z)),

p = P / 2h (normalised to 1 over the line; a Gaussian density for focused beams), IDD the Bortfeld
depth dose (:func:`~optimizer.beams.proton_physics.pristine_peak`), K = GY_MM2_PER_UNIT_WEIGHT. The
components: the primary core (weight 1 - w(z), sigma: the beam's own spread and Fermi-Eyges /
Highland MCS :func:`~optimizer.beams.proton_physics.mcs_sigma_mm` in quadrature) and the nuclear
halo (weight w(z) with its entrance build-up over the first 38 mm, and sigma, at least 3 mm, of
:mod:`~optimizer.beams.proton_halo`). The plane integral of every column equals IDD(z) exactly
(energy conservation; tested). Against Monte Carlo PVDR-vs-depth of focused planar arrays
(data/minibeam_pvdr_reference.json, 125-230 MeV, tests/test_minibeam_reference.py): model / MC
0.47-1.32 on the 16 arrays with PVDR files (96 of 112 points within x/÷ 1.5, entrance 0.47-1.32),
never above 1.5 (our valley never more than 1.5x below the MC). Beam spread at the surface:

* focused (``collimator=None``): Gaussian of FWHM = beam_width_mm (s0 = FWHM / 2.3548);
* multislit collimator (:class:`SlitCollimator`): a box of the slit width blurred by the angular
  acceptance of the slit, s_theta = (w / T) / sqrt(3) (a uniform angle distribution within +-w/T,
  our geometric model), growing over the air gap and the depth: s = s_theta (gap + z). Protons
  scattered by the slit edges are a stated low-dose component: a fraction ``edge_scatter`` of each
  slit's dose spread uniformly over its period (default 2 %, an assumption of this model, not a
  fitted value: with it the Orsay geometry, 0.4 mm slits at 3.2 mm, 65 mm brass, 100 MeV, 10 mm
  air gap, gives entrance PVDRs of 270-75 at 4-24 mm depth (120-55 without the halo's entrance
  build-up); fit it to a measured valley dose before planning with a collimator). A collimator
  thinner than the protons' range in it is refused (transmission through the septa is not modelled).

**Photons** (:class:`~optimizer.beams.minibeam_photon.PhotonMinibeams`), 6 MV through a multislit
collimator: the scatter kernel of
:class:`~optimizer.beams.photon_kernel.PhotonScatterKernel` (primary, scatter, far, electron
components, each with its own depth dose and sigma), the inverse square, and septum transmission
T = exp(-mu t): each column is open (1) over its slit and T over the septum of its period. The
primary's surface sigma is replaced by ``primary_sigma_mm`` (default 0.3 mm: the kernel's 1.7 mm
includes the linac jaw penumbra, which a multislit collimator at the patient does not have; our
estimate of the secondary-electron blur, verify with film). The valley is the primary's tail plus
the kernel's scatter components plus transmission: for 0.5 mm slits at 2 mm, 10 mm deep, the
primary alone gives a PVDR of 14.7 and the full model 8.6 (scatter and transmission raise the
valley-to-peak ratio 1.7-fold there; more with depth and field size).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.special import erf

from ..errors import BeamError
from ..geometry import Patient
from ..influence import InfluenceMatrix, InfluenceSet
from ..stopping_power import hu_to_rsp
from . import proton_halo as ph
from . import proton_physics as pp
from .base import BeamModel, BeamSetup
from .minibeam_pattern import MinibeamPattern, _positive, check_resolution
from .raytrace import check_number

#: FWHM of a Gaussian in sigmas, 2 sqrt(2 ln 2).
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: Water-equivalent thickness ratio of brass for protons, about 5.5 (WET / physical thickness;
#: Zhang & Newhauser, PMB 2009;54:1383 give ~5-6 for copper alloys at therapeutic energies).
BRASS_WER = 5.5
#: Step of the depth tables of the proton depth dose and halo weight, mm (linear interpolation:
#: relative error < 1e-3 of the IDD up to the distal 80 % point at 70-230 MeV, measured: 7e-4 at 70 MeV).
DEPTH_TABLE_MM = 0.05
#: Bytes per stored nonzero while assembling (row, col, value and the CSR copy).
BYTES_PER_NONZERO = 32


def profile(x, half, sigma, normalised: bool):
    """Box of half-width ``half`` blurred by a Gaussian ``sigma`` at ``x`` (mm, broadcast);
    ``normalised``: divided by 2 half (a density in 1/mm; a Gaussian density for half = 0, which
    must then be the scalar 0)."""
    sigma = np.maximum(sigma, 1e-6)
    if np.ndim(half) == 0 and half <= 0:
        return np.exp(-0.5 * (x / sigma) ** 2) / (math.sqrt(2 * math.pi) * sigma)
    s = math.sqrt(2.0) * sigma
    p = 0.5 * (erf((x + half) / s) - erf((x - half) / s))
    return p / (2 * half) if normalised else p


@dataclass(frozen=True)
class SlitCollimator:
    """A multislit (or multi-hole) collimator; the slit width is the pattern's beam width.

    thickness_mm : septum thickness along the beam, mm (brass for protons: 20-65 mm; tungsten
        for photons)
    air_gap_mm : collimator exit to patient surface, mm
    edge_scatter : protons: fraction of each slit's dose scattered by the slit edges into its
        period (0-0.5); photons: unused (transmission follows from the thickness)
    """

    thickness_mm: float = 65.0
    air_gap_mm: float = 10.0
    edge_scatter: float = 0.02

    def __post_init__(self):
        _positive(self.thickness_mm, "collimator.thickness_mm")
        check_number(self.air_gap_mm, "collimator.air_gap_mm", "a distance >= 0 in mm", lambda v: v >= 0)
        check_number(self.edge_scatter, "collimator.edge_scatter", "a fraction in [0, 0.5]",
                     lambda v: 0 <= v <= 0.5)


class _Minibeams(BeamModel):
    """Shared placement and sparse assembly of minibeam arrays (see the module docstring)."""

    modality = "minibeam"
    normalised = True

    def __init__(self, gantry_deg, pattern: MinibeamPattern, *, field_mm=None, length_mm=None,
                 margin_mm: float = 2.0, cutoff_sigmas: float = 3.0, depth_ray_mm: float = 1.0):
        super().__init__(gantry_deg)
        if not isinstance(pattern, MinibeamPattern):
            raise BeamError(f"pattern: expected a MinibeamPattern, got {type(pattern).__name__}")
        self.pattern = pattern
        self.field_mm = None if field_mm is None else _positive(field_mm, "field_mm")
        self.length_mm = None if length_mm is None else _positive(length_mm, "length_mm")
        self.margin_mm = check_number(margin_mm, "margin_mm", "a margin >= 0 in mm around the target's "
                                      "projection", lambda v: v >= 0)
        self.cutoff_sigmas = _positive(cutoff_sigmas, "cutoff_sigmas", "a positive number of sigmas")
        self.depth_ray_mm = _positive(depth_ray_mm, "depth_ray_mm")

    # -- placement -------------------------------------------------------------------------------
    def _place(self, setup: BeamSetup) -> list:
        p = self.pattern
        out = []
        for geom in setup.geometries:
            # on a dose grid its spacing is the one to refine, not the patient's
            check_resolution(setup.grid, geom, p, "grid.spacing_mm" if setup.trace is None else "dose_grid")
            u, v, _ = geom.to_beam(setup.target_positions_mm())
            ext = {"u": (u.min(), u.max()), "v": (v.min(), v.max())}
            a_ax = p.across if p.pattern == "slit" else "u"
            b_ax = "v" if a_ax == "u" else "u"
            lo, hi = ext[a_ax]
            if self.field_mm is not None:
                lo, hi = -self.field_mm / 2, self.field_mm / 2
            else:
                lo, hi = lo - self.margin_mm, hi + self.margin_mm
            a_c = p.centres(lo, hi, 0.0)
            blo, bhi = ext[b_ax]
            if self.length_mm is not None:
                blo, bhi = -self.length_mm / 2, self.length_mm / 2
            else:
                blo, bhi = blo - self.margin_mm, bhi + self.margin_mm
            if p.pattern == "pin":
                b_c, hb = p.centres(blo, bhi, 0.0), self._half_width()
            else:
                seg = bhi - blo if p.segment_mm is None else p.segment_mm
                n = max(int(math.ceil((bhi - blo) / seg - 1e-9)), 1)
                b_c = blo + seg * (np.arange(n) + 0.5)
                hb = seg / 2
            out.append({"geom": geom, "a_axis": a_ax, "a": a_c, "b": b_c, "ha": self._half_width(), "hb": hb,
                        "layers": self._layers(setup, geom)})
        return out

    def _half_width(self) -> float:
        return self.pattern.beam_width_mm / 2

    def _layers(self, setup, geom) -> list:
        return [None]

    def _reach_cap(self) -> float:
        """Largest lateral reach of a column beyond its half-width, mm."""
        return np.inf

    def _beam_info(self) -> dict:
        """Model fields of the beam table (collimator, transmission)."""
        c = getattr(self, "collimator", None)
        if c is None:
            return {"delivery": "focused"}
        return {"delivery": "multislit collimator", "collimator_thickness_mm": c.thickness_mm,
                "collimator_air_gap_mm": c.air_gap_mm, "edge_scatter": c.edge_scatter}

    def _lateral_scale(self, t):
        """Factor from isocentre-plane distances to the distances the sigmas are given in:
        protons t / SAD (sigmas at the depth), photons 1 (sigmas projected to the isocentre)."""
        return t / self.source_axis_distance_mm

    # -- dose --------------------------------------------------------------------------------------
    def _estimate(self, setup: BeamSetup, placed: list) -> dict[str, float]:
        nnz = 0.0
        for pl in placed:
            s = self._max_sigma()
            ka = 2 * math.ceil((pl["ha"] + self.cutoff_sigmas * s) / self.pattern.ctc_mm) + 1
            pitch_b = (pl["b"][1] - pl["b"][0]) if len(pl["b"]) > 1 else np.inf
            kb = min(2 * math.ceil((pl["hb"] + self.cutoff_sigmas * s) / pitch_b) + 1, len(pl["b"]))
            nnz += len(setup.voxels) * len(pl["layers"]) * min(ka, len(pl["a"])) * kb
        mb = nnz * 12 / 2**20
        return {"nnz": nnz, "matrix_mb": mb, "peak_mb": nnz * BYTES_PER_NONZERO / 2**20 + 2 * mb}

    def _compute(self, setup: BeamSetup, placed: list, progress: bool) -> InfluenceSet:
        voxels = setup.voxels
        pos = setup.grid.positions_mm(voxels)
        blocks, table, beams, col0 = [], {k: [] for k in ("beam", "layer", "energy_MeV", "u_mm", "v_mm",
                                                           "row", "col")}, [], 0
        with self._progress(progress) as bar:
            for bi, pl in enumerate(placed):
                started = time.perf_counter()
                ray = self.depth_ray_mm
                u, v, t, depth = setup.depth(pl["geom"], pos, ray, ray / 2, exact_surface=True)
                depth = depth * setup.wepl_error[0] + setup.wepl_error[1]
                a, b = (u, v) if pl["a_axis"] == "u" else (v, u)
                na, nb = len(pl["a"]), len(pl["b"])
                nnz = 0
                for li, layer in enumerate(pl["layers"]):
                    rows, cols, vals = self._pairs(a, b, t, depth, pl, layer)
                    blocks.append((rows, cols + col0 + li * na * nb, vals))
                    nnz += len(vals)
                ia, ib = np.meshgrid(np.arange(na), np.arange(nb), indexing="ij")
                for li, layer in enumerate(pl["layers"]):
                    table["beam"].append(np.full(na * nb, bi))
                    table["layer"].append(np.full(na * nb, li))
                    table["energy_MeV"].append(np.full(na * nb, np.nan if layer is None else layer))
                    ua, vb = pl["a"][ia.ravel()], pl["b"][ib.ravel()]
                    table["u_mm"].append(ua if pl["a_axis"] == "u" else vb)
                    table["v_mm"].append(vb if pl["a_axis"] == "u" else ua)
                    table["row"].append(ib.ravel())
                    table["col"].append(ia.ravel())
                col0 += len(pl["layers"]) * na * nb
                beams.append({"gantry_deg": pl["geom"].gantry_deg, "couch_deg": 0.0,
                              "isocenter_mm": list(setup.isocenter_mm), "map_shape": [nb, na],
                              "sad_mm": pl["geom"].sad_mm,
                              "across": pl["a_axis"], "pattern": self.pattern.pattern,
                              "beam_width_mm": self.pattern.beam_width_mm, "ctc_mm": self.pattern.ctc_mm,
                              "half_length_mm": float(pl["hb"]),  # of a column along the array
                              "offset_mm": self.pattern.offset_mm,
                              "energies_MeV": [x for x in pl["layers"] if x is not None],
                              "model": type(self).__name__, **self._beam_info()})
                self._beam_done(bar, bi, started, f"{col0} columns, {nnz} nonzeros")
        rows = np.concatenate([blk[0] for blk in blocks])
        cols = np.concatenate([blk[1] for blk in blocks])
        vals = np.concatenate([blk[2] for blk in blocks]).astype(np.float32)
        del blocks
        m = sp.csr_matrix((vals, (rows, cols)), shape=(len(voxels), col0), dtype=np.float32)
        reached = np.flatnonzero(np.diff(m.indptr) > 0)
        beamlets = {k: np.concatenate(x) for k, x in table.items()}
        return InfluenceSet(InfluenceMatrix(m[reached], voxels[reached], setup.grid, beamlets, beams,
                                            self.modality))

    def _pairs(self, a, b, t, depth, pl, layer):
        """(voxel row, column within the layer, dose) of every voxel-column pair within the
        cut-off, vectorized over voxels and neighbouring columns (no loop over either)."""
        keep, comps, scale = self._components(depth, t, layer)
        rows0 = np.flatnonzero(keep)
        a, b = a[rows0], b[rows0]
        comps = [(amp[rows0], sig[rows0], kind) for amp, sig, kind in comps]
        scale = scale[rows0]
        smax = np.max([c[1] for c in comps], axis=0) if comps else np.zeros(len(rows0))
        reach = np.minimum(self.cutoff_sigmas * smax, self._reach_cap())
        ac, bc = pl["a"], pl["b"]
        pa = self.pattern.ctc_mm
        pb = (bc[1] - bc[0]) if len(bc) > 1 else 1.0
        # a "period" component (septum transmission, edge scatter) covers the column's whole
        # collimator cell: the period across the modulation and, for a pin, along it too (the
        # pins' square lattice); a slit segment's length already tiles its slit
        period = any(kind == "period" for _, _, kind in comps)
        half_cell = self.pattern.ctc_mm / 2
        ha_period = half_cell
        hb_period = half_cell if self.pattern.pattern == "pin" else pl["hb"]
        ha_far = max(pl["ha"], ha_period) if period else pl["ha"]
        hb_far = max(pl["hb"], hb_period) if period else pl["hb"]
        ka = int(math.ceil((ha_far + reach.max(initial=0.0)) / pa)) + 1
        kb = 0 if len(bc) == 1 else int(math.ceil((hb_far + reach.max(initial=0.0)) / pb)) + 1
        ia0 = np.rint((a - ac[0]) / pa).astype(np.int64)
        ib0 = np.rint((b - bc[0]) / pb).astype(np.int64) if len(bc) > 1 else np.zeros(len(b), np.int64)
        da = np.arange(-ka, ka + 1)
        db = np.arange(-kb, kb + 1)
        ia = (ia0[:, None, None] + da[None, :, None]) + 0 * db[None, None, :]
        ib = (ib0[:, None, None] + db[None, None, :]) + 0 * da[None, :, None]
        ok = (ia >= 0) & (ia < len(ac)) & (ib >= 0) & (ib < len(bc))
        r, i_a, i_b = np.nonzero(ok)
        ja, jb = ia[r, i_a, i_b], ib[r, i_a, i_b]
        del ia, ib, ok
        lat = self._lateral_scale(t[rows0])[r]  # isocentre plane -> mm at the voxel's depth
        xa = (a[r] - ac[ja]) * lat
        xb = (b[r] - bc[jb]) * lat
        near = (np.abs(xa) <= ha_far * lat + reach[r]) & (np.abs(xb) <= hb_far * lat + reach[r])
        r, ja, jb, xa, xb, lat = r[near], ja[near], jb[near], xa[near], xb[near], lat[near]
        val = np.zeros(len(r))
        # the pattern (centres, slit and segment widths) is drawn at the isocentre plane and scales
        # with the beam's divergence (lat), so segments tile their slit at every depth
        for amp, sig, kind in comps:  # a handful of physics components, not voxels or beams
            ha, hb = (ha_period, hb_period) if kind == "period" else (pl["ha"], pl["hb"])
            ha = ha * lat if ha > 0 else 0.0
            hb = hb * lat if hb > 0 else 0.0
            s = sig[r]
            val += amp[r] * profile(xa, ha, s, self.normalised) * profile(xb, hb, s, self.normalised)
        val *= scale[r]
        good = val > 0
        return rows0[r[good]], (ja * len(bc) + jb)[good], val[good]


class ProtonMinibeams(_Minibeams):
    """Proton minibeams (pMBRT): focused pencils or a multislit collimator (module docstring).

    Parameters
    ----------
    gantry_deg : gantry angle(s), degrees (IEC 61217)
    pattern : the array (beam width, spacing, slit / pin, axis, offset, segments)
    energies_MeV : energy layers, MeV (70-230); default: layers every ``layer_spacing_mm`` of
        range covering the target's water-equivalent depths (+ 1 mm distal)
    collimator : a :class:`SlitCollimator`, or None for magnetically focused beams
    field_mm, length_mm : array extent across / along the modulation at the isocentre plane,
        mm; default the target's projection + ``margin_mm``
    layer_spacing_mm : range step between automatic layers, mm
    energy_spread_pct : 1-sigma energy spread, % (default of :mod:`proton_physics`)
    cutoff_sigmas : pairs beyond this many sigmas of the widest component are dropped
    depth_ray_mm : ray spacing of the water-equivalent depth trace, mm
    """

    traces_wepl = True
    _memory_hint = "Use a smaller fine slab, fewer energy layers or a coarser grid along the slits"

    def __init__(self, gantry_deg, pattern: MinibeamPattern, *, energies_MeV=None,
                 collimator: SlitCollimator | None = None, field_mm=None, length_mm=None,
                 layer_spacing_mm: float = 3.0, energy_spread_pct: float = pp.DEFAULT_ENERGY_SPREAD_PCT,
                 margin_mm: float = 2.0, cutoff_sigmas: float = 3.0, depth_ray_mm: float = 1.0):
        super().__init__(gantry_deg, pattern, field_mm=field_mm, length_mm=length_mm, margin_mm=margin_mm,
                         cutoff_sigmas=cutoff_sigmas, depth_ray_mm=depth_ray_mm)
        if collimator is not None and not isinstance(collimator, SlitCollimator):
            raise BeamError(f"collimator: expected a SlitCollimator or None, got {type(collimator).__name__}")
        self.collimator = collimator
        self.energies_MeV = None if energies_MeV is None else [pp._scalar_energy(e) for e in
                                                               np.atleast_1d(energies_MeV)]
        if self.energies_MeV == []:
            raise BeamError("energies_MeV: expected at least one energy in MeV (70-230), or None for layers "
                            "every layer_spacing_mm across the target; got an empty sequence")
        self.layer_spacing_mm = _positive(layer_spacing_mm, "layer_spacing_mm")
        self.energy_spread_pct = pp._spread(energy_spread_pct)
        if collimator is not None:
            e_max = max(self.energies_MeV or [pp.E_MAX_MEV])
            wet = collimator.thickness_mm * BRASS_WER
            if wet < pp.csda_range_mm(e_max):
                raise BeamError(f"collimator.thickness_mm: {collimator.thickness_mm:g} mm of brass "
                                f"(~{wet:.0f} mm "
                                f"water) does not stop {e_max:g} MeV protons; expected >= "
                                f"{pp.csda_range_mm(e_max) / BRASS_WER:.1f} mm")

    @property
    def source_axis_distance_mm(self) -> float:
        return 2000.0  # virtual source distance of a scanning nozzle, as ProtonBeams

    def _density(self, patient: Patient) -> np.ndarray:
        return hu_to_rsp(patient.ct_hu)

    def _layers(self, setup, geom) -> list:
        if self.energies_MeV is not None:
            return list(self.energies_MeV)
        *_, w = setup.depth(geom, setup.target_positions_mm(), self.depth_ray_mm, self.depth_ray_mm / 2,
                            exact_surface=True)
        ranges = np.arange(w.max() + 1.0, w.min() - 1e-9, -self.layer_spacing_mm)
        lo, hi = pp.csda_range_mm(pp.E_MIN_MEV), pp.csda_range_mm(pp.E_MAX_MEV)
        if ranges.max() > hi or ranges.min() < lo:
            raise BeamError(f"target: water-equivalent depths {w.min():.0f}-{w.max():.0f} mm need ranges "
                            "outside "
                            f"{lo:.0f}-{hi:.0f} mm (70-230 MeV); give energies_MeV")
        return [float(pp.energy_from_range_mm(r)) for r in ranges]

    def sigma_theta(self) -> float:
        """Angular spread (rad, 1 sigma) behind the collimator: (w / T) / sqrt 3."""
        return self.pattern.beam_width_mm / self.collimator.thickness_mm / math.sqrt(3.0)

    def _half_width(self) -> float:
        return 0.0 if self.collimator is None else self.pattern.beam_width_mm / 2

    def beam_sigma_mm(self, depth_mm):
        """The beam's own lateral sigma at water-equivalent depth (without MCS), mm."""
        z = np.asarray(depth_mm, dtype=float)
        if self.collimator is None:
            return np.full(z.shape, self.pattern.beam_width_mm / FWHM_PER_SIGMA)
        return self.sigma_theta() * (self.collimator.air_gap_mm + np.maximum(z, 0.0))

    def core_sigma_mm(self, energy_MeV: float, depth_mm):
        """Core sigma: the beam's own spread and MCS in quadrature, mm."""
        return np.sqrt(self.beam_sigma_mm(depth_mm) ** 2 + pp.mcs_sigma_mm(energy_MeV, depth_mm) ** 2)

    def _max_sigma(self) -> float:
        e = max(self.energies_MeV or [150.0])
        r = pp.csda_range_mm(e)
        return float(ph.halo_sigma_mm(e, r, max(float(self.core_sigma_mm(e, r)), 0.01)))

    def _components(self, depth, t, energy):
        e = float(energy)
        s_r = pp.range_straggling_sigma_mm(e, self.energy_spread_pct)
        # depth tables every DEPTH_TABLE_MM, linearly interpolated per voxel (the parabolic
        # cylinder functions of the Bragg curve cost ~10 us a point)
        z_tab = np.arange(0.0, max(float(depth.max(initial=0.0)), 0.0) + 2 * DEPTH_TABLE_MM, DEPTH_TABLE_MM)
        idd = np.interp(depth, z_tab, pp._idd(e, z_tab, s_r))
        keep = idd > 1e-6 * idd.max(initial=0.0)
        w = np.interp(depth, z_tab, ph._halo_weight(e, z_tab, s_r))  # with the entrance build-up
        sc = self.core_sigma_mm(e, depth)
        sh = ph._halo_sigma(e, depth, sc)  # proton_halo.halo_sigma_mm with the minibeam's own core
        comps = [(1.0 - w, sc, "beam"), (w, sh, "beam")]
        if self.collimator is not None and self.collimator.edge_scatter > 0:
            f = self.collimator.edge_scatter
            comps = [((1 - f) * amp, s, k) for amp, s, k in comps] + [(np.full(len(depth), f), sh, "period")]
        return keep, comps, pp.GY_MM2_PER_UNIT_WEIGHT * idd
