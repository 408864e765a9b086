"""Proton PBS beam model (optimizer.beams.proton): ranges in a patient, heterogeneity, lateral
spread, spot placement, matrix layout, spot maps and input validation."""

import numpy as np
import pytest
import scipy.sparse as sp

from optimizer import phantoms
from optimizer.beams import proton_physics as pp
from optimizer.beams.proton import ProtonBeams, let_d_map, spot_maps
from optimizer.beams.raytrace import BeamGeometry, radiological_depth
from optimizer.errors import BeamError
from optimizer.geometry import Structure
from optimizer.stopping_power import hu_to_rsp


def _column_box(slab_hu=None):
    """Water box 63 x 250 x 63 mm (z, y, x), 1 mm voxels along the beam (y), with a PTV column on
    the central axis; optionally a 10 mm slab of ``slab_hu`` at y in [-100, -90) mm."""
    p = phantoms.water_box(size_mm=(63, 250, 63), spacing_mm=(3, 1, 3))
    z, y, x = np.meshgrid(*p.grid.axes_mm(), indexing="ij")
    column = (np.abs(x) <= 10) & (np.abs(z) <= 10) & (y >= -40) & (y <= 60)
    p.add_structure(Structure("PTV", column, "target"))
    if slab_hu is not None:
        ct = p.ct_hu.copy()
        ct[(y >= -100) & (y < -90)] = slab_hu
        p.ct_hu = ct
    return p


