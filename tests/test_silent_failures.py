"""Paths that used to return a wrong "optimal" plan or lose data without a word (issue 15).

Each test reproduces a reported failure and checks the fix against an independent reference
(the full-grid dose, a hand calculation or scipy's linprog)."""

import io
import json
import multiprocessing as mp
import os
import zipfile

import cvxpy as cp
import numpy as np
import pytest
from conftest import make_toy
from scipy.optimize import linprog

import objectives
from objectives import MaxDose, MeanDose, SquaredDeviation, SquaredOverdose
from objectives.errors import BioplanError
from objectives.terms import Term
from optimizer import Plan, PlanProblem, Structure, evaluate
from optimizer.errors import GeometryError, PlanError, SolverError


# -- stale state -------------------------------------------------------------------------------
def test_replaced_structure_is_used_by_the_next_solve():
    patient, inf, A = make_toy(n_oar=6)
    problem = PlanProblem(patient, inf, fractions=5)
    problem += SquaredDeviation("T", 20.0, weight=1.0)
    problem += MaxDose("O", 6.0)
    problem.solve()
    # a new OAR: the first half of the target row (a hard max of 2 Gy there)
    m2 = np.zeros(patient.grid.shape, bool)
    m2[0, 0, :3] = True
    patient.add_structure(Structure("O", m2, "oar"), replace=True)
    problem.terms[1].dose_Gy.value = 2.0
    plan = problem.solve()
    assert plan.structure_dose("O").max() <= 2.0 + 1e-3
    assert plan.solver["hard_terms"][0]["voxels_checked"] == 3


def test_changing_fractions_rebuilds_the_scaling():
    patient, inf, A = make_toy()
    problem = PlanProblem(patient, inf, fractions=5)
    problem += SquaredDeviation("T", 20.0, weight=1.0)
    problem += MaxDose("O", 6.0)
    problem.solve()
    problem.fractions = 10
    plan = problem.solve()
    assert plan.fractions == 10
    assert plan.structure_dose("O").max() <= 6.0 + 1e-3
    expected = 10 * (inf.matrix @ plan.weights)
    np.testing.assert_allclose(plan.dose.ravel()[inf.voxel_index], expected, rtol=1e-9)
    with pytest.raises(PlanError, match="fractions"):
        problem.fractions = 0


def test_structures_do_not_share_the_callers_mask():
    patient, _, _ = make_toy()
    m = patient.structure("T").mask.copy()
    a, b = Structure("A", m, "oar"), Structure("B", m, "oar")
    m[0, 0, 0] = not m[0, 0, 0]
    assert a.mask[0, 0, 0] != m[0, 0, 0] and b.mask[0, 0, 0] != m[0, 0, 0]
    with pytest.raises(ValueError):
        a.mask[0, 0, 1] = True  # read-only: change a structure by assigning a new mask
    ct = np.zeros(patient.grid.shape)
    patient.ct_hu = ct
    ct[0, 0, 0] = 1000
    assert patient.ct_hu[0, 0, 0] == 0


def test_mask_reassignment_invalidates_the_problem():
    patient, inf, A = make_toy()
    problem = PlanProblem(patient, inf, fractions=5)
    problem += SquaredDeviation("T", 20.0, weight=1.0)
    problem += MaxDose("O", 2.0)
    problem.solve()
    m2 = np.zeros(patient.grid.shape, bool)
    m2[0, 0, 4:] = True
    patient.structure("O").mask = m2
    plan = problem.solve()
    assert plan.dose[m2].max() <= 2.0 + 1e-3


# -- hard terms on sampled helpers ----------------------------------------------------------------
@pytest.fixture(scope="module")
def cshape():
    from optimizer import PhotonBeams, phantoms

    patient = phantoms.tg119_cshape(spacing_mm=6.0)
    phantoms.add_cshape_helper_structures(patient)
    inf = PhotonBeams([0, 120, 240], beamlet_mm=10.0).influence(patient, target="PTV")
    return patient, inf


#: sampling of helper structures is CLARABEL's (the first-order solver optimizes every voxel)
SAMPLED = "CLARABEL"


