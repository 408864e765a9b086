"""FLASH proton PBS plans with and without dose-rate constraints and immune sparing.

Run:  python examples/flash_proton.py --out out/flash_proton

Patient: the thorax phantom of ``optimizer.flash.phantom`` (lungs, heart, cord, a 15 mm tumour in
the right lung), 40 Gy in 5 fractions. Plans (physical dose; soft PTV prescription, soft OAR
sparing, so every variant is feasible and the price of each lever shows in the goals):

* ``bragg_reference``: Bragg-peak IMPT, beams 0 and 315 deg, delivered by a degraded beam of
  ``--current-bragg-nA`` (20 nA, our choice: far less current reaches the nozzle below the top
  energy);
* ``bragg_dadr``: the same with the hard, linear DADR >= 40 Gy/s limit (``objectives.dose_rate.
  DADRMin``) in the lung voxels that get >= ``--dadr-threshold-Gy`` (course) in the reference plan
  and where some spot alone reaches 1.5 x 40 Gy/s (``dadr_reachable``); delivered through the
  two-stage minimum-spot-weight method (``two_stage_minimum_weight``; minimum = the weight of the
  250 us minimum spot time), whose loss is reported;
* ``bragg_immune``: the reference plus the immune-sparing terms (EDIC as a linear mean-dose cost,
  ``immune_terms``, weight ``--immune-weight``);
* ``bragg_dadr_immune``: both (the main plan, whose numbers fill the ``flash`` block);
* ``transmission``: two single-energy shoot-through beams (0 and 270 deg) at ``--current-
  transmission-nA`` (200 nA), the usual FLASH set-up.

For each plan: DADR (van de Water et al. 2019) and PBS dose rate (Folkerts et al. 2020; threshold
dose ``--pbs-threshold-Gy`` per fraction) in every voxel from the delivery model (OpenTPS timing
parameters), the % of each OAR's voxels with a dose per fraction >= ``--rate-min-dose-Gy`` whose
rate is >= 40 Gy/s, the delivery time of a fraction, EDIC (Jin et al. / Ladbury et al. 2019) and the
goals. metrics.json: the shared schema of ``optimizer.report.metrics`` for the main plan, plus
``flash`` ({"dadr_V40_pct": {NAME: %}, "pbs_rate_V40_pct": {...}, "edic_Gy", "delivery_time_s"}),
``plans`` (the same block, goals met and objective for every plan), ``min_weight`` (the two-stage
report) and ``settings``. Figures: dvh.png, drvh_dadr.png, drvh_pbs.png (dose-rate-volume
histograms), dadr.png, pbs_rate.png (rate maps of the main plan), dose.png.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np

from objectives import SquaredDeviation, SquaredOverdose, SquaredUnderdose
from optimizer import PlanProblem, ProtonBeams, evaluate, plots, report
from optimizer.flash import (
    FLASH_RATE_GY_S,
    Machine,
    dadr_constraint,
    dadr_map,
    dadr_reachable,
    delivery_timeline,
    dose_rate_region,
    edic,
    immune_terms,
    pbs_dose_rate_map,
    rate_volume_pct,
    subset_spots,
    transmission_influence,
    two_stage_minimum_weight,
)
from optimizer.flash.phantom import thorax

FRACTIONS = 5
PRESCRIPTION_GY = 40.0
OARS = ("Lungs", "Heart", "Cord", "Body")
#: Rates count as >= 40 Gy/s within 0.1 %: the DADR limit holds to the solver's hard-term tolerance
#: (1e-3 Gy on d_i (1 - DADR_i / R), i.e. DADR_i >= R (1 - 1e-3 / d_i), d_i >= 2.5 Gy here), and
#: voxels where it binds sit at 40 Gy/s up to round-off.
V40_RATE_GY_S = FLASH_RATE_GY_S * (1 - 1e-3)
#: Goals (structure, metric, op, Gy) for 40 Gy in 5 fractions: our choice for the phantom.
GOALS = [
    ("PTV", "D95", ">=", 38.0),
    ("PTV", "D5", "<=", 46.0),
    ("Lungs", "mean", "<=", 4.0),
    ("Cord", "max", "<=", 10.0),
]


def _terms(patient, influence, lung_weight=0.05):
    """Soft terms shared by every plan (terms on structures no spot reaches are left out)."""
    out = [SquaredDeviation("PTV", PRESCRIPTION_GY, weight=1.0), SquaredUnderdose("PTV", 38.5, weight=10.0)]
    for name, w in (("Lungs", lung_weight), ("Heart", 0.05), ("Cord", 0.05), ("Body", 0.02)):
        if influence.rows_of(patient.flat_indices(name)).nnz:
            out.append(SquaredOverdose(name, 0.0, weight=w))
    return out


def _builder(patient, extra, max_voxels):
    def build(influence):
        problem = PlanProblem(patient, influence, fractions=FRACTIONS, max_voxels_per_structure=max_voxels)
        for term in _terms(patient, influence) + list(extra):
            problem += term
        return problem

    return build


def _rates(patient, influence, plan, machine, args, region) -> dict:
    """Dose-rate maps, V40 fractions, delivery time and EDIC of one plan."""
    tl = delivery_timeline(influence.beamlets, plan.weights, machine)
    dadr = dadr_map(influence, plan.weights, machine, timeline=tl, min_dose_Gy=args.rate_min_dose_Gy)
    pbs = pbs_dose_rate_map(
        influence,
        plan.weights,
        machine,
        timeline=tl,
        threshold_Gy=args.pbs_threshold_Gy,
        min_dose_Gy=args.rate_min_dose_Gy,
    )

    def v40(rate):
        out = {}
        for n in OARS:
            v = rate_volume_pct(rate, patient.structure(n).mask, V40_RATE_GY_S)
            out[n] = None if np.isnan(v) else round(v, 2)
        return out

    e = edic(plan, "Lungs", "Heart", "Body")
    block = {
        "dadr_V40_pct": v40(dadr),
        "pbs_rate_V40_pct": v40(pbs),
        "edic_Gy": round(e["edic_Gy"], 4),
        "delivery_time_s": round(tl.total_s, 4),
    }
    goals = evaluate.evaluate_goals(plan, GOALS)
    in_region = rate_volume_pct(dadr, region, V40_RATE_GY_S)  # constrained voxels with >= min dose
    summary = {
        "flash": block,
        "dadr_region_V40_pct": round(in_region, 2),
        "goals_met": sum(g.met for g in goals),
        "goals": len(goals),
        "objective": plan.solver.get("objective"),
        "timeline": tl.summary(),
        "current_nA": machine.current_nA,
        "edic": {k: (int(v) if k == "fractions" else round(float(v), 4)) for k, v in e.items()},
    }
    return {"summary": summary, "dadr": dadr, "pbs": pbs, "goals": goals}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/flash_proton", help="output folder (created)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the files of an earlier run in --out (refused otherwise)")
    ap.add_argument("--spacing-mm", type=float, default=6.0, help="dose grid voxel size, mm")
    ap.add_argument("--spot-spacing-mm", type=float, default=6.0, help="spot spacing at isocentre, mm")
    ap.add_argument("--layer-spacing-mm", type=float, default=6.0, help="Bragg-peak layer spacing (WEPL), mm")
    ap.add_argument(
        "--current-bragg-nA", type=float, default=20.0, help="nozzle current of the Bragg-peak plans"
    )
    ap.add_argument(
        "--current-transmission-nA", type=float, default=200.0, help="nozzle current of the transmission plan"
    )
    ap.add_argument(
        "--dadr-threshold-Gy",
        type=float,
        default=5.0,
        help="DADR limit on lung voxels with at least this course dose in the reference plan, Gy",
    )
    ap.add_argument("--immune-weight", type=float, default=20.0, help="weight of the EDIC cost (per Gy EDIC)")
    ap.add_argument(
        "--rate-min-dose-Gy",
        type=float,
        default=0.5,
        help="dose rates are reported for voxels with at least this dose per fraction, Gy",
    )
    ap.add_argument(
        "--pbs-threshold-Gy", type=float, default=0.01, help="PBS dose-rate threshold d*, Gy/fraction"
    )
    ap.add_argument("--max-voxels", type=int, default=2000, help="sample size of helper structures (body)")
    ap.add_argument("--solver", default=None, help="any installed cvxpy solver (default CLARABEL)")
    args = ap.parse_args(argv)
    try:
        report.output_folder(args.out, args.overwrite)
    except FileExistsError as exc:  # nothing of an earlier run is replaced unasked
        ap.error(str(exc))
    t_start = time.perf_counter()
    patient = thorax(spacing_mm=args.spacing_mm, length_mm=48.0)
    bragg_machine = Machine(current_nA=args.current_bragg_nA)
    trans_machine = Machine(current_nA=args.current_transmission_nA)

    t0 = time.perf_counter()
    with warnings.catch_warnings():  # the proximal tumour edge lies shallower than 70 MeV's range
        warnings.simplefilter("ignore", UserWarning)
        bragg = ProtonBeams(
            [0.0, 315.0], spot_spacing_mm=args.spot_spacing_mm, layer_spacing_mm=args.layer_spacing_mm
        ).influence(patient, "PTV", with_let=False)
    trans = transmission_influence(patient, "PTV", [0.0, 270.0], spot_spacing_mm=args.spot_spacing_mm)
    t_dose = time.perf_counter() - t0
    print(
        f"dose: {bragg.n_beamlets} Bragg-peak spots ({bragg.nnz} nonzeros), {trans.n_beamlets} transmission "
        f"spots, {t_dose:.1f} s",
        flush=True,
    )

    t0 = time.perf_counter()
    solve = {"solver": args.solver}
    plans, infl, machines = {}, {}, {}
    plans["bragg_reference"] = _builder(patient, [], args.max_voxels)(bragg).solve(**solve)
    region = dose_rate_region(
        plans["bragg_reference"].dose, patient.structure("Lungs").mask, args.dadr_threshold_Gy
    ) & dadr_reachable(bragg, bragg_machine, FLASH_RATE_GY_S, 1.5)
    dadr_term = [dadr_constraint("Lungs", bragg_machine, FLASH_RATE_GY_S, region)]
    immune = immune_terms(patient, "Lungs", "Heart", "Body", weight=args.immune_weight, influence=bragg)
    plans["bragg_immune"] = _builder(patient, immune, args.max_voxels)(bragg).solve(**solve)
    two = {}
    for name, extra in (("bragg_dadr", dadr_term), ("bragg_dadr_immune", dadr_term + immune)):
        out = two_stage_minimum_weight(
            _builder(patient, extra, args.max_voxels), bragg, bragg_machine.min_weight, goals=GOALS, **solve
        )
        plans[name] = out["stage2"]
        infl[name] = subset_spots(bragg, out["keep"])
        two[name] = out["report"]
        print(f"{name}: two stages done, {time.perf_counter() - t0:.1f} s", flush=True)
    for name in ("bragg_reference", "bragg_immune"):
        infl[name] = bragg
    for name in plans:
        machines[name] = bragg_machine
    trans_immune = immune_terms(patient, "Lungs", "Heart", "Body", weight=args.immune_weight, influence=trans)
    plans["transmission"] = _builder(patient, [], args.max_voxels)(trans).solve(**solve)
    plans["transmission_immune"] = _builder(patient, trans_immune, args.max_voxels)(trans).solve(**solve)
    for name in ("transmission", "transmission_immune"):
        infl[name], machines[name] = trans, trans_machine
    t_solve = time.perf_counter() - t0

    results = {
        name: _rates(patient, infl[name], plan, machines[name], args, region) for name, plan in plans.items()
    }
    main_name = "bragg_dadr_immune"
    main_plan = plans[main_name]
    print(
        f"{'plan':>20} | {'lung DADR V40':>13} | {'region DADR V40':>15} | {'lung PBS V40':>12} | "
        f"{'EDIC Gy':>7} | {'time s':>7} | goals"
    )
    for name, r in results.items():
        s = r["summary"]
        f = s["flash"]
        print(
            f"{name:>20} | {f['dadr_V40_pct']['Lungs']!s:>13} | {s['dadr_region_V40_pct']!s:>15} | "
            f"{f['pbs_rate_V40_pct']['Lungs']!s:>12} | "
            f"{f['edic_Gy']:7.3f} | {f['delivery_time_s']:7.3f} | {s['goals_met']}/{s['goals']}"
        )
    print(evaluate.goal_table(main_plan, GOALS))

    os.makedirs(args.out, exist_ok=True)
    ref = plans["bragg_reference"]
    fig = plots.dvh(
        [ref, plans["bragg_dadr"], main_plan, plans["transmission"]],
        names=["PTV", "Lungs", "Heart", "Cord"],
        labels=["reference", "DADR", "DADR + immune", "transmission"],
        title="Thorax phantom, 40 Gy / 5 fx: physical dose",
    )
    fig.savefig(os.path.join(args.out, "dvh.png"), dpi=110)
    for key, label, fname in (
        ("dadr", "DADR (Gy/s)", "drvh_dadr.png"),
        ("pbs", "PBS dose rate (Gy/s)", "drvh_pbs.png"),
    ):
        shown = [
            n
            for n in ("PTV", "Lungs", "Body")
            if np.isfinite(results[main_name][key][patient.structure(n).mask]).any()
            and np.isfinite(results["bragg_reference"][key][patient.structure(n).mask]).any()
        ]

        def values(plan, n, key=key):
            name = next(k for k, p in plans.items() if p is plan)
            v = results[name][key][patient.structure(n).mask]
            return v[np.isfinite(v)]

        plots.dvh(
            [ref, main_plan],
            names=shown,
            labels=["reference", "DADR + immune"],
            dose_fn=values,
            xlabel=label,
            title=f"Dose-rate-volume histograms ({label.split(' (')[0]}; voxels >= "
            f"{args.rate_min_dose_Gy:g} Gy/fx)",
        ).savefig(os.path.join(args.out, fname), dpi=110)
    for key, label, fname, top in (
        ("dadr", "DADR (Gy/s)", "dadr.png", 200.0),
        ("pbs", "PBS dose rate (Gy/s)", "pbs_rate.png", 2 * FLASH_RATE_GY_S),
    ):
        # voxels with a defined rate (>= rate_min_dose_Gy per fraction) are coloured from 0.5 % of
        # the clip value up; the colour scale saturates at the clip value
        rate = np.nan_to_num(results[main_name][key], nan=0.0, posinf=top)
        plots.dose_slices(
            main_plan,
            values=np.minimum(rate, top),
            label=f"{label}, clipped at {top:g}",
            names=["PTV", "Lungs", "Heart", "Cord"],
            threshold_pct=0.5,
            title=f"{main_name}: {label}",
        ).savefig(os.path.join(args.out, fname), dpi=110)
    plots.dose_slices(
        main_plan,
        label="Dose (Gy)",
        names=["PTV", "Lungs", "Heart", "Cord"],
        title=f"{main_name}: total dose",
    ).savefig(os.path.join(args.out, "dose.png"), dpi=110)

    total = time.perf_counter() - t_start
    record = report.metrics(
        main_plan, "flash_proton", GOALS, {"dose": t_dose, "solve": t_solve, "total": total}, nnz=bragg.nnz
    )
    record["flash"] = results[main_name]["summary"]["flash"]
    record["plans"] = {name: r["summary"] for name, r in results.items()}
    record["min_weight"] = two
    record["settings"] = {
        **{k: v for k, v in vars(args).items() if k != "out"},
        "fractions": FRACTIONS,
        "prescription_Gy": PRESCRIPTION_GY,
        "rate_Gy_s": FLASH_RATE_GY_S,
        "dadr_region_voxels": int(region.sum()),
        "main_plan": main_name,
        "machine": {
            "scan_speed_mm_s": bragg_machine.scan_speed_mm_s,
            "layer_switch_up_s": bragg_machine.layer_switch_up_s,
            "layer_switch_down_s": bragg_machine.layer_switch_down_s,
            "min_spot_time_s": bragg_machine.min_spot_time_s,
        },
    }
    print("wrote", report.write_metrics(record, args.out), f"(total {total:.1f} s)")
    return record


if __name__ == "__main__":
    main()
