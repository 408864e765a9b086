"""objectives.radiobiology against hand-computed values."""

import math

import numpy as np
import pytest

from objectives import radiobiology as rb
from objectives.errors import BiologyError

# -- BED / EQD2 ----------------------------------------------------------------------------------


def test_bed_eqd2_hand_values():
    # 60 Gy / 30 fx, a/b 10: BED = 60 (1 + 2/10) = 72; EQD2 = 72 / 1.2 = 60
    assert rb.bed(60, 30, 10) == pytest.approx(72.0, rel=1e-12)
    assert rb.eqd2(60, 30, 10) == pytest.approx(60.0, rel=1e-12)
    # 78 Gy / 39 fx, a/b 1.5: BED = 78 (1 + 2/1.5) = 182; EQD2 = 182 / (1 + 2/1.5) = 78
    assert rb.bed(78, 39, 1.5) == pytest.approx(182.0, rel=1e-12)
    assert rb.eqd2(78, 39, 1.5) == pytest.approx(78.0, rel=1e-12)
    # 5 x 8 Gy at a/b 3: BED = 40 (1 + 8/3) = 146.667; EQD2 = 146.667 / (5/3) = 88
    assert rb.eqd2(40, 5, 3) == pytest.approx(88.0, rel=1e-12)
    assert isinstance(rb.bed(60, 30, 10), float)


def test_bed_vectorized_broadcasts():
    out = rb.bed(np.array([0.0, 30.0, 60.0]), 30, np.array([10.0, 3.0, 2.0]))
    # 30 Gy/30 at 3: 30 (1 + 1/3) = 40; 60 Gy/30 at 2: 60 (1 + 1) = 120
    np.testing.assert_allclose(out, [0.0, 40.0, 120.0], rtol=1e-12)


@pytest.mark.parametrize("ab", [1.5, 3.0, 10.0])
def test_inverses_round_trip(ab):
    doses = np.array([0.0, 1e-6, 2.0, 45.0, 60.0, 80.0])
    for n in (1, 5, 30):
        np.testing.assert_allclose(rb.dose_for_bed(rb.bed(doses, n, ab), n, ab), doses, rtol=1e-12,
                                   atol=1e-15)
        np.testing.assert_allclose(rb.dose_for_eqd2(rb.eqd2(doses, n, ab), n, ab), doses, rtol=1e-12,
                                   atol=1e-15)
    # explicit form D = n ab/2 (sqrt(1 + 4B/(n ab)) - 1): 72 Gy BED, 30 fx, ab 10 -> 150 (1.2 - 1) = 60
    assert rb.dose_for_bed(72, 30, 10) == pytest.approx(60.0, rel=1e-12)
    assert rb.dose_for_eqd2(60, 30, 10) == pytest.approx(60.0, rel=1e-12)


# -- repopulation and incomplete repair ----------------------------------------------------------


def test_repopulation_hand_value():
    # 70 Gy/35 fx, ab 10: BED 84; T = 46 d, Tk = 21 d, Tpot = 3 d, alpha 0.3:
    # ln2 * 25 / (0.3 * 3) = 0.693147 * 27.7778 = 19.2541 -> 64.7459 Gy
    assert rb.bed_with_repopulation(70, 35, 10, 0.3, 46, 21, 3) == pytest.approx(64.7459, abs=1e-4)
    # no correction before kick-off
    assert rb.bed_with_repopulation(70, 35, 10, 0.3, 20, 21, 3) == pytest.approx(84.0, rel=1e-12)
    assert rb.bed_with_repopulation(70, 35, 10, 0.3, 46, rb.HN_KICKOFF_DAYS, rb.HN_TPOT_DAYS) == \
        pytest.approx(64.7459, abs=1e-4)


