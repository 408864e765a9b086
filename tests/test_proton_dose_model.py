"""Proton dose model against references (issue 9): beam-data table, pristine peaks with the
table's energy spread, nuclear halo (normalisation, field-size factor), the sparse cut-off and
the exact surface.

References used below
---------------------
* NIST PSTAR CSDA ranges in water (REFERENCES.md).
* The default beam-data table: OpenTPS's default MCsquare beam model (BDL_default_DN_RangeShifter,
  IBA dedicated nozzle; source and commit in optimizer/beams/data/proton_generic.csv).
* Monte Carlo pristine peaks and lateral kernels: matRad's generic proton machine
  (protons_Generic.mat, "double-Gaussian dose kernels fitted to MC simulations using a generic
  machine model", DKFZ; optimizer/beams/data/proton_mc_reference.json names the commit).
* Field-size factor of the influence matrix: optimizer.beams.proton_halo.matrix_field_size_factor
  (spot fields on the plan's matrix) against the same spots summed with the analytic kernel and
  against the Monte Carlo double Gaussian.
* Nuclear halo: charged secondaries carry several % to ~15 % of the dose (Pedroni et al., PMB
  2005;50:541; Soukup et al., PMB 2005;50:5089; REFERENCES.md); its radius is about a third of
  the range (Gottschalk et al., PMB 2015;60:5627). A field-size factor is therefore >= 0.85, and
  smaller at higher energy.
"""

import json
import math
import os

import numpy as np
import pytest
from scipy import integrate
from scipy.special import erf

from optimizer import phantoms
from optimizer.beams import proton_halo as ph
from optimizer.beams import proton_physics as pp
from optimizer.beams.photon_kernel import DATA_DIR
from optimizer.beams.proton import ProtonBeams
from optimizer.beams.proton_beamdata import ProtonBeamData
from optimizer.beams.raytrace import BeamGeometry, radiological_depth
from optimizer.errors import BeamError
from optimizer.geometry import Structure

PSTAR_MM = {100: 77.18, 150: 157.7, 200: 259.6}
TABLE = ProtonBeamData.default()
with open(os.path.join(DATA_DIR, "proton_mc_reference.json")) as _f:
    MC = json.load(_f)

# -- beam-data table ----------------------------------------------------------------------------


def test_default_table_is_the_opentps_generic_beam_line_and_interpolates_linearly():
    # hand values from the BDL rows (NominalEnergy, EnergySpread, SpotSize1x, Divergence1x,
    # Correlation1x, SpotSize1y, Divergence1y, Correlation1y), nozzle exit 410 mm from isocentre:
    rows = {150.0: (0.626557, 3.077055, 0.004502, -0.039148, 3.871036, 0.004567, -0.270952),
            200.0: (0.441133, 2.094484, 0.003642, 0.028193, 2.891102, 0.003001, -0.267050)}
    for e, (spread, sx, tx, rx, sy, ty, ry) in rows.items():
        vx = sx**2 + 2 * rx * sx * tx * 410.0 + (tx * 410.0) ** 2
        vy = sy**2 + 2 * ry * sy * ty * 410.0 + (ty * 410.0) ** 2
        assert TABLE.energy_spread_pct_at(e) == pytest.approx(spread, abs=1e-4)
        assert TABLE.spot_sigma_air_mm_at(e) == pytest.approx(math.sqrt((vx + vy) / 2), abs=1e-3)
    e = np.array(TABLE.energy_MeV)
    spread, sigma = np.array(TABLE.energy_spread_pct), np.array(TABLE.spot_sigma_air_mm)
    assert e[0] == 100.0 and e[-1] == 225.0 and np.all(np.diff(e) == 5.0)
    # within the 0.5-1 % that generic libraries list up to 190 MeV, less above; spot 2.5-6 mm
    assert np.all((spread[e <= 190] >= 0.5) & (spread[e <= 190] <= 1.0)) and spread.min() > 0.25
    assert np.all((sigma >= 2.5) & (sigma <= 6.0))
    # halfway between rows: the mean of the rows (hand calculation); held outside the table
    assert TABLE.energy_spread_pct_at(152.5) == pytest.approx(0.5 * (spread[10] + spread[11]))
    assert TABLE.spot_sigma_air_mm_at(70.0) == sigma[0]


