"""Minibeam plans: a proton pMBRT plan and a 6 MV photon MBRT plan on a water phantom with a target
behind an entrance OAR, on a fine anisotropic grid (0.125 mm across the slits, 1 mm in depth).

Each plan: homogeneous target dose (squared deviation, hard maximum), a hard valley-dose ceiling in
the OAR and (protons) a minimum PVDR in the OAR. Prints PVDR at several depths, peak and valley
dose in the OAR and target homogeneity; writes metrics.json (the usual record plus "minibeam" and
"minibeam_photon" blocks) and PNGs (lateral profiles, PVDR vs depth, colorwash, fluence maps).

    python examples/minibeam.py --out out/minibeam
"""

from __future__ import annotations

import argparse
import os
import time

import matplotlib.pyplot as plt
import numpy as np

from objectives import MaxDose, SquaredDeviation
from objectives.minibeam import PVDRMin, ValleyMax
from optimizer import report
from optimizer.beams.minibeam import ProtonMinibeams, SlitCollimator
from optimizer.beams.minibeam_pattern import MinibeamPattern
from optimizer.beams.minibeam_photon import PhotonMinibeams
from optimizer.evaluate.pvdr import peak_valley_masks, plot_colorwash, plot_profiles, plot_pvdr, pvdr
from optimizer.geometry import Grid, Patient, Structure
from optimizer.problem import PlanProblem

PRESCRIPTION_GY = 20.0
GOALS = [("PTV", "D95", ">=", 19.0), ("PTV", "D5", "<=", 21.5), ("OAR", "mean", "<=", 12.0)]
DEPTHS_MM = (5.0, 15.0, 30.0, 50.0, 70.0)


def phantom() -> Patient:
    """Water, 24 mm across (x, 0.125 mm) x 100 mm deep (y, 1 mm) x 3 slices of 2 mm; gantry 0
    enters at y = 0. OAR: depth 5-20 mm; PTV: depth 70-85 mm, 12 mm wide."""
    g = Grid((3, 100, 192), (2.0, 1.0, 0.125), (-2.0, 0.5, -11.9375))
    z, y, x = np.meshgrid(*g.axes_mm(), indexing="ij")
    body = np.ones(g.shape, bool)
    ptv = (y >= 70) & (y <= 85) & (np.abs(x) <= 6) & (np.abs(z) <= 0.1)
    oar = (y >= 5) & (y <= 20) & (np.abs(x) <= 6)
    structures = [Structure("Body", body), Structure("PTV", ptv, "target"), Structure("OAR", oar, "oar")]
    return Patient(g, np.zeros(g.shape, np.float32), structures, name="minibeam_phantom")


def plan_one(patient, model, label, valley_limit_Gy, pvdr_min=None):
    t0 = time.perf_counter()
    inf = model.influence(patient)
    t_dose = time.perf_counter() - t0
    peak, valley = peak_valley_masks(patient.grid, inf)
    prob = PlanProblem(patient, inf, fractions=1, max_voxels_per_structure=None)
    prob += SquaredDeviation("PTV", PRESCRIPTION_GY, weight=1.0)
    prob += MaxDose("PTV", 1.1 * PRESCRIPTION_GY)
    prob += ValleyMax("OAR", valley_limit_Gy, valley)
    if pvdr_min is not None:
        prob += PVDRMin("OAR", pvdr_min, peak, valley)
    t0 = time.perf_counter()
    plan = prob.solve(solver="CLARABEL")
    t_solve = time.perf_counter() - t0
    oar = patient.structure("OAR").mask
    ptv = patient.structure("PTV").mask
    res = pvdr(plan.dose, patient.grid, inf, bin_mm=5.0, structures={"OAR": oar, "PTV": ptv})
    rows = [r for r in res["by_depth"] if any(abs(r["depth_mm"] - z) <= 2.5 for z in DEPTHS_MM)]
    b = inf.beams[0]
    block = {"modality": label, "beam_width_mm": b["beam_width_mm"], "ctc_mm": b["ctc_mm"],
             "pvdr_by_depth": [{k: round(v, 4) for k, v in r.items()} for r in res["by_depth"]],
             "structures": {n: {k: round(v, 4) for k, v in s.items()} for n, s in res["structures"].items()},
             "goals": [{"structure": "OAR", "metric": "valley max", "op": "<=", "limit": valley_limit_Gy,
                        "value": round(float(plan.dose[oar & valley].max()), 4),
                        "met": bool(plan.dose[oar & valley].max() <= valley_limit_Gy + 0.01)}],
             "target_max_over_min": round(float(plan.dose[ptv].max() / plan.dose[ptv].min()), 4)}
    if pvdr_min is not None:
        block["goals"].append({"structure": "OAR", "metric": "PVDR", "op": ">=", "limit": pvdr_min,
                               "value": round(res["structures"]["OAR"]["pvdr"], 4),
                               "met": bool(res["structures"]["OAR"]["pvdr"] >= pvdr_min - 1e-3)})
    print(f"\n{label}: {inf.matrix.shape[1]} minibeam columns, {inf.matrix.nnz} nonzeros, "
          f"dose {t_dose:.2f} s, solve {t_solve:.2f} s")
    for r in rows:
        print(f"  depth {r['depth_mm']:5.1f} mm: peak {r['peak_Gy']:7.3f} Gy, "
              f"valley {r['valley_Gy']:7.3f} Gy, PVDR {r['pvdr']:8.2f}")
    s = res["structures"]["OAR"]
    print(f"  OAR: peak mean {s['peak_mean_Gy']:.3f} Gy, valley mean {s['valley_mean_Gy']:.3f} Gy, "
          f"valley max {s['valley_max_Gy']:.3f} Gy (limit {valley_limit_Gy:g}), PVDR {s['pvdr']:.2f}")
    print(f"  PTV: max/min {block['target_max_over_min']:.3f}")
    return plan, inf, res, block, {"dose": t_dose, "solve": t_solve}


