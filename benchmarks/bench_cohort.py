"""Benchmark: a cohort study serial versus on a LocalCluster of 1 and 2 worker processes.

Run:  python benchmarks/bench_cohort.py [--patients 20] [--workers 1 2] [--spacing-mm 4]

The study is ``examples/cohort_study.py``'s (default cohort, seed 0, default arms: conventional,
personalized, personalized_noboost; 4 mm grid, 7 beams). Each mode writes its own table in a
temporary folder. Prints one table: mode, workers, rows, failed, wall seconds (start-up of the
cluster included), start-up seconds, compute seconds, mean influence-matrix seconds per patient
(``dose_s``), mean solver seconds per row, rows per minute and the speed-up over 1 worker; then
whether every mode's rows equal the serial rows (all columns but the times and worker names).

Timings are wall clock on a shared machine: run it when the machine is otherwise idle, and
compare rows of one run only.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time

import numpy as np

from optimizer import studies


def _rows_equal(a, b) -> bool:
    ka = {(r["patient_id"], r["arm"]): r for r in a}
    kb = {(r["patient_id"], r["arm"]): r for r in b}
    if ka.keys() != kb.keys():
        return False
    for k, ra in ka.items():
        for c in studies.ROW_COLUMNS:
            if c in studies.RUN_COLUMNS:
                continue
            x, y = ra[c], kb[k][c]
            if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
                continue
            if x != y:
                return False
    return True


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="LocalCluster sizes to time")
    ap.add_argument("--spacing-mm", type=float, default=studies.StudySetup.spacing_mm)
    ap.add_argument("--no-serial", action="store_true", help="skip the serial run")
    args = ap.parse_args(argv)
    cohort = studies.generate_cohort(args.patients, seed=0)
    setup = studies.StudySetup(spacing_mm=args.spacing_mm)
    modes = ([] if args.no_serial else [("serial", 1)]) + [("dask", w) for w in args.workers]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, w in modes:
            path = os.path.join(tmp, f"{mode}{w}.csv")
            t0 = time.perf_counter()
            res = studies.run_study(cohort, path, setup=setup, serial=(mode == "serial"), n_workers=w)
            wall = time.perf_counter() - t0
            results[(mode, w)] = (res, wall)
            print(f"{mode} ({w} worker(s)): {len(res.rows)} rows in {wall:.1f} s", flush=True)
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
          f"{args.patients} patients x {len(studies.default_arms())} arms, {args.spacing_mm:g} mm grid")
    header = ("mode", "workers", "rows", "failed", "wall_s", "start_s", "compute_s", "dose_s/pat",
              "solve_s/row", "rows/min", "speedup")
    print(" | ".join(f"{h:>11}" for h in header))
    base = next((wall for (m, w), (_, wall) in results.items() if m == "dask" and w == 1), None)
    table = []
    for (mode, w), (res, wall) in results.items():
        ok = [r for r in res.rows if r["status"] == "optimal"]
        dose = np.mean([r["dose_s"] for r in ok if r["arm"] == ok[0]["arm"]]) if ok else float("nan")
        solve = np.mean([r["solve_s"] for r in ok]) if ok else float("nan")
        speed = base / wall if base and mode == "dask" else float("nan")
        cells = (mode, w, len(res.rows), res.failed, wall, res.timings_s["start"], res.timings_s["compute"],
                 dose, solve, 60.0 * len(res.rows) / wall, speed)
        table.append(dict(zip(header, cells)))
        print(" | ".join(f"{c:>11.2f}" if isinstance(c, float) else f"{c!s:>11}" for c in cells))
    ref = results.get(("serial", 1))
    if ref is not None:
        for (mode, w), (res, _) in results.items():
            if mode != "serial":
                print(f"rows of dask x{w} equal the serial rows: {_rows_equal(ref[0].rows, res.rows)}")
    return {"table": table}


if __name__ == "__main__":
    main()
