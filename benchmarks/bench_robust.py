"""Robust proton C-shape (9 scenarios, ``examples/robust_proton.py``): scenario dose time, rows
and non-zeros per scenario, and solve time with CLARABEL and with the first-order solver.

Cases (each solve in its own process, so peak memory is its own):

* ``composite``: the example's robust plan (composite worst case of the CTV under/overdose,
  hard robust CTV coverage) with CLARABEL and with FIRST_ORDER (each composite worst case an
  epigraph variable in the augmented Lagrangian, ``optimizer/solvers/epigraph.py``; the hard
  coverage by projection per scenario);
* ``expected``: the same with the soft CTV terms in expected mode (smooth) and the hard robust
  coverage, with CLARABEL and with FIRST_ORDER.

CLARABEL sees the body through at most 1500 sampled voxels (``max_voxels_per_structure``), the
first-order solver every voxel, so their objectives differ by the body term's sampling.
FIRST_ORDER rows add the relative duality gap of the certificate and the evaluations.

Run:  python benchmarks/bench_robust.py [--spacing-mm 6] [--cases composite:FIRST_ORDER ...]

Measured at 6 mm (2310 spots, 9 scenarios; 2 shared cores under load from other jobs, so times
are rough): composite CLARABEL optimal, objective 3573.9, 218 s, peak 944 MB; composite
FIRST_ORDER optimal (relative gap 5.6e-5, 2961 evaluations), objective 3559.3 (every body
voxel), 203 s, peak 324 MB.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

CASES = [("composite", "CLARABEL"), ("composite", "FIRST_ORDER"), ("expected", "CLARABEL"),
         ("expected", "FIRST_ORDER")]


def _setup(spacing):
    import robust_proton as ex

    from optimizer import ProtonBeams, phantoms
    from optimizer.robust.influence import scenario_influence
    from optimizer.robust.scenarios import nominal9

    patient = phantoms.tg119_cshape(spacing_mm=spacing)
    scen = nominal9()
    beams = ProtonBeams(ex.GANTRY_DEG, spot_spacing_mm=8.0, layer_spacing_mm=6.0, margin_mm=5.0)
    t0 = time.perf_counter()
    nominal = beams.influence(patient, target=ex.CTV, with_let=False)
    t_nom = time.perf_counter() - t0
    inf = scenario_influence(beams, patient, scen, [ex.CTV, ex.CORE], nominal, target=ex.CTV)
    return ex, patient, scen, inf, t_nom


def _solve(args):
    spacing, mode, solver = args
    from objectives.robust import Robust
    from optimizer import PlanProblem

    ex, patient, scen, inf, _ = _setup(spacing)
    terms = ex.terms(True, len(scen))
    if mode == "expected":
        terms = [Robust(t.term, "expected", len(scen)) if isinstance(t, Robust) and not t.hard else t
                 for t in terms]
    problem = PlanProblem(patient, inf, fractions=ex.FRACTIONS, max_voxels_per_structure=1500)
    for t in terms:
        problem += t
    t0 = time.perf_counter()
    try:
        plan = problem.solve(solver=solver)
        out = {"status": plan.solver["status"], "objective": plan.solver["objective"],
               "rel_gap": plan.solver.get("rel_gap"), "evals": plan.solver.get("iterations")}
    except Exception as err:  # noqa: BLE001 - a benchmark row reports the failure
        out = {"status": f"failed: {type(err).__name__}", "objective": float("nan")}
    out.update(solve_s=time.perf_counter() - t0,
               peak_MB=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spacing-mm", type=float, default=6.0)
    ap.add_argument("--cases", nargs="+", default=[f"{m}:{s}" for m, s in CASES],
                    help="mode:solver pairs to run (default: all four)")
    args = ap.parse_args(argv)
    cases = [tuple(c.split(":")) for c in args.cases]
    if any(len(c) != 2 or c[0] not in ("composite", "expected") for c in cases):
        ap.error(f"--cases: expected mode:solver with mode composite or expected, got {args.cases}")
    from optimizer.evaluate.robust import _scenario_matrices

    _, patient, scen, inf, t_nom = _setup(args.spacing_mm)
    print(f"# bench_robust: C-shape {patient.grid.shape} at {args.spacing_mm:g} mm, {inf.n_beamlets} spots, "
          f"{len(scen)} scenarios ({inf.scenario_executor}); {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores (shared)")
    print(f"nominal dose (all body voxels): {t_nom:.2f} s, {inf.matrix.shape[0]} rows, {inf.nnz} nonzeros")
    print(f"{'scenario':<10} {'dose s':>7} {'rows':>6} {'nonzeros':>9}")
    for s, m, t in zip(scen, _scenario_matrices(inf), inf.scenario_times_s):
        print(f"{s.name:<10} {t:7.2f} {m.matrix.shape[0]:6d} {m.nnz:9d}")
    print(f"\n{'mode':<10} {'solver':<12} {'status':<24} {'objective':>10} {'solve s':>8} {'peak MB':>8}")
    ctx = mp.get_context("spawn")
    for mode, solver in cases:
        with ctx.Pool(1) as pool:
            r = pool.map(_solve, [(args.spacing_mm, mode, solver)])[0]
        cert = "" if r.get("rel_gap") is None else f"  gap {r['rel_gap']:.1e}, {r['evals']} evaluations"
        print(f"{mode:<10} {solver:<12} {r['status'][:24]:<24} {r['objective']:10.5g} {r['solve_s']:8.1f} "
              f"{r['peak_MB']:8.0f}{cert}")


if __name__ == "__main__":
    main()