def test_hard_max_on_a_sampled_helper_holds_on_the_full_grid(cshape):
    patient, inf = cshape
    # reference: the same problem without the hard limit puts the Tissue maximum well above it
    free = PlanProblem(patient, inf, fractions=25, max_voxels_per_structure=300)
    free += SquaredDeviation("PTV", 50.0, weight=1.0)
    free_max = free.solve(solver=SAMPLED).structure_dose("Tissue").max()
    limit = 0.7 * free_max
    problem = PlanProblem(patient, inf, fractions=25, max_voxels_per_structure=300)
    problem += SquaredDeviation("PTV", 50.0, weight=1.0)
    problem += MaxDose("Tissue", limit)
    plan = problem.solve(solver=SAMPLED)
    full_max = plan.structure_dose("Tissue").max()
    assert full_max <= limit + 1e-3, (full_max, limit)
    rounds = plan.solver["rounds"]
    assert len(rounds) >= 2 and sum(rounds[0]["added_voxels"].values()) > 0
    check = plan.solver["hard_terms"][0]
    assert check["voxels_checked"] == patient.structure("Tissue").n_voxels
    assert check["max_violation"] == pytest.approx(max(full_max - limit, 0.0), abs=1e-6)


def test_aggregate_hard_term_on_a_sampled_helper_is_optimized_unsampled(cshape):
    patient, inf = cshape
    problem = PlanProblem(patient, inf, fractions=25, max_voxels_per_structure=300)
    problem += SquaredDeviation("PTV", 50.0, weight=1.0)
    free_mean = problem.solve(solver=SAMPLED).structure_dose("Tissue").mean()
    problem += MeanDose("Tissue", 0.8 * free_mean)
    plan = problem.solve(solver=SAMPLED)
    assert plan.structure_dose("Tissue").mean() <= 0.8 * free_mean + 1e-3
    assert problem.voxel_set("Tissue").n_total == len(problem.voxel_set("Tissue").voxel_index)


# -- goals -------------------------------------------------------------------------------------
def _plan_with_dose(patient, inf, dose, solver=None):
    return Plan(patient, np.ones(inf.n_beamlets), 5, dose, dict(inf.beamlets), list(inf.beams),
                "photon", solver or {})


def test_goal_met_to_round_off_is_met_and_tolerance_printed():
    patient, inf, _ = make_toy()
    dose = np.where(patient.structure("T").mask, 49.9999996, 0.0)
    plan = _plan_with_dose(patient, inf, dose)
    res = evaluate.evaluate_goals(plan, [("T", "D95", ">=", 50.0)])
    assert res[0].met
    table = evaluate.goal_table(plan, [("T", "D95", ">=", 50.0)])
    assert "yes" in table and "1e-06" in table
    # a real miss is still a miss, and the solver's certified tolerance is used when present
    dose2 = np.where(patient.structure("T").mask, 49.99, 0.0)
    missed = evaluate.evaluate_goals(_plan_with_dose(patient, inf, dose2), [("T", "D95", ">=", 50.0)])
    assert not missed[0].met
    plan3 = _plan_with_dose(patient, inf, dose2, {"hard_tolerance": 0.02})
    assert evaluate.evaluate_goals(plan3, [("T", "D95", ">=", 50.0)])[0].met


# -- custom terms and scaling -------------------------------------------------------------------
class _Reward(Term):
    """Soft: minus the mean dose (rewards dose; its cost is negative)."""

    soft_only = True

    def violation(self, dose, ctx):
        return -(ctx.volumes @ dose)

    def cost(self, dose, ctx):
        return -(ctx.volumes @ dose)


def test_negative_soft_cost_is_minimised_exactly():
    patient, inf, A = make_toy()
    problem = PlanProblem(patient, inf, fractions=1)
    problem += _Reward("T", weight=1.0)
    problem += MaxDose("O", 3.0)
    problem += MaxDose("T", 10.0)
    plan = problem.solve()
    t = np.flatnonzero(patient.structure("T").mask.ravel())
    o = np.flatnonzero(patient.structure("O").mask.ravel())
    ref = linprog(-A[t].mean(axis=0), A_ub=np.vstack([A[o], A[t]]),
                  b_ub=np.r_[np.full(len(o), 3.0), np.full(len(t), 10.0)], bounds=(0, None))
    assert ref.status == 0
    assert plan.solver["objective"] == pytest.approx(ref.fun, rel=1e-5)
    assert plan.solver["objective"] < 0


def test_badly_scaled_weights_are_reported_as_scaling():
    patient, inf, _ = make_toy()
    problem = PlanProblem(patient, inf, fractions=5)
    problem += SquaredDeviation("T", 20.0, weight=1e12)
    problem += SquaredOverdose("O", 0.0, weight=1e-6)
    try:
        plan = problem.solve()
    except SolverError as exc:
        assert "badly scaled" in str(exc) and "unbounded" not in str(exc)
    else:  # a solver that copes must still return a certified plan
        assert plan.solver["status"] == "optimal"


