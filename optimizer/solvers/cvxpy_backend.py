"""The cvxpy back end of :class:`optimizer.PlanProblem`: solve with any installed conic / QP
solver, constraint generation for hard terms on sampled helper structures, the full-grid check
of every hard term, scaling diagnosis and the infeasibility diagnosis by an elastic re-solve."""

from __future__ import annotations

import importlib.metadata
import time

import cvxpy as cp
import numpy as np

from objectives.errors import TermError
from objectives.terms import Term, TermContext

from ..errors import InfeasiblePlanError, SolverError

#: Soft-term weights spanning more than this ratio are reported as a scaling problem when a
#: solve fails (interior-point tolerances are relative: ~1e-8).
WEIGHT_RATIO_LIMIT = 1e8


def solve(problem, name: str, verbose: bool, max_rounds: int, solver_options: dict):
    """The cvxpy path of :meth:`PlanProblem.solve` (constraint generation on sampled helpers)."""
    from ..plan import Plan

    rounds, wall_total, solve_total, iters = [], 0.0, 0.0, 0
    for r in range(1, max_rounds + 1):
        cvx, wall, retried = _solve_once(problem, name, verbose, solver_options)
        wall_total += wall
        stats = cvx.solver_stats
        solve_total += wall if retried or stats.solve_time is None else stats.solve_time
        iters += stats.num_iters or 0
        weights = np.maximum(np.asarray(problem._x.value, dtype=float), 0.0)
        checks, added = _full_grid_check(problem, weights)
        rounds.append({"round": r, "wall_s": wall, "objective": float(cvx.value),
                       "added_voxels": {k: int(len(v)) for k, v in added.items()}})
        if retried:
            rounds[-1]["retried"] = retried
        if not added:
            break
        for key, idx in added.items():
            problem._generated[key] = np.union1d(problem._generated.get(key, np.array([], np.int64)), idx)
            problem._sets.pop((key, "hard"), None)
        problem._problem = None
    else:
        worst = max(c["max_violation"] for c in checks)
        raise SolverError(f"constraint generation: hard terms on sampled structures still violated "
                          f"after {max_rounds} rounds (worst {worst:.3g}); raise max_rounds or "
                          f"max_voxels_per_structure")
    bad = [c for c in checks if c["max_violation"] > problem.hard_tolerance]
    if bad:
        raise SolverError(
            f"solver {name} reported '{cvx.status}' but hard terms are violated on the full grid "
            f"beyond hard_tolerance={problem.hard_tolerance:g}: "
            + "; ".join(f"{c['term']} by {c['max_violation']:.3g}" for c in bad)
            + "; try another solver or tighter solver tolerances")
    info = {
        "name": name,
        "status": cvx.status,
        "objective": float(cvx.value),
        "iterations": iters,
        "build_s": problem.build_time_s,
        "compile_s": max(wall_total - solve_total, 0.0),
        "solve_s": float(solve_total),
        "wall_s": wall_total,
        "versions": _versions(name),
        "opt_voxels": problem.n_opt_voxels,
        "certificate": _certificate(name, solver_options),
        "hard_tolerance": problem.hard_tolerance,
        "hard_terms": checks,
        "rounds": rounds,
        "terms": [repr(t) for t in problem.terms],
    }
    return Plan.from_weights(problem.patient, problem.influence, weights, problem.fractions, info)


#: CLARABEL options of the one retry after 'optimal_inaccurate' (its AlmostSolved: the reduced
#: tolerances met, the full ones not): 10x its default static regularization of the KKT matrix
#: (1e-8). The CT-size proton C-shape (sampled, 4977 voxels) stalled at iteration 30 with the
#: defaults and solved in 32 with it, objective 95.85696 either way (tighter iterative refinement
#: alone stalled too)
CLARABEL_RETRY = {"static_regularization_constant": 1e-7}