def test_g_factor_limits_and_hand_values():
    assert rb.g_factor(0.0) == 1.0
    assert rb.g_factor(1e-9) == pytest.approx(1.0 - 1e-9 / 3, rel=1e-15)
    # x = 1: 2 (1 - 1 + e^-1) / 1 = 2/e; x = 2: 2 (1 + e^-2) / 4
    assert rb.g_factor(1.0) == pytest.approx(2 / math.e, rel=1e-13)
    assert rb.g_factor(2.0) == pytest.approx((1 + math.exp(-2)) / 2, rel=1e-13)
    # large x: G -> 2/x (1 - 1/x)
    assert rb.g_factor(1e4) == pytest.approx(2e-4 * (1 - 1e-4), rel=1e-12)
    # series and closed form agree across the switch point
    x = np.array([0.5 - 1e-9, 0.5, 0.5 + 1e-9])
    g = rb.g_factor(x)
    assert np.ptp(g) < 1e-8
    assert np.all(np.diff(rb.g_factor(np.linspace(0, 20, 200))) < 0)  # decreasing


def test_bed_protracted_hand_value():
    # t = T_half = 30 min -> x = ln2 = 0.693147; G = 2 (0.693147 - 0.5) / 0.480453 = 0.804021
    # BED = 60 (1 + 0.804021 * 60 / 300) = 69.6483
    assert rb.bed_protracted(60, 30, 10, 30, 30) == pytest.approx(69.6483, abs=1e-4)
    assert rb.bed_protracted(60, 30, 10, 0, 30) == pytest.approx(72.0, rel=1e-12)


# -- GARD -----------------------------------------------------------------------------------------


def test_gard_scott_value():
    # alpha = -ln 0.3 / 2 - 0.1 = 0.501986; GARD = 60 (0.501986 + 0.05 * 2) = 36.119
    assert rb.alpha_from_rsi(0.3) == pytest.approx(-math.log(0.3) / 2 - 0.1, rel=1e-14)
    assert rb.gard(60, 30, rsi=0.3) == pytest.approx(36.1, abs=0.05)
    # 2 Gy fractions: GARD = -n ln RSI exactly
    assert rb.gard(60, 30, rsi=0.3) == pytest.approx(-30 * math.log(0.3), rel=1e-12)
    assert rb.gard(60, 30, alpha=0.2) == pytest.approx(60 * (0.2 + 0.1), rel=1e-12)


def test_dose_for_gard_round_trip_and_prescription():
    for alpha in (-0.2, 0.0, 0.1, 0.5):
        for n in (1, 5, 30):
            d = np.array([0.5, 10.0, 70.0])
            g = rb.gard(d, n, alpha=alpha)
            keep = g > 0  # the inverse is the larger root, exact for GARD > 0
            np.testing.assert_allclose(rb.dose_for_gard(g[keep], n, alpha=alpha), d[keep], rtol=1e-10)
    dose = rb.gard_prescription(36.1, 30, 0.3)
    assert rb.gard(dose, 30, rsi=0.3) == pytest.approx(36.1, rel=1e-12)
    assert dose == pytest.approx(60.0, abs=0.1)
    rsi_map = np.array([0.2, 0.3, 0.5]).reshape(1, 1, 3)
    doses = rb.gard_prescription(33.0, 30, rsi_map)
    assert doses.shape == (1, 1, 3) and np.all(np.diff(doses.ravel()) > 0)  # more resistant, more dose


# -- TCP / NTCP -----------------------------------------------------------------------------------


def test_tcp_two_voxels_by_hand():
    # alpha 0.3, beta 0.03 (ab 10), 30 fractions. Voxel 1: 60 Gy -> alpha D + beta D^2/n =
    # 18 + 0.03 * 3600 / 30 = 21.6; voxel 2: 50 Gy -> 15 + 0.03 * 2500 / 30 = 17.5.
    # N_i = 1e7 /cc * 0.1 cc = 1e6. ln TCP = -1e6 (e^-21.6 + e^-17.5) = -(4.1586e-4 + 2.5110e-2)
    expected_log = -1e6 * (math.exp(-21.6) + math.exp(-17.5))
    assert expected_log == pytest.approx(-0.025526, abs=1e-6)
    kw = dict(clonogen_density_per_cc=1e7, voxel_volumes_cc=[0.1, 0.1])
    assert rb.log_tcp([60, 50], 30, 0.3, 0.03, **kw) == pytest.approx(expected_log, rel=1e-12)
    assert rb.tcp_poisson([60, 50], 30, 0.3, 0.03, **kw) == pytest.approx(math.exp(expected_log), rel=1e-12)
    assert rb.tcp_poisson([60, 50], 30, 0.3, alpha_beta=10.0, **kw) == pytest.approx(0.974797, abs=1e-6)
    # no dose: TCP = exp(-2e6) = 0
    assert rb.tcp_poisson([0, 0], 30, 0.3, 0.03, **kw) == 0.0