# -- types ------------------------------------------------------------------------------------
def test_wrong_types_get_named_errors():
    patient, inf, _ = make_toy()
    with pytest.raises(PlanError, match="fractions"):
        PlanProblem(patient, inf, fractions="5")
    with pytest.raises(PlanError, match="max_voxels_per_structure"):
        PlanProblem(patient, inf, fractions=5, max_voxels_per_structure="all")
    problem = PlanProblem(patient, inf, fractions=5)
    problem += SquaredDeviation("T", 20.0, weight=1.0)
    with pytest.raises(PlanError, match="solver"):
        problem.solve(solver=123)
    with pytest.raises(GeometryError, match="mask"):
        Structure("X", "not a mask", "oar")


# -- plan archives ----------------------------------------------------------------------------
@pytest.fixture
def solved_plan():
    patient, inf, _ = make_toy()
    problem = PlanProblem(patient, inf, fractions=5)
    problem += SquaredDeviation("T", 20.0, weight=1.0)
    return problem.solve()


def _save_worker(args):
    path, seed = args
    patient, inf, _ = make_toy(seed=seed)
    plan = Plan(patient, np.full(inf.n_beamlets, float(seed)), 5, np.zeros(patient.grid.shape),
                dict(inf.beamlets), list(inf.beams), "photon", {})
    try:
        plan.save(path)
        return "ok"
    except FileExistsError:
        return "exists"


def test_concurrent_saves_exactly_one_wins(tmp_path):
    ctx = mp.get_context("spawn" if os.name == "nt" else "fork")
    for k in range(4):
        path = str(tmp_path / f"race{k}.plan")
        with ctx.Pool(2) as pool:
            results = pool.map(_save_worker, [(path, 1), (path, 2)])
        assert sorted(results) == ["exists", "ok"]
        Plan.load(path)  # never corrupt
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_save_never_follows_links(tmp_path, solved_plan):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    path = tmp_path / "x.plan"
    os.symlink(victim, str(path) + ".tmp")  # the old fixed temporary name
    solved_plan.save(path)
    assert victim.read_text() == "keep me"
    link = tmp_path / "link.plan"
    os.symlink(victim, link)
    with pytest.raises(FileExistsError):
        solved_plan.save(link)
    solved_plan.save(link, overwrite=True)
    assert victim.read_text() == "keep me" and not os.path.islink(link)
    Plan.load(link)


def _repack(src, dst, meta_edit=None, array_edit=None):
    with zipfile.ZipFile(src) as zf:
        meta = json.loads(zf.read("plan.json"))
        npz = np.load(io.BytesIO(zf.read("arrays.npz")))
        arrays = {k: npz[k] for k in npz.files}
    if meta_edit:
        meta_edit(meta)
    if array_edit:
        array_edit(arrays)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr("plan.json", json.dumps(meta))
        zf.writestr("arrays.npz", buf.getvalue())
    return dst


@pytest.mark.parametrize("edit, match", [
    (dict(array_edit=lambda a: a.update(dose=np.zeros((2, 2, 2)))), "dose: shape"),
    (dict(array_edit=lambda a: a["dose"].__setitem__((0, 0, 0), np.nan)), "dose: contains NaN"),
    (dict(array_edit=lambda a: a.update(weights=np.ones(3))), "shape"),
    (dict(meta_edit=lambda m: m.update(fractions=-3)), "fractions"),
    (dict(meta_edit=lambda m: m.update(fractions="5")), "fractions"),
    (dict(array_edit=lambda a: a.update(weights=-a["weights"] - 1)), "negative"),
    (dict(meta_edit=lambda m: m["grid"].update(shape=[1, 2, "6"])), "grid"),
])
def test_load_refuses_inconsistent_archives(tmp_path, solved_plan, edit, match):
    src = solved_plan.save(tmp_path / "good.plan")
    bad = _repack(src, tmp_path / "bad.plan", **edit)
    with pytest.raises(PlanError, match=match):
        Plan.load(bad)


