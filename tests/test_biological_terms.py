"""objectives.biological terms on tiny cvxpy problems (d = n A x, x >= 0), solved with CLARABEL.

Every bound is checked voxel by voxel on the final numpy dose with objectives.radiobiology, not
on solver variables."""

import cvxpy as cp
import numpy as np
import pytest

from objectives import radiobiology as rb
from objectives.biological import (
    BEDCVaRMax,
    BEDFloor,
    BEDMax,
    EQD2Floor,
    EQD2Max,
    GARDFloor,
    GEUDEQD2Max,
    MeanBEDMax,
    MeanEQD2Max,
    SquaredBEDOverdose,
)
from objectives.errors import BioplanError, TermError
from objectives.terms import TermContext

N_FX = 30
GRID = (1, 2, 4)  # 8 voxels: PTV = flat 0..3, OAR = flat 4..7
PTV_IDX = np.arange(4)
OAR_IDX = np.arange(4, 8)
VOLUMES = np.array([0.1, 0.2, 0.3, 0.4])
REL = 1e-4

_rng = np.random.default_rng(11)
A_PTV = _rng.uniform(0.6, 1.0, (4, 5)) / 5.0  # dose per fraction per unit beamlet weight, Gy
A_OAR = _rng.uniform(0.05, 0.4, (4, 5)) / 5.0


def ctx_for(structure, idx=None, fractions=N_FX):
    idx = PTV_IDX if idx is None else idx
    vol = VOLUMES[: len(idx)] / VOLUMES[: len(idx)].sum()
    return TermContext(structure=structure, volumes=vol, voxel_index=idx, fractions=fractions,
                       grid_shape=GRID)


PTV = ctx_for("PTV", PTV_IDX)
OAR = ctx_for("OAR", OAR_IDX)


def setup():
    x = cp.Variable(5, nonneg=True)
    return x, N_FX * A_PTV @ x, N_FX * A_OAR @ x


def dose_of(A, x):
    """Final total dose (Gy) from the solved weights (solver noise below zero clipped)."""
    return N_FX * A @ np.maximum(x.value, 0.0)


def solve(problem):
    assert problem.is_dcp()
    assert problem.is_dpp()
    problem.solve(solver=cp.CLARABEL)
    assert problem.status == cp.OPTIMAL, problem.status
    return problem


def hard(term, dose, ctx):
    term.refresh(ctx)
    return term.violation(dose, ctx) <= 0


def upper_tail_mean(values, volumes, fraction):
    """Volume-weighted mean of the hottest ``fraction`` of the volume (discrete CVaR)."""
    order = np.argsort(values)[::-1]
    left, total = fraction, 0.0
    for i in order:
        take = min(volumes[i], left)
        total += take * values[i]
        left -= take
        if left <= 0:
            break
    return total / fraction


# -- floors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, achieved, target", [
    (lambda lq: BEDFloor("PTV", 72.0, lq), lambda d: rb.bed(d, N_FX, 10.0), 72.0),
    (lambda lq: EQD2Floor("PTV", 66.0, lq), lambda d: rb.eqd2(d, N_FX, 10.0), 66.0),
    (lambda lq: GARDFloor("PTV", 36.1, rsi=0.3), lambda d: rb.gard(d, N_FX, rsi=0.3), 36.1),
])
def test_hard_floor_holds_voxelwise_and_is_tight(make, achieved, target):
    lq = rb.LQ({"PTV": 10.0, "OAR": 3.0})
    x, d_ptv, _ = setup()
    term = make(lq)
    solve(cp.Problem(cp.Minimize(cp.sum(x)), [hard(term, d_ptv, PTV)]))
    value = achieved(dose_of(A_PTV, x))
    assert np.all(value >= target * (1 - REL))
    assert value.min() == pytest.approx(target, rel=REL)  # the floor is what stops the descent


def test_floor_values_hand_computed():
    lq = rb.LQ({"PTV": 10.0})
    # BED 72, 30 fx, ab 10 -> 60 Gy; EQD2 60 -> 60 Gy; GARD 36.1 at RSI 0.3 -> about 60 Gy
    np.testing.assert_allclose(BEDFloor("PTV", 72.0, lq).dose_floor_Gy(PTV), 60.0, rtol=1e-12)
    np.testing.assert_allclose(EQD2Floor("PTV", 60.0, lq).dose_floor_Gy(PTV), 60.0, rtol=1e-12)
    np.testing.assert_allclose(GARDFloor("PTV", 36.1, rsi=0.3).dose_floor_Gy(PTV), 59.9727, atol=1e-4)