def test_bdl_reader_propagates_the_spot_to_the_isocentre(tmp_path):
    bdl = tmp_path / "machine.txt"
    bdl.write_text(
        "--Lookup table BDL format--\n\nNozzle exit to Isocenter distance\n400.0\n\n"
        "Beam parameters\n2 energies\n\n"
        "NominalEnergy MeanEnergy EnergySpread ProtonsMU Weight1 SpotSize1x Divergence1x Correlation1x "
        "SpotSize1y Divergence1y Correlation1y Weight2\n"
        "20 20 0.9 1e8 1 3 0.005 0.5 3 0.005 0.5 0\n"
        "120 120.5 0.7 1e8 1 3 0.005 0.5 4 0.0 0.0 0\n")
    t = ProtonBeamData.from_bdl(bdl)
    assert t.energy_MeV == (120.0,)  # 20 MeV is outside the model's 70-230 MeV
    # x: 9 + 2 * 0.5 * 3 * 0.005 * 400 + (0.005 * 400)^2 = 19 mm^2; y: 16 mm^2 (no divergence)
    assert t.spot_sigma_air_mm[0] == pytest.approx(math.sqrt((19 + 16) / 2))
    assert t.energy_spread_pct[0] == 0.7
    bad = tmp_path / "bad.txt"
    bad.write_text("Nozzle exit to Isocenter distance\n400\nNominalEnergy EnergySpread\n100 0.5\n")
    with pytest.raises(BeamError, match="SpotSize1x"):
        ProtonBeamData.from_bdl(bad)
    other = tmp_path / "table.csv"
    other.write_text("energy_MeV,energy_spread_pct,spot_sigma_air_mm\n100,0.5,4\n")
    with pytest.raises(BeamError, match="not a BDL"):
        ProtonBeamData.from_bdl(other)


def test_user_tables_from_csv_and_json(tmp_path):
    csv_path = tmp_path / "machine.csv"
    csv_path.write_text("# my machine\nenergy_MeV,spot_sigma_air_mm,energy_spread_pct\n80,6,1.0\n200,3,0.4\n")
    t = ProtonBeamData.from_file(csv_path)
    assert t.energy_spread_pct_at(140.0) == pytest.approx(0.7)
    assert t.spot_sigma_air_mm_at(140.0) == pytest.approx(4.5)
    assert t.spot_sigma_air_mm_at(70.0) == pytest.approx(6.0)  # held outside the table
    js = tmp_path / "machine.json"
    js.write_text(json.dumps(t.as_dict()))
    assert ProtonBeamData.from_file(js).energy_MeV == t.energy_MeV
    beams = ProtonBeams([0], beam_data=csv_path)
    assert beams.sigma_air_mm(140.0) == pytest.approx(4.5) and beams.spread_pct(140.0) == pytest.approx(0.7)
    # explicit numbers override the table
    assert ProtonBeams([0], beam_data=csv_path, energy_spread_pct=0.3).spread_pct(140.0) == 0.3


@pytest.mark.parametrize("text, field", [
    ("energy_MeV,energy_spread_pct\n100,0.5\n", "spot_sigma_air_mm"),
    ("energy_MeV,energy_spread_pct,spot_sigma_air_mm\n100,0.5,x\n", "row 1"),
    ("energy_MeV,energy_spread_pct,spot_sigma_air_mm\n100,0.5,4\n90,0.5,4\n", "increasing"),
    ("energy_MeV,energy_spread_pct,spot_sigma_air_mm\n100,9,4\n", "energy_spread_pct"),
    ("energy_MeV,energy_spread_pct,spot_sigma_air_mm\n300,0.5,4\n", "energy_MeV"),
    ("energy_MeV,energy_spread_pct,spot_sigma_air_mm\n", "no rows"),
])
def test_bad_tables_name_the_field(text, field):
    with pytest.raises(BeamError, match=field):
        ProtonBeamData.from_text(text)