def test_ntcp_lkb_two_voxels_by_hand():
    # the doses are EQD2 (the LKB parameters are EQD2-based); see test_biology_safety for "physical"
    # doses 60 and 40 Gy, equal volumes, n = 0.5 (a = 2): gEUD = sqrt((3600 + 1600) / 2) = 50.9902
    # TD50 50, m 0.2: t = 0.9902 / 10 = 0.09902, NTCP = Phi(t) = 0.5 (1 + erf(t / sqrt 2)) = 0.53944
    geud = math.sqrt((3600 + 1600) / 2)
    t = (geud - 50) / (0.2 * 50)
    expected = 0.5 * (1 + math.erf(t / math.sqrt(2)))
    assert expected == pytest.approx(0.53944, abs=1e-5)
    assert rb.geud([60, 40], [1, 1], 2.0) == pytest.approx(geud, rel=1e-12)
    assert rb.ntcp_lkb([60, 40], [1, 1], 50, 0.2, 0.5,
                       dose_kind="EQD2") == pytest.approx(expected, rel=1e-12)
    # n = 1: mean dose 50 = TD50 -> 0.5
    assert rb.ntcp_lkb([60, 40], [3, 3], 50, 0.2, 1.0, dose_kind="EQD2") == pytest.approx(0.5, abs=1e-12)
    cord = rb.NTCP_PARAMETERS["spinal cord"]
    assert (cord.td50_Gy, cord.m, cord.n) == (66.5, 0.175, 0.05)
    assert rb.ntcp_lkb([66.5] * 3, [1, 2, 3], cord.td50_Gy, cord.m, cord.n,
                       dose_kind="EQD2") == pytest.approx(0.5, abs=1e-12)
    # serial organ (a = 20): 70 Gy to 20 % -> gEUD = 70 * 0.2^0.05 = 64.5876 Gy (near the max, far
    # above the 14 Gy mean); t = (64.5876 - 66.5) / (0.175 * 66.5) = -0.16433 -> Phi = 0.43474
    assert rb.geud([70, 0], [0.2, 0.8], 20) == pytest.approx(64.5876, abs=1e-4)
    assert rb.ntcp_lkb([70, 0], [0.2, 0.8], cord.td50_Gy, cord.m, cord.n,
                       dose_kind="EQD2") == pytest.approx(0.43474, abs=1e-5)


# -- LQ parameters --------------------------------------------------------------------------------


def test_lq_lookup_case_and_whitespace_insensitive():
    lq = rb.LQ({"PTV 70": 10.0, "Spinal Cord": 2.0}, default=3.0, alpha={"ptv70": 0.3})
    np.testing.assert_array_equal(lq.alpha_beta_for("ptv70", np.arange(3)), [10.0] * 3)
    np.testing.assert_array_equal(lq.alpha_beta_for(" spinal  cord ", np.arange(2)), [2.0, 2.0])
    np.testing.assert_array_equal(lq.alpha_beta_for("Bladder", np.arange(1)), [3.0])
    np.testing.assert_allclose(lq.beta_for("PTV 70", np.arange(1)), [0.03])
    lq.alpha_beta["ptv 70"] = 8.0  # live table, validated
    assert lq.alpha_beta["PTV70"] == 8.0 and len(lq.alpha_beta) == 2
    with pytest.raises(BiologyError, match="alpha_beta"):
        rb.LQ({"PTV": 10.0}).alpha_beta_for("Rectum", np.arange(2))
    with pytest.raises(BiologyError, match="alpha"):
        lq.alpha_for("Bladder", np.arange(2))


