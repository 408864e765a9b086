"""The first-order solver's working set (optimizer.solvers.working_set): which rows it keeps
(checked against the terms' thresholds by hand), that the restricted objective equals the full
one while the frozen rows stay inactive, that it notices when they do not, and that solves
with and without it agree."""

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import make_toy

from objectives import DVHMin, MaxDose, SquaredDeviation, SquaredOverdose
from optimizer import InfluenceMatrix, PlanProblem
from optimizer.solvers import first_order as fo
from optimizer.solvers.working_set import PROBE, WorkingSet

THRESHOLD = 6.0  # Gy, the OAR overdose threshold: part of the OAR lies well below it


@pytest.fixture(scope="module")
def graded():
    """The toy patient with an OAR whose influence rises along the row (0.05 ... 1 times the
    toy's), so its dose spans far below to above the overdose threshold."""
    patient, inf, A = make_toy(n_target=30, n_oar=30, n_beamlets=12, seed=5)
    o = np.flatnonzero(patient.structure("O").mask.ravel())
    A = A.copy()
    A[o] *= np.linspace(0.05, 1.0, len(o))[:, None]
    rows = np.flatnonzero(A.any(axis=1))
    graded_inf = InfluenceMatrix(sp.csr_matrix(A[rows]), rows, inf.grid, inf.beamlets, inf.beams)
    return patient, graded_inf, A


def _problem(patient, inf, fractions=5):
    problem = PlanProblem(patient, inf, fractions=fractions, max_voxels_per_structure=None)
    problem += SquaredDeviation("T", 20.0, weight=1.0)
    problem += SquaredOverdose("O", THRESHOLD, weight=1.0)
    problem += MaxDose("O", 12.0)
    problem += DVHMin("T", 19.0, volume_pct=90)
    return problem


def test_rows_kept_are_those_a_term_can_act_on(graded):
    patient, inf, A = graded
    problem = _problem(patient, inf)
    model = fo.build_model(problem)
    try:
        hard = [t for t in model.terms if t.hard]
        lam = [{k: np.zeros(fo._block_size(model, t, k)) for k in t.blocks} for t in hard]
        rho = [1.0 for _ in hard]
        f = fo._Objective(model, lam, rho)
        x = np.full(inf.n_beamlets, 0.4)
        ws = WorkingSet.build(model, f, x)
        # by hand: the OAR rows whose total dose reaches the threshold when scaled up by
        # 1 + PROBE, and every target row (the squared deviation acts everywhere)
        dose = problem.fractions * (A @ x)
        o = np.flatnonzero(patient.structure("O").mask.ravel())
        t = np.flatnonzero(patient.structure("T").mask.ravel())
        expect = set(t) | set(o[dose[o] * (1 + PROBE) > THRESHOLD])
        assert 0 < len(set(o) - expect) < len(o)  # the case is a real test: some frozen, some not
        (rows, op, stale), = [p for p in ws.parts if p is not None]
        kept = set(inf.voxel_index[rows])
        assert kept == expect
        assert ws.share == pytest.approx(op.nnz / model.nnz)

        # while the frozen rows stay below the threshold, the restricted objective is the full one
        z = x * 1.05
        model.working = None
        v_full, g_full = f(z)
        model.working = ws
        v_ws, g_ws = f(z)
        assert v_ws == pytest.approx(v_full, rel=1e-12)
        np.testing.assert_allclose(g_ws, g_full, rtol=1e-10, atol=1e-12)
        assert not ws.invalid(model, f, fo._forms_at(model, z), z)
        # push every frozen row over the threshold: the set must say it is out of date
        z = x * 20.0
        assert ws.invalid(model, f, fo._forms_at(model, z), z)
    finally:
        model.working = None
        model.close()


def test_solves_with_and_without_the_working_set_agree(graded):
    patient, inf, _ = graded
    ref = _problem(patient, inf).solve(solver="CLARABEL")
    on = _problem(patient, inf).solve(solver="FIRST_ORDER")
    off = _problem(patient, inf).solve(solver="FIRST_ORDER", working_set=False)
    # float32 storage: the working set's rows are multiplied in place by the kernels
    in_place = _problem(patient, inf).solve(solver="FIRST_ORDER", matrix_dtype="float32")
    for plan in (on, off, in_place):
        s = plan.solver
        assert s["status"] == "optimal" and s["max_violation"] <= 0.01 and s["rel_gap"] <= 1e-4
        assert s["objective"] == pytest.approx(ref.solver["objective"], rel=1e-3)
        assert plan.structure_dose("O").max() <= 12.0 + 0.01
    assert on.solver["working_set_share"] and min(on.solver["working_set_share"]) < 1.0
    assert off.solver["working_set_share"] == []
    assert min(in_place.solver["working_set_share"]) < 1.0
