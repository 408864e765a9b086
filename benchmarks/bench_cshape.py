"""Benchmark of the TG-119 C-shape photon plan: prints one table row per grid spacing.

Run:  python benchmarks/bench_cshape.py [--spacing-mm 4 3] [--solver CLARABEL]
Peak MB is the process's peak resident set size (ru_maxrss), which includes the solver's memory;
rows after the first inherit the earlier peak, so run one spacing per process for clean figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import resource
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def _example():
    path = os.path.join(HERE, "..", "examples", "tg119_cshape.py")
    spec = importlib.util.spec_from_file_location("tg119_cshape", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spacing-mm", type=float, nargs="+", default=[4.0])
    ap.add_argument("--solver", default=None)
    args = ap.parse_args(argv)
    example = _example()
    rows = []
    for spacing in args.spacing_mm:
        with tempfile.TemporaryDirectory() as out:
            rec = example.main(["--out", out, "--spacing-mm", str(spacing)]
                               + (["--solver", args.solver] if args.solver else []))
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        met = sum(g["met"] for g in rec["goals"][:3])
        rows.append((spacing, rec["sizes"]["grid_voxels"], rec["sizes"]["opt_voxels"],
                     rec["sizes"]["beamlets"], rec["sizes"]["nnz"], rec["timings_s"]["dose"],
                     rec["timings_s"]["build"], rec["timings_s"]["solve"], peak_mb,
                     rec["solver"]["objective"], f"{met}/3", rec["hard_core_goal_met"]))
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    header = ("spacing_mm", "grid_vox", "opt_vox", "beamlets", "nnz", "dose_s", "build_s", "solve_s",
              "peak_MB", "objective", "goals", "core<=10")
    print(" | ".join(f"{h:>10}" for h in header))
    for r in rows:
        cells = [f"{r[0]:10.1f}", f"{r[1]:10d}", f"{r[2]:10d}", f"{r[3]:10d}", f"{r[4]:10d}",
                 f"{r[5]:10.1f}", f"{r[6]:10.1f}", f"{r[7]:10.1f}", f"{r[8]:10.0f}", f"{r[9]:10.4g}",
                 f"{r[10]:>10}", f"{str(r[11]):>10}"]
        print(" | ".join(cells))
    return rows


if __name__ == "__main__":
    main()
