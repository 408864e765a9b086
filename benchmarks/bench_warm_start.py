"""Warm starts of the first-order solver: a weight sweep re-solved from the previous primal and
dual iterates against cold solves of the same problems.

C-shape phantom (TG-119), 9 photon beams, 5 mm beamlets, every voxel optimized, the example's
terms plus a soft core overdose term whose weight (a cvxpy Parameter) is swept. For each weight
the same problem is solved warm (``problem.solve(solver="FIRST_ORDER")`` after the previous
solve) and cold (``warm_start=False``); the table prints evaluations (one K x and one K^T r
each), seconds, and the objectives' relative difference (both solves certified).

Run:  python benchmarks/bench_warm_start.py [--spacing-mm 8] [--weights 1.5 2 3 5 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spacing-mm", type=float, default=8.0)
    ap.add_argument("--weights", type=float, nargs="+", default=[1.5, 2.0, 3.0, 5.0, 8.0])
    args = ap.parse_args(argv)

    from objectives import FluenceSmoothness, SquaredOverdose
    from optimizer import PhotonBeams, PlanProblem, phantoms

    patient = phantoms.tg119_cshape(spacing_mm=args.spacing_mm)
    phantoms.add_cshape_helper_structures(patient)
    inf = PhotonBeams(range(0, 360, 40), beamlet_mm=5.0).influence(patient, target="PTV")
    problem = PlanProblem(patient, inf, fractions=phantoms.TG119_CSHAPE_FRACTIONS,
                          max_voxels_per_structure=None)
    for term in phantoms.cshape_planning_terms():
        problem += term
    core = SquaredOverdose("Core", 10.0, weight=1.0)
    problem += core
    problem += FluenceSmoothness(weight=1e-3)
    problem.solve(solver="FIRST_ORDER")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()} "
          f"(measured {time.strftime('%Y-%m-%d')}); C-shape {args.spacing_mm:g} mm, "
          f"{inf.n_beamlets} beamlets, {inf.nnz / 1e6:.2f} M non-zeros")
    print(" core weight | warm evals | cold evals | warm_s | cold_s | rel_obj_diff")
    totals = [0, 0, 0.0, 0.0]
    for w in args.weights:
        core.weight.value = w
        t0 = time.perf_counter()
        warm = problem.solve(solver="FIRST_ORDER").solver
        t_warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        cold = problem.solve(solver="FIRST_ORDER", warm_start=False).solver
        t_cold = time.perf_counter() - t0
        assert warm["warm_started"] and not cold["warm_started"]
        diff = warm["objective"] / cold["objective"] - 1.0
        print(f" {w:11g} | {warm['iterations']:10d} | {cold['iterations']:10d} | {t_warm:6.2f} | "
              f"{t_cold:6.2f} | {diff:12.1e}", flush=True)
        for i, v in enumerate((warm["iterations"], cold["iterations"], t_warm, t_cold)):
            totals[i] += v
    print(f" total       | {totals[0]:10d} | {totals[1]:10d} | {totals[2]:6.2f} | {totals[3]:6.2f} | "
          f"evaluations saved {1 - totals[0] / max(totals[1], 1):.0%}")


if __name__ == "__main__":
    main()