def test_load_refuses_a_decompression_bomb(tmp_path, solved_plan):
    src = solved_plan.save(tmp_path / "good.plan")

    def huge_grid(m):  # the grid claims 4 GB of float64 dose; the arrays stay small
        m["grid"]["shape"] = [500, 1000, 1000]

    bad = _repack(src, tmp_path / "bomb.plan", huge_grid)
    with pytest.raises(PlanError, match="shape"):
        Plan.load(bad)
    # a consistent but enormous archive is refused from the headers alone
    grid_shape = (200, 200, 200)

    def big_meta(m):
        m["grid"]["shape"] = list(grid_shape)
        m["structures"] = []

    def big_arrays(a):
        a["dose"] = np.zeros(grid_shape)
        a["ct_hu"] = np.zeros(grid_shape, np.float32)
        for k in [k for k in a if k.startswith("mask_")]:
            del a[k]

    big = _repack(src, tmp_path / "big.plan", big_meta, big_arrays)
    assert os.path.getsize(big) < 2**20
    with pytest.raises(PlanError, match="max_mb"):
        Plan.load(big, max_mb=50)


def test_round_trip_still_exact(tmp_path, solved_plan):
    path = solved_plan.save(tmp_path / "p.plan")
    back = Plan.load(path)
    np.testing.assert_array_equal(back.dose, solved_plan.dose)
    np.testing.assert_array_equal(back.weights, solved_plan.weights)
    assert back.solver["hard_tolerance"] == solved_plan.solver["hard_tolerance"]
    assert isinstance(PlanError("x"), BioplanError) and cp.installed_solvers()


def test_an_influence_a_problem_took_is_frozen():
    """A problem's solvers keep a model built from the influence arrays: an in-place edit after a
    solve (``inf.matrix.data *= 1.5``) reached the plan's dose but not CLARABEL's cached model,
    which re-solved 'optimal' with the OAR 10 Gy over its hard max. The influence's arrays are
    now read-only, and a re-solve gives the same plan."""
    from optimizer import InfluenceMatrix

    patient, inf, _ = make_toy(n_target=8, n_oar=8, n_beamlets=5)
    problem = PlanProblem(patient, inf, fractions=10)
    problem += SquaredDeviation("T", 60.0, weight=100.0)
    problem += MaxDose("O", 20.0)
    first = problem.solve(solver="CLARABEL")
    for arr in (inf.matrix.data, inf.matrix.indices, inf.matrix.indptr, inf.voxel_index, inf.beamlets["col"]):
        with pytest.raises(ValueError, match="read-only"):
            arr *= 2
    again = problem.solve(solver="CLARABEL")
    np.testing.assert_allclose(again.dose, first.dose, atol=1e-6)
    # a changed influence goes into a new problem, from a copy
    scaled = InfluenceMatrix(inf.matrix * 1.5, inf.voxel_index, inf.grid, dict(inf.beamlets), inf.beams)
    other = PlanProblem(patient, scaled, fractions=10)
    for term in problem.terms:
        other += term
    assert other.solve(solver="CLARABEL").dose[patient.structure("O").mask].max() <= 20.0 + 1e-3


@pytest.mark.parametrize("make, field", [
    (lambda: MaxDose("T", True), "MaxDose.dose_Gy"),
    (lambda: MaxDose("T", "30"), "MaxDose.dose_Gy"),
    (lambda: MaxDose("T", 30.0, weight=True), "weight"),
    (lambda: objectives.DVHMax("T", 30.0, volume_pct=True), "DVHMax.volume_pct"),
    (lambda: objectives.GEUDMax("T", 30.0, a=True), "GEUDMax.a"),
    (lambda: objectives.FluenceSmoothness(weight="1"), "weight"),
])
def test_booleans_and_strings_are_not_limits(make, field):
    """MaxDose('T', True) was a 1 Gy limit, MaxDose('T', '30') a 30 Gy one, GEUDMax(a=True) a
    mean: each is now refused naming the field."""
    with pytest.raises(BioplanError, match=field.replace(".", r"\.") + ": expected"):
        make()


@pytest.mark.parametrize("attr, value", [("limit", np.inf), ("weight", np.inf)])
def test_a_limit_or_weight_set_to_a_non_finite_value_is_refused_at_solve(attr, value):
    """``term.limit.value = inf`` passed cvxpy's sign check and removed the limit: the plan came
    back 'optimal' with the OAR above what the user had asked for. solve() now refuses it."""
    patient, inf, _ = make_toy()
    problem = PlanProblem(patient, inf, fractions=10)
    problem += SquaredDeviation("T", 60.0, weight=1.0)
    term = MaxDose("O", 20.0, weight=None if attr == "limit" else 1.0)
    problem += term
    getattr(term, attr).value = value
    for solver in ("CLARABEL", "FIRST_ORDER"):
        with pytest.raises(BioplanError, match=rf"MaxDose\('O'\)\.{attr}: expected a finite value"):
            problem.solve(solver=solver)