def test_per_voxel_alpha_beta_map_gives_per_voxel_floors():
    ab = np.array([10.0, 2.0, 10.0, 2.0, 3.0, 3.0, 3.0, 3.0]).reshape(GRID)
    lq = rb.LQ({"PTV": 10.0}, alpha_beta_map=ab)
    term = BEDFloor("PTV", 72.0, lq)
    # ab 2: D = 2 * 72 / (1 + sqrt(1 + 4 * 72 / 60)) = 144 / (1 + 2.408319) = 42.24957 Gy
    np.testing.assert_allclose(term.dose_floor_Gy(PTV), [60.0, 42.24957, 60.0, 42.24957], atol=1e-5)
    x, d_ptv, _ = setup()
    solve(cp.Problem(cp.Minimize(cp.sum_squares(x)), [hard(term, d_ptv, PTV)]))
    d = dose_of(A_PTV, x)
    assert np.all(rb.bed(d, N_FX, ab.ravel()[PTV_IDX]) >= 72.0 * (1 - REL))


def test_dose_painting_prescription_map():
    lq = rb.LQ({"PTV": 10.0})
    presc = np.zeros(GRID)
    presc.ravel()[PTV_IDX] = [70.0, 80.0, 90.0, 100.0]
    term = BEDFloor("PTV", presc, lq)
    np.testing.assert_allclose(term.dose_floor_Gy(PTV), rb.dose_for_bed([70, 80, 90, 100], N_FX, 10.0))
    x, d_ptv, _ = setup()
    solve(cp.Problem(cp.Minimize(cp.sum_squares(x)), [hard(term, d_ptv, PTV)]))
    achieved = rb.bed(dose_of(A_PTV, x), N_FX, 10.0)
    assert np.all(achieved >= np.array([70.0, 80.0, 90.0, 100.0]) * (1 - REL))
    # GARD painting with an RSI map: more resistant voxels (higher RSI) get higher floors
    rsi = np.full(GRID, 0.5)
    rsi.ravel()[PTV_IDX] = [0.2, 0.3, 0.4, 0.5]
    floors = GARDFloor("PTV", 33.0, rsi=rsi).dose_floor_Gy(PTV)
    assert np.all(np.diff(floors) > 0)
    np.testing.assert_allclose(rb.gard(floors, N_FX, rsi=[0.2, 0.3, 0.4, 0.5]), 33.0, rtol=1e-12)


# -- upper limits ---------------------------------------------------------------------------------


def _maximize_ptv(x, d_ptv):
    return cp.Maximize(PTV.volumes @ d_ptv)


@pytest.mark.parametrize("make, achieved, limit", [
    (lambda lq: BEDMax("OAR", 40.0, lq), lambda d: rb.bed(d, N_FX, 3.0).max(), 40.0),
    (lambda lq: EQD2Max("OAR", 30.0, lq), lambda d: rb.eqd2(d, N_FX, 3.0).max(), 30.0),
    (lambda lq: MeanBEDMax("OAR", 35.0, lq), lambda d: OAR.volumes @ rb.bed(d, N_FX, 3.0), 35.0),
    (lambda lq: MeanEQD2Max("OAR", 25.0, lq), lambda d: OAR.volumes @ rb.eqd2(d, N_FX, 3.0), 25.0),
    (lambda lq: BEDCVaRMax("OAR", 40.0, 30, lq),
     lambda d: upper_tail_mean(rb.bed(d, N_FX, 3.0), OAR.volumes, 0.3), 40.0),
    (lambda lq: GEUDEQD2Max("OAR", 30.0, 8, lq),
     lambda d: rb.geud(rb.eqd2(d, N_FX, 3.0), OAR.volumes, 8), 30.0),
    (lambda lq: GEUDEQD2Max("OAR", 25.0, 1, lq), lambda d: OAR.volumes @ rb.eqd2(d, N_FX, 3.0), 25.0),
])
def test_hard_upper_limit_holds_and_is_tight(make, achieved, limit):
    lq = rb.LQ({"PTV": 10.0, "OAR": 3.0})
    x, d_ptv, d_oar = setup()
    term = make(lq)
    solve(cp.Problem(_maximize_ptv(x, d_ptv), [hard(term, d_oar, OAR)]))
    d = dose_of(A_OAR, x)
    assert np.all(rb.bed(d, N_FX, 3.0) >= 0)
    value = achieved(d)
    assert value <= limit * (1 + REL)
    assert value == pytest.approx(limit, rel=REL)  # the only thing bounding the target dose