def _central_axis_r80(patient, influence, weights):
    d = influence.dose_per_fraction(weights)
    nz, _, nx = patient.grid.shape
    prof = d[nz // 2, :, nx // 2]
    ys = patient.grid.axes_mm()[1]
    k = int(np.argmax(prof))
    j = k + int(np.flatnonzero(prof[k:] < 0.8 * prof[k])[0])
    y80 = np.interp(0.8 * prof[k], [prof[j], prof[j - 1]], [ys[j], ys[j - 1]])
    return y80 + 125.0  # depth below the water surface at y = -125 mm


def test_range_in_water_and_bone_slab_shift():
    """A 150 MeV layer (gantry 0: the beam runs along +y from the anterior surface). In water the
    central-axis R80 lies at the PSTAR range (157.7 mm, within 1 mm); a 10 mm slab of 1000 HU
    (RSP 1.55) upstream pulls it back by its extra WEPL (RSP - 1) x 10 mm = 5.5 mm, within 1 mm."""
    beams = ProtonBeams([0], energies_MeV=[150.0], margin_mm=0)
    water = _column_box()
    dw = beams.influence(water, "PTV")
    r_water = _central_axis_r80(water, dw, np.ones(dw.n_beamlets))
    assert abs(r_water - pp.csda_range_mm(150.0)) < 1.0

    bone = _column_box(slab_hu=1000.0)
    db = beams.influence(bone, "PTV")
    r_bone = _central_axis_r80(bone, db, np.ones(db.n_beamlets))
    extra_wepl = (float(hu_to_rsp(1000.0)) - 1.0) * 10.0
    assert extra_wepl == pytest.approx(5.5, abs=1e-6)
    assert abs((r_water - r_bone) - extra_wepl) < 1.0


def test_single_spot_lateral_sigma_follows_highland_fermi_eyges():
    """The lateral profile of one spot at depth is a Gaussian whose sigma is the in-air sigma and
    the Fermi-Eyges MCS sigma in quadrature (fitted from the dose in one voxel row)."""
    p = _column_box()
    beams = ProtonBeams([0], energies_MeV=[150.0], margin_mm=0, spot_sigma_air_mm=4.0, halo=False)
    inf = beams.influence(p, "PTV")
    bl = inf.beamlets
    j = int(np.flatnonzero((bl["u_mm"] == 0) & (bl["v_mm"] == 0))[0])
    w = np.zeros(inf.n_beamlets)
    w[j] = 1.0
    d = inf.dose_per_fraction(w)
    nz = p.grid.shape[0]
    xs = p.grid.axes_mm()[2]
    ys = p.grid.axes_mm()[1]
    for depth in (60.0, 120.0, 150.0):
        iy = int(np.argmin(np.abs(ys - (-125.0 + depth))))
        row = d[nz // 2, iy, :]
        sel = (np.abs(xs) <= 9.0) & (row > 0)
        # ln D = c - x^2 / (2 sigma^2): least squares in x^2
        slope = np.polyfit(xs[sel] ** 2, np.log(row[sel]), 1)[0]
        sigma_fit = np.sqrt(-0.5 / slope)
        expected = pp.lateral_sigma_mm(150.0, ys[iy] + 125.0, 4.0)
        assert sigma_fit == pytest.approx(expected, rel=0.01)
    assert pp.mcs_sigma_mm(150.0, 150.0) > pp.mcs_sigma_mm(150.0, 60.0)


@pytest.fixture(scope="module")
def cube_plan():
    p = phantoms.water_box(size_mm=(45, 150, 150), spacing_mm=3.0)
    z, y, x = np.meshgrid(*p.grid.axes_mm(), indexing="ij")
    p.add_structure(Structure("PTV", (np.abs(x) <= 8) & (np.abs(y) <= 8) & (np.abs(z) <= 8), "target"))
    beams = ProtonBeams([0, 90], margin_mm=4.0)
    dose = beams.influence(p, "PTV")
    return p, beams, dose, dose.forms["let_dose"]


def test_matrix_layout_and_layers_cover_the_target(cube_plan):
    p, beams, dose, let = cube_plan
    assert dose.modality == "proton"
    assert isinstance(dose.matrix, sp.csr_matrix) and dose.matrix.dtype == np.float32
    for key in ("beam", "layer", "energy_MeV", "u_mm", "v_mm", "row", "col"):
        assert len(dose.beamlets[key]) == dose.n_beamlets
    assert set(np.unique(dose.beamlets["beam"])) == {0, 1}
    grown = p.expand("PTV", beams.margin_mm)
    for b, beam in enumerate(dose.beams):
        for key in ("gantry_deg", "couch_deg", "isocenter_mm", "map_shape", "energies"):
            assert key in beam
        e = np.asarray(beam["energies"])
        assert np.all(np.diff(e) < 0) and e.min() >= pp.E_MIN_MEV and e.max() <= pp.E_MAX_MEV
        geom = BeamGeometry(beam["gantry_deg"], beam["isocenter_mm"], sad_mm=beam["sad_mm"])
        pos = p.grid.positions_mm(np.flatnonzero(grown.ravel()))
        wepl = radiological_depth(hu_to_rsp(p.ct_hu), p.grid, geom, pos, exact_surface=True)[3]
        ranges = pp.csda_range_mm(e)
        assert ranges.max() == pytest.approx(wepl.max(), abs=1e-6)
        # the shallowest layer lies within half a layer gap of the shallowest target WEPL (a layer
        # whose acceptance window, half the gap, holds no target voxel is dropped)
        assert ranges.min() <= wepl.min() + 0.5 * (ranges[-2] - ranges[-1]) + 0.1
        # default gap: 2.2 range-straggling sigmas of the deeper layer, with the beam-data table's
        # energy spread at that energy
        gaps = -np.diff(ranges)
        sig = [pp.range_straggling_sigma_mm(x, beams.beam_data.energy_spread_pct_at(x)) for x in e[:-1]]
        np.testing.assert_allclose(gaps, 2.2 * np.array(sig), rtol=1e-6)
        in_beam = dose.beamlets["beam"] == b
        rows, cols = dose.beamlets["row"][in_beam], dose.beamlets["col"][in_beam]
        assert rows.max() < beam["map_shape"][0] and cols.max() < beam["map_shape"][1]
        u = beam["u0_mm"] + cols * beam["spot_spacing_mm"]
        np.testing.assert_allclose(dose.beamlets["u_mm"][in_beam], u)
        # spot spacing default: 1.2 x the smallest in-air sigma of the beam's layers (table values)
        assert beam["spot_sigma_air_mm"] == pytest.approx(list(beams.beam_data.spot_sigma_air_mm_at(e)))
        assert beam["spot_spacing_mm"] == pytest.approx(1.2 * min(beam["spot_sigma_air_mm"]))
    # every PTV voxel is reached; the peak dose of each spot lies near its layer's range
    assert np.all(dose.rows_of(p.flat_indices("PTV")).getnnz(axis=1) > 0)


def test_let_matrix_shares_sparsity_and_maps(cube_plan):
    p, beams, dose, let = cube_plan
    assert np.array_equal(dose.matrix.indptr, let.matrix.indptr)
    assert np.array_equal(dose.matrix.indices, let.matrix.indices)
    assert np.array_equal(dose.voxel_index, let.voxel_index)
    ratio = let.matrix.data / dose.matrix.data
    assert ratio.min() > 0.3 and ratio.max() < 90.0
    w = np.random.default_rng(1).uniform(0.5, 1.5, dose.n_beamlets)
    letd = let_d_map(dose, let, w)
    dd = dose.dose_per_fraction(w)
    ok = np.isfinite(letd)
    assert ok.sum() > 0 and np.all(dd[ok] >= 1e-3)
    ptv = p.structure("PTV").mask
    assert 0.5 < np.nanmean(letd[ptv]) < 10.0
    maps = spot_maps(dose, w)
    assert len(maps) == 2
    total = sum(m.sum() for beam_maps in maps for m in beam_maps.values())
    assert total == pytest.approx(w.sum())
    j = 5
    b, layer, r, c = (int(dose.beamlets[k][j]) for k in ("beam", "layer", "row", "col"))
    assert maps[b][layer][r, c] == pytest.approx(w[j])
    assert maps[b][layer].shape == tuple(dose.beams[b]["map_shape"])
    with pytest.raises(BeamError, match="weights"):
        spot_maps(dose, w[:-1])


def test_shallow_target_warns_and_uses_the_lowest_energy():
    p = phantoms.water_box(size_mm=(30, 120, 30), spacing_mm=3.0)
    z, y, x = np.meshgrid(*p.grid.axes_mm(), indexing="ij")
    # depth 30-55 mm below the anterior surface at y = -60 mm; 70 MeV reaches 40.8 mm
    p.add_structure(Structure("PTV", (np.abs(x) <= 6) & (np.abs(z) <= 6) & (y >= -30) & (y <= -5), "target"))
    with pytest.warns(UserWarning, match="range shifter"):
        inf = ProtonBeams([0], margin_mm=0.0).influence(p, "PTV")
    e = inf.beams[0]["energies"]
    assert min(e) == pytest.approx(pp.E_MIN_MEV) and max(e) > 75.0


def test_bad_input_is_a_named_beam_error():
    for bad in (0.0, -3.0, float("nan")):
        with pytest.raises(BeamError, match="spot_spacing_mm"):
            ProtonBeams([0], spot_spacing_mm=bad)
    with pytest.raises(BeamError, match="layer_spacing_mm"):
        ProtonBeams([0], layer_spacing_mm=0)
    with pytest.raises(BeamError, match="energies_MeV"):
        ProtonBeams([0], energies_MeV=[50.0])
    with pytest.raises(BeamError, match="energies_MeV"):
        ProtonBeams([0], energies_MeV=[150.0, 260.0])
    with pytest.raises(BeamError, match="margin_mm"):
        ProtonBeams([0], margin_mm=-1)
    with pytest.raises(BeamError, match="gantry_deg"):
        ProtonBeams([])
    with pytest.raises(BeamError, match="energy_spread_pct"):
        ProtonBeams([0], energy_spread_pct=-0.1)

    p = phantoms.water_box(size_mm=(20, 420, 20), spacing_mm=5.0)
    z, y, x = np.meshgrid(*p.grid.axes_mm(), indexing="ij")
    with pytest.raises(BeamError, match="target"):
        ProtonBeams([0]).influence(p)  # no structure with role 'target'
    # a target deeper than the 230 MeV range (329 mm)
    p.add_structure(Structure("PTV", (y > 150) & (np.abs(x) < 6) & (np.abs(z) < 6), "target"))
    with pytest.raises(BeamError, match="energy_MeV"):
        ProtonBeams([0]).influence(p, "PTV")
    # a fixed energy whose peak misses the target
    p.add_structure(Structure("Mid", (np.abs(y) < 10) & (np.abs(x) < 6) & (np.abs(z) < 6), "target"))
    with pytest.raises(BeamError, match="energies_MeV"):
        ProtonBeams([0], energies_MeV=[70.0]).influence(p, "Mid")
    # an emptied target
    p.structure("Mid").mask = np.zeros(p.grid.shape, bool)
    with pytest.raises(BeamError, match="empty"):
        ProtonBeams([0]).influence(p, "Mid")
