"""The damped Newton inner solver of the first-order solver (:mod:`optimizer.solvers.newton_lm`):
its bound-constrained quadratic step against cvxpy, and certified proton plans against CLARABEL."""

import cvxpy as cp
import numpy as np
import pytest
from conftest import make_scenario_toy

from objectives import DVHMax, SquaredOverdose, SquaredUnderdose
from objectives.robust import Robust
from optimizer import PlanProblem, ProtonBeams, SolverError, phantoms
from optimizer.solvers.newton_lm import box_qp


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_qp_equals_the_quadratic_program_solved_by_cvxpy(seed):
    rng = np.random.default_rng(seed)
    n = 30
    R = rng.standard_normal((2 * n, n))
    B = R.T @ R + 1e-2 * np.eye(n)
    g = rng.standard_normal(n) * 5
    x = np.where(rng.random(n) < 0.4, 0.0, rng.random(n))  # some weights at the bound
    d, q = box_qp(B, g, x, iterations=100)
    v = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(g @ v + 0.5 * cp.quad_form(v, cp.psd_wrap(B))), [x + v >= 0])
    prob.solve(solver="CLARABEL")
    assert np.all(x + d >= -1e-12)
    assert q == pytest.approx(prob.value, rel=1e-7, abs=1e-9)
    np.testing.assert_allclose(d, v.value, atol=1e-5 * max(1.0, np.abs(v.value).max()))


def _proton_problem():
    patient = phantoms.tg119_cshape(spacing_mm=12.0)
    phantoms.add_cshape_helper_structures(patient)
    inf = ProtonBeams((90.0, 270.0), spot_spacing_mm=8.0, margin_mm=3.0).influence(patient, target="PTV")
    problem = PlanProblem(patient, inf, fractions=phantoms.TG119_CSHAPE_FRACTIONS,
                          max_voxels_per_structure=None)
    for term in phantoms.cshape_planning_terms():
        problem += term
    problem += DVHMax("Core", 24.0, volume_pct=10)
    return problem


def test_newton_inner_certifies_the_clarabel_optimum_of_a_proton_plan():
    problem = _proton_problem()
    ref = problem.solve(solver="CLARABEL").solver
    newton = problem.solve(solver="FIRST_ORDER", inner="newton", warm_start=False).solver
    assert newton["status"] == "optimal" and newton["inner"] == "newton"
    assert newton["max_violation"] <= 0.01 and newton["rel_gap"] <= 1e-4 and newton["kkt"] <= 1e-4
    assert newton["objective"] == pytest.approx(ref["objective"], rel=1e-3)


def test_proton_spots_take_the_newton_inner_solver_by_default_and_photons_lbfgsb(toy):
    """inner="auto": Newton for spot problems (the beamlet table has finite energies), where
    L-BFGS-B with the exact gap did not certify the C-shape 8 mm in 40 rounds; L-BFGS-B for
    photon beamlets (the toy's table has no energies)."""
    problem = _proton_problem()
    assert problem.solve(solver="FIRST_ORDER", warm_start=False).solver["inner"] == "newton"
    patient, inf = toy[0], toy[1]
    photons = PlanProblem(patient, inf, fractions=5, max_voxels_per_structure=None)
    photons += SquaredOverdose("O", 0.0, weight=1.0)
    photons += SquaredUnderdose("T", 20.0, weight=1.0)
    assert photons.solve(solver="FIRST_ORDER").solver["inner"] == "lbfgsb"


def test_newton_inner_refuses_voxelwise_robust_worst_cases():
    patient, inf, _ = make_scenario_toy(2, 2, 10, 8, 0.7, (0.75, 1.25), 3, 0)
    problem = PlanProblem(patient, inf, fractions=10, max_voxels_per_structure=None)
    # a voxelwise worst case: per-voxel epigraph variables
    problem += Robust(SquaredUnderdose("T", 50.0, weight=10.0), "voxelwise", scenarios=3)
    problem += SquaredOverdose("O", 10.0, weight=1.0)
    with pytest.raises(SolverError, match="inner='newton'.*robust"):
        problem.solve(solver="FIRST_ORDER", inner="newton")