def test_lq_voxel_maps_take_precedence():
    shape = (1, 2, 2)
    ab_map = np.array([1.0, 2.0, 3.0, 4.0]).reshape(shape)
    lq = rb.LQ({"PTV": 10.0}, alpha_beta_map=ab_map)
    np.testing.assert_array_equal(lq.alpha_beta_for("PTV", np.array([3, 0]), shape), [4.0, 1.0])
    a = np.full(shape, 0.3)
    b = np.array([0.03, 0.1, 0.15, 0.3]).reshape(shape)
    lq2 = rb.LQ({"PTV": 10.0}, alpha_map=a, beta_map=b)
    np.testing.assert_allclose(lq2.alpha_beta_for("PTV", np.arange(4), shape), [10.0, 3.0, 2.0, 1.0])
    np.testing.assert_allclose(lq2.alpha_for("PTV", np.array([1]), shape), [0.3])


def test_hypoxia_maps_hand_values():
    po2 = np.array([0.0, 3.0, 1e9]).reshape(1, 1, 3)
    # OER(0) = 1 -> OMF 3; OER(K=3) = (9 + 3)/6 = 2 -> OMF 1.5; oxic -> OMF 1
    np.testing.assert_allclose(rb.oer(po2.ravel()), [1.0, 2.0, 3.0], rtol=1e-8)
    alpha, beta = rb.alpha_map_from_hypoxia(po2, 0.3, 0.03)
    np.testing.assert_allclose(alpha.ravel(), [0.1, 0.2, 0.3], rtol=1e-8)
    np.testing.assert_allclose(beta.ravel(), [0.03 / 9, 0.03 / 2.25, 0.03], rtol=1e-8)
    lq = rb.LQ(alpha_map=alpha, beta_map=beta)
    np.testing.assert_allclose(lq.alpha_beta_for("GTV", np.arange(3), (1, 1, 3)), [30.0, 15.0, 10.0],
                               rtol=1e-8)


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, field", [
    (lambda: rb.LQ({"PTV": -1}), r"alpha_beta\['PTV'\]: expected a value > 0 Gy, got -1"),
    (lambda: rb.LQ({"PTV": float("nan")}), r"alpha_beta\['PTV'\]"),
    (lambda: rb.LQ({"PTV": 10}, default=0), "default"),
    (lambda: rb.bed(60, 30, 0), "alpha_beta_Gy"),
    (lambda: rb.eqd2(60, 30, -3), "alpha_beta_Gy"),
    (lambda: rb.bed(60, 0, 10), "fractions"),
    (lambda: rb.bed(60, 2.5, 10), "fractions"),
    (lambda: rb.dose_for_bed(72, 0, 10), "fractions"),
    (lambda: rb.bed(-1, 30, 10), "total_dose_Gy"),
    (lambda: rb.dose_for_bed(-1, 30, 10), "bed_Gy"),
    (lambda: rb.gard(60, 30, rsi=0.0), "rsi"),
    (lambda: rb.gard(60, 30, rsi=1.0), "rsi"),
    (lambda: rb.alpha_from_rsi(1.3), "rsi"),
    (lambda: rb.gard_prescription(36, 30, -0.1), "rsi"),
    (lambda: rb.gard(60, 30, rsi=0.3, alpha=0.2), "rsi/alpha"),
    (lambda: rb.g_factor(-1), "x"),
    (lambda: rb.bed_protracted(60, 30, 10, 5, 0), "repair_half_time_min"),
    (lambda: rb.bed_with_repopulation(70, 35, 10, 0.3, 40, 21, 0), "tpot_days"),
    (lambda: rb.ntcp_lkb([60, 40], [1], 50, 0.2, 0.5, dose_kind="EQD2"), "volumes"),
    (lambda: rb.alpha_map_from_hypoxia(np.full((2, 2), 5.0), 0.3, 0.03), "po2_mmHg_map"),
    (lambda: rb.alpha_map_from_hypoxia(np.full((1, 2, 2), -5.0), 0.3, 0.03), "po2_mmHg_map"),
])
def test_bad_input_names_the_field(call, field):
    with pytest.raises(BiologyError, match=field):
        call()