def test_bad_beam_model_arguments_name_the_field(tmp_path):
    with pytest.raises(BeamError, match="beam_data"):
        ProtonBeams([0], beam_data=3)
    with pytest.raises(BeamError, match="beam_data"):
        ProtonBeams([0], beam_data=tmp_path / "table.txt")
    with pytest.raises(BeamError, match="beam_data"):
        ProtonBeams([0], beam_data=tmp_path / "missing.csv")
    with pytest.raises(BeamError, match="halo"):
        ProtonBeams([0], halo="yes")


# -- pristine peaks with the table's energy spread ---------------------------------------------


@pytest.mark.parametrize("energy", [100, 150, 200])
def test_r80_within_0_3_mm_of_pstar_range_with_the_table_spread(energy):
    """R80 = CSDA range + ~0.01 range-spread sigma (Bortfeld 1997); with the table's spread
    (sigma <= 3.5 mm) that is < 0.05 mm, so R80 must lie within 0.3 mm of PSTAR."""
    r80 = pp.r80_mm(energy, TABLE.energy_spread_pct_at(energy))
    assert abs(r80 - PSTAR_MM[energy]) < 0.3


def _peak_metrics(depth, idd):
    """(80-20 % distal fall-off mm, peak / entrance dose) of a sampled depth-dose curve."""
    i = int(np.argmax(idd))
    tail = idd[i:] / idd[i]
    r80 = np.interp(-0.8, -tail, depth[i:])
    r20 = np.interp(-0.2, -tail, depth[i:])
    return r20 - r80, idd[i] / idd[0]


@pytest.mark.parametrize("k", [0, 1, 2], ids=["100MeV", "150MeV", "200MeV"])
def test_pristine_peaks_against_monte_carlo(k):
    """The model's pristine peak, run with the Monte Carlo's initial spectrum (mean energy, Gaussian
    sigma), against matRad's generic Monte Carlo IDD. Tolerances: 80-20 fall-off within 1.0 mm and
    peak / entrance within 6 % (measured residuals -0.1 / -0.85 / -0.86 mm and -5.6 / +2.1 / -1.8 %:
    Bortfeld's straggling, 0.012 R^0.935, is narrower than the Monte Carlo's above ~120 MeV)."""
    ref = MC["peaks"][k]
    f_ref, ptp_ref = _peak_metrics(np.array(ref["depth_mm"]), np.array(ref["idd"]))
    mean = ref["spectrum_mean_MeV"]
    spread = 100 * ref["spectrum_sigma_MeV"] / mean
    depth = np.arange(0.0, ref["depth_mm"][-1], 0.05)
    f_model, ptp_model = _peak_metrics(*pp.pristine_peak(mean, depth, energy_spread_pct=spread))
    assert abs(f_model - f_ref) <= 1.0, (f_model, f_ref)
    assert abs(ptp_model / ptp_ref - 1) <= 0.06, (ptp_model, ptp_ref)
    # the same fall-off from the hand formula: 1.32 range-spread sigmas (Gaussian-smeared edge)
    assert f_model == pytest.approx(1.32 * pp.range_straggling_sigma_mm(mean, spread), abs=0.1)


@pytest.mark.parametrize("energy", [100, 150, 200])
def test_table_spread_widens_the_falloff_towards_the_monte_carlo(energy):
    """Issue 9: with the former 0.3 % spread the peaks were too sharp and too high. With the
    table's spread the fall-off is wider (towards the Monte Carlo's 3.4-4.4 mm) and the peak /
    entrance ratio lower, by at most the Monte Carlo's own range of widths."""
    spread = TABLE.energy_spread_pct_at(energy)
    f_old, f_new = pp.distal_falloff_80_20_mm(energy, 0.3), pp.distal_falloff_80_20_mm(energy, spread)
    f_mc = _peak_metrics(np.array(MC["peaks"][[100, 150, 200].index(energy)]["depth_mm"]),
                         np.array(MC["peaks"][[100, 150, 200].index(energy)]["idd"]))[0]
    assert f_old < f_new and abs(f_new - f_mc) < abs(f_old - f_mc), (f_old, f_new, f_mc)
    ratios = [_peak_metrics(*pp.pristine_peak(energy, energy_spread_pct=s))[1] for s in (0.3, spread)]
    assert ratios[1] < ratios[0]


