"""Proton pencil-beam scanning (PBS): spot placement, dose-influence and LET x dose matrices.

Beam model (physics and sources in :mod:`optimizer.beams.proton_physics`)
--------------------------------------------------------------------------
Each beam scans spots on a regular (u, v) grid in the isocentre plane, one grid per beam shared
by all its energy layers; a spot's central ray runs from a virtual source at ``virtual_sad_mm``
through its grid position. The dose of spot j (energy E) at a voxel with water-equivalent depth w
(WEPL along the voxel's own ray from the virtual source, :func:`~optimizer.beams.raytrace.
radiological_depth` on the relative-stopping-power cube) is

    D_ij = c IDD_E(w) [(1 - h) G(r; s) + h G(r; s_h)] (1 + f g(r)),
    G(r; s) = exp(-r^2 / (2 s^2)) / (2 pi s^2),   s^2 = s_air(E)^2 + s_MCS,E(w)^2,

with r the distance of the voxel from the spot's central ray in the plane through the voxel
(iso-plane offset x t / SAD), IDD the Bortfeld depth dose per proton with the energy spread of
the beam-data table (:mod:`optimizer.beams.proton_beamdata`; default: OpenTPS's generic IBA
beam model, data/proton_generic.csv) and c =
:data:`~optimizer.beams.proton_physics.GY_MM2_PER_UNIT_WEIGHT` (one unit of weight = 1e8
protons). The nuclear halo (weight h(w), sigma s_h(w):
:mod:`optimizer.beams.proton_halo`; ``halo=False`` drops it) is a second, wide Gaussian; core and
halo share the IDD; f g(r) is the fold of the cut-off (below).

**Sparse cut-off and fold.** Each spot reaches R(w) = ``cutoff_sigma`` (default 4) *core*
sigmas s(w), or the farther ``halo_cutoff_sigma`` (default 2, the halo radius) halo sigmas at
depths where the halo beyond the core reach carries >= :data:`HALO_REACH_MIN_FRACTION` (4 %) of
the IDD. Inside the shell radius a = 0.7 R (:data:`SHELL_FRACTION`) the kernel is exact (not
renormalised); the kernel beyond R, 1 - K (K: :func:`~optimizer.beams.proton_halo.
fraction_within`), is folded into the shell [a, R] as a hat
(:func:`~optimizer.beams.proton_halo.folded_cutoff`), so the laterally integrated dose of every
spot still equals its IDD (a broad field's dose is exact) and fields whose edge lies inside a
keep their central dose, as the photon model's outer-shell calibration
(:mod:`optimizer.beams.photon_sparse`). With the core reach alone the folded fraction is 3e-4
for the core; with the halo it is the halo beyond 4 core sigmas: 0 at the surface, 4.5 % of the
dose at mid-range of 150 MeV, 10.5 % at 200 MeV (table beam line), which then lands inside any
field wider than ~3 cm: the matrix's field-size factor (4 x 4 vs 20 x 20 cm^2 at mid-range) was
1.000 at 150 and 200 MeV instead of the model's 0.977 / 0.926 (a larger ``cutoff_sigma`` does
not help much: the halo there is 4-7 core sigmas wide). With the halo reach the folded fraction
at those points is 1.1 % / 1.7 % and the matrix's factor 0.982 / 0.926
(``tests/test_proton_dose_model.py``), at 3.1 / 10.7 times the nonzeros of such a voxel and
1.41 times those of the TG-119 C-shape plan (93-165 MeV, 4 mm; ``benchmarks/bench_proton_dose.py``).
Where the halo reach does not apply (less than 4 % of the IDD beyond the core reach, e.g. 100
MeV, the entrance and the peak) small fields are overdosed by less than that fraction.
``halo_cutoff_sigma=0`` gives the core cut-off alone. **No explicit
inverse-square factor**: the laterally integrated dose of a spot does not depend on the distance
from the source (no protons are lost), and the 1/r^2 fall-off of a broad field follows from the
divergence of the spot positions. WEPL is traced with ``exact_surface=True`` (a surface on the
grid edge loses no range). Heterogeneities act through the WEPL only (no lateral
heterogeneity scatter); the MCS sigma is that of water at the same WEPL; the dose is dose to water.

The LET x dose matrix has the same sparsity: entry LETd_E(w) D_ij (keV/um x Gy), with the
dose-averaged LET of the spot's primaries at that depth, laterally constant. The halo part of the
dose carries the same LETd (the secondaries' own LET is not modelled). The LETd of a plan
x in voxel i is (L x)_i / (D x)_i.

Spot placement
--------------
* Energy layers: CSDA ranges (R80, within 0.02 mm) from the deepest WEPL of the target grown by
  ``margin_mm`` down to its shallowest, spaced by ``layer_spacing_mm`` of WEPL; by default each
  gap is 2.2 range-straggling sigmas of the deeper layer, about the pristine peak's 80 % width
  (1.1 mm at 70 MeV, 4.0 mm at 150 MeV, 7.8 mm at 225 MeV), which keeps a spread-out peak smooth.
  Layers below 70 MeV (WEPL < 40.8 mm) are dropped with a warning (no range shifter modelled);
  a target deeper than the 230 MeV range raises :class:`~optimizer.errors.BeamError`.
* Spots: grid spacing ``spot_spacing_mm`` (default 1.2 x the in-air sigma: the sum of Gaussians
  on such a grid is flat to < 0.1 %); in layer k a spot is kept when a voxel of the grown target
  whose WEPL lies within half a layer gap of the layer's range (at least half a voxel) projects
  within max(spacing, voxel size) / sqrt 2 of the spot, i.e. only spots whose Bragg peak falls
  in the target (+ margin) along their ray.

(Longer than the ~400-line guide: spot placement, the memory estimate and the dose / LET
kernels share one geometry pass; splitting them would pass half-built state between modules.)
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from ..errors import BeamError, GeometryError
from ..geometry import Patient
from ..influence import InfluenceMatrix, InfluenceSet, let_d_map  # noqa: F401  (let_d_map: public here too)
from ..stopping_power import hu_to_rsp
from . import proton_halo as ph
from . import proton_physics as pp
from .base import BeamModel, BeamSetup
from .proton_beamdata import ProtonBeamData, as_beam_data
from .raytrace import (
    FAN_BYTES_PER_SAMPLE,
    check_number,
    coarse_depth,
)

#: Default virtual source-axis distance of a PBS nozzle, mm (scanning magnets about 2-3 m
#: upstream of isocentre; verify per machine).
DEFAULT_VIRTUAL_SAD_MM = 2000.0
#: Default layer gap in units of the range-straggling sigma (about the 80 % peak width).
LAYER_GAP_SIGMAS = 2.2
#: Default spot spacing in units of the in-air spot sigma.
SPOT_SPACING_SIGMAS = 1.2
#: Default lateral reach of a spot, in core sigmas (see ProtonBeams, ``cutoff_sigma``).
DEFAULT_CUTOFF_SIGMA = 4.0
#: Default reach of the halo in halo sigmas (``halo_cutoff_sigma``): the halo radius of
#: :mod:`optimizer.beams.proton_halo` (2 sigmas = a third of the range at its end, Gottschalk et
#: al., PMB 2015;60:5627).
HALO_RADIUS_SIGMAS = 2.0
#: The halo reach applies only at depths where the halo beyond ``cutoff_sigma`` core sigmas
#: carries at least this fraction of the IDD (elsewhere the core cut-off alone, whose fold then
#: overdoses small fields by less than this). 4 %: the smallest whole percentage that keeps the
#: TG-119 C-shape plan of benchmarks/bench_proton_dose.py within 1.5 x the nonzeros of the core
#: cut-off alone (estimate_memory: 2.36 / 1.99 / 1.66 / 1.43 x at 1 / 2 / 3 / 4 %; the matrix at
#: 4 %: 1.41 x).
HALO_REACH_MIN_FRACTION = 0.04
#: Width of the outer shell that receives the folded dose, as a fraction of the reach.
SHELL_FRACTION = 0.3
#: Voxels per chunk of the spot-voxel pair computation (~1e5 pairs: the per-pair temporaries
#: stay in the CPU cache and the transient memory of a layer is bounded).
_CHUNK_VOXELS = 16384
#: Depth-dose tables are sampled every this many mm of WEPL.
_TABLE_STEP_MM = 0.1
#: Depth beyond the range (in straggling sigmas) after which a spot deposits nothing.
_DISTAL_CUT_SIGMAS = 5.0
#: Peak memory of the dose computation per nonzero of the dose matrix, bytes: the per-layer CSC
#: blocks, their column-wise join and the conversion to CSR (dose only), plus the same for the
#: LET x dose matrix (both). Measured as the growth of the resident set size with the number of
#: nonzeros (25.6 and 45.8 B; tracemalloc alone: 23.4 and 34.7 B).
BYTES_PER_NONZERO = 26
BYTES_PER_NONZERO_WITH_LET = 46
#: Per spot-voxel pair within a layer's maximum lateral reach, bytes, held while that layer is
#: computed (measured with the former KD-tree pair list and its filtered copies; an upper bound
#: now that the pairs are computed in chunks of voxels and a layer keeps ~28 B per entry).
BYTES_PER_LAYER_PAIR = 72
#: Memory per dose-mask voxel held during the computation (positions, beam coordinates), bytes.
BYTES_PER_VOXEL = 100


def _positive(value, name: str, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    return check_number(value, name, "a positive number of mm" + (" or None" if allow_none else ""),
                        lambda v: v > 0)


class ProtonBeams(BeamModel):
    """Coplanar proton PBS beams: spot placement and dose / LET x dose influence matrices.

    Parameters
    ----------
    gantry_deg : gantry angles, degrees (IEC 61217)
    spot_spacing_mm : lateral spot spacing in the isocentre plane, mm; default 1.2 x the smallest
        in-air sigma of each beam's layers
    layer_spacing_mm : WEPL gap between energy layers, mm; default 2.2 range-straggling sigmas
        of each layer (module docstring)
    margin_mm : isotropic margin around the target in which Bragg peaks are placed, mm
    spot_sigma_air_mm : in-air spot sigma at isocentre, mm (clinical nozzles 3-7 mm); default
        (None): per energy from ``beam_data``
    energy_spread_pct : 1-sigma energy spread of the beam, % of E; default (None): per energy
        from ``beam_data``
    virtual_sad_mm : virtual source-axis distance, mm
    energies_MeV : optional fixed list of layer energies (70-230 MeV) used by every beam instead
        of the automatic layers (e.g. a single energy for commissioning-type checks)
    cutoff_sigma : lateral reach of each spot, in core sigmas (> 0); the kernel beyond the reach
        is folded into its outer shell (module docstring)
    rsp_table : optional HU -> RSP calibration, (N, 2); default
        :data:`optimizer.stopping_power.HU_TO_RSP_TABLE`
    couch_deg : patient-support angle(s), degrees; only 0 (coplanar) is supported
    beam_data : :class:`~optimizer.beams.proton_beamdata.ProtonBeamData` or a path to a
        .csv/.json table (energy spread and in-air sigma per energy); default: OpenTPS's generic
        IBA beam model (data/proton_generic.csv)
    halo : model the nuclear halo (default True)
    halo_cutoff_sigma : lateral reach of the halo, in halo sigmas (>= 0; True / the default:
        :data:`HALO_RADIUS_SIGMAS`, False or 0: the core cut-off alone); applies at depths where
        the halo beyond ``cutoff_sigma`` core sigmas carries >= :data:`HALO_REACH_MIN_FRACTION`
        of the IDD. Gives small fields their field-size factor at high energy, at a cost in
        nonzeros (module docstring)

    Every argument is checked here (type, NaN, range; gantry angles equal modulo 360 deg are
    refused as duplicates) and :class:`~optimizer.errors.BeamError` names the one at fault.
    :meth:`influence` (see :class:`~optimizer.beams.base.BeamModel`) returns an
    :class:`~optimizer.influence.InfluenceSet` with the forms "dose" and "let_dose".
    """

    modality = "proton"
    form_names = ("dose", "let_dose")
    # not "a smaller cutoff_sigma": a shorter core reach lets the halo reach apply at more depths
    # (C-shape 6 mm, one beam: 1.45 M non-zeros at the default, 3.43 M at cutoff_sigma=2)
    _memory_hint = ("Use a coarser dose grid (dose_grid=), a larger spot_spacing_mm or layer_spacing_mm, "
                    "a smaller dose_mask, or fewer beams")

    def __init__(
        self,
        gantry_deg: Iterable[float] | float,
        spot_spacing_mm: float | None = None,
        layer_spacing_mm: float | None = None,
        margin_mm: float = 5.0,
        spot_sigma_air_mm: float | None = None,
        energy_spread_pct: float | None = None,
        virtual_sad_mm: float = DEFAULT_VIRTUAL_SAD_MM,
        energies_MeV: Iterable[float] | None = None,
        cutoff_sigma: float = DEFAULT_CUTOFF_SIGMA,
        rsp_table: np.ndarray | None = None,
        *,
        couch_deg: Iterable[float] | float = 0.0,
        beam_data: ProtonBeamData | str | None = None,
        halo: bool = True,
        halo_cutoff_sigma: float | bool = True,
    ):
        super().__init__(gantry_deg, couch_deg)
        self.beam_data = as_beam_data(beam_data)
        self.spot_sigma_air_mm = _positive(spot_sigma_air_mm, "spot_sigma_air_mm", allow_none=True)
        self.spot_spacing_mm = _positive(spot_spacing_mm, "spot_spacing_mm", allow_none=True)
        self.layer_spacing_mm = _positive(layer_spacing_mm, "layer_spacing_mm", allow_none=True)
        self.margin_mm = check_number(margin_mm, "margin_mm", "a margin >= 0 mm", lambda v: v >= 0)
        self.energy_spread_pct = None if energy_spread_pct is None else pp._spread(energy_spread_pct)
        if not isinstance(halo, (bool, np.bool_)):
            raise BeamError(f"halo: expected True or False, got {halo!r}")
        self.halo = bool(halo)
        self.virtual_sad_mm = _positive(virtual_sad_mm, "virtual_sad_mm")
        self.cutoff_sigma = check_number(cutoff_sigma, "cutoff_sigma", "a number of sigmas > 0",
                                         lambda v: v > 0)
        if isinstance(halo_cutoff_sigma, (bool, np.bool_)):
            halo_cutoff_sigma = HALO_RADIUS_SIGMAS if halo_cutoff_sigma else 0.0
        self.halo_cutoff_sigma = check_number(halo_cutoff_sigma, "halo_cutoff_sigma",
                                              "a number of halo sigmas >= 0 or True / False",
                                              lambda v: v >= 0)
        if energies_MeV is not None:
            if isinstance(energies_MeV, (str, bytes)):
                raise BeamError(f"energies_MeV: expected energies in MeV (numbers), got {energies_MeV!r}")
            e = pp._energy(np.atleast_1d(energies_MeV), "energies_MeV")
            energies_MeV = sorted({float(v) for v in e.ravel()}, reverse=True)
        self.energies_MeV = energies_MeV
        if rsp_table is not None:
            try:
                if isinstance(rsp_table, (str, bytes)):
                    raise GeometryError(f"table: expected an (N, 2) array of HU and RSP, got {rsp_table!r}")
                hu_to_rsp(np.zeros(1), rsp_table)
            except GeometryError as err:
                raise BeamError(f"rsp_table: {str(err).removeprefix('table: ')}") from None
            rsp_table = np.array(rsp_table, dtype=float)
        self.rsp_table = rsp_table

    @property
    def source_axis_distance_mm(self) -> float:
        return self.virtual_sad_mm

    def sigma_air_mm(self, energy_MeV: float) -> float:
        """In-air spot sigma at isocentre used at ``energy_MeV``, mm: ``spot_sigma_air_mm`` when
        given, else the beam-data table's value."""
        if self.spot_sigma_air_mm is not None:
            return self.spot_sigma_air_mm
        return float(self.beam_data.spot_sigma_air_mm_at(energy_MeV))

    def spread_pct(self, energy_MeV: float) -> float:
        """1-sigma energy spread used at ``energy_MeV``, % of E: ``energy_spread_pct`` when given,
        else the beam-data table's value."""
        if self.energy_spread_pct is not None:
            return self.energy_spread_pct
        return float(self.beam_data.energy_spread_pct_at(energy_MeV))

    # -- public ---------------------------------------------------------------------------------
    def influence(self, patient: Patient, target: str | None = None, *,
                  isocenter_mm: tuple[float, float, float] | None = None,
                  dose_mask: np.ndarray | None = None, max_memory_mb: float | None = None,
                  progress: bool = False, dose_grid=None, target_rule: str = "centre",
                  with_let: bool = True) -> InfluenceSet:
        """Dose and LET x dose influence of all spots on the patient grid.

        Parameters
        ----------
        patient : geometry; its CT is converted to RSP with ``rsp_table``
        target, isocenter_mm, dose_mask, max_memory_mb, progress, dose_grid, target_rule : as in
            :meth:`optimizer.beams.base.BeamModel.influence` (the Bragg peaks cover the target +
            ``margin_mm``)
        with_let : also compute the LET x dose form (default); False: "dose" only, in less
            time and memory

        Returns
        -------
        InfluenceSet with modality "proton": "dose", Gy per fraction per unit spot weight (1e8
        protons), and (``with_let``) "let_dose", keV/um x Gy per fraction per unit spot weight,
        entry by entry on the same rows, columns and sparsity. The beamlet table has ``beam,
        layer, energy_MeV, range_mm, u_mm, v_mm, row, col`` (layer 0 is the deepest of its beam;
        row indexes v, col indexes u on the beam's spot grid). The dose-averaged LET of weights
        x is :func:`~optimizer.influence.let_d_map`.
        """
        return self._run(patient, target, isocenter_mm, dose_mask, max_memory_mb, progress, dose_grid,
                         target_rule, with_let=with_let)

    def compute(self, patient: Patient, target: str | None = None,
                isocenter_mm: tuple[float, float, float] | None = None,
                dose_mask: np.ndarray | None = None, progress: bool = False,
                max_memory_mb: float | None = None) -> tuple[InfluenceSet, InfluenceMatrix]:
        """Deprecated: ``influence(...)`` returns both forms; this returns
        ``(set, set.forms["let_dose"])``."""
        warnings.warn("ProtonBeams.compute is deprecated: influence() returns an InfluenceSet with the "
                      "forms 'dose' and 'let_dose'", DeprecationWarning, stacklevel=2)
        out = self.influence(patient, target, isocenter_mm=isocenter_mm, dose_mask=dose_mask,
                             max_memory_mb=max_memory_mb, progress=progress)
        return out, out.forms["let_dose"]

    def estimate_memory(self, patient: Patient, target: str | None = None, *,
                        isocenter_mm: tuple[float, float, float] | None = None,
                        dose_mask: np.ndarray | None = None, dose_grid=None, target_rule: str = "centre",
                        with_let: bool = True) -> dict[str, float]:
        """Size of the matrices :meth:`influence` would build with these arguments (``dose_grid``
        and ``target_rule`` included).

        The spots are placed as in :meth:`influence` (a ray trace of the grown target only);
        the dose-mask voxels (a random sample of at most ``base.ESTIMATE_SAMPLE``, scaled up) are
        traced on a coarse ray fan for their WEPL, and each is paired, layer by layer, with the
        spots within ``cutoff_sigma`` lateral sigmas at its depth (counted on the spot grid in a
        square of the same area as that circle) down to the layer's distal cut-off. Returns
        ``nnz`` (nonzeros of the dose matrix), ``matrix_mb`` (nnz x 8 bytes: float32 value +
        int32 column index of CSR; twice that with the LET matrix) and ``peak_mb`` (the peak
        memory of the computation: :data:`BYTES_PER_NONZERO` or
        :data:`BYTES_PER_NONZERO_WITH_LET` per nonzero, the per-voxel arrays, the largest ray
        fan and the largest layer's pair list).
        """
        return self._estimate_for(patient, target, isocenter_mm, dose_mask, dose_grid, target_rule,
                                  with_let=with_let)

    # -- the physics (see BeamModel) --------------------------------------------------------------
    def _options(self, with_let=True) -> dict:
        if not isinstance(with_let, (bool, np.bool_)):
            raise BeamError(f"with_let: expected True or False, got {with_let!r}")
        return {"with_let": bool(with_let)}

    def _density(self, patient: Patient) -> np.ndarray:
        return hu_to_rsp(patient.ct_hu, self.rsp_table)

    def _place(self, setup: BeamSetup, with_let=True) -> list:
        """(geometry, spots, beam info) of every beam: the spots whose Bragg peaks fall in the
        target grown by ``margin_mm`` (on a dose grid the CT's target: BeamSetup.placement)."""
        patient, mask = setup.placement()
        target = setup.target
        grown = patient.expand(target, self.margin_mm) if self.margin_mm > 0 else mask
        grown_idx = np.flatnonzero(grown.ravel())
        placed = []
        for b, geom in enumerate(setup.geometries):  # a loop, not a comprehension: warnings' stacklevel
            placed.append((geom, *self._place_spots(b, geom, setup, patient.grid, grown_idx, target)))
        return placed

    traces_wepl = True

    def _on_geometries(self, placed, geometries):
        return [(g, spots, info) for g, (_, spots, info) in zip(geometries, placed)]

    def _compute(self, setup: BeamSetup, placed: list, progress: bool, with_let=True) -> InfluenceSet:
        grid, voxels, iso = setup.grid, setup.voxels, setup.isocenter_mm
        dose_blocks, let_blocks = [], []
        table = {k: [] for k in ("beam", "layer", "energy_MeV", "range_mm", "u_mm", "v_mm", "row", "col")}
        beams = []
        layer_tables: dict = {}  # depth tables per energy, shared by the beams of this call
        with self._progress(progress) as bar:
            for b, (geom, spots, info) in enumerate(placed):
                started = time.perf_counter()
                db, lb = self._beam_dose(geom, setup, voxels, spots, with_let, layer_tables=layer_tables)
                dose_blocks.extend(db)
                let_blocks.extend(lb)
                n = len(spots["layer"])
                for k in table:
                    table[k].append(np.full(n, b) if k == "beam" else spots[k])
                beams.append(dict(info, gantry_deg=self.gantry_deg[b], couch_deg=self.couch_deg[b],
                                  isocenter_mm=list(iso)))
                self._beam_done(bar, b, started, f"{len(info['energies'])} layers, {n} spots, "
                                                 f"{sum(x.nnz for x in db)} nonzeros")
        beamlets = {k: np.concatenate(v) for k, v in table.items()}
        dose = _assemble(dose_blocks, len(voxels))
        del dose_blocks
        letd = _assemble(let_blocks, len(voxels)) if with_let else None
        del let_blocks
        # rows: dose-mask voxels that any spot reaches (identical in both matrices)
        reached = np.flatnonzero(np.diff(dose.indptr) > 0)
        voxel_index = voxels[reached]
        out = InfluenceSet(InfluenceMatrix(_select_rows(dose, reached), voxel_index, grid, beamlets, beams,
                                           self.modality))
        if with_let:
            let_beams = [dict(bm, quantity="let_dose_keVum_Gy") for bm in beams]
            out.add_form("let_dose", InfluenceMatrix(
                _select_rows(letd, reached), voxel_index.copy(), grid,
                {k: v.copy() for k, v in beamlets.items()}, let_beams, self.modality))
        return out

    def _layer_ranges(self, w_min: float, w_max: float, b: int) -> list[float]:
        """CSDA ranges (mm WEPL) of the layers covering [w_min, w_max], deepest first."""
        r_lo, r_hi = pp.csda_range_mm(pp.E_MIN_MEV), pp.csda_range_mm(pp.E_MAX_MEV)
        if w_max > r_hi:
            raise BeamError(
                f"energy_MeV: beam {b} needs a range of {w_max:.1f} mm WEPL to reach the distal edge of "
                f"the target (+ margin), more than the {pp.E_MAX_MEV:g} MeV maximum ({r_hi:.1f} mm)")
        if w_max < r_lo:
            raise BeamError(
                f"energy_MeV: beam {b}: the target (+ margin) lies shallower than {r_lo:.1f} mm WEPL, the "
                f"range of the lowest energy {pp.E_MIN_MEV:g} MeV; a range shifter is not modelled")
        ranges, r = [], w_max
        while True:
            ranges.append(r)
            if r <= w_min or r <= r_lo:
                break
            e = pp.energy_from_range_mm(r)
            gap = self.layer_spacing_mm or LAYER_GAP_SIGMAS * pp.range_straggling_sigma_mm(
                e, self.spread_pct(e))
            r = max(r - gap, r_lo)
        if w_min < r_lo - 1e-9:
            warnings.warn(
                f"beam {b}: target (+ margin) reaches {w_min:.1f} mm WEPL, shallower than the "
                f"{pp.E_MIN_MEV:g} MeV range ({r_lo:.1f} mm); the shallowest layer is {pp.E_MIN_MEV:g} MeV "
                "(no range shifter modelled), so the proximal target is reached only by the plateau",
                stacklevel=6)
        return ranges

    def _place_spots(self, b, geom, setup, grid, grown_idx, target):
        pos = grid.positions_mm(grown_idx)
        u, v, t, w = setup.depth(geom, pos, exact_surface=True)
        if self.energies_MeV is not None:
            energies = np.array(self.energies_MeV)
            ranges = np.asarray(pp.csda_range_mm(energies), dtype=float)
        else:
            ranges = np.array(self._layer_ranges(float(w.min()), float(w.max()), b))
            energies = np.asarray(pp.energy_from_range_mm(ranges), dtype=float)
        # acceptance half-width of each layer in WEPL: half the gap to its neighbours
        h_vox = 0.5 * max(grid.spacing_mm)
        gaps = np.abs(np.diff(ranges)) if len(ranges) > 1 else np.array([])
        half = np.full(len(ranges), h_vox)
        if len(gaps):
            half[:-1] = np.maximum(half[:-1], gaps / 2)
            half[1:] = np.maximum(half[1:], gaps / 2)
        s = self.spot_spacing_mm or SPOT_SPACING_SIGMAS * min(self.sigma_air_mm(e) for e in energies)
        h_lat = max(grid.spacing_mm) * self.virtual_sad_mm / float(t.min())
        r_keep = max(s, h_lat) / np.sqrt(2.0) + 1e-9
        iu0 = int(np.floor(u.min() / s)) - 1
        iv0 = int(np.floor(v.min() / s)) - 1
        nu = int(np.ceil(u.max() / s)) + 1 - iu0 + 1
        nv = int(np.ceil(v.max() / s)) + 1 - iv0 + 1
        gr, gc = np.meshgrid(np.arange(nv), np.arange(nu), indexing="ij")
        gr, gc = gr.ravel(), gc.ravel()
        cand = np.stack([(iu0 + gc) * s, (iv0 + gr) * s], axis=1)
        out = {k: [] for k in ("layer", "energy_MeV", "range_mm", "u_mm", "v_mm", "row", "col")}
        kept_e, kept_r = [], []
        for k, (e, r) in enumerate(zip(energies, ranges)):
            sel = np.abs(w - r) <= half[k]
            if not sel.any():
                continue
            tree = cKDTree(np.stack([u[sel], v[sel]], axis=1))
            dist, _ = tree.query(cand, k=1, distance_upper_bound=r_keep)
            hit = np.flatnonzero(np.isfinite(dist))
            if len(hit) == 0:
                continue
            layer = len(kept_e)
            kept_e.append(float(e))
            kept_r.append(float(r))
            out["layer"].append(np.full(len(hit), layer))
            out["energy_MeV"].append(np.full(len(hit), float(e)))
            out["range_mm"].append(np.full(len(hit), float(r)))
            out["u_mm"].append(cand[hit, 0])
            out["v_mm"].append(cand[hit, 1])
            out["row"].append(gr[hit])
            out["col"].append(gc[hit])
        if not kept_e:
            what = "energies_MeV" if self.energies_MeV is not None else "target"
            raise BeamError(f"{what}: beam {b} (gantry {geom.gantry_deg:g} deg) has no spot whose Bragg "
                            f"peak falls in target '{target}' (+ margin)")
        spots = {k: np.concatenate(vv) for k, vv in out.items()}
        info = {"sad_mm": self.virtual_sad_mm, "map_shape": [nv, nu], "spot_spacing_mm": s,
                "u0_mm": iu0 * s, "v0_mm": iv0 * s, "energies": kept_e, "ranges_mm": kept_r,
                "spot_sigma_air_mm": [self.sigma_air_mm(e) for e in kept_e],
                "energy_spread_pct": [self.spread_pct(e) for e in kept_e],
                "halo": self.halo, "cutoff_sigma": self.cutoff_sigma,
                "halo_cutoff_sigma": self.halo_cutoff_sigma,
                "beam_data": self.beam_data.source, "energy": "protons"}
        return spots, info

    def _reach_table(self, e: float, depth_mm, reach_only: bool = False) -> dict:
        """:func:`~optimizer.beams.proton_halo.folded_cutoff` of energy ``e`` at ``depth_mm`` (WEPL,
        mm) with this model's cut-offs, plus the core and halo sigmas and the halo weight;
        ``reach_only``: ``reach_mm`` and the sigmas alone (the same reach, without the fold)."""
        spread, air = self.spread_pct(e), self.sigma_air_mm(e)
        core = np.asarray(pp.lateral_sigma_mm(e, depth_mm, air), dtype=float)
        if self.halo:
            wt = np.asarray(ph.halo_weight(e, depth_mm, spread), dtype=float)
            halo = ph._halo_sigma(e, np.asarray(depth_mm, dtype=float), core)
        else:
            wt, halo = np.zeros_like(core), core
        if reach_only:
            out = {"reach_mm": ph.cutoff_reach(self.cutoff_sigma, self.halo_cutoff_sigma, wt, core, halo,
                                               HALO_REACH_MIN_FRACTION)}
        else:
            out = ph.folded_cutoff(self.cutoff_sigma, self.halo_cutoff_sigma, wt, core, halo,
                                   HALO_REACH_MIN_FRACTION, SHELL_FRACTION)
        return dict(out, core=core, halo=halo, weight=wt)

    def _max_reach_mm(self, e: float) -> float:
        """Largest lateral reach of energy ``e`` over its depths (physical mm at the voxel)."""
        key = (e, self.cutoff_sigma, self.halo_cutoff_sigma, self.halo, self.spread_pct(e),
               self.sigma_air_mm(e))
        cache = self.__dict__.setdefault("_reach_cache", {})
        if key not in cache:
            w_cut = pp.csda_range_mm(e) + _DISTAL_CUT_SIGMAS * pp.range_straggling_sigma_mm(e, key[4])
            depths = np.linspace(0.0, w_cut, 200)
            cache[key] = float(self._reach_table(e, depths, reach_only=True)["reach_mm"].max())
        return cache[key]

    def _near(self, spots, u, v, t) -> np.ndarray:
        """Points (iso-plane u, v; source distance t) within the lateral reach of a beam's spots."""
        reach_max = max(self._max_reach_mm(float(e)) for e in np.unique(spots["energy_MeV"]))
        reach = reach_max * self.virtual_sad_mm / float(t.min())
        return ((u >= spots["u_mm"].min() - reach) & (u <= spots["u_mm"].max() + reach)
                & (v >= spots["v_mm"].min() - reach) & (v <= spots["v_mm"].max() + reach))

    def _deepest_cut(self, spots) -> float:
        """WEPL beyond which no spot of the beam deposits dose, mm."""
        e_max = float(spots["energy_MeV"].max())
        return float(pp.csda_range_mm(e_max)
                     + _DISTAL_CUT_SIGMAS * pp.range_straggling_sigma_mm(e_max, self.spread_pct(e_max)))

    def _estimate(self, setup: BeamSetup, placed: list, with_let=True) -> dict[str, float]:
        """See :meth:`estimate_memory`; ``placed``: (geometry, spots, info) of every beam."""
        grid, voxels = setup.grid, setup.voxels
        positions, scale = setup.estimate_sample()
        sad = self.virtual_sad_mm
        square = math.sqrt(math.pi) / 2  # half-side of the square with the area of the unit circle
        nnz, transient = 0.0, 0.0
        for geom, spots, info in placed:
            u, v, t = geom.to_beam(positions)
            near = self._near(spots, u, v, t)
            if not near.any():
                continue
            fan = setup.fan_samples(geom, u[near], v[near])
            w = coarse_depth(setup.density, grid, geom, positions[near])
            keep = w <= self._deepest_cut(spots)
            u, v, t, w = u[near][keep], v[near][keep], t[near][keep], w[keep]
            if len(w) == 0:
                continue
            s = info["spot_spacing_mm"]
            nv, nu = info["map_shape"]
            iu0, iv0 = round(info["u0_mm"] / s), round(info["v0_mm"] / s)
            max_pairs = 0.0
            for layer in range(int(spots["layer"].max()) + 1):
                in_layer = spots["layer"] == layer
                e = float(spots["energy_MeV"][in_layer][0])
                occupied = np.zeros((nv + 1, nu + 1))
                occupied[spots["row"][in_layer] + 1, spots["col"][in_layer] + 1] = 1.0
                table = occupied.cumsum(axis=0).cumsum(axis=1)  # summed-area table
                w_cut = pp.csda_range_mm(e) + _DISTAL_CUT_SIGMAS * pp.range_straggling_sigma_mm(
                    e, self.spread_pct(e))
                shallow = w <= w_cut
                r_iso = self._reach_table(e, w[shallow], reach_only=True)["reach_mm"] * sad / t[shallow]
                nnz += scale * _box_count(table, (u[shallow] - iu0 * s) / s, (v[shallow] - iv0 * s) / s,
                                          square * r_iso / s)
                reach_e = self._max_reach_mm(e) * sad / float(t.min())
                max_pairs = max(max_pairs, scale * _box_count(table, (u - iu0 * s) / s, (v - iv0 * s) / s,
                                                              np.full(len(u), square * reach_e / s)))
            # per beam: the ray fan, per near voxel its coordinates and depth, per layer its pairs
            transient = max(transient, fan * FAN_BYTES_PER_SAMPLE + scale * near.sum() * 64
                            + max_pairs * BYTES_PER_LAYER_PAIR)
        per_nnz = BYTES_PER_NONZERO_WITH_LET if with_let else BYTES_PER_NONZERO
        # a beam's ray fan and layer pairs coexist with the CSC blocks of the beams before it
        # (8 B per nonzero and matrix), not with their final assembly
        peak = len(voxels) * BYTES_PER_VOXEL + max(nnz * per_nnz, nnz * (16 if with_let else 8) + transient)
        return {"nnz": nnz, "matrix_mb": nnz * 8 * (2 if with_let else 1) / 2**20, "peak_mb": peak / 2**20}

    def _lateral_tables(self, e: float, depth_tab: np.ndarray, spread: float, air: float) -> dict:
        """Depth tables of one energy layer: core and halo sigma (mm), the amplitudes (Gy mm^-2
        per unit weight) of the core and halo Gaussians (exact, not renormalised), the reach and
        the inner radius of the outer shell (mm) and the fold factor of the shell
        (:func:`~optimizer.beams.proton_halo.folded_cutoff`: each spot's laterally integrated
        dose equals its IDD; module docstring)."""
        idd = pp.pristine_peak(e, depth_tab, spread)[1] * pp.GY_MM2_PER_UNIT_WEIGHT
        r = self._reach_table(e, depth_tab)
        core, halo, wt = r["core"], r["halo"], r["weight"]
        return {"core": core, "halo": halo, "reach": r["reach_mm"], "shell": r["shell_mm"],
                "fold": r["fold"],
                "amp_core": idd * (1.0 - wt) / (2 * np.pi * core**2),
                "amp_halo": idd * wt / (2 * np.pi * halo**2)}

    def _beam_dose(self, geom, setup, voxels, spots, with_let=True, layer_tables: dict | None = None):
        """Per-layer CSC blocks (rows: position in ``voxels``; columns: the layer's spots) of the
        dose and of the LET x dose of one beam, with identical sparsity. ``setup.wepl_error``: (scale,
        offset_mm) of a range-error scenario, applied to the WEPL of voxels inside (w > 0).
        ``layer_tables``: a cache of the per-energy depth tables, shared across beams."""
        layer_tables = {} if layer_tables is None else layer_tables
        grid = setup.grid
        positions = grid.positions_mm(voxels)
        u, v, t = geom.to_beam(positions)
        pts = np.flatnonzero(self._near(spots, u, v, t))
        u, v, t, w = setup.depth(geom, positions[pts], exact_surface=True)
        wepl_error = setup.wepl_error
        if tuple(wepl_error) != (1.0, 0.0):
            w = np.where(w > 0, np.maximum(w * wepl_error[0] + wepl_error[1], 0.0), w)
        keep = w <= self._deepest_cut(spots)
        pts, u, v, t, w = pts[keep], u[keep], v[keep], t[keep], w[keep]
        scale = t / self.virtual_sad_mm  # iso-plane -> physical distance at the voxel
        n_vox = len(voxels)
        dose_blocks, let_blocks = [], []
        for layer in range(int(spots["layer"].max()) + 1):
            in_layer = np.flatnonzero(spots["layer"] == layer)
            e = float(spots["energy_MeV"][in_layer[0]])
            n_spots = len(in_layer)
            spread, air = self.spread_pct(e), self.sigma_air_mm(e)
            key = (e, spread, air)
            if key not in layer_tables:
                sig_r = pp.range_straggling_sigma_mm(e, spread)
                w_cut = pp.csda_range_mm(e) + _DISTAL_CUT_SIGMAS * sig_r
                depth_tab = np.arange(0.0, w_cut + 2 * _TABLE_STEP_MM, _TABLE_STEP_MM)
                tabs = self._lateral_tables(e, depth_tab, spread, air)
                if with_let:
                    tabs["let"] = pp.let_d(e, depth_tab, spread)
                layer_tables[key] = (w_cut, _DepthTable(depth_tab, tabs))
            w_cut, table = layer_tables[key]
            # per-voxel depth quantities of this layer (and the per-voxel factors of the kernel:
            # the same numbers as computed per pair), then the pairs in chunks of voxels
            shallow = np.flatnonzero(w <= w_cut)
            per_v = table(w[shallow])
            per_v.update(reach2=per_v["reach"] ** 2, shell2=per_v["shell"] ** 2,
                         c_core=0.5 / per_v["core"] ** 2, c_halo=0.5 / per_v["halo"] ** 2,
                         reach_iso=per_v["reach"] / scale[shallow])
            su, sv = spots["u_mm"][in_layer], spots["v_mm"][in_layer]
            parts = [self._layer_entries(su, sv, u, v, scale, shallow, per_v, slice(lo, lo + _CHUNK_VOXELS),
                                         with_let) for lo in range(0, len(shallow), _CHUNK_VOXELS)]
            if not parts:
                parts = [(np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.float32),
                          np.zeros(0, np.float32))]
            js, vi, dose, let_dose = (np.concatenate([q[i] for q in parts]) for i in range(4))
            # CSC blocks straight from the pairs grouped by spot (no duplicates, rows unsorted within
            # a column: _assemble's CSC -> CSR transpose sorts them); same pattern in both forms
            order, indptr = _by_column(js, n_spots)
            rows = pts[vi[order]].astype(np.int32)
            dose_blocks.append(sp.csc_matrix((dose[order], rows, indptr), shape=(n_vox, n_spots)))
            if with_let:
                let_blocks.append(sp.csc_matrix((let_dose[order], rows, indptr), shape=(n_vox, n_spots)))
        return dose_blocks, let_blocks

    def _layer_entries(self, su, sv, u, v, scale, shallow, per_v, chunk: slice, with_let: bool):
        """Dose (and LET x dose) entries, float32, of one layer's spots (iso-plane ``su``, ``sv``)
        on the voxels ``shallow[chunk]`` (``u``, ``v``, ``scale``: per beam voxel; ``per_v``: per
        ``shallow`` voxel): (spot, beam voxel, dose, LET x dose or an empty array)."""
        idx = shallow[chunk]
        k0 = chunk.start
        js, kc, d_iso = _pairs_within_reach(su, sv, u[idx], v[idx], per_v["reach_iso"][chunk])
        k, vi = kc + k0, idx[kc]
        r2 = (d_iso * scale[vi]) ** 2
        ok = r2 <= per_v["reach2"][k]
        if not ok.all():
            js, vi, k, r2 = js[ok], vi[ok], k[ok], r2[ok]
        dose = per_v["amp_core"][k] * np.exp(-r2 * per_v["c_core"][k])
        if self.halo:
            dose += per_v["amp_halo"][k] * np.exp(-r2 * per_v["c_halo"][k])
        # the kernel beyond the reach, folded into the outer shell (hat from shell to reach)
        out = np.flatnonzero(r2 > per_v["shell2"][k])
        ko = k[out]
        dose[out] *= 1.0 + per_v["fold"][ko] * ph.shell_shape(np.sqrt(r2[out]), per_v["shell"][ko],
                                                              per_v["reach"][ko])
        let_dose = (dose * per_v["let"][k]).astype(np.float32) if with_let else np.zeros(0, np.float32)
        return js.astype(np.int32), vi, dose.astype(np.float32), let_dose


