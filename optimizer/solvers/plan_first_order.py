"""The first-order path of :meth:`optimizer.PlanProblem.solve`: run
:mod:`optimizer.solvers.first_order` on every voxel and wrap its certificate in a plan record."""

from __future__ import annotations

import numpy as np

from ..errors import PlanError, SolverError


def solve_plan(problem, verbose: bool, options: dict):
    """The matrix-free path: every voxel of every structure, warm-started from the last
    solve of this problem when the geometry is unchanged."""
    from ..plan import Plan
    from . import first_order as fo

    problem._sync()
    if not problem.terms:
        raise PlanError("terms: the problem has no terms; add objectives or constraints first")
    unsupported = fo.check_supported(problem)
    if unsupported:
        raise SolverError("solver FIRST_ORDER: these terms offer no numeric gradient (soft) or "
                          "projection (hard): " + "; ".join(unsupported) + "; use solver='CLARABEL'")
    warm_start = options.pop("warm_start", True)
    if not isinstance(warm_start, (bool, np.bool_)):
        raise SolverError(f"warm_start: expected True or False, got {warm_start!r}")
    known = set(fo.Settings.__dataclass_fields__)
    unknown = set(options) - known
    if unknown:
        raise SolverError(f"solver FIRST_ORDER: unknown options {sorted(unknown)}; "
                          f"known: {sorted(known)}")
    if getattr(problem, "_hard_tolerance_given", False) and "violation_tol" not in options:
        options = {**options, "violation_tol": problem.hard_tolerance}
    settings = fo.Settings(verbose=verbose, **options)
    warm = getattr(problem, "_warm", None) if warm_start and problem._warm_state == problem._state() else None
    weights, info, state = fo.solve(problem, settings, warm)
    problem._warm, problem._warm_state = state, problem._state()
    cert = info.pop("certificate")
    record = {
        "name": "FIRST_ORDER",
        "status": "optimal",
        "objective": cert["objective"],
        "versions": {"solver": "optimizer.solvers.first_order"},
        "certificate": (f"augmented Lagrangian + {info['inner']}: max hard violation "
                        f"{cert['max_violation']:.3g} <= {settings.violation_tol:g}, relative gap "
                        f"{cert['rel_gap']:.2e} <= {settings.gap_tol:g}, KKT residual {cert['kkt']:.2e} "
                        f"<= {settings.kkt_tol:g} (all voxels)"),
        "max_violation": cert["max_violation"],
        "rel_gap": cert["rel_gap"],
        # the gap in the objective's unit, and the floor rel_gap is relative to where the
        # objective is below it (the cost of a hard_tolerance dose error in every soft voxel)
        "gap": cert["gap"],
        "gap_floor": cert["gap_floor"],
        # the gap holds for the inexact gradient (:mod:`.dual_certificate`): a bound on the
        # objective's excess over the optimum unless a beamlet with a negative gradient reaches no
        # squared penalty (then gap_is_bound is False and gap_estimated its first-order estimate)
        "gap_estimated": cert["gap_estimated"],
        "gap_is_bound": cert["gap_is_bound"],
        "kkt": cert["kkt"],
        "hard_tolerance": settings.violation_tol,
        "hard_terms": cert["hard_terms"],
        "compile_s": 0.0,  # nothing is compiled: the model build is build_s
        "warm_started": warm is not None,
        "terms": [repr(t) for t in problem.terms],
        **info,
    }
    return Plan.from_weights(problem.patient, problem.influence, weights, problem.fractions, record)
