"""AAPM TG-119 C-shape planned with 3 proton pencil-beam-scanning beams and a LET x dose limit.

Run:  python examples/proton_cshape.py --out out/proton_cshape

Beams: gantry 180 (posterior), 90 and 270 (laterals) deg, IEC 61217. The C opens anteriorly:
the posterior beam stops in the posterior arm and the tips of the C; a lateral beam covers the near
arm with spots that stop just short of the core (their distal, high-LET fall-off reaches it) or
the far arm through the core (low-LET entrance dose). 50 Gy in 25 fractions of **physical** dose
(the TG-119 goals, ``phantoms.TG119_CSHAPE_GOALS``), optimized as in ``examples/tg119_cshape.py``
with the PTV goals and the core D10 goal hard (CVaR surrogates, 0.5-1 Gy of room), plus a hard,
voxel-wise LET x dose limit in the core (``objectives.LETDoseMax``, exact linear constraint; the
LET x dose matrix is the "let_dose" form of the influence set that ``ProtonBeams.influence``
returns, which ``PlanProblem`` reads for the LET terms).

Evaluation on the full grid (recomputed from the spot weights):

* TG-119 goals on the physical dose, plus the hard-case core goal (D10 <= 10 Gy);
* the LET x dose limit, checked in every core voxel;
* dose-averaged LET (LETd, keV/um) per structure where the dose is > 1 % of the maximum;
* RBE-weighted dose with the constant 1.1 and with the variable RBE of McNamara et al. (Phys Med
  Biol 2015;60:8399), (alpha/beta)x = 10 Gy in the PTV, 2 Gy in the core and 3 Gy elsewhere
  (``ALPHA_BETA_GY``), evaluated at the plan's dose per fraction and LETd; the goals are also
  checked on it as Gy(RBE), i.e. 1.1 x the physical limits ("rbe"/"mcnamara_goals").

Writes into the output folder: metrics.json (shared schema of ``optimizer.report.metrics`` plus
"let_dose_limit", "letd", "rbe" and "settings"), dvh.png (physical, 1.1 x physical and McNamara
RBE-weighted DVHs), dose.png, letd.png, spots.png (all beams), spots_beam1_layers.png (the
posterior beam by energy layer) and proton_cshape.plan (with the LETd and McNamara RBE-weighted
dose maps in ``plan.extras``).

Run time at the defaults (4 mm grid, 8 mm spots, 6 mm layers; 2362 spots, 4.1e6 nonzeros per
matrix) on 2 shared cores: about 50 s in all, of which dose calculation 2 s and the CLARABEL solve
35-40 s; peak RSS about 620 MB (``benchmarks/bench_proton.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np

from objectives import (
    RBE_CONSTANT,
    DVHMax,
    LETDoseMax,
    rbe_weighted_dose,
)
from optimizer import PlanProblem, ProtonBeams, evaluate, let_d_map, phantoms, plots, report

#: Gantry angles, degrees (IEC 61217): posterior and both laterals.
GANTRY_DEG = (180.0, 90.0, 270.0)
#: (alpha/beta)x for the McNamara RBE, Gy: PTV (tumour-like) 10, core (late-responding, spinal
#: cord-like) 2, every other voxel 3 (generic normal tissue).
ALPHA_BETA_GY = {"PTV": 10.0, "Core": 2.0}
ALPHA_BETA_DEFAULT_GY = 3.0
#: LETd and its statistics are reported where the physical dose exceeds this % of its maximum
#: (the far distal tail of a spot has LETd of tens of keV/um at negligible dose).
LETD_DOSE_THRESHOLD_PCT = 1.0
#: Default LET x dose limit in every core voxel, keV/um x Gy (total course). Without it the plan
#: at the defaults peaks at about 66 keV/um x Gy in the core, where the distal fall-off of the
#: lateral beams' spots ends; the limit lowers that peak by a quarter. Much tighter limits
#: conflict with the hard core D10 limit (low-LET entrance dose through the core is then the only
#: way to cover the far side of the C): 48 solves, 45 did not (CLARABEL numerical failure).
DEFAULT_LET_DOSE_LIMIT = 50.0


def alpha_beta_map(patient) -> np.ndarray:
    """[z, y, x] map of (alpha/beta)x in Gy: ``ALPHA_BETA_GY`` per structure, the default elsewhere."""
    ab = np.full(patient.grid.shape, ALPHA_BETA_DEFAULT_GY)
    for name, value in ALPHA_BETA_GY.items():
        ab[patient.structure(name).mask] = value
    return ab


def variable_rbe_dose(plan, letd: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """McNamara RBE-weighted total dose, Gy(RBE), on the grid (0 where there is no dose)."""
    return np.asarray(rbe_weighted_dose(plan.dose, np.nan_to_num(letd), ab, fractions=plan.fractions))


def rbe_metrics(dose: np.ndarray, plan, names) -> dict:
    out = {}
    for n in names:
        d = dose[plan.patient.structure(n).mask]
        out[n] = {"D95_GyRBE": evaluate.metric_value(d, "D95"), "D10_GyRBE": evaluate.metric_value(d, "D10"),
                  "mean_GyRBE": float(d.mean()), "max_GyRBE": float(d.max())}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/proton_cshape", help="output folder (created)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the files of an earlier run in --out (refused otherwise)")
    ap.add_argument("--spacing-mm", type=float, default=4.0, help="dose grid voxel size, mm")
    ap.add_argument("--spot-spacing-mm", type=float, default=8.0,
                    help="lateral spot spacing at isocentre, mm (in-air spot sigma 5 mm)")
    ap.add_argument("--layer-spacing-mm", type=float, default=6.0, help="energy-layer spacing in WEPL, mm")
    ap.add_argument("--margin-mm", type=float, default=3.0, help="margin around the PTV for Bragg peaks, mm")
    ap.add_argument("--let-dose-limit", type=float, default=DEFAULT_LET_DOSE_LIMIT,
                    help="hard LET x dose limit in every core voxel, keV/um x Gy (total course); "
                         "<= 0 switches it off")
    ap.add_argument("--max-voxels", type=int, default=1500,
                    help="helper structures (ring, tissue) are optimized on this many sampled voxels")
    ap.add_argument("--solver", default=None, help="any installed cvxpy solver (default CLARABEL)")
    ap.add_argument("--no-files", action="store_true", help="write metrics.json only (benchmarks)")
    args = ap.parse_args(argv)
    try:
        report.output_folder(args.out, args.overwrite)
    except FileExistsError as exc:  # nothing of an earlier run is replaced unasked
        ap.error(str(exc))
    t_start = time.perf_counter()

    patient = phantoms.tg119_cshape(spacing_mm=args.spacing_mm)
    phantoms.add_cshape_helper_structures(patient, ring_color=(0.9, 0.7, 0.1), tissue_color=(0.5, 0.8, 0.5))
    print(f"phantom: grid {patient.grid.shape} at {args.spacing_mm:g} mm, "
          + ", ".join(f"{s.name} {s.n_voxels} voxels" for s in patient.structures))

    # -- dose and LET x dose influence --------------------------------------------------------------
    t0 = time.perf_counter()
    beams = ProtonBeams(GANTRY_DEG, spot_spacing_mm=args.spot_spacing_mm,
                        layer_spacing_mm=args.layer_spacing_mm, margin_mm=args.margin_mm)
    influence = beams.influence(patient, target="PTV", progress=True)  # forms "dose" and "let_dose"
    let_inf = influence.forms["let_dose"]
    t_dose = time.perf_counter() - t0
    print(f"influence: {influence.matrix.shape[0]} voxels x {influence.n_beamlets} spots, "
          f"{influence.nnz} dose and {let_inf.nnz} LET x dose nonzeros, {t_dose:.1f} s")

    # -- problem ------------------------------------------------------------------------------------
    n = phantoms.TG119_CSHAPE_FRACTIONS
    problem = PlanProblem(patient, influence, fractions=n, max_voxels_per_structure=args.max_voxels)
    for term in phantoms.cshape_planning_terms():
        problem += term
    problem += DVHMax("Core", 24.0, volume_pct=10)  # TG-119 core goal, hard (CVaR, 1 Gy of room)
    limit = args.let_dose_limit if args.let_dose_limit > 0 else None
    if limit is not None:
        problem += LETDoseMax("Core", limit)
    plan = problem.solve(solver=args.solver)
    s = plan.solver
    print(f"solver {s['name']}: {s['status']}, objective {s['objective']:.4g}, {s['iterations']} iterations, "
          f"build {s['build_s']:.1f} s, compile {s['compile_s']:.1f} s, solve {s['solve_s']:.1f} s")

    # -- evaluation on the recomputed plan ---------------------------------------------------------
    goals = phantoms.TG119_CSHAPE_GOALS + phantoms.TG119_CSHAPE_HARD_GOALS
    print(evaluate.goal_table(plan, goals))

    core = patient.structure("Core").mask
    let_dose_total = let_inf.dose_per_fraction(plan.weights) * n  # keV/um x Gy, total course
    core_ld = let_dose_total[core]
    # the tolerance the plan's own hard-term check accepted (CLARABEL 1e-3, the first-order
    # certificate 1e-2, in the term's unit), never below 1e-6 relative
    tol = None if limit is None else max(float(plan.solver.get("hard_tolerance") or 0.0), 1e-6 * abs(limit))
    ld_check = {"structure": "Core", "limit_keVum_Gy": limit, "max_keVum_Gy": float(core_ld.max()),
                "mean_keVum_Gy": float(core_ld.mean()), "voxels_checked": int(core.sum()),
                "met": None if limit is None else bool(core_ld.max() <= limit + tol),
                "max_minus_limit_keVum_Gy": None if limit is None else float(core_ld.max() - limit),
                "tolerance_keVum_Gy": tol,
                "tolerance": "plan.solver['hard_tolerance'], at least 1e-6 relative"}
    print(f"LET x dose in the core: max {ld_check['max_keVum_Gy']:.4f} keV/um Gy over {core.sum()} voxels, "
          f"limit {limit if limit is not None else 'none'}"
          f"{f' (+{tol:g} tolerance)' if tol is not None else ''}: "
          f"{'met' if ld_check['met'] else 'NOT met' if limit is not None else '-'}")

    letd = let_d_map(influence, let_inf, plan.weights, min_dose_Gy=1e-6)  # NaN without dose
    hot = plan.dose > LETD_DOSE_THRESHOLD_PCT / 100 * plan.dose.max()
    letd_stats = {"dose_threshold_pct_of_max": LETD_DOSE_THRESHOLD_PCT, "structures": {}}
    for name in ("PTV", "Core", "Ring", "Body"):
        sel = patient.structure(name).mask & hot
        vals = letd[sel]
        letd_stats["structures"][name] = (
            {"mean_keV_um": float(vals.mean()), "max_keV_um": float(vals.max()),
             "dose_weighted_mean_keV_um": float(np.sum(vals * plan.dose[sel]) / np.sum(plan.dose[sel])),
             "voxels": int(sel.sum())} if sel.any() else {"voxels": 0})
    for name, st in letd_stats["structures"].items():
        if st["voxels"]:
            print(f"LETd {name:<5} (dose > {LETD_DOSE_THRESHOLD_PCT:g} % max): mean {st['mean_keV_um']:.2f}, "
                  f"dose-weighted mean {st['dose_weighted_mean_keV_um']:.2f}, "
                  f"max {st['max_keV_um']:.2f} keV/um")

    ab = alpha_beta_map(patient)
    rbe_dose = variable_rbe_dose(plan, letd, ab)
    plan.extras["RBE_dose_Gy"] = rbe_dose
    names = ["PTV", "Core", "Ring"]
    rbe = {"model": "McNamara, Schuemann & Paganetti, Phys Med Biol 2015;60:8399",
           "alpha_beta_Gy": dict(ALPHA_BETA_GY, other=ALPHA_BETA_DEFAULT_GY),
           "mcnamara": rbe_metrics(rbe_dose, plan, names),
           "constant": rbe_metrics(RBE_CONSTANT * plan.dose, plan, names)}
    # the goals as Gy(RBE) under the clinical constant RBE (1.1 x the physical limits), checked on
    # the McNamara RBE-weighted dose: would the plan still meet them if the RBE varied?
    rbe["mcnamara_goals"] = [
        {"structure": st, "metric": m, "op": op, "limit_GyRBE": RBE_CONSTANT * lim,
         "value_GyRBE": v, "met": bool(v >= RBE_CONSTANT * lim if op == ">=" else v <= RBE_CONSTANT * lim)}
        for st, m, op, lim in goals
        for v in [evaluate.metric_value(rbe_dose[patient.structure(st).mask], m)]]
    print(f"RBE-weighted (McNamara, a/b PTV {ALPHA_BETA_GY['PTV']:g} Gy, Core {ALPHA_BETA_GY['Core']:g} Gy, "
          f"else {ALPHA_BETA_DEFAULT_GY:g} Gy) vs 1.1 x physical, Gy(RBE):")
    for name in names:
        v, c = rbe["mcnamara"][name], rbe["constant"][name]
        print(f"  {name:<5} D95 {v['D95_GyRBE']:6.2f} ({c['D95_GyRBE']:6.2f})  D10 {v['D10_GyRBE']:6.2f} "
              f"({c['D10_GyRBE']:6.2f})  mean {v['mean_GyRBE']:6.2f} ({c['mean_GyRBE']:6.2f})")
    print("goals x 1.1 in Gy(RBE) on the McNamara dose: " + ", ".join(
        f"{g['structure']} {g['metric']} {g['op']} {g['limit_GyRBE']:.1f}: {g['value_GyRBE']:.2f} "
        f"{'met' if g['met'] else 'NOT met'}" for g in rbe["mcnamara_goals"]))

    # -- figures and archive ------------------------------------------------------------------------
    os.makedirs(args.out, exist_ok=True)
    if not args.no_files:
        rbe_plan = dataclasses.replace(plan, dose=rbe_dose)
        const_plan = dataclasses.replace(plan, dose=RBE_CONSTANT * plan.dose)
        fig = plots.dvh([plan, const_plan, rbe_plan], names=names,
                        labels=["physical", "RBE 1.1", "McNamara RBE"], xlabel="Dose (Gy) / Gy(RBE)",
                        title="C-shape, 3 proton beams: physical vs RBE-weighted DVH")
        fig.savefig(os.path.join(args.out, "dvh.png"), dpi=110)
        plots.dose_slices(plan, names=["PTV", "Core", "Body"],
                          title="C-shape, 3 proton PBS beams: physical dose").savefig(
            os.path.join(args.out, "dose.png"), dpi=110)
        letd_shown = np.where(plan.dose > 0.1 * plan.dose.max(), np.nan_to_num(letd), 0.0)
        plots.dose_slices(plan, values=letd_shown, label="LETd (keV/um)", names=["PTV", "Core", "Body"],
                          threshold_pct=1.0,
                          title="Dose-averaged LET where the dose exceeds 10 % of its maximum").savefig(
            os.path.join(args.out, "letd.png"), dpi=110)
        plots.spot_maps(plan).savefig(os.path.join(args.out, "spots.png"), dpi=110)
        # the posterior beam layer by layer: deep layers only keep spots behind the arms of the C
        plots.spot_maps(plan, beam=0).savefig(os.path.join(args.out, "spots_beam1_layers.png"), dpi=110)
        plan.save(os.path.join(args.out, "proton_cshape.plan"), overwrite=True)

    total = time.perf_counter() - t_start
    record = report.metrics(plan, "proton_cshape", goals,
                            {"dose": t_dose, "build": s["build_s"] + s["compile_s"], "solve": s["solve_s"],
                             "total": total})
    record["hard_core_goal_met"] = record["goals"][-1]["met"]
    record["timings_s"]["build_only"] = round(float(s["build_s"]), 3)
    record["timings_s"]["compile"] = round(float(s["compile_s"]), 3)
    record["sizes"]["let_nnz"] = let_inf.nnz
    record["sizes"]["spots"] = influence.n_beamlets
    record["sizes"]["influence_rows"] = int(influence.matrix.shape[0])
    record["let_dose_limit"] = ld_check
    record["letd"] = letd_stats
    record["rbe"] = rbe
    record["settings"] = {"gantry_deg": list(GANTRY_DEG), "spacing_mm": args.spacing_mm,
                          "spot_spacing_mm": args.spot_spacing_mm, "layer_spacing_mm": args.layer_spacing_mm,
                          "margin_mm": args.margin_mm, "layers": [len(b["energies"]) for b in plan.beams],
                          "spots_per_beam": [int(np.sum(plan.beamlets["beam"] == b))
                                             for b in range(len(plan.beams))]}
    print("wrote", report.write_metrics(record, args.out), f"(total {total:.1f} s)")
    return record


if __name__ == "__main__":
    main()
