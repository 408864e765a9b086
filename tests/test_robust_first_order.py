"""Soft robust worst cases (composite, voxelwise) in the first-order solver (epigraph
variables in the augmented Lagrangian, optimizer/solvers/epigraph.py): the certified optimum
against CLARABEL and against the robust problem written out by hand in cvxpy; a mixed problem
with hard robust limits; warm starts after a weight change; the terms it cannot take."""

import cvxpy as cp
import numpy as np
import pytest
from conftest import make_scenario_toy

from objectives import MaxDose, SquaredDeviation, SquaredOverdose, SquaredUnderdose
from objectives.robust import Robust
from optimizer import PlanProblem
from optimizer.errors import SolverError
from optimizer.solvers import first_order as fo

FX = 5
NT, NO, NB = 20, 20, 8  # target voxels, OAR voxels, beamlets
RX, OAR_SOFT = 50.0, 10.0  # Gy, total course


def _case(n_scen=4, seed=0):
    """T (20 voxels) and O (20 voxels), 8 beamlets; scenario s: the nominal matrix with every
    entry scaled by an independent factor in [0.75, 1.25] (an exaggerated range/setup error)."""
    return make_scenario_toy(2, 2, 10, NB, 0.7, (0.75, 1.25), n_scen, seed)  # NT = NO = 2 x 10


def _problem(patient, inf, terms):
    prob = PlanProblem(patient, inf, fractions=FX, max_voxels_per_structure=None)
    for t in terms:
        prob += t
    return prob


def _brute(mats, case, w=10.0, oar_max=None):
    """The robust problem by hand (every voxel volume 1/20): the robust term's worst case as
    cvxpy's own max / elementwise min-max, the other soft term nominal; hard OAR max in every
    scenario when given."""
    x = cp.Variable(NB, nonneg=True)
    dT = [FX * M[:NT] @ x for M in mats]
    dO = [FX * M[NT:] @ x for M in mats]
    under = [cp.sum(cp.square(cp.pos(RX - d))) / NT for d in dT]
    over = [cp.sum(cp.square(cp.pos(d - OAR_SOFT))) / NO for d in dO]
    if case == "composite":
        obj = w * cp.maximum(*under) + over[0]
    elif case == "voxelwise-lower":
        obj = w * cp.sum(cp.square(cp.pos(RX - cp.minimum(*dT)))) / NT + over[0]
    else:  # voxelwise-upper: the OAR's hottest scenario per voxel
        obj = w * under[0] + cp.sum(cp.square(cp.pos(cp.maximum(*dO) - OAR_SOFT))) / NO
    cons = [] if oar_max is None else [d <= oar_max for d in dO]
    prob = cp.Problem(cp.Minimize(obj), cons)
    prob.solve(solver="CLARABEL")
    return prob.value


def _terms(case, n, w=10.0):
    if case == "composite":
        return [Robust(SquaredUnderdose("T", RX, weight=w), "composite", scenarios=n),
                SquaredOverdose("O", OAR_SOFT, weight=1.0)]
    if case == "voxelwise-lower":
        return [Robust(SquaredUnderdose("T", RX, weight=w), "voxelwise", scenarios=n),
                SquaredOverdose("O", OAR_SOFT, weight=1.0)]
    return [SquaredUnderdose("T", RX, weight=w),
            Robust(SquaredOverdose("O", OAR_SOFT, weight=1.0), "voxelwise", scenarios=n)]


def _by_hand(mats, x, case, w=10.0):
    """The robust objective at weights x in NumPy (the same formulas as _brute)."""
    dT = np.array([FX * M[:NT] @ x for M in mats])
    dO = np.array([FX * M[NT:] @ x for M in mats])
    under = (np.maximum(RX - dT, 0) ** 2).sum(axis=1) / NT
    over = (np.maximum(dO - OAR_SOFT, 0) ** 2).sum(axis=1) / NO
    if case == "composite":
        return w * under.max() + over[0]
    if case == "voxelwise-lower":
        return w * (np.maximum(RX - dT.min(axis=0), 0) ** 2).sum() / NT + over[0]
    return w * under[0] + (np.maximum(dO.max(axis=0) - OAR_SOFT, 0) ** 2).sum() / NO


@pytest.mark.parametrize("case, inner", [("composite", "lbfgsb"), ("composite", "spg"),
                                         ("voxelwise-lower", "lbfgsb"), ("voxelwise-upper", "lbfgsb")])
