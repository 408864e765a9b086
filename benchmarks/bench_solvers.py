"""Solvers side by side on one C-shape problem (same machine, same run): CLARABEL on the
sampled voxel set of the example, and CLARABEL, the first-order solver (and with --osqp, OSQP)
on the full (unsampled) voxel set. The terms are the example's, with its fluence smoothness
(default 1e-3; --smoothness 0 switches it off). Each case runs in its own process, so peak
memory is its own; the last column is each solve time over the first-order solver's.

Run:  python benchmarks/bench_solvers.py [--spacing-mm 4] [--beams 9] [--smoothness 1e-3] [--osqp]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import time

CASES = [
    ("FIRST_ORDER", "full", None, {}),
    ("CLARABEL", "sampled", 1500, {}),
    ("CLARABEL", "full", None, {}),
]
OSQP_CASE = ("OSQP", "full", None, {"eps_abs": 1e-6, "eps_rel": 1e-6, "max_iter": 200000})


def _run(args):
    spacing, beams, smoothness, solver, max_vox, options = args
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
    t0 = time.perf_counter()
    try:
        plan = problem.solve(solver=solver, **options)
        s = plan.solver
        out = {"objective": s["objective"], "iterations": s["iterations"], "status": s["status"],
               "max_violation": max([c["max_violation"] for c in s["hard_terms"]] or [0.0])}
    except Exception as err:  # noqa: BLE001 - a benchmark row reports the failure
        out = {"objective": float("nan"), "iterations": 0, "status": f"failed: {type(err).__name__}",
               "max_violation": float("nan")}
    out.update(solve_s=time.perf_counter() - t0, dose_s=dose_s, nnz=inf.nnz, beamlets=inf.n_beamlets,
               opt_voxels=problem.n_opt_voxels or sum(patient.structure(n).n_voxels
                                                      for n in ("PTV", "Core", "Ring", "Tissue")),
               peak_MB=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spacing-mm", type=float, default=4.0)
    ap.add_argument("--beams", type=int, default=9)
    ap.add_argument("--smoothness", type=float, default=1e-3, help="fluence smoothness weight (0: off)")
    ap.add_argument("--osqp", action="store_true", help="add OSQP on the full set (slow)")
    ap.add_argument("--timeout-s", type=float, default=1800.0, help="per case")
    args = ap.parse_args(argv)
    print(f"machine: {platform.machine()}, {mp.cpu_count()} cores, Python {platform.python_version()} "
          f"(measured {time.strftime('%Y-%m-%d')})")
    cols = ["solver", "voxels", "opt_voxels", "beamlets", "nnz", "solve_s", "iterations", "objective",
            "max_viol_Gy", "peak_MB", "status", "time/FO"]
    print(" | ".join(f"{c:>11}" for c in cols))
    ctx = mp.get_context("spawn")
    fo_s = None
    for solver, kind, max_vox, options in CASES + ([OSQP_CASE] if args.osqp else []):
        with ctx.Pool(1) as pool:
            job = pool.apply_async(_run, ((args.spacing_mm, args.beams, args.smoothness, solver, max_vox,
                                           options),))
            try:
                r = job.get(timeout=args.timeout_s)
            except mp.TimeoutError:
                print(f"{solver:>11} | {kind:>11} | timed out after {args.timeout_s:g} s")
                continue
        row = [solver, kind, r["opt_voxels"], r["beamlets"], r["nnz"], f"{r['solve_s']:.1f}", r["iterations"],
               f"{r['objective']:.8g}", f"{r['max_violation']:.2g}", f"{r['peak_MB']:.0f}", r["status"]]
        if solver == "FIRST_ORDER":
            fo_s = r["solve_s"]
        row.append(f"{r['solve_s'] / fo_s:.1f}" if fo_s else "")
        print(" | ".join(f"{str(v):>11}" for v in row), flush=True)


if __name__ == "__main__":
    main()
