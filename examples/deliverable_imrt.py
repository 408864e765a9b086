"""TG-119 C-shape made deliverable: planned with a fluence smoothness term, MU-calibrated, leaf
sequenced, its delivered dose recomputed and everything exported as DICOM.

Run:  python examples/deliverable_imrt.py --out out/deliverable
Writes into the output folder: ct/ (CT series + RS.dcm), RP.dcm (RT Plan with MLC control points),
RD.dcm (RT Dose of the delivered fluence, referencing the RT Plan), dvh.png (optimized vs
delivered), segments.png (the apertures of the first beam) and metrics.json with a ``delivery``
block {"segments", "total_MU", "mu_per_beam", "goals_before", "goals_after", ...}.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from objectives import FluenceSmoothness
from optimizer import PhotonBeams, PlanProblem, deliver, evaluate, phantoms, plots, report
from optimizer.io import write_ct_series, write_rtdose, write_rtstruct
from optimizer.io.rtplan_photon import load_rt_plan, write_rt_plan


def segment_figure(bd, machine, beamlet_mm, max_segments=12) -> Figure:
    """The first ``max_segments`` apertures of one beam (open: white, leaves: grey), MU each."""
    segs = bd.segments()[:max_segments]
    cols = 4
    rows = int(np.ceil(len(segs) / cols))
    fig = Figure(figsize=(3 * cols, 2.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    pairs = np.flatnonzero((machine.leaf_boundaries_mm[1:] > bd.jaw_y_mm[0])
                           & (machine.leaf_boundaries_mm[:-1] < bd.jaw_y_mm[1]))
    x0, x1 = bd.jaw_x_mm[0] - 2 * beamlet_mm, bd.jaw_x_mm[1] + 2 * beamlet_mm
    for ax, (mu, left, right) in zip(axes, segs):
        ax.set_facecolor("0.25")
        for p in pairs:
            y0, y1 = machine.leaf_boundaries_mm[p], machine.leaf_boundaries_mm[p + 1]
            ax.fill_between([left[p], right[p]], y0, y1, color="white", lw=0)
        ax.add_patch(Rectangle(
            (bd.jaw_x_mm[0], bd.jaw_y_mm[0]), np.ptp(bd.jaw_x_mm), np.ptp(bd.jaw_y_mm), fill=False, ec="red"))
        ax.set_xlim(x0, x1)
        ax.set_ylim(bd.jaw_y_mm[0] - beamlet_mm, bd.jaw_y_mm[1] + beamlet_mm)
        ax.set_title(f"{mu:.1f} MU", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(segs):]:
        ax.axis("off")
    fig.suptitle(f"beam {bd.beam} (gantry {bd.gantry_deg:g} deg): first {len(segs)} of {bd.n_segments} "
                 "segments, u = IEC X (mm) across, v = IEC Y (mm) up; red: jaws", fontsize=10)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/deliverable", help="output folder (created)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the files of an earlier run in --out (refused otherwise)")
    ap.add_argument("--spacing-mm", type=float, default=4.0, help="dose grid voxel size, mm")
    ap.add_argument("--smoothness", type=float, default=0.05, help="fluence smoothness weight")
    ap.add_argument("--levels", type=int, default=8, help="intensity levels per beam")
    ap.add_argument("--technique", default="step_and_shoot", choices=["step_and_shoot", "sliding_window"])
    ap.add_argument("--method", default="reducing_levels", choices=["reducing_levels", "sweep"])
    ap.add_argument("--solver", default="CLARABEL", help="cvxpy solver (or FIRST_ORDER)")
    ap.add_argument("--no-normalize", action="store_true",
                    help="keep the sequenced MU (default: scale them so the delivered PTV D95 equals the "
                         "optimized plan's, the usual plan normalization)")
    args = ap.parse_args(argv)
    try:
        report.output_folder(args.out, args.overwrite)
    except FileExistsError as exc:  # nothing of an earlier run is replaced unasked
        ap.error(str(exc))
    if args.levels < 1:  # before the plan is solved (it was refused by deliver.sequence after it)
        ap.error(f"--levels: expected an integer number of intensity levels >= 1, got {args.levels}")
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    patient = phantoms.tg119_cshape(spacing_mm=args.spacing_mm)
    phantoms.add_cshape_helper_structures(patient)
    t0 = time.perf_counter()
    beams = PhotonBeams(gantry_deg=range(0, 360, 40), beamlet_mm=5.0)
    influence = beams.influence(patient, target="PTV")
    t_dose = time.perf_counter() - t0
    problem = PlanProblem(patient, influence, fractions=phantoms.TG119_CSHAPE_FRACTIONS,
                          max_voxels_per_structure=1500)
    for term in phantoms.cshape_planning_terms():
        problem += term
    problem += FluenceSmoothness(weight=args.smoothness)
    plan = problem.solve(solver=args.solver)
    s = plan.solver
    print(f"plan: {influence.n_beamlets} beamlets, solver {s['name']} {s['status']}, "
          f"solve {s['solve_s']:.1f} s")

    t0 = time.perf_counter()
    cal = deliver.calibrate(beams)
    machine = deliver.Machine()
    delivery = deliver.sequence(plan, machine, cal, levels=args.levels, technique=args.technique,
                                method=args.method)
    violations = [v for b in delivery.beams for v in deliver.leaf_rule_violations(b, machine)]
    optimized, delivered = deliver.delivered_dose(plan, beams, delivery)
    t_deliver = time.perf_counter() - t0
    print(f"MU calibration: {cal.calibration.describe()} -> {cal.mu_per_weight:.3f} MU per unit weight "
          f"(d_max {cal.reference_depth_mm:.1f} mm)")
    print(f"sequenced ({args.technique}, {args.method if args.technique == 'step_and_shoot' else ''} "
          f"{args.levels} levels): {delivery.n_segments} segments, {delivery.total_mu:.1f} MU"
          f" per fraction; per beam " + ", ".join(f"{m:.1f}" for m in delivery.mu_per_beam)
          + f"; leaf-rule violations: {len(violations)}")

    goals = phantoms.TG119_CSHAPE_GOALS + phantoms.TG119_CSHAPE_HARD_GOALS
    print("goals of the optimized fluence:")
    print(evaluate.goal_table(plan, goals))
    print("goals of the delivered fluence (sequenced, with leaf transmission and leaf-end leakage):")
    print(evaluate.goal_table(delivered, goals))
    before = [report.goal_row(g) for g in evaluate.evaluate_goals(plan, goals)]
    raw = [report.goal_row(g) for g in evaluate.evaluate_goals(delivered, goals)]
    factor = 1.0
    if not args.no_normalize:
        # plan normalization: every MU times one factor, so the delivered PTV D95 is the optimized one
        factor = evaluate.metric(plan, "PTV", "D95") / evaluate.metric(delivered, "PTV", "D95")
        delivery = delivery.scaled(factor)
        delivered = replace(delivered, dose=delivered.dose * factor, weights=delivered.weights * factor,
                            solver={**delivered.solver, "delivery": delivery.summary()})
        print(f"normalized: MU x {factor:.4f} -> {delivery.total_mu:.1f} MU per fraction; goals:")
        print(evaluate.goal_table(delivered, goals))
    after = [report.goal_row(g) for g in evaluate.evaluate_goals(delivered, goals)]

    fig = plots.dvh([plan, delivered], names=["PTV", "Core", "Ring"], labels=["optimized", "delivered"],
                    title=f"C-shape: optimized vs delivered ({delivery.n_segments} segments)")
    fig.savefig(out / "dvh.png", dpi=110)
    segment_figure(delivery.beams[0], machine, 5.0).savefig(out / "segments.png", dpi=100)

    info = write_ct_series(patient, out / "ct", overwrite=True)
    ss_uid = write_rtstruct(patient, out / "ct" / "RS.dcm", info, overwrite=True)
    plan_uid = write_rt_plan(out / "RP.dcm", delivery, patient, info, structure_set_uid=ss_uid,
                             prescription_Gy=50.0, target_name="PTV", plan_label="cshape IMRT",
                             overwrite=True)
    write_rtdose(delivered, out / "RD.dcm", info, referenced_plan_uid=plan_uid, overwrite=True)
    back = load_rt_plan(out / "RP.dcm")
    same = all(np.array_equal(a.left_mm, b.left_mm) and np.array_equal(a.right_mm, b.right_mm)
               and np.allclose(a.cumulative_mu, b.cumulative_mu, rtol=1e-12, atol=1e-9)
               for a, b in zip(delivery.beams, back.beams))
    n_cp = sum(b.n_control_points for b in delivery.beams)
    print(f"wrote {out / 'RP.dcm'} ({n_cp} control points); read back "
          f"{'identical' if same else 'DIFFERENT'} segments")

    total = time.perf_counter() - t_start
    record = report.metrics(plan, "deliverable_imrt", goals,
                            {"dose": t_dose, "build": s["build_s"] + s.get("compile_s", 0.0),
                             "solve": s["solve_s"], "deliver": t_deliver, "total": total})
    record["delivery"] = {**delivery.summary(), "goals_before": before, "goals_after": after,
                          "normalization_factor": factor, "goals_after_unnormalized": raw,
                          "leaf_rule_violations": len(violations), "rt_plan_round_trip_identical": same,
                          "max_dose_Gy": {"optimized": float(plan.dose.max()),
                                          "delivered": float(delivered.dose.max())},
                          "optimized_recomputed_max_diff_Gy": float(np.abs(optimized.dose - plan.dose).max())}
    record["fluence_smoothness"] = {"weight": args.smoothness}
    print("wrote", report.write_metrics(record, os.fspath(out)), f"(total {total:.1f} s)")
    return record


if __name__ == "__main__":
    main()