def figures(out, tag, plan, inf, res, patient):
    plot_profiles(plan.dose, patient.grid, inf, DEPTHS_MM, title=f"{tag}: lateral profiles").savefig(
        os.path.join(out, f"{tag}_profiles.png"), dpi=110)
    plot_pvdr(res, title=f"{tag}: PVDR vs depth").savefig(os.path.join(out, f"{tag}_pvdr.png"), dpi=110)
    plot_colorwash(plan.dose, patient.grid, 1, {n: patient.structure(n).mask for n in ("PTV", "OAR")},
                   title=f"{tag}: dose (Gy)").savefig(os.path.join(out, f"{tag}_dose.png"), dpi=110)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    e = inf.beamlets["energy_MeV"]
    for en in np.unique(e[~np.isnan(e)]) if np.any(~np.isnan(e)) else [None]:
        sel = np.ones(len(e), bool) if en is None else e == en
        ax.plot(inf.beamlets["u_mm"][sel], plan.weights[sel], "o-", ms=3,
                label="weights" if en is None else f"{en:.1f} MeV")
    ax.set_xlabel("minibeam position u (mm)")
    ax.set_ylabel("weight")
    ax.set_title(f"{tag}: minibeam fluence map")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"{tag}_fluence.png"), dpi=110)
    plt.close("all")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (metrics.json and PNGs)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the files of an earlier run in --out (refused otherwise)")
    args = ap.parse_args(argv)
    try:
        report.output_folder(args.out, args.overwrite)
    except FileExistsError as exc:  # nothing of an earlier run is replaced unasked
        ap.error(str(exc))
    os.makedirs(args.out, exist_ok=True)
    t_start = time.perf_counter()
    patient = phantom()
    proton = ProtonMinibeams(0, MinibeamPattern(0.7, 3.0), field_mm=15, length_mm=8, layer_spacing_mm=3.0)
    pplan, pinf, pres, pblock, pt = plan_one(patient, proton, "proton", valley_limit_Gy=1.15, pvdr_min=5.0)
    photon = PhotonMinibeams(0, MinibeamPattern(0.5, 2.0), field_mm=15, length_mm=8,
                             collimator=SlitCollimator(thickness_mm=50.0))
    fplan, finf, fres, fblock, ft = plan_one(patient, photon, "photon", valley_limit_Gy=4.0)
    figures(args.out, "proton", pplan, pinf, pres, patient)
    figures(args.out, "photon", fplan, finf, fres, patient)
    total = time.perf_counter() - t_start
    timings = {"dose": pt["dose"], "solve": pt["solve"], "total": total}
    record = report.metrics(pplan, "minibeam", GOALS, timings, nnz=pinf.nnz)
    record["minibeam"] = pblock
    photon_goals = report.metrics(fplan, "minibeam_photon", GOALS, ft)["goals"]
    record["minibeam_photon"] = dict(fblock, timings_s={k: round(v, 3) for k, v in ft.items()},
                                     physical_goals=photon_goals)
    report.write_metrics(record, args.out)
    print(f"\nwrote {args.out}/metrics.json and PNGs ({total:.1f} s)")
    return record


if __name__ == "__main__":
    main()