def test_bed_max_voxelwise_every_voxel():
    lq = rb.LQ({"OAR": 3.0})
    x, d_ptv, d_oar = setup()
    solve(cp.Problem(_maximize_ptv(x, d_ptv), [hard(BEDMax("OAR", 40.0, lq), d_oar, OAR)]))
    assert np.all(rb.bed(dose_of(A_OAR, x), N_FX, 3.0) <= 40.0 * (1 + REL))


def test_bed_cvar_is_conservative_for_the_bed_volume_limit():
    lq = rb.LQ({"OAR": 3.0})
    x, d_ptv, d_oar = setup()
    solve(cp.Problem(_maximize_ptv(x, d_ptv), [hard(BEDCVaRMax("OAR", 40.0, 30, lq), d_oar, OAR)]))
    b = rb.bed(dose_of(A_OAR, x), N_FX, 3.0)
    assert OAR.volumes[b > 40.0 * (1 + REL)].sum() <= 0.3 + 1e-9


# -- soft forms -----------------------------------------------------------------------------------


@pytest.mark.parametrize("make, numpy_cost", [
    (lambda lq: BEDMax("OAR", 15.0, lq, weight=2.0),
     lambda d, v: v @ np.maximum(rb.bed(d, N_FX, 3.0) - 15.0, 0)),
    (lambda lq: SquaredBEDOverdose("OAR", 15.0, lq, weight=2.0),
     lambda d, v: v @ np.maximum(rb.bed(d, N_FX, 3.0) - 15.0, 0) ** 2),
    (lambda lq: MeanEQD2Max("OAR", 5.0, lq, weight=2.0),
     lambda d, v: max(v @ rb.eqd2(d, N_FX, 3.0) - 5.0, 0)),
])
# weight x (expression with Parameters) is not DPP (see the epigraph check below)
@pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP")
# the organ is kept below ~0.5 Gy per fraction here, a genuine low-dose course for the plausibility check
@pytest.mark.filterwarnings("ignore::objectives.PerFractionDoseWarning")
def test_soft_ceiling_penalty_matches_numpy(make, numpy_cost):
    lq = rb.LQ({"PTV": 10.0, "OAR": 3.0})
    x, d_ptv, d_oar = setup()
    term = make(lq)
    term.refresh(OAR)
    fit = PTV.volumes @ cp.square(d_ptv - 70.0) / 100.0
    pen = term.penalty(d_oar, OAR)
    problem = cp.Problem(cp.Minimize(fit + pen))
    assert problem.is_dcp()
    problem.solve(solver=cp.CLARABEL)
    assert problem.status == cp.OPTIMAL
    d = dose_of(A_OAR, x)
    expected = 2.0 * numpy_cost(d, OAR.volumes)
    assert expected > 1e-3  # the penalty is active at the optimum
    assert pen.value == pytest.approx(expected, rel=REL)
    # epigraph form (what a problem can use to stay DPP): same optimum
    t = cp.Variable()
    epi = cp.Problem(cp.Minimize(fit + term.weight * t), [term.cost(d_oar, OAR) <= t])
    solve(epi)
    assert epi.value == pytest.approx(problem.value, rel=REL)


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP")
def test_soft_floor_penalty_matches_numpy(squared):
    lq = rb.LQ({"PTV": 10.0})
    x, d_ptv, _ = setup()
    term = BEDFloor("PTV", 72.0, lq, weight=5.0, squared=squared)
    term.refresh(PTV)
    pen = term.penalty(d_ptv, PTV)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x) + pen))
    assert problem.is_dcp()
    problem.solve(solver=cp.CLARABEL)
    short = np.maximum(60.0 - dose_of(A_PTV, x), 0)  # floor 60 Gy (BED 72, ab 10)
    expected = 5.0 * (PTV.volumes @ (short ** 2 if squared else short))
    assert expected > 1e-4
    assert pen.value == pytest.approx(expected, rel=REL)
    t = cp.Variable()
    epi = cp.Problem(cp.Minimize(cp.sum_squares(x) + term.weight * t), [term.cost(d_ptv, PTV) <= t])
    solve(epi)
    assert epi.value == pytest.approx(problem.value, rel=REL)


# -- sweeps: re-solve the same problem after refresh == a freshly built problem --------------------


