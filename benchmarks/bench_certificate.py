"""Does the first-order certificate hold? The first-order solver's claimed relative gap against
the true one, measured by CLARABEL on the same problem (every voxel).

For each case: the first-order plan's objective and its certified relative gap; CLARABEL's
objective; the soft objective and the largest hard violation of both weight vectors, evaluated
by the first-order model (so both are measured the same way); and the true excess of the
first-order plan, (f_FO - f_CL) / f_CL. A certificate holds when that excess is at most the
claimed gap (up to what the hard-violation tolerance can buy, which makes the excess negative).

Cases as in ``bench_lbfgs_memory.py`` (``photon6``, ``photon4``, ``proton8``, ``ct-photon``,
``ct-proton``); the CT cases take minutes (CLARABEL on every voxel).

Run:  python benchmarks/bench_certificate.py [--cases photon6 proton8 ct-photon]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def measured(problem, weights) -> tuple[float, float]:
    """(soft objective, largest hard violation) of ``weights``, by the first-order model."""
    from optimizer.solvers import first_order as fo

    model = fo.build_model(problem)
    blocks = fo._forms_at(model, np.asarray(weights, dtype=float))
    soft, worst = 0.0, 0.0
    for t in model.terms:
        forms = model.forms(t, blocks, weights)
        if t.hard:
            worst = max(worst, float(np.max(t.term.violation_values(forms, t.ctx))))
        else:
            soft += float(t.term.weight.value) * float(t.term.cost_value(forms, t.ctx))
    return soft, worst


def compare(problem) -> dict:
    """Both solves and the row of the table (``problem`` must not sample: every voxel)."""
    t0 = time.perf_counter()
    fo_plan = problem.solve(solver="FIRST_ORDER", warm_start=False)
    fo_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cl_plan = problem.solve(solver="CLARABEL")
    cl_s = time.perf_counter() - t0
    f_fo, v_fo = measured(problem, fo_plan.weights)
    f_cl, v_cl = measured(problem, cl_plan.weights)
    return {"claimed_gap": fo_plan.solver["rel_gap"], "kkt": fo_plan.solver["kkt"],
            "f_fo": f_fo, "viol_fo": v_fo, "f_cl": f_cl, "viol_cl": v_cl,
            "excess": (f_fo - f_cl) / max(abs(f_cl), 1e-300),
            "fo_s": fo_s, "cl_s": cl_s}


def main(argv=None):
    import bench_lbfgs_memory

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["photon6", "proton8"], choices=bench_lbfgs_memory.CASES)
    args = ap.parse_args(argv)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()} "
          f"(measured {time.strftime('%Y-%m-%d %H:%M')})")
    cols = ["case", "f_FO", "f_CL", "excess", "claimed", "holds", "kkt", "viol_FO", "viol_CL", "FO_s", "CL_s"]
    print(" | ".join(f"{c:>11}" for c in cols))
    for case in args.cases:
        r = compare(bench_lbfgs_memory._problem(case))
        row = [case, f"{r['f_fo']:.6f}", f"{r['f_cl']:.6f}", f"{r['excess']:.1e}", f"{r['claimed_gap']:.1e}",
               "yes" if r["excess"] <= r["claimed_gap"] else "NO", f"{r['kkt']:.1e}", f"{r['viol_fo']:.1e}",
               f"{r['viol_cl']:.1e}", f"{r['fo_s']:.1f}", f"{r['cl_s']:.1f}"]
        print(" | ".join(f"{v:>11}" for v in row), flush=True)


if __name__ == "__main__":
    main()