def _solve_once(problem, name: str, verbose: bool, solver_options: dict):
    """One cvxpy solve: (problem, wall seconds, the retry's note or "")."""
    cvx = problem.build()
    for term, ctx in zip(problem.terms, problem._contexts):
        term.refresh(ctx)
    t0 = time.perf_counter()
    retried = ""
    try:
        cvx.solve(solver=name, verbose=verbose, **solver_options)
        if (name == "CLARABEL" and cvx.status == cp.OPTIMAL_INACCURATE
                and not any(k in solver_options for k in CLARABEL_RETRY)):
            cvx.solve(solver=name, verbose=verbose, **{**solver_options, **CLARABEL_RETRY})
            retried = f"'optimal_inaccurate' with the defaults; solved again with {CLARABEL_RETRY}"
    except cp.error.SolverError as exc:
        # numerical failure is often an infeasible hard set in disguise: check with the
        # elastic problem before reporting a generic failure
        culprits = _violated_hard_terms(problem, name)
        if culprits:
            raise InfeasiblePlanError(
                f"solver {name} failed ({exc}); the hard constraints cannot all hold; in conflict: "
                + "; ".join(culprits), culprits) from exc
        raise SolverError(f"solver {name} failed: {exc}{_scaling_note(problem)}") from exc
    wall = time.perf_counter() - t0
    status = cvx.status
    scaling = _scaling_note(problem)
    if scaling and status != cp.OPTIMAL:
        raise SolverError(f"solver {name}: status '{status}'{scaling}")
    if status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
        if not problem._hard:
            raise SolverError(f"solver {name}: status '{status}' for a problem without hard terms, "
                              f"which is always feasible: numerical trouble; rescale weights or "
                              f"try another solver")
        culprits = diagnose_infeasibility(problem, name)
        raise InfeasiblePlanError(
            "the hard constraints cannot all hold; in conflict: " + "; ".join(culprits), culprits)
    if status in (cp.UNBOUNDED, cp.UNBOUNDED_INACCURATE):
        raise SolverError(f"solver {name}: problem is unbounded: a soft term's cost decreases without "
                          f"limit; add limits on every structure or check custom terms' costs")
    if status != cp.OPTIMAL:
        raise SolverError(
            f"solver {name}: status '{status}', not a certified optimum"
            f"{' after a retry' if retried else ''}; try another solver or rescale weights")
    return cvx, wall, retried

def _scaling_note(problem) -> str:
    """A message when soft weights span too many orders of magnitude, else ''."""
    w = np.array([float(t.weight.value) for t in problem.terms if not t.hard], dtype=float)
    w = w[w > 0]
    if len(w) < 2 or w.max() / w.min() <= WEIGHT_RATIO_LIMIT:
        return ""
    soft = [t for t in problem.terms if not t.hard and float(t.weight.value) > 0]
    lo = min(soft, key=lambda t: float(t.weight.value))
    hi = max(soft, key=lambda t: float(t.weight.value))
    return (f"; the problem is badly scaled: soft weights span {w.max() / w.min():.1e} "
            f"({hi.describe()} weight {float(hi.weight.value):g} vs {lo.describe()} weight "
            f"{float(lo.weight.value):g}); keep weights within ~{WEIGHT_RATIO_LIMIT:.0e} of each other")

