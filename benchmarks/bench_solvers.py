"""Every installed solver on one C-shape problem, one table (same machine, same run).

The problem: C-shape phantom, 9 beams, 5 mm beamlets, ``phantoms.cshape_planning_terms()`` plus
``FluenceSmoothness`` (default 1e-3; ``--smoothness 0`` switches it off), every voxel of every
structure (no sampling). Rows: CLARABEL (the exact reference), our FIRST_ORDER, CLARABEL on the
sampled voxel set of the example (a smaller problem: its objective is not comparable), OSQP 1.x,
SCS 3.x (direct and indirect), PIQP, HiGHS, MPAX (JAX, on the CPU here) and PDHCG (its CPU build),
each at a few settings. A solver that is not installed is a row saying so.

Each case runs in its own process with a timeout (``--timeout-s``): a timed-out case is a row.
Columns: ``wall_s`` is ``PlanProblem.solve`` end to end (cvxpy canonicalization included),
``solver_s`` the solver's own time; ``rel_obj`` is (objective - CLARABEL full) / |CLARABEL full|;
``max_viol_Gy`` the largest hard-term violation over all voxels (the plan's certificate
``plan.solver["hard_terms"]``); ``peak_MB`` the case process's peak resident memory; ``time/CL``
is ``wall_s`` over CLARABEL full's; ``status`` the solver's status, or ``refused: <status>`` when
``PlanProblem.solve`` raised ``SolverError`` (inaccurate status, or hard terms violated beyond
``hard_tolerance`` = 1e-3 Gy): such a row still shows the numbers the solver returned.

Run:  python benchmarks/bench_solvers.py [--spacing-mm 8] [--beams 9] [--smoothness 1e-3]
      [--timeout-s 900] [--cases CLARABEL FIRST_ORDER 'SCS*' ...]   (labels or shell-style
      patterns; the labels: ``--list``)
"""

from __future__ import annotations

import argparse
import fnmatch
import multiprocessing as mp
import platform
import resource
import time

#: (label, solver, max_voxels_per_structure (None: every voxel), solve options, set-up run in the
#: case's process first (a key of SETUPS, or None)).
CASES = [
    ("CLARABEL", "CLARABEL", None, {}, None),
    ("FIRST_ORDER", "FIRST_ORDER", None, {}, None),
    ("CLARABEL sampled", "CLARABEL", 1500, {}, None),
    ("OSQP eps1e-4", "OSQP", None, {"eps_abs": 1e-4, "eps_rel": 1e-4, "max_iter": 200000,
                                    "polishing": True}, None),
    ("OSQP eps1e-5", "OSQP", None, {"eps_abs": 1e-5, "eps_rel": 1e-5, "max_iter": 200000,
                                    "polishing": True}, None),
    ("OSQP eps1e-6", "OSQP", None, {"eps_abs": 1e-6, "eps_rel": 1e-6, "max_iter": 400000,
                                    "polishing": True}, None),
    ("SCS direct 1e-4", "SCS", None, {"eps_abs": 1e-4, "eps_rel": 1e-4}, None),
    ("SCS direct 1e-6", "SCS", None, {"eps_abs": 1e-6, "eps_rel": 1e-6, "max_iters": 200000},
     None),
    ("SCS indirect 1e-4", "SCS", None, {"eps_abs": 1e-4, "eps_rel": 1e-4, "use_indirect": True},
     None),
    ("SCS indirect 1e-6", "SCS", None, {"eps_abs": 1e-6, "eps_rel": 1e-6, "max_iters": 200000,
                                        "use_indirect": True}, None),
    ("PIQP", "PIQP", None, {"compute_timings": True}, None),
    ("HIGHS", "HIGHS", None, {}, None),
    ("MPAX raPDHG 1e-4", "MPAX", None, {"algorithm": "raPDHG", "eps_abs": 1e-4, "eps_rel": 1e-4},
     None),
    ("MPAX raPDHG 1e-6", "MPAX", None, {"algorithm": "raPDHG", "eps_abs": 1e-6, "eps_rel": 1e-6},
     None),
    ("MPAX r2HPDHG 1e-6", "MPAX", None, {"algorithm": "r2HPDHG", "eps_abs": 1e-6, "eps_rel": 1e-6},
     None),
    ("MPAX raPDHG 1e-4 x64", "MPAX", None, {"algorithm": "raPDHG", "eps_abs": 1e-4, "eps_rel": 1e-4},
     "jax_x64"),
    ("MPAX raPDHG 1e-6 x64", "MPAX", None, {"algorithm": "raPDHG", "eps_abs": 1e-6, "eps_rel": 1e-6},
     "jax_x64"),
    ("PDHCG cpu 1e-4", "PDHCG", None, {"device": "cpu", "opt_tol": 1e-4, "feas_tol": 1e-4},
     "pdhcg"),
    ("PDHCG cpu 1e-6", "PDHCG", None, {"device": "cpu", "opt_tol": 1e-6, "feas_tol": 1e-6},
     "pdhcg"),
]