class _DepthTable:
    """Linear interpolation of several depth tables at once: ``table(x)`` is
    ``{name: np.interp(x, depth, tabs[name])}`` (the same formula, slope x (x - x_j) + y_j with the
    slopes precomputed as np.interp does, and the same interval j: x_j <= x < x_(j+1), so the same
    numbers), the interval found once for all tables (arithmetically on an evenly spaced table,
    then checked against the nodes). Depths below the first node take its value, as np.interp."""

    def __init__(self, depth: np.ndarray, tabs: dict[str, np.ndarray]):
        self.depth = np.asarray(depth, dtype=float)
        self.y = {n: np.asarray(t, dtype=float) for n, t in tabs.items()}
        gaps = np.diff(self.depth)
        self.slope = {n: (y[1:] - y[:-1]) / gaps for n, y in self.y.items()}
        self.step = float(gaps[0]) if np.allclose(gaps, gaps[0], rtol=1e-9, atol=0.0) else None

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        d, last = self.depth, len(self.depth) - 2
        x = np.maximum(np.asarray(x, dtype=float), d[0])
        if self.step is None:
            j = np.clip(np.searchsorted(d, x, side="right") - 1, 0, last)
        else:  # the guess is off by at most one interval at a node
            j = np.clip(((x - d[0]) * (1.0 / self.step)).astype(np.intp), 0, last)
            j -= (d[j] > x) & (j > 0)
            j += (d[j + 1] <= x) & (j < last)
        dx = x - d[j]
        return {n: self.slope[n][j] * dx + y[j] for n, y in self.y.items()}


