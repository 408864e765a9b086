"""Benchmark of the proton PBS C-shape plan (examples/proton_cshape.py): one table row per grid
spacing.

Run:  python benchmarks/bench_proton.py [--spacing-mm 4 3] [--let-dose-limit 50] [--solver CLARABEL]

Each spacing runs in its own Python process (the example's ``main`` with ``--no-files``), so
peak MB is that process's own peak resident set size (ru_maxrss: NumPy/SciPy arrays, the cvxpy
compilation and the solver's memory). Columns: spots; grid voxels, rows of the influence
matrices (voxels any spot reaches) and optimization voxels; nonzeros of the dose and LET x dose
matrices; dose-calculation, problem-build, cvxpy-compile and solver seconds; total wall seconds;
peak MB; the optimal objective; the TG-119 goals met (of 3) and whether the hard LET x dose limit
in the core holds on the recomputed plan.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "examples", "proton_cshape.py")
_MARK = "BENCH_PROTON_JSON "


def _child(example_args: list[str]) -> None:
    """Run the example in this process and print its record with the peak RSS on one line."""
    spec = importlib.util.spec_from_file_location("proton_cshape", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with tempfile.TemporaryDirectory() as out:
        rec = module.main(["--out", out, "--no-files"] + example_args)
    rec["peak_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print(_MARK + json.dumps({k: rec[k] for k in ("sizes", "timings_s", "solver", "goals", "let_dose_limit",
                                                  "peak_MB", "settings")}), flush=True)


def _row(spacing: float, extra: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--spacing-mm", str(spacing)] + extra
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"spacing {spacing:g} mm: the example failed (exit {proc.returncode})")
    return json.loads(lines[-1][len(_MARK):])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spacing-mm", type=float, nargs="+", default=[4.0])
    ap.add_argument("--spot-spacing-mm", type=float, default=None, help="default: the example's")
    ap.add_argument("--layer-spacing-mm", type=float, default=None, help="default: the example's")
    ap.add_argument("--let-dose-limit", type=float, default=None, help="default: the example's")
    ap.add_argument("--solver", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    extra = []
    for flag, value in (("--spot-spacing-mm", args.spot_spacing_mm),
                        ("--layer-spacing-mm", args.layer_spacing_mm),
                        ("--let-dose-limit", args.let_dose_limit), ("--solver", args.solver)):
        if value is not None:
            extra += [flag, str(value)]
    if args.child:
        _child(["--spacing-mm", str(args.spacing_mm[0])] + extra)
        return None
    rows = []
    for spacing in args.spacing_mm:
        print(f"running spacing {spacing:g} mm ...", flush=True)
        rows.append((spacing, _row(spacing, extra)))
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
          f"proton C-shape, 3 beams, 25 fx")
    header = ("spacing_mm", "spots", "grid_vox", "inf_rows", "opt_vox", "nnz_dose", "nnz_let", "dose_s",
              "build_s", "compile_s", "solve_s", "total_s", "peak_MB", "objective", "goals", "LETxD_ok")
    print(" | ".join(f"{h:>10}" for h in header))
    for spacing, r in rows:
        z, t = r["sizes"], r["timings_s"]
        met = sum(g["met"] for g in r["goals"][:3])
        ld = r["let_dose_limit"]
        cells = [f"{spacing:10.1f}", f"{z['spots']:10d}", f"{z['grid_voxels']:10d}",
                 f"{z['influence_rows']:10d}", f"{z['opt_voxels']:10d}", f"{z['nnz']:10d}",
                 f"{z['let_nnz']:10d}", f"{t['dose']:10.1f}", f"{t['build_only']:10.1f}",
                 f"{t['compile']:10.1f}", f"{t['solve']:10.1f}", f"{t['total']:10.1f}",
                 f"{r['peak_MB']:10.0f}", f"{r['solver']['objective']:10.4g}", f"{met}/3".rjust(10),
                 f"{str(ld['met']):>10}"]
        print(" | ".join(cells))
    s = rows[0][1]["settings"]
    print(f"settings: gantry {s['gantry_deg']} deg, spot spacing {s['spot_spacing_mm']:g} mm, layer spacing "
          f"{s['layer_spacing_mm']:g} mm, margin {s['margin_mm']:g} mm; LET x dose limit "
          f"{rows[0][1]['let_dose_limit']['limit_keVum_Gy']} keV/um Gy in the core")
    return rows


if __name__ == "__main__":
    main()