def _floor_ceiling_problem(lq, bed_ptv, bed_oar):
    x, d_ptv, d_oar = setup()
    floor = BEDFloor("PTV", bed_ptv, lq)
    ceil = BEDMax("OAR", bed_oar, lq)
    eqd2 = EQD2Max("PTV", 90.0, lq)
    cons = [hard(floor, d_ptv, PTV), hard(ceil, d_oar, OAR), hard(eqd2, d_ptv, PTV)]
    return cp.Problem(cp.Minimize(cp.sum_squares(x)), cons), x, (floor, ceil, eqd2)


def test_changed_alpha_beta_and_prescription_resolve_without_rebuild():
    lq = rb.LQ({"PTV": 10.0, "OAR": 3.0})
    problem, x, (floor, ceil, eqd2) = _floor_ceiling_problem(lq, 72.0, 60.0)
    solve(problem)
    x_before = x.value.copy()

    lq.alpha_beta["ptv"] = 5.0
    lq.alpha_beta["OAR"] = 2.0
    floor.bed_Gy = 80.0
    ceil.bed_Gy.value = 65.0
    for term, ctx in ((floor, PTV), (ceil, OAR), (eqd2, PTV)):
        term.refresh(ctx)
    solve(problem)
    assert not np.allclose(x.value, x_before, rtol=1e-3)  # the change was picked up

    fresh, x_fresh, _ = _floor_ceiling_problem(rb.LQ({"PTV": 5.0, "OAR": 2.0}), 80.0, 65.0)
    solve(fresh)
    assert problem.value == pytest.approx(fresh.value, rel=REL)
    np.testing.assert_allclose(x.value, x_fresh.value, rtol=REL, atol=REL * np.abs(x_fresh.value).max())
    d = dose_of(A_PTV, x)
    assert np.all(rb.bed(d, N_FX, 5.0) >= 80.0 * (1 - REL))
    assert np.all(rb.eqd2(d, N_FX, 5.0) <= 90.0 * (1 + REL))
    assert np.all(rb.bed(dose_of(A_OAR, x), N_FX, 2.0) <= 65.0 * (1 + REL))


def test_changed_rsi_and_alpha_beta_map_resolve_without_rebuild():
    def build(rsi, ab_map):
        x, d_ptv, _ = setup()
        g = GARDFloor("PTV", 33.0, rsi=rsi)
        b = BEDFloor("PTV", 70.0, rb.LQ(alpha_beta_map=ab_map))
        return cp.Problem(cp.Minimize(cp.sum_squares(x)), [hard(g, d_ptv, PTV), hard(b, d_ptv, PTV)]), x, g, b

    problem, x, g, b = build(0.3, np.full(GRID, 10.0))
    solve(problem)
    first = problem.value
    new_map = np.full(GRID, 10.0)
    new_map.ravel()[PTV_IDX] = [1.5, 3.0, 10.0, 20.0]
    g.rsi = 0.5
    b.lq.alpha_beta_map = new_map
    g.refresh(PTV)
    b.refresh(PTV)
    solve(problem)
    assert problem.value > first * (1 + 1e-3)
    fresh, x_fresh, _, _ = build(0.5, new_map)
    solve(fresh)
    assert problem.value == pytest.approx(fresh.value, rel=REL)
    np.testing.assert_allclose(x.value, x_fresh.value, rtol=REL, atol=REL * np.abs(x_fresh.value).max())
    d = dose_of(A_PTV, x)
    assert np.all(rb.gard(d, N_FX, rsi=0.5) >= 33.0 * (1 - REL))
    assert np.all(rb.bed(d, N_FX, [1.5, 3.0, 10.0, 20.0]) >= 70.0 * (1 - REL))