def _jax_x64():
    """JAX computes in float32 unless told otherwise (MPAX does not switch it on)."""
    import jax

    jax.config.update("jax_enable_x64", True)


def _pdhcg():
    """PDHCG registers itself with cvxpy on import (``solver="PDHCG"``)."""
    import pdhcg.cvxpy_backend  # noqa: F401


SETUPS = {"jax_x64": _jax_x64, "pdhcg": _pdhcg}


COLUMNS = [("solver", 20), ("voxels", 7), ("opt_vox", 7), ("beamlets", 8), ("nnz", 8), ("wall_s", 7),
           ("solver_s", 8), ("iters", 6), ("objective", 11), ("rel_obj", 8), ("max_viol_Gy", 11),
           ("peak_MB", 7), ("time/CL", 7), ("status", 0)]


def _build(spacing, beams, smoothness, max_vox):
    """The benchmark problem (and the seconds its dose calculation took)."""
    from objectives import FluenceSmoothness
    from optimizer import PhotonBeams, PlanProblem, phantoms

    patient = phantoms.tg119_cshape(spacing_mm=spacing)
    phantoms.add_cshape_helper_structures(patient)
    t0 = time.perf_counter()
    inf = PhotonBeams(range(0, 360, 360 // beams), beamlet_mm=5.0).influence(patient, target="PTV")
    dose_s = time.perf_counter() - t0
    problem = PlanProblem(patient, inf, fractions=25, max_voxels_per_structure=max_vox)
    for term in phantoms.cshape_planning_terms():
        problem += term
    if smoothness > 0:
        problem += FluenceSmoothness(weight=smoothness)
    return problem, dose_s


def _refused(problem, err) -> dict:
    """The numbers a cvxpy solver returned when ``PlanProblem.solve`` refused its result
    (inaccurate status, or hard terms broken on the full grid): the same full-grid check the
    plan's certificate uses, at the returned weights."""
    import numpy as np

    from optimizer.solvers import cvxpy_backend

    cvx = problem._problem
    out = {"status": f"failed: {type(err).__name__}: {str(err)[:160]}"}
    if cvx is None or cvx.status is None or problem._x.value is None:
        return out
    weights = np.maximum(np.asarray(problem._x.value, dtype=float), 0.0)
    checks, _ = cvxpy_backend._full_grid_check(problem, weights)
    stats = cvx.solver_stats
    return {"status": f"refused: {cvx.status}", "reason": str(err)[:300],
            "objective": float(cvx.value) if cvx.value is not None else float("nan"),
            "iterations": stats.num_iters or 0, "solver_s": stats.solve_time or float("nan"),
            "max_violation": max([c["max_violation"] for c in checks] or [0.0])}


def _run(args):
    spacing, beams, smoothness, solver, max_vox, options, setup = args
    import numpy as np

    from optimizer.errors import SolverError

    if setup:
        SETUPS[setup]()
    problem, dose_s = _build(spacing, beams, smoothness, max_vox)
    out = {"objective": float("nan"), "iterations": 0, "max_violation": float("nan"),
           "solver_s": float("nan")}
    t0 = time.perf_counter()
    try:
        s = problem.solve(solver=solver, **options).solver
        out.update(objective=s["objective"], iterations=s["iterations"], status=s["status"],
                   solver_s=s.get("solve_s", float("nan")),
                   max_violation=max([c["max_violation"] for c in s["hard_terms"]] or [0.0]))
    except SolverError as err:
        out.update(_refused(problem, err))
    except Exception as err:  # noqa: BLE001 - a benchmark row reports the failure
        out["status"] = f"failed: {type(err).__name__}: {str(err)[:160]}"
    wall = time.perf_counter() - t0
    inf = problem.influence
    # the first-order path keeps no voxel sets on the problem: count the structures' union
    union = np.unique(np.concatenate([problem.voxel_set(n, "all").voxel_index
                                      for n in ("PTV", "Core", "Ring", "Tissue")]))
    out.update(wall_s=wall, dose_s=dose_s, nnz=inf.nnz, beamlets=inf.n_beamlets,
               opt_voxels=problem.n_opt_voxels or len(union),
               peak_MB=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    return out


def _version(solver):
    """The solver's version (the cvxpy back end's own record of it), or None: not installed."""
    if solver == "FIRST_ORDER":
        return "bioplan"
    from optimizer.solvers.cvxpy_backend import _versions

    return next((v for k, v in _versions(solver).items() if k != "cvxpy"), None)


def _fmt(row) -> str:
    return " | ".join(f"{str(v):>{w}}" if w else str(v) for v, (_, w) in zip(row, COLUMNS))


def _row(label, max_vox, r, ref) -> list:
    obj, wall = r["objective"], r["wall_s"]
    rel = "-" if ref is None or max_vox is not None or obj != obj else f"{(obj - ref[0]) / abs(ref[0]):.1e}"
    ratio = "-" if ref is None else f"{wall / ref[1]:.2f}"
    solver_s = r["solver_s"]
    return [label, "full" if max_vox is None else "sampled", r["opt_voxels"], r["beamlets"],
            f"{r['nnz'] / 1e6:.2f} M", f"{wall:.1f}", "-" if solver_s != solver_s else f"{solver_s:.1f}",
            r["iterations"], f"{obj:.8g}", rel, f"{r['max_violation']:.2g}", f"{r['peak_MB']:.0f}",
            ratio, r["status"]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spacing-mm", type=float, default=8.0)
    ap.add_argument("--beams", type=int, default=9)
    ap.add_argument("--smoothness", type=float, default=1e-3, help="fluence smoothness weight (0: off)")
    ap.add_argument("--timeout-s", type=float, default=900.0, help="per case, seconds")
    ap.add_argument("--cases", nargs="+", default=None,
                    help="labels of the cases to run (shell-style patterns: 'SCS*')")
    ap.add_argument("--list", action="store_true", help="print the case labels and exit")
    args = ap.parse_args(argv)
    if args.list:
        for case in CASES:
            print(f"{case[0]:<20} {case[3]}")
        return
    cases = [c for c in CASES if args.cases is None or any(fnmatch.fnmatchcase(c[0], p) for p in args.cases)]
    print(f"machine: {platform.machine()}, {mp.cpu_count()} cores, Python {platform.python_version()} "
          f"(measured {time.strftime('%Y-%m-%d')}); C-shape {args.spacing_mm:g} mm, {args.beams} beams, "
          f"5 mm beamlets, smoothness {args.smoothness:g}")
    versions = {c[1]: _version(c[1]) for c in cases}
    print("versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in versions.items()))
    print(_fmt([c for c, _ in COLUMNS]), flush=True)
    ctx = mp.get_context("spawn")
    ref = None  # (objective, wall_s) of CLARABEL on the full voxel set
    for label, solver, max_vox, options, setup in cases:
        if versions[solver] is None:
            print(f"{label:>20} | not installed", flush=True)
            continue
        with ctx.Pool(1) as pool:  # leaving the block terminates the worker (also on a timeout)
            job = pool.apply_async(_run, ((args.spacing_mm, args.beams, args.smoothness, solver, max_vox,
                                           options, setup),))
            try:
                r = job.get(timeout=args.timeout_s)
            except mp.TimeoutError:
                print(f"{label:>20} | timed out after {args.timeout_s:g} s (wall, incl. dose and build)",
                      flush=True)
                continue
        if label == "CLARABEL" and r["status"] == "optimal":
            ref = (r["objective"], r["wall_s"])
        print(_fmt(_row(label, max_vox, r, ref)), flush=True)
        if r.get("reason"):
            print(f"{'':>20}   ({r['reason']})", flush=True)


if __name__ == "__main__":
    main()