# -- nuclear halo -------------------------------------------------------------------------------


@pytest.mark.parametrize("energy, frac", [(150, 0.0), (150, 0.5), (150, 0.9), (220, 0.5)])
def test_halo_keeps_the_laterally_integrated_dose_equal_to_the_idd(energy, frac):
    depth = frac * pp.csda_range_mm(energy)
    _, idd = pp.pristine_peak(energy, np.array([depth]), energy_spread_pct=0.6)
    integral = integrate.quad(lambda r: 2 * math.pi * r * float(ph.lateral_dose(
        energy, depth, r, sigma_air_mm=4.0, energy_spread_pct=0.6)), 0, 400, limit=400, points=[5, 20, 60])[0]
    assert integral == pytest.approx(idd[0], rel=1e-6)


def test_halo_weight_is_bortfelds_nuclear_term_and_within_the_published_band():
    """Far upstream of the peak w = gamma beta p r / (1 + (beta + gamma beta p) r), r the residual
    range in cm (hand formula from Bortfeld 1997 eq. 16, without straggling: the range spread
    changes it by (sigma / r)^2 ~ 1e-3 at mid-range, the tolerance); several % to ~15 % of the
    dose at mid-range (REFERENCES.md); small in the peak."""
    b, g, p = pp.NUCLEAR_BETA_PER_CM, pp.NUCLEAR_GAMMA, pp.BK_P
    for e in (100, 150, 200):
        r0 = pp.csda_range_mm(e)
        r = 0.5 * r0 / 10
        hand = g * b * p * r / (1 + (b + g * b * p) * r)
        assert ph.halo_weight(e, 0.5 * r0, 0.6) == pytest.approx(hand, rel=2e-3)
        assert 0.03 <= ph.halo_weight(e, 0.5 * r0, 0.6) <= 0.15
        assert ph.halo_weight(e, pp.peak_depth_mm(e, 0.6), 0.6) < 0.02
    # halo radius (2 sigma) a third of the range at its end (Gottschalk et al. 2015)
    s = ph.halo_sigma_mm(200, pp.csda_range_mm(200), 0.1)
    assert 2 * s == pytest.approx(pp.csda_range_mm(200) / 3, rel=0.02)


def _fsf_hand(energy, small, large):
    """Central-axis dose of a uniformly scanned square field of side a (mm) at mid-range, per unit
    fluence, relative: (1 - w) erf(a / (2 sqrt2 s_core))^2 + w erf(a / (2 sqrt2 s_halo))^2."""
    z = 0.5 * pp.csda_range_mm(energy)
    spread, air = TABLE.energy_spread_pct_at(energy), TABLE.spot_sigma_air_mm_at(energy)
    w = ph.halo_weight(energy, z, spread)
    sc, sh = pp.lateral_sigma_mm(energy, z, air), ph.halo_sigma_mm(energy, z, air)

    def dose(a):
        return (1 - w) * erf(a / (2 * math.sqrt(2) * sc)) ** 2 + w * erf(a / (2 * math.sqrt(2) * sh)) ** 2
    return float(dose(small) / dose(large))


def test_field_size_factor_from_the_halo():
    """4 x 4 vs 20 x 20 cm^2 at mid-range: the core is inside both fields, so the factor is the
    halo's. In the published band (>= 0.85: the halo carries <= ~15 %), smaller at higher energy;
    1 without the halo. The hand formula is checked against a brute-force sum over spots."""
    fsf = {e: _fsf_hand(e, 40.0, 200.0) for e in (100, 150, 200)}
    assert fsf[100] > fsf[150] > fsf[200]
    for e in (150, 200):
        assert 0.85 <= fsf[e] <= 0.99
    # brute force: spots every 1 mm over the fields, the model's lateral dose summed on the axis
    e = 150
    z = 0.5 * pp.csda_range_mm(e)
    kw = dict(sigma_air_mm=TABLE.spot_sigma_air_mm_at(e), energy_spread_pct=TABLE.energy_spread_pct_at(e))
    sums = []
    for side in (40.0, 200.0):
        c = np.arange(-side / 2 + 0.5, side / 2, 1.0)
        xx, yy = np.meshgrid(c, c)
        sums.append(float(ph.lateral_dose(e, z, np.hypot(xx, yy), **kw).sum()))
    assert sums[0] / sums[1] == pytest.approx(fsf[e], abs=2e-3)
    no_halo = [float(ph.lateral_dose(e, z, np.hypot(*np.meshgrid(c, c)), halo=False, **kw).sum())
               for c in (np.arange(-19.5, 20, 1.0), np.arange(-99.5, 100, 1.0))]
    assert no_halo[0] / no_halo[1] == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("k", [0, 1, 2], ids=["100MeV", "150MeV", "200MeV"])
