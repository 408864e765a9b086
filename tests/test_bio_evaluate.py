"""optimizer.bio_evaluate against hand-computed values, and one end-to-end biological plan.

The hand-computed tests use a tiny Plan built directly from a known dose array (no solve). The
end-to-end test plans a small water box with 3 photon beams: a per-voxel BED floor map on the
target and a BED ceiling on an adjacent organ, every bound re-checked voxel by voxel on the
recomputed plan dose with objectives.bed, then a parameter re-solve against a fresh build."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from objectives import LQ, BEDFloor, BEDMax, SquaredOverdose, bed, eqd2
from objectives import radiobiology as rb
from objectives.errors import BioplanError
from optimizer import Grid, Patient, PhotonBeams, Plan, PlanProblem, Structure, bio_evaluate, phantoms

# -- a Plan with a known dose ---------------------------------------------------------------------


def tiny_plan(t_dose, o_dose, fractions, spacing_mm=10.0):
    """Grid 1 x 2 x k (10 mm voxels: 1 cm^3 each): row 0 holds target "T", row 1 organ "O"."""
    k = max(len(t_dose), len(o_dose))
    grid = Grid((1, 2, k), (spacing_mm,) * 3)
    t = np.zeros(grid.shape, bool)
    t[0, 0, : len(t_dose)] = True
    o = np.zeros(grid.shape, bool)
    o[0, 1, : len(o_dose)] = True
    dose = np.zeros(grid.shape)
    dose[0, 0, : len(t_dose)] = t_dose
    dose[0, 1, : len(o_dose)] = o_dose
    patient = Patient(grid, np.zeros(grid.shape), [Structure("T", t, "target"), Structure("O", o, "oar")])
    return Plan(patient, np.zeros(1), fractions, dose, {"beam": np.zeros(1, int)}, [], "photon")


def test_bed_eqd2_values_by_hand():
    plan = tiny_plan([50.0, 50.0], [30.0, 0.0], fractions=25)
    lq = LQ({"T": 10.0, "O": 3.0})
    # 50 Gy / 25 fx, a/b 10: BED = 50 (1 + 2/10) = 60, EQD2 = 60 / 1.2 = 50
    np.testing.assert_allclose(bio_evaluate.bed_values(plan, "T", lq), [60.0, 60.0], rtol=1e-12)
    np.testing.assert_allclose(bio_evaluate.eqd2_values(plan, "T", lq), [50.0, 50.0], rtol=1e-12)
    # 30 Gy / 25 fx, a/b 3: BED = 30 (1 + 1.2/3) = 42, EQD2 = 42 / (5/3) = 25.2; 0 Gy -> 0
    np.testing.assert_allclose(bio_evaluate.bed_values(plan, "O", lq), [42.0, 0.0], rtol=1e-12)
    np.testing.assert_allclose(bio_evaluate.eqd2_values(plan, "o", lq), [25.2, 0.0], rtol=1e-12)
    # per-structure LQ objects from a mapping (names ignore case / whitespace)
    by_structure = {"t": LQ(default=10.0), " O ": LQ(default=3.0)}
    np.testing.assert_allclose(bio_evaluate.bed_values(plan, "O", by_structure), [42.0, 0.0])
    # maps: a voxel map overrides the table
    ab = np.full(plan.patient.grid.shape, 10.0)
    ab[0, 0, 1] = 2.0  # 50 Gy / 25 fx at a/b 2: 50 (1 + 1) = 100
    np.testing.assert_allclose(bio_evaluate.bed_values(plan, "T", LQ(alpha_beta_map=ab)), [60.0, 100.0])
    full = bio_evaluate.bed_map(plan, lq)
    assert full[0, 0, 0] == pytest.approx(60.0) and full[0, 1, 0] == pytest.approx(42.0)


def test_bed_dvh_and_dx_by_hand():
    # n = 5, a/b 10: BED = D (1 + D / 50): 10 -> 12, 20 -> 28, 30 -> 48, 40 -> 72, 50 -> 100
    plan = tiny_plan([10.0, 20.0, 30.0, 40.0, 50.0], [1.0], fractions=5)
    lq = LQ({"T": 10.0, "O": 3.0})
    np.testing.assert_allclose(bio_evaluate.bed_values(plan, "T", lq), [12.0, 28.0, 48.0, 72.0, 100.0])
    bins = np.array([0.0, 12.0, 12.5, 48.0, 72.0, 100.0, 101.0])
    _, vol = bio_evaluate.bed_dvh(plan, "T", lq, bins=bins)
    np.testing.assert_allclose(vol, [100.0, 100.0, 80.0, 60.0, 40.0, 20.0, 0.0])
    # sorted hottest first, voxel centres at 10, 30, 50, 70, 90 % of the volume
    assert bio_evaluate.bed_at_volume(plan, "T", lq, 50) == pytest.approx(48.0)
    assert bio_evaluate.bed_at_volume(plan, "T", lq, 20) == pytest.approx(100 - 0.5 * 28)
    # EQD2 = BED / 1.2: the same interpolation on EQD2 values
    assert bio_evaluate.eqd2_at_volume(plan, "T", lq, 20) == pytest.approx(86.0 / 1.2)
    _, vol_e = bio_evaluate.eqd2_dvh(plan, "T", lq, bins=np.array([40.0]))
    np.testing.assert_allclose(vol_e, [60.0])  # EQD2 40 = BED 48: 3 of 5 voxels
    assert bio_evaluate.metric(plan, "T", "BED D50", lq=lq) == pytest.approx(48.0)
    assert bio_evaluate.metric(plan, "T", "BED max", lq=lq) == pytest.approx(100.0)
    assert bio_evaluate.metric(plan, "T", "BED V48Gy", lq=lq) == pytest.approx(60.0)
    assert bio_evaluate.metric(plan, "T", "D50") == pytest.approx(30.0)
    assert bio_evaluate.metric(plan, "T", "EQD2 mean", lq=lq) == pytest.approx(52.0 / 1.2)
    stats = bio_evaluate.statistics(bio_evaluate.bed_values(plan, "T", lq))
    assert stats["mean_Gy"] == pytest.approx(52.0) and stats["min_Gy"] == 12.0


def test_gard_values_by_hand():
    # 2 Gy x 30 = 60 Gy: GARD = -n ln(RSI) (Scott 2017); RSI 0.3 -> 36.12
    plan = tiny_plan([60.0, 60.0], [10.0], fractions=30)
    np.testing.assert_allclose(bio_evaluate.gard_values(plan, "T", rsi=0.3), -30 * math.log(0.3), rtol=1e-12)
    # alpha 0.3 /Gy, beta 0.05: 0.3 * 60 + 0.05 * 3600 / 30 = 18 + 6 = 24
    np.testing.assert_allclose(bio_evaluate.gard_values(plan, "T", alpha=0.3), 24.0, rtol=1e-12)
    # per-voxel alpha and beta from an LQ: alpha 0.3 / 0.15, beta 0.03 / 0.015 -> 21.6 / 10.8
    a = np.full(plan.patient.grid.shape, 0.3)
    b = np.full(plan.patient.grid.shape, 0.03)
    a[0, 0, 1], b[0, 0, 1] = 0.15, 0.015
    lq = LQ(alpha_map=a, beta_map=b)
    np.testing.assert_allclose(bio_evaluate.gard_values(plan, "T", lq=lq), [21.6, 10.8], rtol=1e-12)
    # GARD = alpha x BED with the voxel's own alpha/beta
    np.testing.assert_allclose(bio_evaluate.gard_values(plan, "T", lq=lq),
                               a[0, 0] * bio_evaluate.bed_values(plan, "T", lq), rtol=1e-12)
    m = bio_evaluate.gard_map(plan, "T", lq=lq)
    assert m.shape == plan.patient.grid.shape and m[0, 1, 0] == 0.0 and m[0, 0, 1] == pytest.approx(10.8)
    rsi_map = np.full(plan.patient.grid.shape, 0.3)
    rsi_map[0, 0, 1] = 0.5
    np.testing.assert_allclose(bio_evaluate.gard_values(plan, "T", rsi=rsi_map),
                               [-30 * math.log(0.3), -30 * math.log(0.5)], rtol=1e-12)


def test_tcp_by_hand():
    # 1 cm^3 voxels, 1e7 clonogens/cc; alpha 0.3, beta 0.03, 60 Gy / 30 fx:
    # log kill = 18 + 0.03 * 3600 / 30 = 21.6; TCP = exp(-2e7 exp(-21.6))
    plan = tiny_plan([60.0, 60.0], [10.0], fractions=30)
    lq = LQ({"T": 10.0}, alpha={"T": 0.3})
    expected = math.exp(-2e7 * math.exp(-21.6))
    assert bio_evaluate.tcp(plan, "T", lq, 1e7) == pytest.approx(expected, rel=1e-12)
    assert bio_evaluate.log_tcp(plan, "T", lq, 1e7) == pytest.approx(-2e7 * math.exp(-21.6), rel=1e-12)
    # a cold voxel dominates: one voxel at 50 Gy (log kill 15 + 2.5 = 17.5)
    cold = tiny_plan([60.0, 50.0], [10.0], fractions=30)
    expected = math.exp(-1e7 * (math.exp(-21.6) + math.exp(-17.5)))
    assert bio_evaluate.tcp(cold, "T", lq, 1e7) == pytest.approx(expected, rel=1e-12)
    # halving alpha in the cold voxel (an alpha map) lowers TCP further
    amap = np.full(cold.patient.grid.shape, 0.3)
    amap[0, 0, 1] = 0.15
    lq_map = LQ(alpha_map=amap, beta_map=amap / 10.0)
    kill = 0.15 * 50 + 0.015 * 2500 / 30
    expected = math.exp(-1e7 * (math.exp(-21.6) + math.exp(-kill)))
    assert bio_evaluate.tcp(cold, "T", lq_map, 1e7) == pytest.approx(expected, rel=1e-12)


def test_ntcp_by_hand():
    # uniform EQD2 = TD50 gives NTCP 0.5 (spinal cord: TD50 66.5 Gy EQD2, Burman 1991)
    d = rb.dose_for_eqd2(66.5, 30, 2.0)
    plan = tiny_plan([60.0], [d, d], fractions=30)
    lq = LQ({"O": 2.0, "T": 10.0})
    assert bio_evaluate.ntcp(plan, "O", lq, "spinal cord") == pytest.approx(0.5, abs=1e-9)
    # two voxels: gEUD with a = 1/n = 20 over EQD2, NTCP = Phi((gEUD - TD50) / (m TD50))
    plan = tiny_plan([60.0], [40.0, 60.0], fractions=30)
    e = eqd2(np.array([40.0, 60.0]), 30, 2.0)
    geud = np.mean(e ** 20.0) ** (1 / 20.0)
    p = rb.NTCP_PARAMETERS["spinal cord"]
    expected = norm.cdf((geud - p.td50_Gy) / (p.m * p.td50_Gy))
    assert bio_evaluate.ntcp(plan, "O", lq, "Spinal  Cord") == pytest.approx(expected, rel=1e-9)
    assert bio_evaluate.ntcp(plan, "O", lq, p) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(BioplanError, match="no LKB parameters for organ 'O'"):
        bio_evaluate.ntcp(plan, "O", lq)  # no table entry under the structure's own name


def test_voxel_checks_by_hand():
    c = bio_evaluate.check_voxels([60.0, 59.0, 70.0], 60.0, ">=", "floor", voxel_index=[4, 7, 9])
    assert not c.met and c.n_violated == 1 and c.worst_voxel == 7
    assert c.margin == pytest.approx(-1.0) and c.relative_margin == pytest.approx(-1 / 60)
    c = bio_evaluate.check_voxels([60.0, 59.999, 70.0], [60.0, 60.0, 65.0], ">=", rel_tol=1e-4)
    assert c.met and c.n_violated == 0  # within the relative tolerance
    c = bio_evaluate.check_voxels([10.0, 45.0], [20.0, 50.0], "<=")
    assert c.met and c.relative_margin == pytest.approx(0.1) and c.margin == pytest.approx(5.0)
    assert c.as_dict()["met"] is True
    plan = tiny_plan([50.0, 50.0], [30.0, 0.0], fractions=25)
    lq = LQ({"T": 10.0, "O": 3.0})
    c = bio_evaluate.check_bio_limit(plan, "O", "BED", "<=", 40.0, lq=lq)
    assert not c.met and c.margin == pytest.approx(-2.0) and c.worst_voxel == 2  # flat index of [0, 1, 0]
    assert c.unit == "Gy BED" and "-2 Gy BED" in str(c)  # the unit of the goal schema
    floor_map = np.zeros(plan.patient.grid.shape)
    floor_map[0, 0] = [55.0, 61.0]
    c = bio_evaluate.check_bio_limit(plan, "T", "BED", ">=", floor_map, lq=lq)
    assert c.worst_voxel == 1 and c.margin == pytest.approx(-1.0) and "map" in c.label


def test_goals_summary_and_comparison():
    lq = LQ({"T": 10.0, "O": 3.0}, alpha={"T": 0.3})
    a = tiny_plan([50.0, 50.0], [30.0, 0.0], fractions=25)
    b = tiny_plan([55.0, 55.0], [20.0, 0.0], fractions=25)
    goals = [("T", "BED min", ">=", 60.0), ("O", "BED max", "<=", 40.0), ("T", "D95", ">=", 50.0)]
    res = bio_evaluate.evaluate_bio_goals(a, goals, lq=lq)
    assert [g.met for g in res] == [True, False, True]
    assert res[1].value == pytest.approx(42.0)
    # 55 Gy: BED 55 (1 + 2.2 / 10) = 67.1; 20 Gy at a/b 3: 20 (1 + 0.8 / 3) = 25.33
    table = bio_evaluate.comparison({"A": a, "B": b}, lq, names=["T", "O"], metrics=("BED max",),
                                    tcp_structures=["T"], goals=goals)
    rows = {(r["structure"], r["metric"], "op" in r): r for r in table["rows"]}
    assert table["labels"] == ["A", "B"]
    assert rows[("T", "BED max", False)]["values"]["B"] == pytest.approx(67.1)
    assert rows[("O", "BED max", True)]["met"] == {"A": False, "B": True}
    assert rows[("T", "TCP", False)]["values"]["A"] == pytest.approx(bio_evaluate.tcp(a, "T", lq))
    # GARD from the LQ's alpha and beta (0.03): 0.3 * 55 + 0.03 * 3025 / 25 = 20.13
    assert rows[("T", "GARD min", False)]["values"]["B"] == pytest.approx(20.13)
    text = bio_evaluate.compare_plans({"A": a, "B": b}, lq, names=["T", "O"], metrics=("BED max",),
                                      goals=goals)
    assert "A" in text.splitlines()[0] and "B" in text.splitlines()[0]
    assert "42.00 NO" in text and "25.33 yes" in text
    summary = bio_evaluate.plan_summary(a, lq, tcp_structures=["T"], ntcp_parameters={"O": "spinal cord"},
                                        goals=goals)
    assert summary["structures"]["O"]["BED"]["max_Gy"] == pytest.approx(42.0)
    assert set(summary) == {"structures", "TCP", "NTCP", "GARD", "goals"}
    assert 0.0 <= summary["NTCP"]["O"] <= 1.0 and len(summary["goals"]) == 3


@pytest.mark.parametrize("call, match", [
    (lambda p, lq: bio_evaluate.values(p, "T", "LET", lq=lq), "quantity"),
    (lambda p, lq: bio_evaluate.bed_values(p, "T", {"O": lq}), r"no LQ object for structure 'T'"),
    (lambda p, lq: bio_evaluate.bed_values(p, "T", {"T": 10.0}), r"lq\['T'\]"),
    (lambda p, lq: bio_evaluate.bed_values(p, "T", None), "lq: expected"),
    (lambda p, lq: bio_evaluate.bed_values(p, "Lung", lq), "structure 'Lung' not found"),
    (lambda p, lq: bio_evaluate.gard_values(p, "T"), "exactly one of rsi"),
    (lambda p, lq: bio_evaluate.gard_values(p, "T", rsi=np.ones((2, 2))), "rsi: expected a number or a map"),
    (lambda p, lq: bio_evaluate.gard_values(p, "T", rsi=1.5), "rsi"),
    (lambda p, lq: bio_evaluate.check_voxels([1.0], 1.0, "<"), "op"),
    (lambda p, lq: bio_evaluate.check_voxels([1.0, 2.0], [1.0, 2.0, 3.0], ">="), "limit"),
    (lambda p, lq: bio_evaluate.metric(p, "T", "BED D95 extra", lq=lq), "metric"),
    (lambda p, lq: bio_evaluate.tcp(p, "T", LQ({"T": 10.0})), r"alpha\['T'\]"),
    (lambda p, lq: bio_evaluate.comparison([p], lq), "plans"),
])
def test_bad_input_names_the_field(call, match):
    plan = tiny_plan([50.0, 50.0], [30.0, 0.0], fractions=25)
    with pytest.raises(BioplanError, match=match):
        call(plan, LQ({"T": 10.0, "O": 3.0}))


def test_negative_dose_is_rejected():
    plan = tiny_plan([50.0, -1.0], [30.0, 0.0], fractions=25)
    with pytest.raises(BioplanError, match="negative dose"):
        bio_evaluate.bed_values(plan, "T", LQ({"T": 10.0}))


# -- end to end: a small water box, 3 photon beams --------------------------------------------------

N_FX = 5
REL = 1e-4


def _box():
    """40 x 100 x 100 mm water box on a 5 mm grid (8 x 20 x 20 voxels); a 12 mm target sphere
    at the centre and a 15 x 15 x 30 mm organ 5 mm posterior of it."""
    patient = phantoms.water_box(size_mm=(40.0, 100.0, 100.0), spacing_mm=5.0)
    z, y, x = np.meshgrid(*patient.grid.axes_mm(), indexing="ij")
    ptv = np.sqrt(x ** 2 + y ** 2 + z ** 2) <= 12.0
    oar = (np.abs(x) <= 7.5) & (y >= 17.0) & (y <= 32.0) & (np.abs(z) <= 15.0)
    patient.add_structure(Structure("PTV", ptv, "target"))
    patient.add_structure(Structure("OAR", oar, "oar"))
    return patient


@pytest.fixture(scope="module")
def box():
    patient = _box()
    influence = PhotonBeams(gantry_deg=[0.0, 120.0, 240.0], beamlet_mm=5.0).influence(patient, target="PTV")
    # per-voxel tumour alpha/beta: 10 Gy, 5 Gy in the posterior half of the target (next to
    # the organ), and a BED floor map (Gy; read inside the PTV only): 70 anterior, 100 posterior
    z, y, x = np.meshgrid(*patient.grid.axes_mm(), indexing="ij")
    ab = np.where(y > 0, 5.0, 10.0)
    bed_floor = np.where(y > 0, 100.0, 70.0)
    return patient, influence, ab, bed_floor


def _problem(patient, influence, ab_map, bed_floor, oar_ab, oar_bed):
    lq_t = LQ(alpha_beta_map=ab_map)
    lq_o = LQ({"OAR": oar_ab})
    problem = PlanProblem(patient, influence, fractions=N_FX, max_voxels_per_structure=400)
    floor = BEDFloor("PTV", bed_floor, lq_t)
    ceiling = BEDMax("OAR", oar_bed, lq_o)
    problem += floor
    problem += ceiling
    # the soft terms push the dose down: the floors hold it up, and the PTV's own overdose term
    # above 40 Gy pushes towards the organ's ceiling
    problem += SquaredOverdose("PTV", 40.0, weight=1.0)
    problem += SquaredOverdose("Body", 0.0, weight=1.0)
    return problem, floor, ceiling, lq_t, lq_o


def _check_voxelwise(plan, patient, ab_map, bed_floor, oar_ab, oar_bed):
    d_ptv = plan.structure_dose("PTV")
    ab_ptv = ab_map[patient.structure("PTV").mask]
    floors = bed_floor[patient.structure("PTV").mask]
    b_ptv = bed(d_ptv, N_FX, ab_ptv)
    b_oar = bed(plan.structure_dose("OAR"), N_FX, oar_ab)
    tol = REL + 1e-6  # 1e-4 relative plus the interior-point solver's tolerance
    assert np.all(b_ptv >= floors * (1 - tol)), (b_ptv / floors).min()
    assert np.all(b_oar <= oar_bed * (1 + tol)), b_oar.max()
    return b_ptv, b_oar


def test_end_to_end_bed_floor_map_and_oar_ceiling_with_resolve(box):
    patient, influence, ab, bed_floor = box
    problem, floor, ceiling, lq_t, lq_o = _problem(patient, influence, ab, bed_floor, 3.0, 60.0)
    cp_problem = problem.build()
    assert cp_problem.is_dcp() and cp_problem.is_dpp()
    plan = problem.solve()
    assert plan.solver["status"] == "optimal"
    b_ptv, b_oar = _check_voxelwise(plan, patient, ab, bed_floor, 3.0, 60.0)
    # both hard terms are active: the organ is at its ceiling and the floor is what holds the
    # target dose up
    assert b_oar.max() == pytest.approx(60.0, rel=1e-3)
    assert (b_ptv / bed_floor[patient.structure("PTV").mask]).min() == pytest.approx(1.0, abs=1e-3)
    # bio_evaluate agrees with the hand recomputation
    lq_eval = {"PTV": lq_t, "OAR": lq_o}
    np.testing.assert_allclose(bio_evaluate.bed_values(plan, "PTV", lq_eval), b_ptv, rtol=1e-12)
    check = bio_evaluate.check_bio_limit(plan, "PTV", "BED", ">=", bed_floor, lq=lq_t, rel_tol=REL)
    assert check.met and check.n_voxels == patient.structure("PTV").n_voxels
    assert bio_evaluate.check_bio_limit(plan, "OAR", "BED", "<=", 60.0, lq=lq_o, rel_tol=REL).met

    # re-solve the SAME compiled problem with new biology: OAR a/b 3 -> 2, ceiling 60 -> 50 Gy,
    # tumour a/b map 10/5 -> 8/3 Gy (terms refresh their Parameters before the solve)
    ab2 = np.where(ab == 5.0, 3.0, 8.0)
    lq_o.alpha_beta["OAR"] = 2.0
    ceiling.bed_Gy.value = 50.0
    lq_t.alpha_beta_map = ab2
    plan2 = problem.solve()
    assert problem.build() is cp_problem  # not rebuilt
    _, b_oar2 = _check_voxelwise(plan2, patient, ab2, bed_floor, 2.0, 50.0)
    assert b_oar2.max() == pytest.approx(50.0, rel=1e-3)
    fresh, *_ = _problem(patient, influence, ab2, bed_floor, 2.0, 50.0)
    plan3 = fresh.solve()
    assert plan2.solver["objective"] == pytest.approx(plan3.solver["objective"], rel=REL)
    assert plan2.solver["objective"] != pytest.approx(plan.solver["objective"], rel=1e-3)  # it changed
