"""Biologically personalized planning on the TG-119 C-shape: a conventional 2 Gy x 25 plan versus
a plan with per-voxel GARD / BED floors from the tumour's radiosensitivity index (RSI) and a
hypoxia (pO2) map, under the SAME organ-at-risk BED limits.

Run:  python examples/personalized_bed.py --out out/personalized_bed

Geometry. ``phantoms.tg119_cshape`` on a 4 mm grid, 9 equispaced 6 MV beams, 6 mm beamlets (one
influence matrix for both plans), Ring (3-20 mm around the PTV) and Tissue (rest of the body)
helper structures as in ``examples/tg119_cshape.py``. A hypoxic sub-volume "Hypoxic" is the part
of the PTV inside a sphere of ``--hypoxic-radius-mm`` (12 mm) centred in the left arm of the C
(x = +26 mm, y = -8 mm, z = 0).

Biology (all values are demonstration choices; the model constants are in
``objectives.radiobiology`` with their sources):

* Tumour: RSI 0.45 (``--rsi``) -> alpha = -ln(RSI)/2 - 0.1 = 0.299 Gy^-1, beta = 0.05 Gy^-2
  (GARD model, Scott et al., Lancet Oncol 2017;18:202), alpha/beta 5.99 Gy. These are the LQ
  parameters of tumour cells at the baseline pO2 of 40 mmHg.
* Hypoxia: pO2 is 40 mmHg in the body and falls smoothly inside the sphere to 5 mmHg at its
  centre, pO2(r) = 40 - 35 (1 - (r/R)^2)^2. Per-voxel alpha and beta come from
  ``objectives.radiobiology.alpha_map_from_hypoxia`` (OER model, OER_max 3, K 3 mmHg), scaled
  so that a voxel at the baseline pO2 has the RSI-derived alpha and beta. A voxel at 5 mmHg
  needs 1.27 times the dose for the same cell kill.
* Organs at risk: alpha/beta 2 Gy for the core (spinal-cord-like), 3 Gy elsewhere.

Plans (both 25 fractions; soft terms on core, ring and tissue identical):

* ``conventional``: 50 Gy physical prescription as in ``tg119_cshape.py`` (hard CVaR PTV
  D95 >= 50.5 and D10 <= 54.5, soft SquaredDeviation to 52.5 Gy).
* ``personalized``: hard GARD floor ``--gard`` (default 20.5) in every PTV voxel from the RSI
  (``GARDFloor``; an exact linear dose floor, here about 51.1 Gy) and a hard per-voxel BED floor
  on the hypoxic voxels, BED_i >= GARD / alpha_i with the voxel's own alpha/beta
  (``BEDFloor`` with an ``LQ(alpha_map=, beta_map=)``), i.e. the same GARD in hypoxic voxels;
  soft SquaredOverdose above the oxic floor + 1 Gy on the PTV (weight 10).
* Both: the same hard core limits ``BEDMax("Core", 50 Gy)`` (EQD2 25 Gy, alpha/beta 2) and
  ``BEDCVaRMax("Core", BED10 <= 37.5 Gy)`` (the TG-119 core goal D10 <= 25 Gy at 1 Gy per
  fraction, in BED; the CVaR surrogate is conservative), the same soft ring limit
  ``BEDMax("Ring", 42 Gy, weight=5)`` (alpha/beta 3; 42 Gy is the BED of the 30 Gy ring threshold
  of tg119_cshape.py) and the same soft core / tissue terms. Ring and Tissue are optimized on a
  random sample of ``--max-voxels`` voxels and evaluated on the full grid.

Evaluation (on the full grid, recomputed from the beamlet weights): TG-119 physical goals;
biological goals checked voxel by voxel (GARD / BED floors on oxic and hypoxic PTV voxels, core
and ring BED ceilings, worst margin printed); BED / EQD2 statistics; Poisson TCP of the PTV
(clonogen density ``--clonogens-per-cc``, per-voxel alpha and beta with hypoxia); LKB NTCP of the
core on EQD2 with the spinal-cord parameters (Burman 1991).

Writes into ``--out``:

* ``metrics.json``: ``{"case": "personalized_bed", "fractions", "biology": {settings},
  "plans": {"conventional": R, "personalized": R}, "comparison": {...},
  "timings_s": {"dose", "total"}}`` where each ``R`` is the shared record of
  ``optimizer.report.metrics`` (structures, goals, sizes, timings_s, solver) plus
  ``"bio"``: ``optimizer.bio_evaluate.plan_summary`` (per-structure "BED" / "EQD2"
  statistics in Gy, "TCP", "NTCP", "GARD" statistics, biological "goals") and
  ``"voxel_checks"``: one ``VoxelCheck.as_dict()`` per biological floor / ceiling
  (worst margin in Gy and relative, number of voxels beyond the limit, met);
  ``"comparison"`` is ``bio_evaluate.comparison`` of the two plans.
* ``bed_dvh.png``: BED DVHs of both plans on one figure (solid: conventional, dashed:
  personalized); ``gard_map_conventional.png`` / ``gard_map_personalized.png``: voxel GARD in the
  PTV (hypoxia-modified alpha, beta; diverging scale centred on the target, axial and sagittal
  slices through the hypoxic sphere); ``dose_conventional.png`` / ``dose_personalized.png``:
  physical dose; ``pO2.png``: the hypoxia map.

Printed: the TG-119 goal table and the voxel-by-voxel biological checks of each plan with the
worst margin, and a side-by-side comparison (``bio_evaluate.compare_plans``). Run time on 2
cores: about 80 s (two solves of about 30 s plus 6-11 s of cvxpy compilation each; influence
matrix 3 s).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from objectives import (
    LQ,
    BEDCVaRMax,
    BEDFloor,
    BEDMax,
    DVHMax,
    DVHMin,
    GARDFloor,
    SquaredDeviation,
    SquaredOverdose,
    alpha_from_rsi,
    alpha_map_from_hypoxia,
    dose_for_gard,
    oer,
)
from objectives.radiobiology import GARD_BETA_GY2, OER_MAX
from optimizer import PhotonBeams, PlanProblem, Structure, evaluate, phantoms, plots, report
from optimizer import bio_evaluate as bio

#: Hypoxic sphere centre (x, y, z) LPS mm: middle of the left arm of the C (r = 27 mm).
HYPOXIC_CENTRE_MM = (26.0, -8.0, 0.0)
#: pO2 (mmHg): baseline of the whole phantom and minimum at the sphere centre (demonstration).
PO2_BASELINE_MMHG = 40.0
PO2_MIN_MMHG = 5.0
#: Organ-at-risk alpha/beta, Gy: core as spinal cord (REFERENCES.md: cord 2), others 3 (late tissue).
ALPHA_BETA_CORE_GY = 2.0
ALPHA_BETA_DEFAULT_GY = 3.0
#: Shared organ-at-risk limits (BED, Gy): core max BED 50 (EQD2 25 Gy at alpha/beta 2);
#: core BED10 <= 37.5 (TG-119 core D10 <= 25 Gy in 25 fractions, as BED at alpha/beta 2).
CORE_BED_MAX_GY = 50.0
CORE_BED10_GY = 37.5
#: Soft ring limit: BED 42 Gy at alpha/beta 3 (= 30 Gy in 25 fractions, the physical ring
#: threshold of examples/tg119_cshape.py), penalized quadratically above.
RING_BED_GY = 42.0
#: Relative tolerance for hard floors/ceilings and goals checked on the recomputed dose (the
#: interior-point solution meets its constraints to about 1e-8; 1e-4 is the stated bar).
GOAL_REL_TOL = 1e-4


def hypoxia_map(patient, radius_mm: float) -> np.ndarray:
    """pO2 (mmHg) on the grid: baseline everywhere, a smooth hypoxic well inside the sphere."""
    z, y, x = np.meshgrid(*patient.grid.axes_mm(), indexing="ij")
    cx, cy, cz = HYPOXIC_CENTRE_MM
    r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / radius_mm
    well = np.where(r < 1.0, (1.0 - np.minimum(r, 1.0) ** 2) ** 2, 0.0)
    return PO2_BASELINE_MMHG - (PO2_BASELINE_MMHG - PO2_MIN_MMHG) * well


def tumour_lq(po2: np.ndarray, rsi: float) -> tuple[LQ, np.ndarray, np.ndarray]:
    """LQ with per-voxel alpha, beta maps: RSI-derived values at the baseline pO2, modified by
    the OER model elsewhere (alpha / OMF, beta / OMF^2, OMF relative to full oxygenation)."""
    omf_base = OER_MAX / oer(PO2_BASELINE_MMHG)
    alpha_rsi = alpha_from_rsi(rsi)
    # scale the fully-oxic parameters so a baseline voxel has the RSI-derived alpha and beta
    alpha, beta = alpha_map_from_hypoxia(po2, alpha_rsi * omf_base, GARD_BETA_GY2 * omf_base ** 2)
    return LQ(alpha_map=alpha, beta_map=beta, grid_shape=po2.shape), alpha, beta


def build_patient(spacing_mm: float, radius_mm: float):
    patient = phantoms.tg119_cshape(spacing_mm=spacing_mm)
    phantoms.add_cshape_helper_structures(patient)
    po2 = hypoxia_map(patient, radius_mm)
    hyp = (po2 < PO2_BASELINE_MMHG) & patient.structure("PTV").mask
    patient.add_structure(Structure("Hypoxic", hyp, "target", (0.6, 0.0, 0.6)))
    oxic = patient.structure("PTV").mask & ~hyp
    patient.add_structure(Structure("PTV_oxic", oxic, "target", (1.0, 0.6, 0.2)))
    return patient, po2


def shared_terms(problem: PlanProblem, lq_oar: LQ) -> None:
    """Organ-at-risk terms common to both plans (hard BED limits, soft dose fall-off)."""
    problem += BEDMax("Core", CORE_BED_MAX_GY, lq_oar)
    problem += BEDCVaRMax("Core", CORE_BED10_GY, 10, lq_oar)
    problem += SquaredOverdose("Core", 0.0, weight=0.3)
    problem += BEDMax("Ring", RING_BED_GY, lq_oar, weight=5.0)
    problem += SquaredOverdose("Tissue", 20.0, weight=1.0)


def _solve(problem, label, solver):
    plan = problem.solve(solver=solver)
    s = plan.solver
    print(f"[{label}] solver {s['name']}: {s['status']}, objective {s['objective']:.4g}, "
          f"{s['iterations']} iterations, build {s['build_s']:.1f} s, compile {s['compile_s']:.1f} s, "
          f"solve {s['solve_s']:.1f} s")
    return plan


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/personalized_bed", help="output folder (created)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the files of an earlier run in --out (refused otherwise)")
    ap.add_argument("--spacing-mm", type=float, default=4.0, help="dose grid voxel size, mm")
    ap.add_argument("--beamlet-mm", type=float, default=6.0, help="beamlet size at isocentre, mm")
    ap.add_argument("--rsi", type=float, default=0.45, help="tumour radiosensitivity index, (0, 1)")
    ap.add_argument("--gard", type=float, default=20.5, help="GARD target in every PTV voxel")
    ap.add_argument("--hypoxic-radius-mm", type=float, default=12.0, help="radius of the hypoxic sphere, mm")
    ap.add_argument("--clonogens-per-cc", type=float, default=1e7, help="clonogen density for TCP, per cm^3")
    ap.add_argument("--max-voxels", type=int, default=1000,
                    help="optimization sample of each helper structure (Ring, Tissue)")
    ap.add_argument("--solver", default=None, help="any installed cvxpy solver (default CLARABEL)")
    args = ap.parse_args(argv)
    try:
        report.output_folder(args.out, args.overwrite)
    except FileExistsError as exc:  # nothing of an earlier run is replaced unasked
        ap.error(str(exc))
    t_start = time.perf_counter()
    n = phantoms.TG119_CSHAPE_FRACTIONS

    patient, po2 = build_patient(args.spacing_mm, args.hypoxic_radius_mm)
    lq_t, alpha_map, beta_map = tumour_lq(po2, args.rsi)
    lq_oar = LQ({"Core": ALPHA_BETA_CORE_GY}, default=ALPHA_BETA_DEFAULT_GY)
    # evaluation: tumour structures use the voxel maps, the rest the organ-at-risk table
    lq_eval = {name: (lq_t if name in ("PTV", "Hypoxic", "PTV_oxic") else lq_oar)
               for name in patient.structure_names}
    alpha_rsi = alpha_from_rsi(args.rsi)
    oxic_floor_Gy = dose_for_gard(args.gard, n, rsi=args.rsi)
    hyp_idx = patient.flat_indices("Hypoxic")
    bed_floor_map = np.zeros(patient.grid.shape)
    bed_floor_map.ravel()[hyp_idx] = args.gard / alpha_map.ravel()[hyp_idx]  # GARD_i = alpha_i BED_i
    print(f"phantom: grid {patient.grid.shape}, "
          + ", ".join(f"{s.name} {s.n_voxels}" for s in patient.structures))
    print(f"tumour: RSI {args.rsi:g} -> alpha {alpha_rsi:.4f} /Gy, beta {GARD_BETA_GY2:g} /Gy^2, "
          f"alpha/beta {alpha_rsi / GARD_BETA_GY2:.2f} Gy; GARD target {args.gard:g} -> oxic dose floor "
          f"{oxic_floor_Gy:.2f} Gy; hypoxic pO2 {po2.ravel()[hyp_idx].min():.1f}-{PO2_BASELINE_MMHG:g} "
          f"mmHg, BED floors {bed_floor_map.ravel()[hyp_idx].min():.1f}-"
          f"{bed_floor_map.ravel()[hyp_idx].max():.1f} Gy")

    t0 = time.perf_counter()
    beams = PhotonBeams(gantry_deg=range(0, 360, 40), beamlet_mm=args.beamlet_mm)
    influence = beams.influence(patient, target="PTV", progress=True)
    t_dose = time.perf_counter() - t0
    print(f"influence matrix: {influence.matrix.shape[0]} voxels x {influence.n_beamlets} beamlets, "
          f"{influence.nnz} nonzeros, {t_dose:.1f} s (shared by both plans)")

    # -- plan A: conventional physical prescription ------------------------------------------
    conv = PlanProblem(patient, influence, fractions=n, max_voxels_per_structure=args.max_voxels)
    conv += DVHMin("PTV", 50.5, volume_pct=95)
    conv += DVHMax("PTV", 54.5, volume_pct=10)
    conv += SquaredDeviation("PTV", 52.5, weight=1.0)
    shared_terms(conv, lq_oar)
    plan_a = _solve(conv, "conventional", args.solver)

    # -- plan B: personalized GARD / BED floors ------------------------------------------------
    pers = PlanProblem(patient, influence, fractions=n, max_voxels_per_structure=args.max_voxels)
    pers += GARDFloor("PTV", args.gard, rsi=args.rsi)
    pers += BEDFloor("Hypoxic", bed_floor_map, lq_t)
    # soft hot-spot control; weight 10 brings the core dose to that of the conventional plan
    # (a hard CVaR D10 <= 54.5 Gy as in plan A is infeasible together with the voxel floors)
    pers += SquaredOverdose("PTV", oxic_floor_Gy + 1.0, weight=10.0)
    shared_terms(pers, lq_oar)
    plan_b = _solve(pers, "personalized", args.solver)
    plans = {"conventional": plan_a, "personalized": plan_b}

    # -- evaluation ------------------------------------------------------------------------------
    goals = phantoms.TG119_CSHAPE_GOALS + phantoms.TG119_CSHAPE_HARD_GOALS
    bio_goals = [("PTV", "GARD min", ">=", args.gard), ("Core", "BED max", "<=", CORE_BED_MAX_GY),
                 ("Core", "BED D10", "<=", CORE_BED10_GY)]

    def voxel_checks(plan):
        return [
            bio.check_bio_limit(plan, "PTV", "GARD", ">=", args.gard, lq=lq_t,
                                label=f"all PTV voxels: GARD (with hypoxia) >= {args.gard:g}"),
            bio.check_bio_limit(plan, "PTV_oxic", "BED", ">=", args.gard / alpha_rsi, lq=lq_t,
                                label=f"oxic PTV voxels: BED >= {args.gard / alpha_rsi:.2f} Gy"),
            bio.check_bio_limit(plan, "Hypoxic", "BED", ">=", bed_floor_map, lq=lq_t,
                                label="hypoxic PTV voxels: BED >= GARD/alpha_i (map)"),
            bio.check_bio_limit(plan, "Core", "BED", "<=", CORE_BED_MAX_GY, lq=lq_oar,
                                label=f"core voxels: BED <= {CORE_BED_MAX_GY:g} Gy"),
        ]

    records, checks = {}, {}
    for label, plan in plans.items():
        print(f"\n== {label}: TG-119 physical goals")
        print(evaluate.goal_table(plan, goals))
        checks[label] = voxel_checks(plan)
        print(f"== {label}: biological goals, checked voxel by voxel on the recomputed dose")
        for c in checks[label]:
            print("  " + str(c))
        worst = min(checks[label], key=lambda c: c.relative_margin)
        unit = f" {worst.unit}" if worst.unit else ""
        print(f"  worst margin: {worst.label}: {worst.margin:+.4g}{unit} "
              f"({worst.relative_margin:+.2e} relative)")

    print("\n== goals met (physical: TG-119 incl. the hard core goal; biological: voxel by voxel)")
    for label, plan in plans.items():
        phys = evaluate.evaluate_goals(plan, goals)
        met = [f"{g.structure} {g.metric} {g.op} {g.limit:g}" for g in phys if g.met]
        missed = [f"{g.structure} {g.metric} {g.op} {g.limit:g}" for g in phys if not g.met]
        bio_met = [c.label for c in checks[label] if c.met]
        bio_missed = [c.label for c in checks[label] if not c.met]
        print(f"  {label}: physical {len(met)}/{len(phys)} met (missed: {', '.join(missed) or 'none'}); "
              f"biological {len(bio_met)}/{len(checks[label])} met "
              f"(missed: {'; '.join(bio_missed) or 'none'})")

    summary_args = dict(names=["PTV", "PTV_oxic", "Hypoxic", "Core", "Ring"],
                        tcp_structures=["PTV", "Hypoxic"],
                        ntcp_parameters={"Core": "spinal cord"},
                        clonogen_density_per_cc=args.clonogens_per_cc, goal_rel_tol=GOAL_REL_TOL)
    print("\n== comparison (BED / EQD2 in Gy with the voxel alpha/beta; TCP with hypoxia; "
          "NTCP: LKB spinal cord on EQD2)")
    print(bio.compare_plans(plans, lq_eval, metrics=("D95", "D2", "mean", "BED D95", "BED D50", "BED max",
                                                    "EQD2 mean"),
                            goals=[g for g in goals] + bio_goals, **summary_args))

    os.makedirs(args.out, exist_ok=True)
    bed_fn = lambda p, name: bio.bed_values(p, name, lq_eval)  # noqa: E731
    fig = plots.dvh([plan_a, plan_b], names=["PTV_oxic", "Hypoxic", "Core", "Ring"],
                    labels=["conventional", "personalized"], dose_fn=bed_fn,
                    xlabel="BED (Gy; tumour: voxel alpha/beta with hypoxia, core 2 Gy, ring 3 Gy)",
                    title="BED-volume histograms: conventional (solid) vs personalized (dashed)")
    fig.savefig(os.path.join(args.out, "bed_dvh.png"), dpi=110)
    z_c = int(np.argmin(np.abs(patient.grid.axes_mm()[0] - HYPOXIC_CENTRE_MM[2])))
    x_c = int(np.argmin(np.abs(patient.grid.axes_mm()[2] - HYPOXIC_CENTRE_MM[0])))
    half = max(abs(float(v) - args.gard) for p in plans.values()
               for v in np.percentile(bio.gard_values(p, "PTV", lq=lq_t), [0.5, 99.5]))
    for label, plan in plans.items():
        gmap = bio.gard_map(plan, "PTV", lq=lq_t)
        fig = plots.dose_slices(plan, values=gmap, label="GARD = alpha_i D + beta_i D^2 / n", z_index=z_c,
                                x_index=x_c, names=["PTV", "Hypoxic", "Core"], threshold_pct=1.0,
                                cmap="RdYlBu_r",
                                title=f"{label}: voxel GARD in the PTV with hypoxia-modified alpha, beta "
                                      f"(target {args.gard:g}: yellow; blue below)")
        for ax in fig.axes[:2]:  # same diverging scale for both plans, centred on the target
            ax.images[-1].set_clim(args.gard - half, args.gard + half)
        fig.savefig(os.path.join(args.out, f"gard_map_{label}.png"), dpi=110)
        plots.dose_slices(plan, z_index=z_c, x_index=x_c, names=["PTV", "Hypoxic", "Core"],
                          title=f"{label}: physical dose").savefig(
            os.path.join(args.out, f"dose_{label}.png"), dpi=110)
    plots.dose_slices(plan_a, values=np.where(patient.structure("Body").mask, po2, 0.0), label="pO2 (mmHg)",
                      z_index=z_c, x_index=x_c, names=["PTV", "Hypoxic", "Core"], cmap="viridis",
                      title="hypoxia map").savefig(os.path.join(args.out, "pO2.png"), dpi=110)

    total = time.perf_counter() - t_start
    record = {"case": "personalized_bed", "fractions": n,
              "biology": {"rsi": args.rsi, "alpha_rsi_per_Gy": alpha_rsi, "beta_per_Gy2": GARD_BETA_GY2,
                          "gard_target": args.gard, "oxic_dose_floor_Gy": oxic_floor_Gy,
                          "po2_baseline_mmHg": PO2_BASELINE_MMHG, "po2_min_mmHg": PO2_MIN_MMHG,
                          "hypoxic_radius_mm": args.hypoxic_radius_mm,
                          "hypoxic_centre_mm_xyz": list(HYPOXIC_CENTRE_MM),
                          "alpha_beta_core_Gy": ALPHA_BETA_CORE_GY,
                          "alpha_beta_default_Gy": ALPHA_BETA_DEFAULT_GY,
                          "core_bed_max_Gy": CORE_BED_MAX_GY, "core_bed10_Gy": CORE_BED10_GY,
                          "ring_bed_soft_Gy": RING_BED_GY,
                          "clonogens_per_cc": args.clonogens_per_cc},
              "plans": {}}
    for label, plan in plans.items():
        s = plan.solver
        rec = report.metrics(plan, f"personalized_bed/{label}", goals,
                             {"dose": t_dose, "build": s["build_s"] + s["compile_s"], "solve": s["solve_s"]})
        rec["bio"] = bio.plan_summary(plan, lq_eval, goals=bio_goals, **summary_args)
        rec["voxel_checks"] = [c.as_dict() for c in checks[label]]
        records[label] = rec
    record["plans"] = records
    record["comparison"] = bio.comparison(plans, lq_eval, goals=goals + bio_goals, **summary_args)
    record["timings_s"] = {"dose": round(t_dose, 3), "total": round(total, 3)}
    print("wrote", report.write_metrics(record, args.out), f"(total {total:.1f} s)")
    return record


if __name__ == "__main__":
    main()