def _full_grid_check(problem, weights: np.ndarray) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Largest violation of every hard term over all voxels of its structure.

    Returns the per-term records and, for voxelwise hard terms on sampled structures, the
    grid voxels that violate them by more than a tiny tolerance (to add to the next round)."""
    checks, added = [], {}
    for (term, g), vs in zip(problem._hard, (s for s, t in zip(problem._term_sets, problem.terms) if t.hard)):
        if vs is not None:
            # from the returned weights, never the solver's own values: OSQP meets d == A x only
            # to its tolerance (a mean limit reported met was 1.8e-3 Gy over on the dose)
            full = problem.voxel_set(vs.name, "all") if vs.sampled else vs
            ctx = problem._context(full)
            rows = problem._form_rows(term, full, ctx)
            n = float(problem.fractions)
            forms = {key[2].split("@")[0]: (R @ weights) * n for key, R in rows.items()}
            values = np.atleast_1d(np.asarray(_violation_values(term, forms, ctx), dtype=float))
            scale = 1e-6 * max(1.0, max(float(np.max(np.abs(f))) for f in forms.values()))
            voxelwise = vs.sampled and values.size == len(full.voxel_index)
            new = np.setdiff1d(full.voxel_index[values > scale], vs.voxel_index) if voxelwise else []
            if len(new):
                added[vs.name] = np.union1d(added.get(vs.name, np.array([], np.int64)), new)
            n_checked = len(full.voxel_index)
        else:
            values = np.atleast_1d(np.asarray(g.value, dtype=float))
            n_checked = len(values) if vs is None else len(vs.voxel_index)
        checks.append({"term": term.describe(), "structure": "weights" if vs is None else vs.name,
                       "voxels_checked": int(n_checked),
                       "max_violation": float(max(np.max(values), 0.0))})
    return checks, added

def _violation_values(term: Term, forms: dict, ctx: TermContext) -> np.ndarray:
    """A hard term's violation at numeric forms: its numeric face, or its cvxpy face on
    constants for terms that offer only that (user-defined ones)."""
    single = list(forms) == ["dose"]
    try:
        return term.violation_values(forms["dose"] if single else forms, ctx)
    except (TermError, NotImplementedError):
        const = {k: cp.Constant(v) for k, v in forms.items()}
        return term.violation(const["dose"] if single else const, ctx).value

def _violated_hard_terms(problem, solver: str) -> list[str]:
    if not problem._hard:
        return []
    try:
        names = diagnose_infeasibility(problem, solver)
    except cp.error.SolverError:
        return []
    return [n for n in names if "violated by" in n]


def diagnose_infeasibility(problem, solver: str | None = None) -> list[str]:
    """Names of hard terms in conflict, from an elastic re-solve.

    Each hard term ``g_k <= 0`` is relaxed to ``g_k <= s_k`` with a scalar slack ``s_k >= 0``
    and the sum of slacks is minimised: terms left with a positive slack cannot be met
    together with the others (soft terms are ignored).
    """
    problem.build()
    if not problem._hard:
        return []
    slacks, cons = [], []
    for _term, g in problem._hard:
        s = cp.Variable(nonneg=True)
        slacks.append(s)
        cons.append(g <= s)
    aux = [c for c in problem._problem.constraints if isinstance(c, cp.constraints.Zero)]
    elastic = cp.Problem(cp.Minimize(cp.sum(cp.hstack(slacks))), cons + aux)
    elastic.solve(solver=problem._pick_solver(solver))
    if elastic.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        return [t.describe() for t, _ in problem._hard]
    vals = np.array([s.value for s in slacks], dtype=float)
    duals = np.array([float(np.sum(np.abs(c.dual_value))) if c.dual_value is not None else 0.0
                      for c in cons])
    tol = 1e-6 * max(1.0, float(np.max(np.abs(vals))))
    # involved: relaxed (positive slack) or binding with a non-zero multiplier in the elastic
    # problem, i.e. part of the certificate of infeasibility
    names = []
    for (t, _), v, y in zip(problem._hard, vals, duals):
        if v > tol:
            names.append(t.describe() + f" (violated by {v:.3g})")
        elif y > 1e-4:
            names.append(t.describe())
    return names or [t.describe() for t, _ in problem._hard]


def _certificate(solver: str, options: dict) -> str:
    """What the solver's 'optimal' status guarantees, with the tolerances in force."""
    if solver == "CLARABEL":
        gap = options.get("tol_gap_rel", 1e-8)
        feas = options.get("tol_feas", 1e-8)
        return (f"interior point: relative duality gap <= {gap:g}, primal/dual feasibility "
                f"residuals <= {feas:g} (CLARABEL)")
    return f"solver {solver} reported status 'optimal' within its default tolerances"


def _versions(solver: str) -> dict[str, str]:
    out = {"cvxpy": cp.__version__}
    dist = {"CLARABEL": "clarabel", "OSQP": "osqp", "SCS": "scs", "ECOS": "ecos", "HIGHS": "highspy",
            "PIQP": "piqp", "MPAX": "mpax", "PDHCG": "pdhcg"}
    if solver in dist:
        try:
            out[dist[solver]] = importlib.metadata.version(dist[solver])
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