def test_field_size_factor_against_the_monte_carlo_double_gaussian(k):
    """4 x 4 vs 20 x 20 cm^2 at half the range from matRad's Monte Carlo-fitted double-Gaussian
    kernel (weight and sigma of the wide Gaussian; core: its narrow sigma with our in-air spot)
    against ours, within 0.02 (measured: 0.991 / 0.965 / 0.928 vs 0.998 / 0.978 / 0.926)."""
    ref = MC["peaks"][k]
    energy = [100, 150, 200][k]
    kern = ref["mid_range_kernel"]
    air = TABLE.spot_sigma_air_mm_at(energy)
    s1 = math.hypot(kern["sigma1"], air)

    def dose(a, w, sc, sh):
        return (1 - w) * erf(a / (2 * math.sqrt(2) * sc)) ** 2 + w * erf(a / (2 * math.sqrt(2) * sh)) ** 2

    fsf_mc = dose(40.0, kern["weight"], s1, kern["sigma2"]) / dose(200.0, kern["weight"], s1, kern["sigma2"])
    fsf = _fsf_hand(energy, 40.0, 200.0)
    assert abs(fsf - fsf_mc) <= 0.02, (fsf, fsf_mc)
    # and the halo weights agree within a factor 2.5 (ours 0.045 / 0.084 / 0.125, MC 0.020 / 0.076 / 0.114)
    z = 0.5 * pp.csda_range_mm(energy)
    w = ph.halo_weight(energy, z, TABLE.energy_spread_pct_at(energy))
    assert kern["weight"] / 2.5 <= w <= 2.5 * kern["weight"]


# -- the matrices: cut-off, normalisation, surface -----------------------------------------------


@pytest.fixture(scope="module")
def slab():
    """Water 183 x 200 x 183 mm (z, y, x; 3 x 2 x 3 mm voxels) starting at the grid edge; one
    150 MeV spot on the axis (gantry 0: the beam runs along +y)."""
    p = phantoms.water_box(size_mm=(183, 200, 183), spacing_mm=(3.0, 2.0, 3.0))
    z, y, x = np.meshgrid(*p.grid.axes_mm(), indexing="ij")
    p.add_structure(Structure("PTV", (np.abs(x) <= 1.5) & (np.abs(z) <= 1.5) & (np.abs(y + 100 - 157.7) <= 2),
                              "target"))
    return p


def _spot_dose(p, **kw):
    beams = ProtonBeams([0], energies_MeV=[150.0], margin_mm=0, spot_spacing_mm=50.0, **kw)
    inf = beams.influence(p, "PTV", with_let=False)
    bl = inf.beamlets
    j = int(np.flatnonzero((bl["u_mm"] == 0) & (bl["v_mm"] == 0))[0])
    w = np.zeros(inf.n_beamlets)
    w[j] = 1.0
    return inf.dose_per_fraction(w), beams


