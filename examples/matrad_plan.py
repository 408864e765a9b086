"""Plan a matRad patient (.mat, v5 or v7.3, e.g. a CORT case) end to end with 6 MV photon IMRT.

Run:  python examples/matrad_plan.py TG119.mat --out out/matrad [--target PTV] [--beams 7]

Steps: load the file with ``optimizer.load_matrad`` (body contours typed 'OAR' in matRad become
helpers; the file's own HU -> density table ``ct.hlut`` is used when present), pick the target
(the largest TARGET structure unless ``--target``) and the body (a structure named like a body,
``--body``, or CT > -500 HU), compute N equispaced 6 MV beams with coarse beamlets, add a ring
(3-20 mm around the target) and a tissue (the rest of the body) helper, and optimize:

- target: D95 >= prescription, hard (CVaR surrogate, conservative) or with ``--soft-d95`` a
  soft penalty; a squared deviation from 1.04 x the prescription;
- every OAR: squared overdose above its ``--oar-max NAME=GY`` limit (0 Gy when none is given);
- ring and tissue: squared overdose above 60 % and 40 % of the prescription.

Prints the goal table (target D95 and D2, OAR D2 limits given with ``--oar-max``) and writes
metrics.json, dvh.png and dose.png into the output folder (an earlier run there is replaced only with
--overwrite).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np

from objectives import DVHMin, SquaredDeviation, SquaredOverdose
from optimizer import PhotonBeams, PlanProblem, Structure, evaluate, phantoms, plots, report
from optimizer.geometry import HU_TO_RED_TABLE, Patient, hu_to_red
from optimizer.io.matrad import BODY_NAMES, is_body_name, load_matrad


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="matRad patient file (.mat holding ct and cst)")
    ap.add_argument("--out", default="out/matrad", help="output folder (created)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the files of an earlier run in --out (refused otherwise)")
    ap.add_argument("--target", default=None, help="target structure (default: the largest TARGET)")
    ap.add_argument("--body", default=None,
                    help=f"body structure (default: one named {', '.join(BODY_NAMES)}; else CT > -500 HU)")
    ap.add_argument("--beams", type=int, default=7, help="number of equispaced coplanar beams")
    ap.add_argument("--beamlet-mm", type=float, default=10.0, help="beamlet size at isocentre, mm")
    ap.add_argument("--prescription-gy", type=float, default=60.0, help="target D95 goal, Gy (total)")
    ap.add_argument("--fractions", type=int, default=30, help="number of fractions")
    ap.add_argument("--oar-max", action="append", default=[], metavar="NAME=GY",
                    help="OAR overdose threshold and D2 goal, Gy (repeatable)")
    ap.add_argument("--soft-d95", action="store_true",
                    help="target D95 floor as a soft penalty (weight 10) instead of a hard constraint")
    ap.add_argument("--max-voxels", type=int, default=2000,
                    help="CLARABEL: helper structures on a sample of this many voxels (FIRST_ORDER: all)")
    ap.add_argument("--solver", default=None,
                    help="FIRST_ORDER or a cvxpy solver (default: by problem size, PlanProblem.solve)")
    return ap


def _oar_limits(items: list[str], patient: Patient) -> dict[str, float]:
    limits = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            gy = float(value)
        except ValueError:
            gy = -1.0
        if not sep or not name.strip() or not gy >= 0:
            raise SystemExit(f"error: --oar-max {item!r}: expected NAME=GY with GY >= 0")
        limits[patient.structure(name.strip()).name] = gy
    return limits


def _free_name(patient: Patient, base: str) -> str:
    name, k = base, 2
    while name in patient:
        name, k = f"{base} {k}", k + 1
    return name


def _pick_target(patient: Patient, name: str | None) -> str:
    if name is not None:
        return patient.structure(name).name
    targets = [s for s in patient.structures if s.role == "target"]
    if not targets:
        raise SystemExit("error: the file has no TARGET structure; name one with --target "
                         f"(structures: {', '.join(patient.structure_names)})")
    return max(targets, key=lambda s: s.n_voxels).name


def _pick_body(patient: Patient, name: str | None, notes: list[str]) -> str:
    if name is not None:
        s = patient.structure(name)
        if s.role != "other":
            notes.append(f"--body '{s.name}' had role '{s.role}'; planned as a helper (role 'other')")
            s.role = "other"
        return s.name
    for s in patient.structures:
        if is_body_name(s.name) and s.role == "other":
            return s.name
    mask = patient.ct_hu > -500.0
    body = _free_name(patient, "Body")
    patient.add_structure(Structure(body, mask, "other", (0.6, 0.6, 0.6)))
    notes.append(f"no body contour in the file; '{body}' = CT > -500 HU ({int(mask.sum())} voxels)")
    return body


def _dose_patient(patient: Patient, notes: list[str]) -> Patient:
    """The patient as the beam model should see it: with the file's densities.

    PhotonBeams computes densities with ``patient.relative_electron_density()``; when that
    differs from the file's own densities (``density_cube``, else ``density_table`` applied to
    the CT), the dose is computed on a copy whose HU are chosen so that the default table gives
    the file's densities (same grid, so the matrix fits the original patient)."""
    table = getattr(patient, "density_table", None)
    cube = getattr(patient, "density_cube", None)
    if table is None and cube is None:
        return patient
    wanted = cube if cube is not None else hu_to_red(patient.ct_hu, table)
    used = patient.relative_electron_density()
    diff = float(np.max(np.abs(used - wanted)))
    if diff <= 1e-3:
        return patient
    hu = np.interp(wanted, HU_TO_RED_TABLE[:, 1], HU_TO_RED_TABLE[:, 0])
    notes.append(f"the beam model's default densities differ from the file's by up to {diff:.3g}; dose "
                 "computed with the file's densities")
    return Patient(patient.grid, hu, [Structure(s.name, s.mask, s.role, s.color) for s in patient.structures],
                   name=patient.name)


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    try:
        report.output_folder(args.out, args.overwrite)
    except FileExistsError as exc:  # nothing of an earlier run is replaced unasked
        _parser().error(str(exc))
    if args.beams < 1:
        raise SystemExit("error: --beams: expected at least 1 beam")
    if not args.prescription_gy > 0 or args.fractions < 1:
        raise SystemExit("error: --prescription-gy must be > 0 and --fractions >= 1")
    t_start = time.perf_counter()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patient = load_matrad(args.path)
    notes = [str(w.message) for w in caught]
    target = _pick_target(patient, args.target)
    body = _pick_body(patient, args.body, notes)
    oar_limits = _oar_limits(args.oar_max, patient)
    oars = [s.name for s in patient.structures if s.role == "oar" and s.name not in (target, body)]
    print(f"patient {patient.name}: grid {patient.grid.shape} (z, y, x) at {patient.grid.spacing_mm} mm")
    for s in patient.structures:
        print(f"  {s.name:<20} {s.role:<7} {s.n_voxels:>8} voxels")
    print(f"target '{target}', body '{body}'")
    print(f"HU -> density table: {getattr(patient, 'density_table_source', 'bioplan default')}")
    dose_patient = _dose_patient(patient, notes)
    for note in notes:
        print("note:", note)

    ring, tissue = _free_name(patient, "Ring"), _free_name(patient, "Tissue")
    phantoms.add_cshape_helper_structures(patient, target=target, body=body, ring=ring, tissue=tissue)

    t0 = time.perf_counter()
    gantry = np.arange(args.beams) * 360.0 / args.beams
    beams = PhotonBeams(gantry_deg=gantry, beamlet_mm=args.beamlet_mm)
    influence = beams.influence(dose_patient, target=target)
    influence.check_patient(patient)
    t_dose = time.perf_counter() - t0
    print(f"{args.beams} beams at {', '.join(f'{g:g}' for g in gantry)} deg: "
          f"{influence.matrix.shape[0]} voxels x {influence.n_beamlets} beamlets, {influence.nnz} nonzeros, "
          f"{t_dose:.1f} s")

    rx = args.prescription_gy
    problem = PlanProblem(patient, influence, fractions=args.fractions,
                          max_voxels_per_structure=args.max_voxels)
    problem += DVHMin(target, rx, volume_pct=95, weight=10.0 if args.soft_d95 else None)
    problem += SquaredDeviation(target, 1.04 * rx, weight=1.0)
    for name in oars:
        problem += SquaredOverdose(name, oar_limits.get(name, 0.0), weight=0.3)
    problem += SquaredOverdose(ring, 0.6 * rx, weight=1.0)
    problem += SquaredOverdose(tissue, 0.4 * rx, weight=1.0)
    plan = problem.solve(solver=args.solver)
    s = plan.solver
    print(f"solver {s['name']}: {s['status']}, objective {s['objective']:.4g}, {s['iterations']} iterations, "
          f"build {s['build_s']:.1f} s, compile {s['compile_s']:.1f} s, solve {s['solve_s']:.1f} s")

    goals = [(target, "D95", ">=", rx), (target, "D2", "<=", round(1.07 * rx, 3))]
    goals += [(name, "D2", "<=", gy) for name, gy in oar_limits.items()]
    table = evaluate.goal_table(plan, goals)
    print(table)
    for name in oars:
        d = plan.structure_dose(name)
        print(f"  {name}: mean {d.mean():.2f} Gy, max {d.max():.2f} Gy")

    os.makedirs(args.out, exist_ok=True)
    figures = {
        "dvh.png": plots.dvh(plan, names=[target] + oars + [ring, tissue],
                             title=f"{patient.name}, {args.beams} x 6 MV"),
        "dose.png": plots.dose_slices(plan, names=[target] + oars + [body], title=f"{patient.name} dose"),
    }
    for file_name, fig in figures.items():
        fig.savefig(os.path.join(args.out, file_name), dpi=110)
        plt.close(fig)
    total = time.perf_counter() - t_start
    record = report.metrics(plan, f"matrad:{patient.name}", goals,
                            {"dose": t_dose, "build": s["build_s"] + s["compile_s"], "solve": s["solve_s"],
                             "total": total})
    record["patient"] = {
        "file": os.path.abspath(args.path), "target": target, "body": body,
        "roles": {st.name: st.role for st in patient.structures},
        "density_table_source": getattr(patient, "density_table_source", None),
        "notes": notes,
    }
    record["beams"] = {"gantry_deg": [float(g) for g in gantry], "beamlet_mm": args.beamlet_mm}
    record["goal_table"] = table
    print("wrote", report.write_metrics(record, args.out), f"(total {total:.1f} s)")
    return record


if __name__ == "__main__":
    main()