def test_worst_cases_match_clarabel_and_a_hand_written_robust_problem(case, inner):
    patient, inf, mats = _case()
    ref = _brute(mats, case)
    clar = _problem(patient, inf, _terms(case, 4)).solve(solver="CLARABEL")
    plan = _problem(patient, inf, _terms(case, 4)).solve(solver="FIRST_ORDER", inner=inner)
    s = plan.solver
    assert s["name"] == "FIRST_ORDER" and s["status"] == "optimal" and "fallback" not in s
    assert s["rel_gap"] <= 1e-4 and s["kkt"] <= 1e-4 and s["max_violation"] <= 0.01
    assert s["aux_variables"] == (0 if case == "composite" else 20)  # composite: t minimised out
    assert s["objective"] == pytest.approx(clar.solver["objective"], rel=1e-3)
    assert s["objective"] == pytest.approx(ref, rel=1e-3)
    # the reported objective is the true worst case at the plan's weights (not the epigraph's t)
    assert s["objective"] == pytest.approx(_by_hand(mats, plan.weights, case), rel=1e-6)
    # ... so it is no better than the optimum, and the certified gap bounds how much worse
    assert s["objective"] >= ref * (1 - 1e-6)
    assert (s["objective"] - ref) / s["objective"] <= s["rel_gap"] + 1e-6


def test_mixed_problem_composite_hard_robust_and_nominal_terms():
    """Composite underdose of T, nominal overdose of O, and a hard robust OAR max (every
    scenario <= 14 Gy): the limit binds (the unconstrained optimum exceeds it) and holds in
    every scenario within 0.01 Gy."""
    patient, inf, mats = _case(n_scen=3, seed=2)
    oar_max = 14.0
    free = _brute(mats, "composite")
    ref = _brute(mats, "composite", oar_max=oar_max)
    assert ref > free * 1.01  # the hard limit matters

    def terms():
        return _terms("composite", 3) + [Robust(MaxDose("O", oar_max), scenarios=3)]

    clar = _problem(patient, inf, terms()).solve(solver="CLARABEL")
    plan = _problem(patient, inf, terms()).solve(solver="FIRST_ORDER")
    s = plan.solver
    assert s["status"] == "optimal" and s["rel_gap"] <= 1e-4 and s["max_violation"] <= 0.01
    assert s["objective"] == pytest.approx(clar.solver["objective"], rel=1e-3)
    assert s["objective"] == pytest.approx(ref, rel=1e-3)
    for M in mats:
        assert (FX * M[NT:] @ plan.weights).max() <= oar_max + 0.01
    assert [c["voxels_checked"] for c in s["hard_terms"]] == [NO]


def test_warm_start_after_a_weight_change():
    patient, inf, mats = _case(seed=1)
    prob = _problem(patient, inf, _terms("composite", 4))
    first = prob.solve(solver="FIRST_ORDER")
    prob.terms[0].weight.value = 12.0  # a weight sweep step
    warm = prob.solve(solver="FIRST_ORDER")
    cold = _problem(patient, inf, _terms("composite", 4, w=12.0)).solve(solver="FIRST_ORDER")
    assert not first.solver["warm_started"] and warm.solver["warm_started"]
    assert not cold.solver["warm_started"]
    ref = _brute(mats, "composite", w=12.0)
    assert warm.solver["objective"] == pytest.approx(ref, rel=1e-3)
    assert cold.solver["objective"] == pytest.approx(ref, rel=1e-3)
    assert warm.solver["iterations"] < cold.solver["iterations"]


def test_worst_cases_it_cannot_take_say_why_and_fall_back(monkeypatch):
    from optimizer import problem as problem_module

    patient, inf, mats = _case(n_scen=2)
    soft_max = Robust(MaxDose("O", 12.0, weight=1.0), "composite", scenarios=2)
    deviation = Robust(SquaredDeviation("T", RX, weight=1.0), "voxelwise", scenarios=2, side="lower")
    prob = _problem(patient, inf, [SquaredUnderdose("T", RX, weight=1.0), soft_max])
    (msg,) = fo.check_supported(prob)
    assert "MaxDose('O'" in msg and "not smooth" in msg and "composite" in msg
    with pytest.raises(SolverError, match="not smooth.*CLARABEL"):
        prob.solve(solver="FIRST_ORDER")
    (msg,) = fo.check_supported(_problem(patient, inf, [deviation]))
    assert "non-increasing" in msg and "SquaredDeviation('T'" in msg
    # the default path: first-order when every term is supported, CLARABEL otherwise
    monkeypatch.setattr(problem_module, "AUTO_FIRST_ORDER_NNZ", 0)
    assert prob.solve().solver["name"] == "CLARABEL"
    plan = _problem(patient, inf, _terms("composite", 2)).solve()
    assert plan.solver["name"] == "FIRST_ORDER" and "fallback" not in plan.solver
