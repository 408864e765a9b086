"""The CT-size targets of issue 14, measured: the TG-119 C-shape phantom made at 3 x 3 x 2.5 mm
(x, y, z) as the CT, dose computed on a 5 mm dose grid (``influence(..., dose_grid=5.0)``), with

- photons: 5 equispaced 6 MV beams, 5 mm beamlets (target: dose + solve <= 5 s on 2 cores);
- protons: 2 beams at 90 and 270 deg, 5 mm spot spacing (target: <= 15 s, peak <= 1 GB).

Terms: ``phantoms.cshape_planning_terms`` (hard PTV D95 / D10 CVaR surrogates, soft homogeneity
and sparing) plus the hard core term of ``examples/proton_cshape.py`` (core CVaR D10 <= 24 Gy):
with five photon beams the soft core term alone left core D10 at 25.6 Gy (goal 25). Each row
solves with the first-order solver on every voxel, CLARABEL (helper structures sampled, 1500
voxels, as in the examples) or the default (``problem.solve()``: below 30 M non-zeros that is
CLARABEL on every voxel), in its own process, so peak MB (ru_maxrss) is that case's own. Columns:
dose seconds, influence non-zeros, solve seconds (build + solve), end to end (dose + solve), the
solver's status, its certificate (largest hard-term violation, Gy; relative gap), and the three
easy TG-119 goals met on the dose grid and on the CT grid (dose interpolated back by
``plan.on_patient(problem.ct_patient)``).

Run:  python benchmarks/bench_ct_targets.py [--cases photon proton] [--solvers FIRST_ORDER CLARABEL default]
                                            [--ct-grid-structures PTV Core]
      python benchmarks/bench_ct_targets.py --profile photon   (cProfile of the default path)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing as mp
import os
import platform
import pstats
import resource
import sys
import time

# the repository root, so the spawned case processes import this checkout's packages
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CT_SPACING_MM = (2.5, 3.0, 3.0)  # (dz, dy, dx): 3 x 3 x 2.5 mm, the CT
DOSE_GRID_MM = 5.0
SAMPLE_VOXELS = 1500  # helper-structure sample for CLARABEL, as in the examples
TARGETS_S = {"photon": 5.0, "proton": 15.0}


def _beams(case: str, proton_layer_mm):
    from optimizer import PhotonBeams, ProtonBeams

    if case == "photon":
        return PhotonBeams(range(0, 360, 72), beamlet_mm=5.0)
    return ProtonBeams((90.0, 270.0), spot_spacing_mm=5.0, layer_spacing_mm=proton_layer_mm, margin_mm=3.0)


def _problem(case: str, solver: str, proton_layer_mm, ct_grid_structures=None):
    """CT patient, influence on the dose grid and the planning problem (``ct_grid_structures``
    optimized on the CT grid, PlanProblem's option); returns timings too."""
    from objectives import DVHMax
    from optimizer import PlanProblem, phantoms

    ct = phantoms.tg119_cshape(spacing_mm=CT_SPACING_MM)
    phantoms.add_cshape_helper_structures(ct)
    t0 = time.perf_counter()
    inf = _beams(case, proton_layer_mm).influence(ct, target="PTV", dose_grid=DOSE_GRID_MM)
    dose_s = time.perf_counter() - t0
    problem = PlanProblem(ct, inf, fractions=phantoms.TG119_CSHAPE_FRACTIONS,
                          max_voxels_per_structure=SAMPLE_VOXELS if solver == "CLARABEL" else None,
                          ct_grid_structures=ct_grid_structures)
    for term in phantoms.cshape_planning_terms():
        problem += term
    problem += DVHMax("Core", 24.0, volume_pct=10)
    return ct, inf, problem, dose_s


def _goals_met(plan) -> int:
    from optimizer import evaluate, phantoms

    return sum(bool(g.met) for g in evaluate.evaluate_goals(plan, phantoms.TG119_CSHAPE_GOALS))


def _run(args):
    case, solver, proton_layer_mm, ct_grid_structures = args
    ct, inf, problem, dose_s = _problem(case, solver, proton_layer_mm, ct_grid_structures)
    t0 = time.perf_counter()
    out = {"dose_s": dose_s, "nnz": inf.nnz, "beamlets": inf.n_beamlets, "ct_shape": list(ct.grid.shape),
           "dose_shape": list(inf.grid.shape)}
    try:
        plan = problem.solve(solver=None if solver == "default" else solver)
        s = plan.solver
        out.update(name=s["name"] + ("*" if "fallback" in s else ""), status=s["status"],
                   objective=s["objective"], iterations=s["iterations"],
                   max_violation=max([c["max_violation"] for c in s["hard_terms"]] or [0.0]),
                   rel_gap=s.get("rel_gap"), fallback=s.get("fallback"))
        out["solve_s"] = time.perf_counter() - t0
        out["goals_dose_grid"] = _goals_met(plan)
        out["goals_ct_grid"] = _goals_met(plan.on_patient(problem.ct_patient))
    except Exception as err:  # noqa: BLE001 - a benchmark row reports the failure
        out.update(name=solver, status=f"failed: {type(err).__name__}: {str(err)[:120]}",
                   objective=float("nan"),
                   iterations=0, max_violation=float("nan"), rel_gap=None, goals_dose_grid=0, goals_ct_grid=0,
                   solve_s=time.perf_counter() - t0)
    # the optimized voxels: the cvxpy path's count (sampled helpers), else every voxel of the
    # structures the terms name (the first-order path does not sample)
    out["opt_voxels"] = problem.n_opt_voxels or sum(problem.patient.structure(n).n_voxels
                                                    for n in ("PTV", "Core", "Ring", "Tissue"))
    out["peak_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    return out


def profile(case: str, proton_layer_mm, top: int = 25) -> None:
    """cProfile of the default path (dose + solve) in this process: top items by own time and by
    cumulative time."""
    prof = cProfile.Profile()
    prof.enable()
    _, _, problem, dose_s = _problem(case, "default", proton_layer_mm)
    t0 = time.perf_counter()
    plan = problem.solve()
    solve_s = time.perf_counter() - t0
    prof.disable()
    print(f"{case}: dose {dose_s:.1f} s, solve {solve_s:.1f} s ({plan.solver['name']}, "
          f"{plan.solver['iterations']} iterations; times include the profiler's overhead)")
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(top)
        print(f"--- by {key} ---")
        print("\n".join(buf.getvalue().splitlines()[6:]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["photon", "proton"], choices=["photon", "proton"])
    ap.add_argument("--solvers", nargs="+", default=["FIRST_ORDER", "CLARABEL"],
                    help="FIRST_ORDER (every voxel), CLARABEL (helpers sampled) or default (problem.solve())")
    ap.add_argument("--proton-layer-mm", type=float, default=None,
                    help="energy-layer spacing in WEPL, mm (default: ProtonBeams' own)")
    ap.add_argument("--ct-grid-structures", nargs="*", default=None,
                    help="structures optimized on the CT grid (PlanProblem(..., ct_grid_structures=...))")
    ap.add_argument("--timeout-s", type=float, default=1800.0, help="per case")
    ap.add_argument("--profile", choices=["photon", "proton"], default=None,
                    help="profile the default path of this case instead of the table")
    args = ap.parse_args(argv)
    if args.profile:
        profile(args.profile, args.proton_layer_mm)
        return
    print(f"machine: {platform.machine()}, {mp.cpu_count()} cores, Python {platform.python_version()} "
          f"(measured {time.strftime('%Y-%m-%d %H:%M')}); CT {CT_SPACING_MM} mm (dz, dy, dx), "
          f"dose grid {DOSE_GRID_MM:g} mm; on the CT grid: {args.ct_grid_structures or 'none'}")
    cols = ["case", "solver", "beamlets", "nnz", "opt_vox", "dose_s", "solve_s", "total_s", "target_s",
            "iters", "objective", "viol_Gy", "rel_gap", "goals_dose", "goals_CT", "peak_MB", "status"]
    print(" | ".join(f"{c:>10}" for c in cols))
    ctx = mp.get_context("spawn")
    for case in args.cases:
        for solver in args.solvers:
            with ctx.Pool(1) as pool:
                job = pool.apply_async(_run, ((case, solver, args.proton_layer_mm, args.ct_grid_structures),))
                try:
                    r = job.get(timeout=args.timeout_s)
                except mp.TimeoutError:
                    print(f"{case:>10} | {solver:>10} | timed out after {args.timeout_s:g} s")
                    continue
            gap = "" if r["rel_gap"] is None else f"{r['rel_gap']:.1e}"
            row = [case, r["name"], r["beamlets"], r["nnz"], r["opt_voxels"], f"{r['dose_s']:.1f}",
                   f"{r['solve_s']:.1f}", f"{r['dose_s'] + r['solve_s']:.1f}", f"{TARGETS_S[case]:g}",
                   r["iterations"], f"{r['objective']:.6g}", f"{r['max_violation']:.2g}", gap,
                   f"{r['goals_dose_grid']}/3", f"{r['goals_ct_grid']}/3", f"{r['peak_MB']:.0f}", r["status"]]
            print(" | ".join(f"{str(v):>10}" for v in row), flush=True)
            if r.get("fallback"):
                print(f"{'':>10}   * fell back to CLARABEL: {r['fallback'].get('reason', '')[:200]}")


if __name__ == "__main__":
    main()