def test_matrix_lateral_integral_equals_the_idd_and_the_first_voxel_has_no_range_loss(slab):
    """Sum over a plane x voxel area = IDD x Gy conversion (the cut-off's fold keeps it) within
    1 % (lattice sampling), with and without the halo, at the entrance, mid-range (halo reach)
    and 141 mm (core reach); the first voxel row sits at WEPL = half a
    voxel (1 mm), exactly."""
    ys = slab.grid.axes_mm()[1]
    spread = TABLE.energy_spread_pct_at(150.0)
    for halo in (True, False):
        d, _ = _spot_dose(slab, halo=halo)
        for iy in (0, 40, 70):
            depth = ys[iy] + 100.0
            plane = d[:, iy, :].sum() * 3.0 * 3.0
            ref = pp.pristine_peak(150.0, np.array([depth]), spread)[1][0] * pp.GY_MM2_PER_UNIT_WEIGHT
            assert plane == pytest.approx(ref, rel=0.01), (halo, depth)
    assert ys[0] + 100.0 == pytest.approx(1.0)
    geom = BeamGeometry(0.0, (0.0, 0.0, 0.0), sad_mm=2000.0)
    pos = np.array([[0.0, ys[0], 0.0], [0.0, ys[10], 0.0]])
    w = radiological_depth(np.ones(slab.grid.shape), slab.grid, geom, pos, exact_surface=True)[3]
    np.testing.assert_allclose(w, [1.0, 21.0], atol=1e-6)
    # the default (interpolating) trace loses a quarter voxel here: the old behaviour
    w_old = radiological_depth(np.ones(slab.grid.shape), slab.grid, geom, pos)[3]
    np.testing.assert_allclose(w_old, [0.5, 20.5], atol=1e-6)


