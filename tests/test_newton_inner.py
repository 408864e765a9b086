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


@pytest.mark.parametrize("schur", [0.0, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_qp_equals_the_quadratic_program_solved_by_cvxpy(seed, schur, monkeypatch):
    """Both ways of an active-set iteration: a factorisation of the free block (schur 0) and the
    whole B's factor with a Schur complement on the variables fixed at their bound (1)."""
    from optimizer.solvers import newton_lm

    monkeypatch.setattr(newton_lm, "SCHUR_SHARE", schur)
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


def test_spot_plans_with_robust_worst_cases_take_lbfgsb_by_default(monkeypatch):
    """inner="auto": a spot plan with a composite robust worst case (an epigraph term) goes to
    L-BFGS-B with the float64 copy (the robust proton example: 91 s against no certificate in
    540 s with Newton); the same spots without it to Newton with float32 storage."""
    from optimizer.solvers import first_order as fo

    patient, inf, _ = make_scenario_toy(2, 2, 10, 8, 0.7, (0.75, 1.25), 2, 0)
    monkeypatch.setattr(fo, "_has_spots", lambda influence: True)  # the toy's table has no energies
    robust = PlanProblem(patient, inf, fractions=10, max_voxels_per_structure=None)
    robust += Robust(SquaredUnderdose("T", 50.0, weight=10.0), "composite", scenarios=2)
    robust += SquaredOverdose("O", 10.0, weight=1.0)
    s = robust.solve(solver="FIRST_ORDER").solver
    assert s["inner"] == "lbfgsb" and s["matrix_dtype"] == "float64" and s["status"] == "optimal"
    nominal = PlanProblem(patient, inf, fractions=10, max_voxels_per_structure=None)
    nominal += SquaredUnderdose("T", 50.0, weight=10.0)
    nominal += SquaredOverdose("O", 10.0, weight=1.0)
    s = nominal.solve(solver="FIRST_ORDER").solver
    assert s["inner"] == "newton" and s["matrix_dtype"] == "float32" and s["status"] == "optimal"


def test_newton_inner_refuses_voxelwise_robust_worst_cases():
    patient, inf, _ = make_scenario_toy(2, 2, 10, 8, 0.7, (0.75, 1.25), 3, 0)
    problem = PlanProblem(patient, inf, fractions=10, max_voxels_per_structure=None)
    # a voxelwise worst case: per-voxel epigraph variables
    problem += Robust(SquaredUnderdose("T", 50.0, weight=10.0), "voxelwise", scenarios=3)
    problem += SquaredOverdose("O", 10.0, weight=1.0)
    with pytest.raises(SolverError, match="inner='newton'.*robust"):
        problem.solve(solver="FIRST_ORDER", inner="newton")


def test_the_gram_matrix_kept_across_steps_equals_the_one_built_anew():
    """Gram.on updates K_S^T D K_S by the rows whose curvature changed, ignores changes at the
    rounding level, adds a few new candidates as columns and rebuilds for many: each result
    equals K_C^T D K_C computed densely from the operators."""
    from optimizer.solvers import first_order as fo
    from optimizer.solvers.newton_lm import Gram

    model = fo.build_model(_proton_problem())
    try:
        rng = np.random.default_rng(3)
        K = [op.factor * op.M.toarray().astype(float) for op in model.operators]
        n = model.n_beamlets
        curv = [np.where(rng.random(b.size) < 0.5, rng.random(b.size), 0.0) for b in model.block_rows]

        def dense(curv, C):
            d = fo.Model.unstack(model, curv)
            return sum((Ki[:, C] * di[:-1, None]).T @ Ki[:, C] for Ki, di in zip(K, d))

        gram = Gram()
        C0 = np.sort(rng.choice(n, n // 2, replace=False))
        np.testing.assert_allclose(gram.on(model, curv, C0), dense(curv, C0), rtol=1e-10, atol=1e-12)
        for step in range(3):  # some rows change, others move at the rounding level only
            curv = [c * np.where(rng.random(c.size) < 0.1, rng.random(c.size) * 2, 1 + 1e-12) for c in curv]
            C = C0[rng.random(len(C0)) < 0.9]
            H = gram.on(model, curv, C)
            assert gram.rebuilds == 1 and gram.updates == step + 1
            ref = dense(curv, C)
            np.testing.assert_allclose(H, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())
        # a few new candidates: added as columns (at the curvature H holds), then updated
        C = np.union1d(C, np.setdiff1d(np.arange(n), C0)[:3])
        curv = [c * np.where(rng.random(c.size) < 0.1, 0.5, 1.0) for c in curv]
        ref = dense(curv, C)
        np.testing.assert_allclose(gram.on(model, curv, C), ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())
        assert gram.rebuilds == 1 and gram.extensions == 1
        # many candidates outside the kept set: a rebuild
        C = np.union1d(C0[:10], np.setdiff1d(np.arange(n), C0)[:5])
        ref = dense(curv, C)
        np.testing.assert_allclose(gram.on(model, curv, C), ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
        assert gram.rebuilds == 2 and gram.updates == 0
    finally:
        model.close()


@pytest.mark.parametrize("scale", [0.235, 0.6])
def test_the_newton_model_is_the_hessian_of_the_augmented_lagrangian(scale):
    """The Newton step's H (probed soft rows, the CVaR limits' exact curvature, the kept Gram
    matrix) times a direction equals the change of the gradient of the augmented Lagrangian
    along it (central differences; it is piecewise quadratic). Weights 0.235 x the initial
    guess leave 4 target voxels under the D95 limit's threshold and others capped below it: its
    projection couples them, and the diagonal probe alone is off by ~20 %; at 0.6 the limits'
    projections are clips (diagonal)."""
    from optimizer.solvers import first_order as fo
    from optimizer.solvers import newton_lm as nl

    model = fo.build_model(_proton_problem())
    try:
        hard = [t for t in model.terms if t.hard]
        lam = [{k: np.zeros(fo._block_size(model, t, k)) for k in t.blocks} for t in hard]
        f = fo._Objective(model, lam, [1e3] * len(hard))
        n = model.n_beamlets
        x = fo._initial_guess(model, np.zeros(n)) * scale
        blocks = fo._forms_at(model, x)
        v = np.random.default_rng(1).standard_normal(n)
        h = 1e-7 * np.abs(x).max() / np.abs(v).max()
        numeric = (f(x + h * v)[1] - f(x - h * v)[1]) / (2 * h)

        coupled = len(nl.coupled_curvature(model, f, blocks, x)[2])
        assert coupled == (1 if scale < 0.5 else 0)
        H = nl.newton_hessian(model, f, blocks, x, np.arange(n), np.random.default_rng(0), nl.Gram())
        np.testing.assert_allclose(H @ v, numeric, rtol=1e-5, atol=1e-6 * np.abs(numeric).max())
        # the diagonal probe alone (all hard terms probed, no coupling)
        curv, curv_x = nl.row_curvature(model, f, blocks, x, np.random.default_rng(0))
        probe = nl.Gram().on(model, curv, np.arange(n)) + np.diag(curv_x)
        probed = np.abs(probe @ v - numeric).max() / np.abs(numeric).max()
        assert probed > 0.05 if coupled else probed < 1e-6
    finally:
        model.close()
