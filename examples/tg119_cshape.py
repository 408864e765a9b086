"""AAPM TG-119 C-shape, planned with 9 equispaced 6 MV photon beams.

Run:  python examples/tg119_cshape.py --out out/cshape
Writes metrics.json, dvh.png, dose.png, fluence.png and cshape.plan into the output folder.

A FluenceSmoothness term (weight ``--smoothness``, default 1e-3; 0 switches it off) penalises
squared differences between neighbouring beamlets, so the fluence maps need fewer MLC segments;
its cost and the roughness with and without it are printed and recorded in metrics.json.

With ``--dose-grid-mm`` the dose is computed on a coarser grid and the goals are reported on both
grids; ``--ct-grid-structures PTV`` then optimizes those structures on their CT voxels (the
interpolated dose, as it is reported on the CT grid).
"""

from __future__ import annotations

import argparse
import time

from objectives import FluenceSmoothness
from objectives.shapes import neighbour_differences
from optimizer import PhotonBeams, PlanProblem, evaluate, phantoms, plots, report


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/cshape", help="output folder (created)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the files of an earlier run in --out (refused otherwise)")
    ap.add_argument("--spacing-mm", type=float, default=4.0, help="dose grid voxel size, mm")
    ap.add_argument("--beamlet-mm", type=float, default=5.0, help="beamlet size at isocentre, mm")
    ap.add_argument("--solver", default=None,
                    help="FIRST_ORDER (matrix-free, every voxel) or any installed cvxpy solver, e.g. "
                         "CLARABEL (the exact reference, on a 1500-voxel sample of the helper structures); "
                         "default: FIRST_ORDER from 1 M non-zeros (the default 4 mm grid: 14.9 M) or with "
                         "--ct-grid-structures, CLARABEL below (PlanProblem.solve)")
    ap.add_argument("--smoothness", type=float, default=1e-3,
                    help="weight of the fluence smoothness term (0: off)")
    ap.add_argument("--dose-grid-mm", type=float, default=None,
                    help="plan on a coarser dose grid of this voxel size (mm) and report the goals on "
                         "both grids (default: the CT grid)")
    ap.add_argument("--ct-grid-structures", nargs="*", default=None, metavar="NAME",
                    help="with --dose-grid-mm: optimize these structures on the CT grid (their dose "
                         "interpolated from the dose grid, as reported there), e.g. PTV")
    args = ap.parse_args(argv)
    try:
        report.output_folder(args.out, args.overwrite)
    except FileExistsError as exc:  # nothing of an earlier run is replaced unasked
        ap.error(str(exc))
    if args.ct_grid_structures and args.dose_grid_mm is None:
        ap.error("--ct-grid-structures needs --dose-grid-mm (without it every structure is on the CT grid)")
    t_start = time.perf_counter()

    ct_patient = phantoms.tg119_cshape(spacing_mm=args.spacing_mm)
    # helper structures Ring (3-20 mm around the PTV) and Tissue (the rest of the body)
    phantoms.add_cshape_helper_structures(ct_patient)
    print(f"phantom: grid {ct_patient.grid.shape}, "
          + ", ".join(f"{s.name} {s.n_voxels} voxels" for s in ct_patient.structures))

    t0 = time.perf_counter()
    beams = PhotonBeams(gantry_deg=range(0, 360, 40), beamlet_mm=args.beamlet_mm)
    # the dose grid: the CT grid, or a coarser one (CT trilinear, structures by centre point;
    # PlanProblem plans on that resampled patient, problem.patient)
    influence = beams.influence(ct_patient, target="PTV", progress=True, dose_grid=args.dose_grid_mm)
    t_dose = time.perf_counter() - t0
    print(f"influence matrix: {influence.matrix.shape[0]} voxels x {influence.n_beamlets} beamlets, "
          f"{influence.nnz} nonzeros, {t_dose:.1f} s")

    n = phantoms.TG119_CSHAPE_FRACTIONS
    problem = PlanProblem(ct_patient, influence, fractions=n, max_voxels_per_structure=1500,
                          ct_grid_structures=args.ct_grid_structures)
    patient = problem.patient
    # hard TG-119 PTV goals (CVaR surrogates), soft homogeneity and sparing:
    # see phantoms.cshape_planning_terms
    for term in phantoms.cshape_planning_terms():
        problem += term
    smooth = None
    if args.smoothness > 0:
        smooth = FluenceSmoothness(weight=args.smoothness)
        problem += smooth
    plan = problem.solve(solver=args.solver)
    s = plan.solver
    print(f"solver {s['name']}: {s['status']}, objective {s['objective']:.4g}, {s['iterations']} iterations, "
          f"build {s['build_s']:.1f} s, compile {s.get('compile_s', 0.0):.1f} s, solve {s['solve_s']:.1f} s")
    diff = neighbour_differences(influence.beamlets) @ plan.weights
    roughness = float(diff @ diff)  # sum of squared neighbour differences of the weights
    smooth_cost = args.smoothness * roughness
    print(f"fluence roughness {roughness:.4g} (smoothness weight {args.smoothness:g}: cost {smooth_cost:.4g} "
          f"of the objective {s['objective']:.4g})")

    goals = phantoms.TG119_CSHAPE_GOALS + phantoms.TG119_CSHAPE_HARD_GOALS
    print(evaluate.goal_table(plan, goals))
    on_ct = None
    if args.dose_grid_mm is not None:
        on_ct = plan.on_patient(ct_patient)
        print(f"on the CT grid ({args.spacing_mm:g} mm, dose interpolated from {args.dose_grid_mm:g} mm):")
        print(evaluate.goal_table(on_ct, goals))
    ptv = plan.structure_dose("PTV")
    print(f"PTV homogeneity index {evaluate.homogeneity_index(ptv):.3f}, Paddick CI at 50 Gy "
          f"{evaluate.paddick_conformity_index(plan.dose, patient.structure('PTV').mask, 50.0):.3f}")

    import os

    os.makedirs(args.out, exist_ok=True)
    plots.dvh(plan, names=["PTV", "Core", "Ring", "Tissue"], title="TG-119 C-shape, 9 x 6 MV").savefig(
        os.path.join(args.out, "dvh.png"), dpi=110)
    plots.dose_slices(plan, names=["PTV", "Core", "Body"], title="TG-119 C-shape dose").savefig(
        os.path.join(args.out, "dose.png"), dpi=110)
    plots.fluence_maps(plan).savefig(os.path.join(args.out, "fluence.png"), dpi=110)
    plan.save(os.path.join(args.out, "cshape.plan"), overwrite=True)

    total = time.perf_counter() - t_start
    record = report.metrics(plan, "tg119_cshape", goals,
                            {"dose": t_dose, "build": s["build_s"] + s.get("compile_s", 0.0),
                             "solve": s["solve_s"], "total": total})
    record["hard_core_goal_met"] = record["goals"][-1]["met"]
    record["fluence_smoothness"] = {"weight": args.smoothness, "roughness": roughness, "cost": smooth_cost}
    if on_ct is not None:
        record["dose_grid_mm"] = args.dose_grid_mm
        record["ct_grid_structures"] = sorted(problem.ct_grid_structures)
        record["goals_on_ct_grid"] = [g.as_dict() for g in evaluate.evaluate_goals(on_ct, goals)]
    record["solver"]["certificate"] = s.get("certificate")
    # the certificate in numbers: largest hard-term violation on every voxel (Gy) and, for the
    # first-order solver, its relative duality gap
    record["solver"]["max_hard_violation_Gy"] = max([c["max_violation"] for c in s["hard_terms"]] or [0.0])
    record["solver"]["rel_gap"] = s.get("rel_gap")
    if "gap_is_bound" in s:
        # False only where a negative gradient met no squared penalty (the gap then estimated)
        record["solver"]["gap_is_bound"] = s["gap_is_bound"]
    if "fallback" in s:
        record["solver"]["fallback"] = s["fallback"]
    print("wrote", report.write_metrics(record, args.out), f"(total {total:.1f} s)")
    return record


if __name__ == "__main__":
    main()