def test_one_term_in_two_problems_keeps_separate_parameters():
    lq = rb.LQ({"PTV": 10.0})
    term = BEDFloor("PTV", 72.0, lq)
    small = ctx_for("PTV", PTV_IDX[:2])
    x1, d1, _ = setup()
    p1 = cp.Problem(cp.Minimize(cp.sum(x1)), [hard(term, d1[:2], small)])
    x2, d2, _ = setup()
    p2 = cp.Problem(cp.Minimize(cp.sum(x2)), [hard(term, d2, PTV)])
    solve(p1)
    solve(p2)
    assert np.all(rb.bed(dose_of(A_PTV[:2], x1), N_FX, 10.0) >= 72.0 * (1 - REL))
    assert np.all(rb.bed(dose_of(A_PTV, x2), N_FX, 10.0) >= 72.0 * (1 - REL))


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, field", [
    (lambda lq: BEDMax("OAR", -1.0, lq), "BEDMax.bed_Gy"),
    (lambda lq: BEDMax("OAR", 40.0, {"OAR": 3.0}), "BEDMax.lq"),
    (lambda lq: BEDFloor("PTV", np.ones((2, 2)), lq), "BEDFloor.bed_Gy"),
    (lambda lq: BEDFloor("PTV", -72.0, lq), "BEDFloor.bed_Gy"),
    (lambda lq: EQD2Floor("PTV", float("nan"), lq), "EQD2Floor.eqd2_Gy"),
    (lambda lq: BEDFloor("PTV", 72.0, lq, squared=True), "squared"),
    (lambda lq: SquaredBEDOverdose("OAR", 40.0, lq, weight=None), "soft term"),
    (lambda lq: BEDCVaRMax("OAR", 40.0, 100, lq), "BEDCVaRMax.volume_pct"),
    (lambda lq: GEUDEQD2Max("OAR", 30.0, 0.5, lq), "GEUDEQD2Max.a"),
    (lambda lq: GARDFloor("PTV", 33.0, rsi=1.2), "GARDFloor.rsi"),
    (lambda lq: GARDFloor("PTV", 33.0, rsi=0.0), "GARDFloor.rsi"),
    (lambda lq: GARDFloor("PTV", 33.0, rsi=0.3, alpha=0.2), "rsi/alpha"),
    (lambda lq: GARDFloor("PTV", 33.0), "rsi/alpha"),
])
def test_bad_term_arguments_name_the_field(call, field):
    with pytest.raises(BioplanError, match=field):
        call(rb.LQ({"PTV": 10.0, "OAR": 3.0}))


def test_bad_context_is_reported_at_refresh():
    lq = rb.LQ({"PTV": 10.0})
    _, d_ptv, _ = setup()
    with pytest.raises(TermError, match=r"BEDFloor.bed_Gy: expected a map of the planning grid shape \(1, 2"):
        BEDFloor("PTV", np.full((1, 2, 3), 72.0), lq).refresh(PTV)
    with pytest.raises(BioplanError, match="fractions"):
        BEDFloor("PTV", 72.0, lq).refresh(ctx_for("PTV", PTV_IDX, fractions=0))
    with pytest.raises(BioplanError, match=r"alpha_beta_map: expected the planning grid shape"):
        BEDMax("PTV", 80.0, rb.LQ(alpha_beta_map=np.full((2, 2, 2), 3.0))).refresh(PTV)
    with pytest.raises(BioplanError, match=r"alpha_beta\['Rectum'\]"):
        BEDMax("Rectum", 80.0, lq).refresh(ctx_for("Rectum"))
    with pytest.raises(TermError, match="dose expression has 2 entries"):
        BEDMax("PTV", 80.0, lq).violation(d_ptv[:2], PTV)
    term = GARDFloor("PTV", 33.0, rsi=0.3)
    with pytest.raises(BioplanError, match="GARDFloor.rsi"):
        term.rsi = 1.0
    assert term.rsi == 0.3  # a rejected value leaves the term unchanged


def test_a_bed_quantity_shared_by_two_structures_gives_each_its_own_alpha_beta():
    """One BED(lq) used by terms on T (alpha/beta 10 in the table) and O (not in it: the default
    2): O's hard BED ceiling holds at alpha/beta 2 by hand. It used to read the first term's
    structure for every structure without an entry (C-shape: core BED 59.7 Gy under a 40 Gy
    limit, certified)."""
    from conftest import make_toy

    from objectives import LQ, Max, SquaredDeviation, SquaredOver
    from objectives.quantities import BED
    from optimizer import PlanProblem

    patient, inf, _ = make_toy(n_target=8, n_oar=8, n_beamlets=6, seed=4)
    n, limit = 5, 12.0
    bed = BED(LQ({"T": 10.0}, default=2.0))
    problem = PlanProblem(patient, inf, fractions=n)
    problem += SquaredDeviation("T", 30.0, weight=1.0)
    problem += SquaredOver("T", 60.0, weight=1.0, quantity=bed)  # the first user of the quantity
    problem += Max("O", limit, quantity=bed)
    for solver in ("CLARABEL", "FIRST_ORDER"):
        d = problem.solve(solver=solver).structure_dose("O")
        by_hand = d * (1.0 + d / (n * 2.0))  # BED at alpha/beta 2
        assert by_hand.max() <= limit + 0.01, solver
        assert by_hand.max() >= limit - 0.05, solver  # the ceiling acts (the soft terms push dose up)