def test_matrix_is_the_exact_kernel_inside_the_shell_and_nothing_beyond_the_reach(slab):
    """At mid-range (150 MeV, 79 mm) the halo reach applies (the halo beyond 4 core sigmas is
    4.5 % of the IDD >= HALO_REACH_MIN_FRACTION): the spot reaches 2 halo sigmas, far beyond
    4 core sigmas; inside the shell radius (0.7 x reach) every entry is the model's lateral dose
    (proton_halo.lateral_dose x Gy conversion, independent of the matrix code) within 0.5 %
    (float32, WEPL interpolation); beyond the reach there is nothing. With halo_cutoff_sigma=0
    the reach is 4 core sigmas."""
    d_h, beams = _spot_dose(slab)
    iy = 39
    depth = slab.grid.axes_mm()[1][iy] + 100.0
    xs = slab.grid.axes_mm()[2]
    row = d_h[slab.grid.shape[0] // 2, iy, :]
    air, spread = TABLE.spot_sigma_air_mm_at(150.0), TABLE.energy_spread_pct_at(150.0)
    sc = float(pp.lateral_sigma_mm(150.0, depth, air))
    sh = float(ph.halo_sigma_mm(150.0, depth, air))
    assert 1 - ph.fraction_within(4 * sc, ph.halo_weight(150.0, depth, spread), sc, sh) > 0.04
    reach = 2 * sh  # HALO_RADIUS_SIGMAS halo sigmas
    assert reach > 1.5 * beams.cutoff_sigma * sc
    model = ph.lateral_dose(150.0, depth, np.abs(xs), sigma_air_mm=air,
                            energy_spread_pct=spread) * pp.GY_MM2_PER_UNIT_WEIGHT
    inner = np.abs(xs) < 0.7 * reach - 1e-6
    np.testing.assert_allclose(row[inner], model[inner], rtol=5e-3)
    assert np.all(row[(np.abs(xs) > 4 * sc) & inner] > 0)
    assert np.all(row[np.abs(xs) > reach + 1e-6] == 0)
    d_0, _ = _spot_dose(slab, halo_cutoff_sigma=0)
    row0 = d_0[slab.grid.shape[0] // 2, iy, :]
    assert np.all(row0[np.abs(xs) > beams.cutoff_sigma * sc + 1e-6] == 0)
    assert np.any(row0[np.abs(xs) > 0.7 * beams.cutoff_sigma * sc] > 0)


@pytest.mark.parametrize("w, sc, sh, hc", [(0.0, 4.0, 4.0, 2.0), (0.084, 3.82, 13.69, 2.0),
                                           (0.125, 3.23, 21.87, 0.0), (0.125, 3.23, 21.87, 2.0)])
def test_folded_kernel_integrates_to_one(w, sc, sh, hc):
    """The kept kernel times 1 + fold x shell hat, integrated over the plane by adaptive
    quadrature (scipy), is 1 (the IDD is kept); the folded fraction is the analytic tail
    (1 - w) exp(-R^2 / 2 sc^2) + w exp(-R^2 / 2 sh^2); the reach is 4 core sigmas or, where the
    halo beyond them is >= 4 %, 2 halo sigmas."""
    f = ph.folded_cutoff(4.0, hc, w, sc, sh, min_fraction=0.04)
    big_r, a, fold = float(f["reach_mm"]), float(f["shell_mm"]), float(f["fold"])
    tail4 = (1 - w) * math.exp(-8.0) + w * math.exp(-0.5 * (4 * sc / sh) ** 2)
    assert big_r == pytest.approx(max(4 * sc, hc * sh) if tail4 >= 0.04 else 4 * sc)
    assert a == pytest.approx(0.7 * big_r)
    tail = (1 - w) * math.exp(-0.5 * (big_r / sc) ** 2) + w * math.exp(-0.5 * (big_r / sh) ** 2)
    assert float(f["folded"]) == pytest.approx(tail, rel=1e-9)

    def kern(r):
        k = ((1 - w) * math.exp(-0.5 * (r / sc) ** 2) / (2 * math.pi * sc**2)
             + w * math.exp(-0.5 * (r / sh) ** 2) / (2 * math.pi * sh**2))
        return 2 * math.pi * r * k * (1 + fold * float(ph.shell_shape(r, a, big_r)))
    total = integrate.quad(kern, 0, big_r, points=[a, 0.5 * (a + big_r)], limit=200)[0]
    assert total == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("k", [0, 1, 2], ids=["100MeV", "150MeV", "200MeV"])
def test_field_size_factor_of_the_influence_matrix(k):
    """Issue 9: the plan's influence matrix (not only the analytic model) has the halo's
    field-size factor, 4 x 4 vs 20 x 20 cm^2 spot fields at mid-range in water: within 0.01 of the
    analytic model summed over the same spots (proton_halo.lateral_dose) and within 0.02 of
    matRad's Monte Carlo double Gaussian (measured 0.999 / 0.982 / 0.926 vs analytic 0.998 / 0.977
    / 0.926 and Monte Carlo 0.991 / 0.966 / 0.928). The 20 x 20 field gets the analytic dose
    within 0.5 % (the fold keeps the IDD). With the core cut-off alone (halo_cutoff_sigma=0,
    the matrix before the fix) the factor is 1 within 0.002 at 150 and 200 MeV."""
    energy = [100.0, 150.0, 200.0][k]
    r = ph.matrix_field_size_factor(ProtonBeams([0]), energy)
    assert abs(r["fsf"] - r["analytic_fsf"]) <= 0.01, r
    kern = MC["peaks"][k]["mid_range_kernel"]
    s1 = math.hypot(kern["sigma1"], TABLE.spot_sigma_air_mm_at(energy))

    def dose(a, w, sc, sh):
        return (1 - w) * erf(a / (2 * math.sqrt(2) * sc)) ** 2 + w * erf(a / (2 * math.sqrt(2) * sh)) ** 2
    fsf_mc = dose(40.0, kern["weight"], s1, kern["sigma2"]) / dose(200.0, kern["weight"], s1, kern["sigma2"])
    assert abs(r["fsf"] - fsf_mc) <= 0.02, (r["fsf"], fsf_mc)
    assert r["dose_large"] == pytest.approx(r["analytic_large"], rel=5e-3)
    # the analytic reference on the spots is the continuous field's factor (hand formula)
    assert r["analytic_fsf"] == pytest.approx(_fsf_hand(energy, 40.0, 200.0), abs=2e-3)
    if energy > 100:
        old = ph.matrix_field_size_factor(ProtonBeams([0], halo_cutoff_sigma=0), energy)
        assert old["fsf"] == pytest.approx(1.0, abs=2e-3)
        assert old["nnz"] < r["nnz"]


def test_bad_halo_reach_and_field_sides_name_the_field():
    with pytest.raises(BeamError, match="halo_cutoff_sigma"):
        ProtonBeams([0], halo_cutoff_sigma=-1.0)
    with pytest.raises(BeamError, match="halo_cutoff_sigma"):
        ProtonBeams([0], halo_cutoff_sigma="wide")
    with pytest.raises(BeamError, match="small_mm"):
        ph.matrix_field_size_factor(ProtonBeams([0]), 150.0, small_mm=41.0)