def _pairs_within_reach(spot_u, spot_v, u, v, reach_iso):
    """(spot, voxel, iso-plane distance) for every spot within ``reach_iso`` of each voxel (all
    in mm in the isocentre plane; ``u``, ``v``, ``reach_iso``: one per voxel; spot and voxel as
    indices into their arrays). The spots are sorted into rows of equal v (a spot grid has few);
    for each voxel, the rows within its reach and, in each row, the spots on the chord of its
    circle are found by binary search. The search radius is the reach x (1 + 1e-9), so every
    pair within the reach is found (callers filter exactly); the distance is the same number as
    scipy's KD-tree gives, sqrt(du^2 + dv^2)."""
    spot_u, spot_v = np.asarray(spot_u, dtype=float), np.asarray(spot_v, dtype=float)
    empty = np.zeros(0, np.int64)
    if len(u) == 0 or len(spot_u) == 0:
        return empty, empty, np.zeros(0)
    order = np.lexsort((spot_u, spot_v))  # by v, then u
    su, sv = spot_u[order], spot_v[order]
    row_v, row_first = np.unique(sv, return_index=True)
    rad = np.asarray(reach_iso, dtype=float) * (1.0 + 1e-9)
    # rows laid end to end on one axis: key = row x span + u - min u, each query clipped to its row
    u_min = float(su.min())
    extent = float(su.max()) - u_min
    span = extent + 4.0
    row_of = np.repeat(np.arange(len(row_v)), np.diff(np.append(row_first, len(su))))
    key = row_of * span + (su - u_min)
    first = np.searchsorted(row_v, v - rad, side="left")
    n_rows = np.searchsorted(row_v, v + rad, side="right") - first
    starts, counts, vox = [], [], []
    for step in range(int(n_rows.max())):
        sel = np.flatnonzero(n_rows > step)
        r = first[sel] + step
        dv = row_v[r] - v[sel]
        chord = np.sqrt(np.maximum(rad[sel] ** 2 - dv * dv, 0.0)) + 1e-9 * rad[sel]
        base = r * span
        du = u[sel] - u_min
        lo = np.searchsorted(key, base + np.clip(du - chord, -1.0, extent + 1.0), side="left")
        n = np.searchsorted(key, base + np.clip(du + chord, -1.0, extent + 1.0), side="right") - lo
        hit = n > 0
        starts.append(lo[hit])
        counts.append(n[hit])
        vox.append(sel[hit])
    counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    total = int(counts.sum())
    if total == 0:
        return empty, empty, np.zeros(0)
    vi = np.repeat(np.concatenate(vox), counts)
    rank = np.arange(total) - np.repeat(np.cumsum(counts) - counts - np.concatenate(starts), counts)
    js = order[rank]
    d = np.sqrt((spot_u[js] - u[vi]) ** 2 + (spot_v[js] - v[vi]) ** 2)
    return js, vi, d


