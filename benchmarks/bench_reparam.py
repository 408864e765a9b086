"""Benchmark: re-solving the personalized BED/GARD plan through cvxpy Parameters versus fresh builds.

Run:  python benchmarks/bench_reparam.py [--n 20] [--small] [--way both|reparam|fresh]

The problem is plan B of ``examples/personalized_bed.py`` (TG-119 C-shape, GARD floor from the
RSI on the PTV, per-voxel BED floors on the hypoxic voxels, core BEDMax / BEDCVaRMax, soft
ring / tissue terms). Scenario i sweeps the tumour's radiosensitivity index (RSI 0.40 ... 0.46:
the GARD floor, the hypoxia-modified alpha/beta maps and the hypoxic BED floor map all change)
and the core's alpha/beta (2 ... 3 Gy: the BED coefficients of both core limits change).

* reparam: ONE PlanProblem; per scenario the term / LQ inputs are changed in place
  (``term.rsi = ...``, ``lq.alpha_map = ...``, ``term.bed_Gy = ...``,
  ``lq.alpha_beta["Core"] = ...``) and ``problem.solve()`` is called again: the terms refresh
  their Parameters and cvxpy reuses the compiled problem (DPP), so only the first solve compiles.
* fresh: per scenario a new PlanProblem with new terms is built, compiled and solved.

Prints one table: sizes (grid and optimization voxels, beamlets, nnz of the optimized rows,
cvxpy variables / constraints), compile seconds (first solve), mean seconds per scenario of each
way (wall clock of ``problem.solve()``, i.e. refresh + compile if any + solver), peak MB, and
the largest relative difference of the optimal objectives between the two ways (must be
<= 1e-4; the script exits with status 1 otherwise). Peak MB is the process's peak resident set
size (``ru_maxrss``, solver memory included); it only grows, so the "fresh" figure includes the
"reparam" one: use ``--way`` to run one way per process for clean memory figures.

``--small`` uses an 8 mm grid and 10 mm beamlets (a few seconds per scenario instead of about
half a minute; the whole run with the default N = 20 takes 1-2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import resource
import sys
import time

import numpy as np

from objectives import LQ, BEDFloor, GARDFloor, SquaredOverdose
from objectives.radiobiology import dose_for_gard
from optimizer import PhotonBeams, PlanProblem, SolverError, phantoms

HERE = os.path.dirname(os.path.abspath(__file__))
REL_TOL = 1e-4


def _example():
    path = os.path.join(HERE, "..", "examples", "personalized_bed.py")
    spec = importlib.util.spec_from_file_location("personalized_bed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Scenario:
    """Inputs of one sweep point: tumour RSI and core alpha/beta (Gy)."""

    def __init__(self, ex, po2, patient, gard, rsi, core_ab):
        self.rsi, self.core_ab, self.gard = float(rsi), float(core_ab), float(gard)
        _, self.alpha_map, self.beta_map = ex.tumour_lq(po2, rsi)
        idx = patient.flat_indices("Hypoxic")
        self.bed_floor = np.zeros(patient.grid.shape)
        self.bed_floor.ravel()[idx] = gard / self.alpha_map.ravel()[idx]  # GARD_i = alpha_i BED_i
        self.oxic_floor_Gy = float(dose_for_gard(gard, phantoms.TG119_CSHAPE_FRACTIONS, rsi=rsi))


def build(ex, patient, influence, s: Scenario, max_voxels: int):
    """Plan B of the example for scenario ``s``; returns the problem and the handles to sweep."""
    lq_t = LQ(alpha_map=s.alpha_map.copy(), beta_map=s.beta_map.copy())
    lq_oar = LQ({"Core": s.core_ab}, default=ex.ALPHA_BETA_DEFAULT_GY)
    problem = PlanProblem(patient, influence, fractions=phantoms.TG119_CSHAPE_FRACTIONS,
                          max_voxels_per_structure=max_voxels)
    gard = GARDFloor("PTV", s.gard, rsi=s.rsi)
    floor = BEDFloor("Hypoxic", s.bed_floor, lq_t)
    # the hot-spot threshold is kept at the first scenario's value in both ways (a soft term's
    # threshold is a Parameter too, but holding it fixed keeps the sweep about the biology)
    problem += gard
    problem += floor
    problem += SquaredOverdose("PTV", 52.0, weight=10.0)
    ex.shared_terms(problem, lq_oar)
    return problem, {"gard": gard, "floor": floor, "lq_t": lq_t, "lq_oar": lq_oar}


def apply(handles, s: Scenario) -> None:
    """Change the inputs of an existing problem in place to scenario ``s`` (no rebuild)."""
    handles["gard"].rsi = s.rsi
    handles["lq_t"].alpha_map = s.alpha_map
    handles["lq_t"].beta_map = s.beta_map
    handles["floor"].bed_Gy = s.bed_floor
    handles["lq_oar"].alpha_beta["Core"] = s.core_ab


def _timed_solve(problem, solver, options):
    """(plan or None, wall seconds, error text or None)."""
    t0 = time.perf_counter()
    try:
        plan = problem.solve(solver=solver, **options)
    except SolverError as exc:  # inaccurate / failed: recorded, the sweep goes on
        return None, time.perf_counter() - t0, str(exc)
    return plan, time.perf_counter() - t0, None


def _line(way, i, n, s, plan, wall, err):
    head = f"  {way:<7} {i + 1:3d}/{n}: RSI {s.rsi:.3f}, core a/b {s.core_ab:.2f} Gy: "
    if plan is None:
        return head + f"FAILED after {wall:.2f} s: {err}"
    return head + (f"objective {plan.solver['objective']:.8g}, {wall:.2f} s "
                   f"(compile {plan.solver['compile_s']:.2f} s, solver {plan.solver['solve_s']:.2f} s)")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20, help="number of scenarios (RSI / alpha/beta values)")
    ap.add_argument("--small", action="store_true", help="8 mm grid, 10 mm beamlets (fast)")
    ap.add_argument("--way", choices=("both", "reparam", "fresh"), default="both")
    ap.add_argument("--solver", default=None, help="cvxpy solver (default CLARABEL)")
    ap.add_argument("--tol", type=float, default=1e-7,
                    help="CLARABEL tol_gap_rel / tol_gap_abs / tol_feas (its default 1e-8 sometimes ends "
                         "'almost solved' on these problems); 0 keeps the solver's defaults")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n: expected at least 1 scenario")
    ex = _example()
    options = {}
    if args.tol > 0 and (args.solver is None or args.solver.upper() == "CLARABEL"):
        options = {"tol_gap_rel": args.tol, "tol_gap_abs": args.tol, "tol_feas": args.tol}
    spacing, beamlet, max_voxels = (8.0, 10.0, 400) if args.small else (4.0, 6.0, 1000)
    patient, po2 = ex.build_patient(spacing, 12.0)
    t0 = time.perf_counter()
    influence = PhotonBeams(gantry_deg=range(0, 360, 40), beamlet_mm=beamlet).influence(patient, target="PTV")
    t_dose = time.perf_counter() - t0
    gard = 20.5
    rsis = np.linspace(0.40, 0.46, args.n)
    core_abs = np.linspace(2.0, 3.0, args.n)
    scenarios = [Scenario(ex, po2, patient, gard, r, a) for r, a in zip(rsis, core_abs)]

    problem, handles = build(ex, patient, influence, scenarios[0], max_voxels)
    t0 = time.perf_counter()
    cvx = problem.build()
    t_build = time.perf_counter() - t0
    dpp, dcp = cvx.is_dpp(), cvx.is_dcp()
    print(f"problem.build(): is_dcp {dcp}, is_dpp {dpp} ({t_build:.2f} s)")
    if not (dpp and dcp):
        print("the personalized problem is not DPP/DCP: parameter re-solves would recompile; aborting")
        return {"is_dpp": dpp, "is_dcp": dcp}
    n_rows = problem.n_opt_voxels
    used = {patient.structure(t.structure).name for t in problem.terms}
    nnz = int(influence.rows_of(np.unique(np.concatenate(
        [problem.structure_data(name).voxel_index for name in sorted(used)]))).nnz)
    n_var = sum(int(v.size) for v in cvx.variables())
    n_con = sum(int(c.size) for c in cvx.constraints)
    n_par = sum(int(p.size) for p in cvx.parameters())
    print(f"grid {patient.grid.shape} ({spacing:g} mm), {n_rows} optimization voxels, "
          f"{influence.n_beamlets} beamlets, {nnz} nonzeros in the optimized rows; cvxpy: {n_var} "
          f"variable entries, {n_con} constraint entries, {n_par} parameter entries; dose {t_dose:.1f} s")

    res = {"reparam": [], "fresh": []}
    times = {"reparam": [], "fresh": []}
    compile_first = None
    peak = {}
    if args.way in ("both", "reparam"):
        for i, s in enumerate(scenarios):
            if i:
                apply(handles, s)
            plan, wall, err = _timed_solve(problem, args.solver, options)
            if i == 0 and plan is not None:
                compile_first = plan.solver["compile_s"]
            res["reparam"].append(plan.solver["objective"] if plan is not None else np.nan)
            times["reparam"].append(wall)
            print(_line("reparam", i, args.n, s, plan, wall, err), flush=True)
        peak["reparam"] = _peak_mb()
    if args.way in ("both", "fresh"):
        for i, s in enumerate(scenarios):
            t0 = time.perf_counter()
            fresh, _ = build(ex, patient, influence, s, max_voxels)
            plan, _, err = _timed_solve(fresh, args.solver, options)
            wall = time.perf_counter() - t0  # terms + assembly + compile + solve
            if compile_first is None and plan is not None:
                compile_first = plan.solver["compile_s"]
            res["fresh"].append(plan.solver["objective"] if plan is not None else np.nan)
            times["fresh"].append(wall)
            print(_line("fresh", i, args.n, s, plan, wall, err), flush=True)
        peak["fresh"] = _peak_mb()

    max_rel = None
    failed = {way: int(np.count_nonzero(~np.isfinite(np.array(v, dtype=float)))) for way, v in res.items()}
    if res["reparam"] and res["fresh"]:
        a, b = np.array(res["reparam"]), np.array(res["fresh"])
        both = np.isfinite(a) & np.isfinite(b)
        if both.any():
            max_rel = float(np.max(np.abs(a[both] - b[both]) / np.maximum(np.abs(b[both]), 1e-12)))

    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"solver {args.solver or 'CLARABEL (default)'} {options or '(default tolerances)'}")
    print("s/solve: mean wall seconds per scenario (reparam: refresh + solve, compile on the first only; "
          "fresh: terms + assembly + compile + solve); first_s / rest_s: first scenario / mean of the rest")
    header = ("way", "N", "failed", "grid_vox", "opt_vox", "beamlets", "nnz", "compile_s", "s/solve",
              "first_s", "rest_s", "peak_MB")
    print(" | ".join(f"{h:>9}" for h in header))
    for way in ("reparam", "fresh"):
        if not times[way]:
            continue
        t = np.array(times[way])
        rest = float(t[1:].mean()) if len(t) > 1 else float("nan")
        compile_s = compile_first if compile_first is not None else float("nan")
        cells = [f"{way:>9}", f"{len(t):9d}", f"{failed[way]:9d}", f"{patient.grid.n_voxels:9d}",
                 f"{n_rows:9d}", f"{influence.n_beamlets:9d}", f"{nnz:9d}", f"{compile_s:9.2f}",
                 f"{t.mean():9.2f}", f"{t[0]:9.2f}", f"{rest:9.2f}", f"{peak[way]:9.0f}"]
        print(" | ".join(cells))
    if max_rel is not None:
        ok = max_rel <= REL_TOL
        print(f"max relative objective difference reparam vs fresh: {max_rel:.2e} "
              f"({'ok' if ok else 'FAIL'}: must be <= {REL_TOL:g})")
        if times["reparam"] and times["fresh"]:
            print(f"speed-up per scenario (mean fresh / mean reparam): "
                  f"{np.mean(times['fresh']) / np.mean(times['reparam']):.2f}x")
        if not ok:
            sys.exit(1)
    return {"is_dpp": dpp, "times": times, "objectives": res, "max_rel_diff": max_rel,
            "compile_s": compile_first, "peak_MB": peak, "failed": failed}


if __name__ == "__main__":
    main()