def test_map_shape_mismatch_names_map_and_shape():
    lq = rb.LQ({"PTV": 10}, alpha_beta_map=np.full((2, 3, 4), 10.0))
    with pytest.raises(BiologyError, match=r"alpha_beta_map: expected the planning grid shape \(2, 3, 5\)"):
        lq.alpha_beta_for("PTV", np.arange(3), (2, 3, 5))
    with pytest.raises(BiologyError, match=r"alpha_beta_map.*\(1, 1, 1\)"):
        rb.LQ(alpha_beta_map=np.full((2, 3, 4), 10.0), grid_shape=(1, 1, 1))
    with pytest.raises(BiologyError, match=r"beta_map: expected the shape of alpha_map \(2, 3, 4\)"):
        rb.LQ(alpha_map=np.full((2, 3, 4), 0.3), beta_map=np.full((2, 3, 3), 0.03))
    with pytest.raises(BiologyError, match="alpha_beta_map: expected a 3-D"):
        rb.LQ(alpha_beta_map=np.full((3, 4), 10.0))
    with pytest.raises(BiologyError, match="alpha_beta_map"):
        rb.LQ(alpha_beta_map=np.zeros((1, 1, 2)))
    with pytest.raises(BiologyError, match="voxel_index"):
        lq.alpha_beta_for("PTV", np.array([0, 24]), (2, 3, 4))


# -- package layout ------------------------------------------------------------------------------


def test_package_keeps_the_module_interface():
    # helpers used by objectives.biological and optimizer.bio_evaluate stay importable from here
    for name in ("_fractions", "_voxel_index", "_scalar_positive", "_rsi", "_finite",
                 "_course_dose_checked", "check_course_dose", "LQ", "GARD_BETA_GY2", "dose_for_bed",
                 "dose_for_eqd2", "dose_for_gard"):
        assert hasattr(rb, name), name
    # public functions report objectives.radiobiology as their module, so module-level audits
    # (test_biology_safety: no default number of fractions) still see them
    assert {rb.bed.__module__, rb.gard.__module__, rb.ntcp_lkb.__module__, rb.oer.__module__} == {rb.__name__}


def test_gard_is_the_lq_log_cell_kill_of_tcp():
    # one formula: ln TCP of one clonogen at alpha, beta = -exp(-GARD)
    D, n, alpha = np.array([60.0, 20.0]), 30, 0.25
    g = rb.gard(D, n, alpha=alpha)
    ln_tcp = [rb.log_tcp([d], n, alpha, rb.GARD_BETA_GY2, clonogen_density_per_cc=1.0, voxel_volumes_cc=1.0)
              for d in D]
    np.testing.assert_allclose(ln_tcp, -np.exp(-g), rtol=1e-14)


@pytest.mark.parametrize("kwargs", [{"rsi": 0.9}, {"alpha": -0.05}, {"alpha": 0.2}])
def test_a_gard_of_zero_needs_no_dose(kwargs):
    """GARD(0 Gy) = 0 meets a GARD of 0, so its dose floor is 0 (a dose-painting map is 0 outside
    its boost). With alpha < 0 (RSI 0.9: alpha -0.047) the larger root -n alpha / beta was
    returned: 28.4 Gy in 30 fractions for nothing asked. A GARD above 0 keeps the larger root."""
    assert rb.dose_for_gard(0.0, 30, **kwargs) == 0.0
    g = np.array([0.0, 1e-9, 20.0])
    floors = rb.dose_for_gard(g, 30, **kwargs)
    assert floors[0] == 0.0
    np.testing.assert_allclose(rb.gard(floors[1:], 30, **kwargs), g[1:], rtol=1e-6, atol=1e-9)
