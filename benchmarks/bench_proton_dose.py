"""Proton dose calculation, former model vs the issue-9 model, in one run (same machine, same load).

Run:  python benchmarks/bench_proton_dose.py [--spacing-mm 4] [--ct-spacing-mm 2.5] [--repeat 2] [--rounds 3]

Cases: the TG-119 C-shape of ``examples/proton_cshape.py`` (3 beams, 8 mm spots, 6 mm layers,
3 mm margin) at ``--spacing-mm``, and a CT-size case: the same phantom at ``--ct-spacing-mm``.
Models, each in its own Python process (so peak MB is that process's own peak RSS):

* ``old``: 0.3 % energy spread and 5 mm in-air sigma at every energy, no halo, 3 sigma cut-off
  (the settings before issue 9; the renormalisation and the exact surface are not switchable and
  cost nothing measurable);
* ``new``: the beam-data table, the nuclear halo, 4 core sigmas or the halo reach (2 halo
  sigmas where the halo beyond 4 core sigmas is >= 4 % of the IDD), the kernel beyond the reach
  folded into the outer shell (the defaults);
* ``core``: the same without the halo reach (``halo_cutoff_sigma=0``: the reach of the matrix
  before the field-size-factor fix, with the fold instead of the renormalisation);
* ``new-3``: the defaults with a 3 sigma core cut-off, ``new-6``: with 6 sigmas.

Timing: ``--rounds`` rounds, each running every model once in turn (a fresh process computing
the matrices ``--repeat`` times; its first computation, which builds the process's one-time
tables, is not counted when ``--repeat`` >= 2), so that a change of load on a shared machine
falls on all models alike. Columns: spots, nonzeros of the dose matrix, dose-calculation
seconds (dose and LET x dose) over all counted computations: the median wall time, the best
wall time and the median CPU time of the process (which other jobs disturb less), peak MB
(the largest of the model's processes), the ratios of nonzeros and of the median wall and CPU
seconds to ``old`` (and to ``core``), and the dose fraction the cut-off folds into the shell at
mid-range of 150 MeV (``proton_halo.folded_cutoff``; the fold keeps each spot's integral at its
IDD). Prints one table; the issue's budget is a dose time at most 2 x the old model's, and the halo reach's
at most 1.5 x the nonzeros of ``core``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

_MARK = "BENCH_PROTON_DOSE_JSON "
MODELS = {  # "core" before "new": the ratio columns need it first
    "old": dict(halo=False, energy_spread_pct=0.3, spot_sigma_air_mm=5.0, cutoff_sigma=3.0),
    "core": dict(halo_cutoff_sigma=0.0),
    "new": {},
    "new-3": dict(cutoff_sigma=3.0),
    "new-6": dict(cutoff_sigma=6.0),
}


def _child(model: str, spacing: float, repeat: int) -> None:
    from optimizer import phantoms
    from optimizer.beams import proton_halo as ph
    from optimizer.beams import proton_physics as pp
    from optimizer.beams.proton import HALO_REACH_MIN_FRACTION, SHELL_FRACTION, ProtonBeams

    patient = phantoms.tg119_cshape(spacing_mm=spacing)
    beams = ProtonBeams([180, 90, 270], spot_spacing_mm=8.0, layer_spacing_mm=6.0, margin_mm=3.0,
                        **MODELS[model])
    wall, cpu = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        inf = beams.influence(patient, "PTV")
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    e = 150.0
    z = 0.5 * pp.csda_range_mm(e)
    air, spread = beams.sigma_air_mm(e), beams.spread_pct(e)
    sc = float(pp.lateral_sigma_mm(e, z, air))
    w = float(ph.halo_weight(e, z, spread)) if beams.halo else 0.0
    sh = float(ph.halo_sigma_mm(e, z, air))
    moved = float(ph.folded_cutoff(beams.cutoff_sigma, beams.halo_cutoff_sigma, w, sc, sh,
                                   HALO_REACH_MIN_FRACTION, SHELL_FRACTION)["folded"])
    counted = slice(1 if repeat > 1 else 0, None)  # the first computation builds one-time tables
    rec = {"model": model, "spacing_mm": spacing, "grid": list(patient.grid.shape), "spots": inf.n_beamlets,
           "nnz": inf.nnz, "wall_s": wall[counted], "cpu_s": cpu[counted], "moved_150MeV_mid": moved,
           "peak_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    print(_MARK + json.dumps(rec), flush=True)


def _run(model: str, spacing: float, repeat: int) -> dict:
    cmd = [sys.executable, __file__, "--child", model, "--spacing-mm", str(spacing), "--repeat", str(repeat)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"model {model} at {spacing:g} mm failed (exit {proc.returncode})")
    return json.loads(lines[-1][len(_MARK):])


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spacing-mm", type=float, default=4.0)
    ap.add_argument("--ct-spacing-mm", type=float, default=2.5, help="CT-size case; <= 0 skips it")
    ap.add_argument("--repeat", type=int, default=2, help="computations per process (first not counted)")
    ap.add_argument("--rounds", type=int, default=3, help="processes per model, interleaved")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                    help="in this order; 'old' and 'core' first for their ratio columns")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.spacing_mm, args.repeat)
        return []
    spacings = [args.spacing_mm] + ([args.ct_spacing_mm] if args.ct_spacing_mm > 0 else [])
    rows = []
    print(f"{'grid':>14} {'model':>6} {'spots':>6} {'nnz':>10} {'x old':>6} {'x core':>6} {'dose s':>7} "
          f"{'best s':>7} {'cpu s':>6} {'x old':>6} {'cpu x old':>9} {'x core':>6} {'peak MB':>8} "
          f"{'folded @150 MeV mid':>20}")
    nan = float("nan")
    for spacing in spacings:
        runs = {m: [] for m in args.models}
        for _ in range(max(args.rounds, 1)):
            for model in args.models:
                runs[model].append(_run(model, spacing, args.repeat))
        ref = {}
        for model in args.models:
            r = dict(runs[model][0])
            wall = [x for q in runs[model] for x in q["wall_s"]]
            cpu = [x for q in runs[model] for x in q["cpu_s"]]
            r.update(dose_s=statistics.median(wall), best_s=min(wall), cpu_s=statistics.median(cpu),
                     wall_s=wall, cpu_s_all=cpu, peak_MB=max(q["peak_MB"] for q in runs[model]))
            if model in ("old", "core"):
                ref[model] = r
            ratio = {(k, q): r[q] / ref[k][q] if k in ref else nan for k in ("old", "core")
                     for q in ("nnz", "dose_s", "cpu_s")}
            grid = "x".join(str(n) for n in r["grid"]) + f"@{spacing:g}"
            print(f"{grid:>14} {model:>6} {r['spots']:>6} {r['nnz']:>10,} {ratio['old', 'nnz']:>6.2f} "
                  f"{ratio['core', 'nnz']:>6.2f} {r['dose_s']:>7.2f} {r['best_s']:>7.2f} {r['cpu_s']:>6.2f} "
                  f"{ratio['old', 'dose_s']:>6.2f} {ratio['old', 'cpu_s']:>9.2f} "
                  f"{ratio['core', 'dose_s']:>6.2f} {r['peak_MB']:>8.0f} "
                  f"{100 * r['moved_150MeV_mid']:>19.2f}%", flush=True)
            rows.append(r)
    return rows


if __name__ == "__main__":
    main()
