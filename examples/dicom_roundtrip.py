"""Own patients through DICOM: the TG-119 C-shape written as CT + RTSTRUCT, read back, planned,
and the plan exported as RT Dose (and, for protons, an RT Ion Plan).

Run:  python examples/dicom_roundtrip.py --out out/dicom [--protons] [--overwrite]

Steps (what a user with their own CT and structure set does from step 2 on):

1. the TG-119 C-shape phantom is written into ``OUT/dicom_in/`` as a CT series
   (``CT_0000.dcm``, ...) and an RT Structure Set (``RS.dcm``);
2. that folder is read back with :func:`optimizer.load_dicom`; the Dice coefficient of every
   structure against the phantom's mask and the largest HU difference are printed;
3. the loaded patient is planned: 9 x 6 MV photon beams with the terms of
   ``examples/tg119_cshape.py`` (default), or with ``--protons`` 3 proton PBS beams with
   physical-dose terms;
4. the plan's total dose is written into ``OUT/dicom_out/RD.dcm`` (with ``--protons`` also the
   spot weights as ``OUT/dicom_out/RN.dcm``, which the dose references); the RT Dose is read back
   with pydicom and compared with the plan dose (the stored dose is rounded to DoseGridScaling, so
   the difference must stay within half of it);
5. ``OUT/metrics.json`` (the shared schema of :mod:`optimizer.report` plus a "dicom" block) and
   ``OUT/dvh.png`` are written.

Nothing is overwritten: if any of these files exists the run stops before planning and asks for
``--overwrite``, which replaces them (and removes the CT slices / structure set / plan of the earlier
run first, so a run at another voxel size leaves no stale slices behind).

Run time on 2 cores at the default 4 mm: photons about 50 s; protons about 3 min with the beam
model's default spot and layer spacing (about 9800 spots), about 55 s with
``--spot-spacing-mm 8 --layer-spacing-mm 6`` (about 3300 spots, a less conformal plan).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pydicom

from optimizer import (
    PhotonBeams,
    PlanProblem,
    evaluate,
    load_ct_series,
    load_dicom,
    phantoms,
    plots,
    report,
    write_ct_series,
    write_rt_ion_plan,
    write_rtdose,
    write_rtstruct,
)

#: Proton beam angles (IEC 61217, degrees): posterior and two laterals. The C opens anteriorly
#: with the core in its mouth, so no beam has to stop in front of the core or traverse it end-on.
PROTON_GANTRY_DEG = (180.0, 90.0, 270.0)


class _Refused(SystemExit):
    """Raised (exit status 1) when an output file exists and --overwrite was not given."""


def _refuse(what: str, out: Path) -> _Refused:
    return _Refused(
        f"error: {what}; nothing was overwritten.\n"
        f"Rerun with --overwrite to replace the earlier outputs in {out}, or choose another --out."
    )


def _outputs(out: Path, protons: bool) -> list[Path]:
    """Every file this example writes (existing CT slices of an earlier run included)."""
    dicom_in, dicom_out = out / "dicom_in", out / "dicom_out"
    paths = [dicom_in / "RS.dcm", dicom_out / "RD.dcm", out / "metrics.json", out / "dvh.png"]
    if protons:
        paths.append(dicom_out / "RN.dcm")
    if dicom_in.is_dir():
        paths += sorted(dicom_in.glob("CT_*.dcm"))
    return paths


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def _photon_plan(patient, args):
    beams = PhotonBeams(gantry_deg=range(0, 360, 40), beamlet_mm=args.beamlet_mm)
    t0 = time.perf_counter()
    influence = beams.influence(patient, target="PTV", progress=args.verbose)
    t_dose = time.perf_counter() - t0
    problem = PlanProblem(patient, influence, fractions=phantoms.TG119_CSHAPE_FRACTIONS,
                          max_voxels_per_structure=args.max_voxels)
    # as examples/tg119_cshape.py: hard PTV goals through their CVaR surrogates with 0.5 Gy of
    # room, a homogeneous PTV, then spare the core, the ring around the PTV and the rest
    for term in phantoms.cshape_planning_terms():
        problem += term
    return influence, problem, t_dose, "9 x 6 MV photons"


def _proton_plan(patient, args):
    try:
        from optimizer import ProtonBeams

        beams = ProtonBeams(PROTON_GANTRY_DEG, spot_spacing_mm=args.spot_spacing_mm,
                            layer_spacing_mm=args.layer_spacing_mm, margin_mm=args.proton_margin_mm)
        t0 = time.perf_counter()
        influence = beams.influence(patient, target="PTV", progress=args.verbose)
        t_dose = time.perf_counter() - t0
        missing = [k for k in ("beam", "layer", "energy_MeV", "u_mm", "v_mm") if k not in influence.beamlets]
        if missing:
            raise KeyError(f"beamlet table lacks {missing}")
    except Exception as exc:  # the proton model may be missing or unfinished: say so and stop
        raise SystemExit(
            f"error: the proton beam model (optimizer.ProtonBeams) is missing or failed: "
            f"{type(exc).__name__}: {exc}\nRun without --protons for the photon plan."
        ) from exc
    problem = PlanProblem(patient, influence, fractions=phantoms.TG119_CSHAPE_FRACTIONS,
                          max_voxels_per_structure=args.max_voxels)
    # physical dose (no RBE factor): the PTV goals hard as above, squared deviation in the PTV,
    # squared overdose of the core, ring and the rest
    for term in phantoms.cshape_planning_terms():
        problem += term
    return influence, problem, t_dose, f"{len(PROTON_GANTRY_DEG)} proton PBS beams"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/dicom", help="output folder (created)")
    ap.add_argument("--protons", action="store_true", help="plan with proton PBS beams, write an RT Ion Plan")
    ap.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run")
    ap.add_argument("--spacing-mm", type=float, default=4.0, help="phantom / CT voxel size, mm")
    ap.add_argument("--beamlet-mm", type=float, default=5.0, help="photon beamlet size at isocentre, mm")
    ap.add_argument("--proton-margin-mm", type=float, default=5.0,
                    help="margin around the PTV that proton Bragg peaks cover, mm")
    ap.add_argument("--spot-spacing-mm", type=float, default=None,
                    help="proton spot spacing at isocentre, mm (default: the beam model's)")
    ap.add_argument("--layer-spacing-mm", type=float, default=None,
                    help="proton energy-layer spacing in WEPL, mm (default: the beam model's)")
    ap.add_argument("--max-voxels", type=int, default=1500,
                    help="helper structures (ring, tissue) are optimized on a sample of this many voxels")
    ap.add_argument("--solver", default=None,
                    help="FIRST_ORDER or a cvxpy solver (default: by problem size, PlanProblem.solve)")
    ap.add_argument("--verbose", action="store_true", help="one line per beam while computing dose")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    out = Path(args.out)
    dicom_in, dicom_out = out / "dicom_in", out / "dicom_out"
    existing = [p for p in _outputs(out, args.protons) if p.exists()]
    if existing and not args.overwrite:
        shown = ", ".join(str(p) for p in existing[:3]) + (f" and {len(existing) - 3} more"
                                                           if len(existing) > 3 else "")
        raise _refuse(f"{shown} already exist{'s' if len(existing) == 1 else ''}", out)
    if args.overwrite:  # this example's own files of an earlier run, so no stale slice survives
        stale = [p for p in existing if p.suffix == ".dcm"]
        stale += [dicom_out / "RN.dcm"] if (dicom_out / "RN.dcm").exists() and not args.protons else []
        for p in stale:
            p.unlink()
        if stale:
            print(f"--overwrite: removed {len(stale)} DICOM files of an earlier run")

    # 1. the phantom as DICOM -------------------------------------------------------------------
    phantom = phantoms.tg119_cshape(spacing_mm=args.spacing_mm)
    t0 = time.perf_counter()
    try:
        ct_info = write_ct_series(phantom, dicom_in, overwrite=args.overwrite)
        write_rtstruct(phantom, dicom_in / "RS.dcm", ct_info, overwrite=args.overwrite)
    except FileExistsError as exc:
        raise _refuse(str(exc).rsplit(": exists", 1)[0] + " already exists", out) from exc
    t_write_in = time.perf_counter() - t0
    files_in = sorted(p.name for p in dicom_in.iterdir())
    print(f"wrote {len(files_in) - 1} CT slices + RS.dcm into {dicom_in} ({t_write_in:.1f} s)")

    # 2. read it back as an own patient would be read -------------------------------------------
    t0 = time.perf_counter()
    patient = load_dicom(dicom_in)
    info = load_ct_series(dicom_in).info  # identifiers the RT Dose / RT Ion Plan must reference
    t_read = time.perf_counter() - t0
    if patient.grid != phantom.grid:
        raise SystemExit(f"error: grid read back {patient.grid} differs from the phantom's {phantom.grid}")
    dice = {s.name: round(_dice(patient.structure(s.name).mask, s.mask), 6) for s in phantom.structures}
    hu_max_diff = float(np.max(np.abs(patient.ct_hu.astype(float) - phantom.ct_hu.astype(float))))
    print(f"read back {patient.name}: grid {patient.grid.shape} ({t_read:.1f} s); Dice "
          + ", ".join(f"{k} {v:.4f}" for k, v in dice.items()) + f"; max |HU difference| {hu_max_diff:g}")

    # 3. plan the loaded patient ---------------------------------------------------------------
    phantoms.add_cshape_helper_structures(patient)
    make = _proton_plan if args.protons else _photon_plan
    influence, problem, t_dose, label = make(patient, args)
    print(f"{label}: {influence.matrix.shape[0]} voxels x {influence.n_beamlets} "
          f"{'spots' if args.protons else 'beamlets'}, {influence.nnz} nonzeros, {t_dose:.1f} s")
    plan = problem.solve(solver=args.solver)
    s = plan.solver
    print(f"solver {s['name']}: {s['status']}, objective {s['objective']:.4g}, {s['iterations']} iterations, "
          f"compile {s['compile_s']:.1f} s, solve {s['solve_s']:.1f} s")
    goals = phantoms.TG119_CSHAPE_GOALS + phantoms.TG119_CSHAPE_HARD_GOALS
    print(evaluate.goal_table(plan, goals))

    # 4. RT Ion Plan (protons) and RT Dose -----------------------------------------------------
    t0 = time.perf_counter()
    ss_uid = str(pydicom.dcmread(dicom_in / "RS.dcm", stop_before_pixels=True).SOPInstanceUID)
    dicom_block: dict = {}
    plan_uid = None
    try:
        if args.protons:
            plan_uid = write_rt_ion_plan(dicom_out / "RN.dcm", plan, info, mu_per_weight=1.0,
                                         overwrite=args.overwrite, structure_set_uid=ss_uid,
                                         plan_label="cshape PBS")
        write_rtdose(plan, dicom_out / "RD.dcm", info, overwrite=args.overwrite, referenced_plan_uid=plan_uid)
    except FileExistsError as exc:
        raise _refuse(str(exc).rsplit(": exists", 1)[0] + " already exists", out) from exc
    t_write_out = time.perf_counter() - t0

    rd = pydicom.dcmread(dicom_out / "RD.dcm")
    scaling = float(rd.DoseGridScaling)
    stored = rd.pixel_array.reshape(int(rd.NumberOfFrames), int(rd.Rows), int(rd.Columns))
    rd_dose = stored.astype(np.float64) * scaling
    if rd_dose.shape != plan.dose.shape:
        raise SystemExit(f"error: RT Dose read back has shape {rd_dose.shape}, plan dose {plan.dose.shape}")
    rd_max_diff = float(np.max(np.abs(rd_dose - plan.dose)))
    within = rd_max_diff <= 0.5 * scaling * (1 + 1e-6)
    print(f"RT Dose read back: max |difference| {rd_max_diff:.3g} Gy vs DoseGridScaling {scaling:.3g} Gy "
          f"({'within' if within else 'NOT within'} half a step); max dose {plan.dose.max():.2f} Gy")
    if args.protons:
        rn = pydicom.dcmread(dicom_out / "RN.dcm")
        spot_w = [np.asarray(cp.ScanSpotMetersetWeights, float) for b in rn.IonBeamSequence
                  for cp in b.IonControlPointSequence]
        n_spots = int(sum(int(np.count_nonzero(w)) for w in spot_w))
        total_w = float(sum(w.sum() for w in spot_w))
        w_rel = abs(total_w - plan.weights.sum()) / max(plan.weights.sum(), 1e-30)
        dicom_block["rt_ion_plan"] = {
            "beams": len(rn.IonBeamSequence),
            "control_points": int(sum(len(b.IonControlPointSequence) for b in rn.IonBeamSequence)),
            "spots_written": n_spots,
            "spots_above_1pct_of_max": int(np.count_nonzero(plan.weights > 0.01 * plan.weights.max())),
            "total_weight": total_w,
            "total_weight_rel_diff": w_rel,
            "mu_per_weight": 1.0,
        }
        print(f"RT Ion Plan: {len(rn.IonBeamSequence)} beams, {n_spots} spots with weight > 0 "
              f"({dicom_block['rt_ion_plan']['spots_above_1pct_of_max']} above 1 % of the largest), "
              f"total weight {total_w:.4g} (plan {plan.weights.sum():.4g}, relative difference {w_rel:.1e})")

    # 5. DVH and metrics -----------------------------------------------------------------------
    dvh_path = out / "dvh.png"
    fig = plots.dvh(plan, names=["PTV", "Core", "Ring", "Tissue"],
                    title=f"TG-119 C-shape read from DICOM, {label}")
    fig.savefig(dvh_path, dpi=110)
    plt.close(fig)
    img = plt.imread(dvh_path)
    if img.ndim != 3 or img.shape[0] < 100 or float(img[..., :3].std()) == 0.0:
        raise SystemExit(f"error: {dvh_path} looks empty (shape {img.shape})")

    total = time.perf_counter() - t_start
    files_out = sorted(p.name for p in dicom_out.iterdir())
    dicom_block.update({
        "files": {"dicom_in": [f"dicom_in/{f}" for f in files_in],
                  "dicom_out": [f"dicom_out/{f}" for f in files_out]},
        "ct_slices": len(info.sop_instance_uids),
        "grid_equal": True,
        "dice": dice,
        "hu_max_diff": hu_max_diff,
        "rtdose_max_diff_Gy": rd_max_diff,
        "dose_grid_scaling_Gy": scaling,
        "rtdose_within_half_scaling": bool(within),
        "timings_s": {"write_ct_rtstruct": round(t_write_in, 3), "read": round(t_read, 3),
                      "write_plan_dose": round(t_write_out, 3)},
    })
    case = "dicom_roundtrip_protons" if args.protons else "dicom_roundtrip_photons"
    record = report.metrics(plan, case, goals,
                            {"dose": t_dose, "build": s["build_s"] + s["compile_s"], "solve": s["solve_s"],
                             "total": total})
    record["modality"] = plan.modality
    record["dicom"] = dicom_block
    print("wrote", report.write_metrics(record, os.fspath(out)), "and", dvh_path, f"(total {total:.1f} s)")
    return record


if __name__ == "__main__":
    main()
