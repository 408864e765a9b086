"""L-BFGS-B memory (correction pairs, ``solve(..., memory=m)``) and the penalty's step factor
(``solve(..., penalty_factor=f)``) of the first-order solver against evaluations and seconds,
photons against protons.

Why: the inner problems of spot plans are ill-conditioned (lateral overlap of the spots of one
beam: condition number ~3e8 after Jacobi scaling on the 8 mm proton case), and a longer
quasi-Newton memory sees more of that curvature, at a cost per iteration that grows with m
(SciPy's L-BFGS-B forms m x m and n x m products in every iteration).

Cases (every voxel optimized, TG-119 C-shape terms of the examples):

- ``photon6`` / ``photon4``: 6 / 4 mm grid, 9 photon beams, 5 mm beamlets, a small fluence
  smoothness term (``photon4`` is examples/tg119_cshape.py's problem on every voxel);
- ``proton8``: 8 mm grid, 2 proton beams (90 / 270 deg), 5 mm spots, hard core D10 <= 24 Gy;
- ``ct-photon`` / ``ct-proton``: the CT-size cases of ``bench_ct_targets.py`` (minutes each;
  ct-proton tens of minutes).

Each row is one cold solve (``warm_start=False``); columns: evaluations (one K x and one K^T r
each), the exact gaps' products (:mod:`optimizer.solvers.dual_certificate`), solve seconds,
milliseconds per evaluation, the certified objective and relative gap, or the solver's error.
The proton cases now take the Newton inner solver (``inner="auto"`` for spots), where the memory
only sizes its L-BFGS-B presolve.

Run:  python benchmarks/bench_lbfgs_memory.py [--cases photon6 proton8] [--memory 20 50 100]
      [--penalty-factors 10 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CASES = ("photon6", "photon4", "proton8", "ct-photon", "ct-proton")


def _problem(case: str):
    from objectives import DVHMax, FluenceSmoothness
    from optimizer import PhotonBeams, PlanProblem, ProtonBeams, phantoms

    if case.startswith("ct-"):
        import bench_ct_targets

        return bench_ct_targets._problem(case[3:], "FIRST_ORDER", None)[2]
    photon = case.startswith("photon")
    patient = phantoms.tg119_cshape(spacing_mm={"photon6": 6.0, "photon4": 4.0}.get(case, 8.0))
    phantoms.add_cshape_helper_structures(patient)
    if photon:
        inf = PhotonBeams(range(0, 360, 40), beamlet_mm=5.0).influence(patient, target="PTV")
    else:
        inf = ProtonBeams((90.0, 270.0), spot_spacing_mm=5.0, margin_mm=3.0).influence(patient, target="PTV")
    problem = PlanProblem(patient, inf, fractions=phantoms.TG119_CSHAPE_FRACTIONS,
                          max_voxels_per_structure=None)
    for term in phantoms.cshape_planning_terms():
        problem += term
    problem += FluenceSmoothness(weight=1e-3) if photon else DVHMax("Core", 24.0, volume_pct=10)
    return problem


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["photon6", "proton8"], choices=CASES)
    ap.add_argument("--memory", nargs="+", type=int, default=[20, 50, 100])
    ap.add_argument("--penalty-factors", nargs="+", type=float, default=[10.0])
    args = ap.parse_args(argv)

    from optimizer.errors import SolverError

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()} "
          f"(measured {time.strftime('%Y-%m-%d %H:%M')})")
    # cert_prod: the products (K s or K^T r) of the exact gaps, besides the evaluations (2 each);
    # ms/eval divides the whole solve by the evaluations
    cols = ["case", "beamlets", "nnz", "memory", "factor", "evals", "cert_prod", "solve_s", "ms/eval",
            "objective", "rel_gap"]
    print(" | ".join(f"{c:>9}" for c in cols))
    for case in args.cases:
        problem = _problem(case)
        inf = problem.influence
        for m in args.memory:
            for factor in args.penalty_factors:
                head = f"{case:>9} | {inf.n_beamlets:>9} | {inf.nnz / 1e6:>7.2f} M | {m:>9} | {factor:>9g} | "
                t0 = time.perf_counter()
                try:
                    s = problem.solve(solver="FIRST_ORDER", memory=m, penalty_factor=factor,
                                      warm_start=False).solver
                except SolverError as err:
                    seconds = time.perf_counter() - t0
                    print(f"{head}failed after {seconds:.0f} s: {str(err)[:160]}", flush=True)
                    continue
                print(f"{head}{s['iterations']:>9} | {s['certificate_products']:>9} | {s['solve_s']:>9.1f} | "
                      f"{1e3 * s['solve_s'] / s['iterations']:>9.1f} | "
                      f"{s['objective']:>9.5f} | {s['rel_gap']:>9.1e}", flush=True)

if __name__ == "__main__":
    main()