def _by_column(cols: np.ndarray, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Permutation that groups entries by column (``cols`` in [0, ``n_cols``)) and the CSC column
    pointer (int32): a linear-time radix sort for fewer than 2^16 columns."""
    key = cols.astype(np.uint16) if n_cols < 2**16 else cols
    order = np.argsort(key, kind="stable")
    indptr = np.zeros(n_cols + 1, dtype=np.int32)
    np.cumsum(np.bincount(cols, minlength=n_cols), out=indptr[1:])
    return order, indptr


def _box_count(table: np.ndarray, x: np.ndarray, y: np.ndarray, half: np.ndarray) -> float:
    """Sum over points of the occupied grid cells with |col - x| <= half and |row - y| <= half
    (coordinates in cells); ``table``: summed-area table of the occupancy, padded by one."""
    n_rows, n_cols = table.shape[0] - 1, table.shape[1] - 1
    c0 = np.clip(np.ceil(x - half), 0, n_cols).astype(np.int64)
    c1 = np.clip(np.floor(x + half) + 1, 0, n_cols).astype(np.int64)
    r0 = np.clip(np.ceil(y - half), 0, n_rows).astype(np.int64)
    r1 = np.clip(np.floor(y + half) + 1, 0, n_rows).astype(np.int64)
    c1, r1 = np.maximum(c1, c0), np.maximum(r1, r0)
    return float(np.sum(table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]))


def _assemble(blocks: list[sp.csc_matrix], n_rows: int) -> sp.csr_matrix:
    """Join per-layer CSC blocks column-wise and convert to CSR (sorted indices)."""
    if not blocks:
        return sp.csr_matrix((n_rows, 0), dtype=np.float32)
    return sp.hstack(blocks, format="csc").tocsr()


def _select_rows(m: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """Rows of a CSR matrix (ascending ``rows`` that hold every nonzero)."""
    indptr = np.concatenate([[0], m.indptr[rows + 1]]).astype(m.indptr.dtype)
    return sp.csr_matrix((m.data, m.indices, indptr), shape=(len(rows), m.shape[1]))


def spot_maps(influence: InfluenceMatrix, weights: np.ndarray) -> list[dict[int, np.ndarray]]:
    """Spot weights arranged as maps: one dict per beam, ``{layer: 2-D array}`` of the beam's
    ``map_shape`` (rows = v, cols = u on its spot grid), zero where a layer has no spot.

    Parameters
    ----------
    influence : a proton :class:`~optimizer.influence.InfluenceMatrix` (beamlet table with
        ``beam``, ``layer``, ``row``, ``col``)
    weights : spot weights, one per column (units of 1e8 protons)
    """
    if not isinstance(influence, InfluenceMatrix):
        raise BeamError(f"influence: expected an InfluenceMatrix, got {type(influence).__name__}")
    for key in ("layer", "row", "col"):
        if key not in influence.beamlets:
            raise BeamError(f"influence: beamlet table has no '{key}' column; expected a proton matrix")
    w = influence._check_weights(weights)
    bl = influence.beamlets
    maps = []
    for b, beam in enumerate(influence.beams):
        shape = tuple(int(s) for s in beam["map_shape"])
        in_beam = np.asarray(bl["beam"]) == b
        layers = {}
        for layer in np.unique(np.asarray(bl["layer"])[in_beam]):
            sel = in_beam & (np.asarray(bl["layer"]) == layer)
            m = np.zeros(shape)
            m[np.asarray(bl["row"])[sel], np.asarray(bl["col"])[sel]] = w[sel]
            layers[int(layer)] = m
        maps.append(layers)
    return maps
