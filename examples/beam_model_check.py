"""Beam-model check: the dose models against published beam data (issue 9).

Run:  python examples/beam_model_check.py --out out/beam_model_check

Photons (``photon_checks``): the 6 MV pencil beam of :class:`optimizer.PhotonBeams`, computed
through influence matrices in water (5 mm beamlets summed into square fields), against the
digitized reference data in ``optimizer/beams/data/photon_6mv_reference.json`` (BJR Suppl. 25
PDDs, IROC output factors of Followill et al. 2012, surface doses of Apipunyasopon et al. 2013,
penumbra; each block names its source). Three versions of the model side by side: the full
kernel (``cutoff_mm=inf, min_relative=0``), the default sparse matrix that plans use (cut-off
20 mm, the far-scatter tail folded into the outer shell so 10 x 10 cm2 is exact and fields up to
3 x 3 cm2 keep their output factor) and the legacy single Gaussian (``kernel="gaussian"``). Writes

* ``photon_pdd.png``: PDDs of 5 x 5, 10 x 10 and 20 x 20 cm2 at SSD 100 cm, model vs reference;
* ``photon_profiles.png``: 10 x 10 cm2 cross-plane profiles at 10 cm depth in water and inside a
  lung slab (-700 HU from 5 to 15 cm depth);
* ``photon_output_factors.png``: output factors at 10 cm depth (SAD 100 cm), 2 x 2 to 20 x 20 cm2;
* the proton panels of ``beam_model_check_proton.py`` (``proton_*.png``);
* ``metrics.json``: {"photon": ..., "proton": ...} with every model value, its reference, tolerance and
  residual, the kernel's parameters and the dose fraction the sparse cut-off drops.

Further modalities add a ``<name>_checks(out) -> dict`` function and append it to ``CHECKS``;
``main`` runs each and stores its dict under its name in metrics.json. Runs in about 30 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from optimizer import Patient, PhotonBeams, Structure, phantoms, report  # noqa: E402
from optimizer._files import atomic_write  # noqa: E402
from optimizer.beams.photon_kernel import DATA_DIR, PhotonScatterKernel, penumbra_80_20  # noqa: E402

SURFACE_Y = -160.0  # water surface (y, mm) of the phantoms below; gantry 0 beams come from -y
VERSIONS = {  # label: PhotonBeams options
    "full kernel": dict(cutoff_mm=math.inf, min_relative=0.0),
    "default matrix": {},
    "legacy gaussian": dict(kernel="gaussian"),
}


def _save(fig, path: str) -> None:
    def write(f):
        fig.savefig(f, format="png", dpi=110)

    atomic_write(path, write, overwrite=True)
    plt.close(fig)


def _column(depth_mm=320.0, spacing=2.0):
    """Water column (surface at SURFACE_Y for the default depth) and its central-axis mask."""
    p = phantoms.water_box((40, depth_mm, 40), spacing_mm=spacing, air_margin_mm=10)
    z, y, x = p.grid.axes_mm()
    mask = np.zeros(p.grid.shape, bool)
    mask[np.argmin(abs(z)), :, np.argmin(abs(x))] = True
    return p, mask & (p.ct_hu > -500)


def _cax(patient, mask, field_cm, iso_depth_mm, surface_y=SURFACE_Y, **kw):
    n = int(round(field_cm * 10 / 5))
    inf = PhotonBeams([0], beamlet_mm=5.0, **kw).influence(
        patient, isocenter_mm=(0.0, surface_y + iso_depth_mm, 0.0), dose_mask=mask,
        fields={0: np.ones((n, n), bool)})
    dose = inf.dose_per_fraction(np.ones(inf.n_beamlets))
    z, y, x = patient.grid.axes_mm()
    iz, ix = np.argmin(abs(z)), np.argmin(abs(x))
    ok = mask[iz, :, ix]
    return (y - surface_y)[ok], dose[iz, :, ix][ok]


def _profile(patient, iy, **kw):
    z, y, x = patient.grid.axes_mm()
    iz = np.argmin(abs(z))
    mask = np.zeros(patient.grid.shape, bool)
    mask[iz, iy, :] = True
    inf = PhotonBeams([0], beamlet_mm=5.0, **kw).influence(
        patient, isocenter_mm=(0.0, SURFACE_Y, 0.0), dose_mask=mask, fields={0: np.ones((20, 20), bool)})
    prof = inf.dose_per_fraction(np.ones(inf.n_beamlets))[iz, iy, :]
    right = x >= -1e-9
    return x[right], prof[right]


def _row(model, ref, tol):
    return {"model": round(float(model), 4), "reference": ref, "tolerance": tol,
            "residual": round(float(model) - ref, 4)}


def photon_checks(out: str) -> dict:
    """Photon panels and metrics (see the module docstring); returns the metrics dict."""
    with open(os.path.join(DATA_DIR, "photon_6mv_reference.json")) as f:
        ref = json.load(f)
    metrics: dict = {"reference_file": "optimizer/beams/data/photon_6mv_reference.json"}
    column, mask = _column()

    # -- PDDs -------------------------------------------------------------------------------
    fig, ax = plt.subplots(figsize=(7, 5))
    metrics["pdd"] = {}
    colours = {"5": "tab:blue", "10": "tab:green", "20": "tab:red"}
    for fs, block in ref["pdd"]["fields"].items():
        rows = {}
        for label, style in (("full kernel", "-"), ("default matrix", "--"), ("legacy gaussian", ":")):
            depth, dose = _cax(column, mask, float(fs), 0.0, **VERSIONS[label])
            pdd = dose / dose.max() * 100
            ax.plot(depth / 10, pdd, style, color=colours[fs], lw=1.2,
                    label=f"{fs}x{fs} {label}" if fs == "10" or label == "full kernel" else None)
            rows[label] = [_row(np.interp(d * 10, depth, pdd), r, block["tolerance"])
                           for d, r in zip(block["depth"], block["pdd"])]
            if fs == "10":
                rows[label + " d_max_cm"] = float(depth[np.argmax(dose)] / 10)
        ax.plot(block["depth"], block["pdd"], "o", color=colours[fs], mfc="none",
                label=f"{fs}x{fs} reference")
        metrics["pdd"][fs] = {"depth_cm": block["depth"], **rows}
    ax.set(xlabel="depth (cm)", ylabel="PDD (%)", title="6 MV PDD, SSD 100 cm: model vs BJR Suppl. 25",
           xlim=(0, 30), ylim=(0, 105))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, os.path.join(out, "photon_pdd.png"))

    # -- surface dose (build-up extrapolated to d = 0 from 0.25 and 0.75 mm) -------------------
    fine = phantoms.water_box((10, 40, 10), spacing_mm=(2.0, 0.5, 2.0), air_margin_mm=5)
    fz, fy, fx = fine.grid.axes_mm()
    fmask = np.zeros(fine.grid.shape, bool)
    fmask[np.argmin(abs(fz)), :, np.argmin(abs(fx))] = True
    fmask &= fine.ct_hu > -500
    sd = ref["surface_dose"]
    metrics["surface_dose_pct"] = {}
    for label in ("full kernel", "default matrix", "legacy gaussian"):
        vals = []
        for fs, r in zip(sd["field"], sd["percent"]):
            depth, dose = _cax(fine, fmask, fs, 0.0, surface_y=-20.0, **VERSIONS[label])
            d_max = _cax(column, mask, fs, 0.0, **VERSIONS[label])[1].max()
            s0 = dose[0] - (dose[1] - dose[0]) / (depth[1] - depth[0]) * depth[0]
            vals.append(_row(100 * s0 / d_max, r, sd["tolerance"]) | {"field_cm": fs})
        metrics["surface_dose_pct"][label] = vals

    # -- output factors ------------------------------------------------------------------------
    ofb = ref["output_factors"]
    dz = ofb["depth_cm"] * 10
    fields = ofb["field"]
    fig, ax = plt.subplots(figsize=(7, 5))
    metrics["output_factors"] = {"field_cm": fields}
    for label, style in (("full kernel", "-"), ("default matrix", "--"), ("legacy gaussian", ":")):
        doses = []
        for fs in fields:
            depth, dose = _cax(column, mask, fs, dz, **VERSIONS[label])
            doses.append(np.interp(dz, depth, dose))
        of = np.array(doses) / doses[fields.index(10.0)]
        ax.plot(fields, of, style, marker=".", label=label)
        metrics["output_factors"][label] = [_row(v, r, t)
                                            for v, r, t in zip(of, ofb["value"], ofb["tolerance"])]
    ax.errorbar(fields, ofb["value"], yerr=ofb["tolerance"], fmt="ko", mfc="none", capsize=3,
                label="reference (IROC 2x2, 3x3; BJR 25)")
    ax.set(xlabel="square field side (cm)", ylabel="output factor (10 cm depth, SAD 100 cm)",
           title="6 MV output factors relative to 10 x 10 cm2")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, os.path.join(out, "photon_output_factors.png"))

    # -- profiles in water and in lung ----------------------------------------------------------
    water = phantoms.water_box((10, 320, 160), spacing_mm=(10.0, 2.0, 1.0), air_margin_mm=4)
    z, y, x = water.grid.axes_mm()
    ct = water.ct_hu.copy()
    slab = (y >= SURFACE_Y + 50) & (y <= SURFACE_Y + 150)
    ct[:, slab, :] = np.where(water.ct_hu[:, slab, :] > -500, -700.0, water.ct_hu[:, slab, :])
    lung = Patient(water.grid, ct, [Structure("Body", water.structure("Body").mask)])
    iy = int(np.argmin(abs(y - (SURFACE_Y + 100))))
    fig, ax = plt.subplots(figsize=(7, 5))
    pen = ref["penumbra"]
    metrics["penumbra_80_20_mm"] = {"reference": pen["value_mm"], "range_tested": [3.0, 6.0]}
    for label, style in (("full kernel", "-"), ("default matrix", "--"), ("legacy gaussian", ":")):
        for medium, patient, colour in (("water", water, "tab:blue"), ("lung", lung, "tab:orange")):
            xs, prof = _profile(patient, iy, **VERSIONS[label])
            width = penumbra_80_20(xs, prof, prof[0])
            metrics["penumbra_80_20_mm"][f"{label}, {medium}"] = round(width, 2)
            ax.plot(xs, prof / prof[0] * 100, style, color=colour,
                    label=f"{medium}, {label}: 80-20 {width:.1f} mm")
    ax.axvline(55.0, color="grey", lw=0.8)
    ax.set(xlabel="off-axis distance at 10 cm depth (mm)", ylabel="dose (% of axis)", xlim=(0, 80),
           title="10 x 10 cm2 profile at 10 cm depth (lung: -700 HU, 5-15 cm)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, os.path.join(out, "photon_profiles.png"))

    # -- lung slab: dose behind 5 cm of lung (central axis, 10 x 10 cm2) ------------------------
    col2, mask2 = _column()
    cz, cy, cx = col2.grid.axes_mm()
    ct2 = col2.ct_hu.copy()
    s2 = (cy >= SURFACE_Y + 50) & (cy <= SURFACE_Y + 100)
    ct2[:, s2, :] = np.where(col2.ct_hu[:, s2, :] > -500, -700.0, col2.ct_hu[:, s2, :])
    lung2 = Patient(col2.grid, ct2, [Structure("Body", col2.structure("Body").mask)])
    rho = float(lung2.relative_electron_density()[np.argmin(abs(cz)), np.argmin(abs(cy - SURFACE_Y - 75)),
                                                    np.argmin(abs(cx))])
    kernel = PhotonScatterKernel.default()
    mu_p = kernel.components[0].mu_per_mm
    metrics["lung_slab"] = {"slab": f"5 cm of -700 HU (relative electron density {rho:.3f}) from 5 to 10 cm",
                            "primary_attenuation_prediction": round(math.exp(mu_p * 50 * (1 - rho)), 3)}
    for label in ("default matrix", "legacy gaussian"):
        dw, w = _cax(col2, mask2, 10, 0.0, **VERSIONS[label])
        dl, lu = _cax(lung2, mask2, 10, 0.0, **VERSIONS[label])
        metrics["lung_slab"][f"{label}: dose ratio lung/water at 15 cm"] = round(
            float(np.interp(150, dl, lu) / np.interp(150, dw, w)), 3)

    # -- the sparse cut-off: the dose fraction it drops ----------------------------------------
    drop = {}
    dfull = _cax(column, mask, 10, 0.0, **VERSIONS["full kernel"])
    dcut = _cax(column, mask, 10, 0.0, truncation="drop")
    for dd in (15.0, 100.0, 200.0):
        drop[f"{dd:g} mm"] = round(1 - float(np.interp(dd, *dcut) / np.interp(dd, *dfull)), 4)
    metrics["sparse_cutoff"] = {
        "cutoff_mm": 20.0, "min_relative": 1e-3,
        "dropped_fraction_10x10_axis": drop,
        "note": "fraction of the full kernel's dose (10 x 10 cm2, SSD 100 cm, axis) outside the default "
                "cut-off; truncation='calibrated' (default) folds it into each point's outer shell of "
                "kept entries (beamlet centres beyond 18 mm, share growing over one beamlet width), so "
                "this field is exact and fields up to 3 x 3 cm2 keep their output factor"}
    metrics["kernel"] = kernel.to_dict()
    return metrics


#: The checks main() runs, each writing its panels into ``out`` and returning its metrics.
def proton_checks(out: str) -> dict:
    """Proton panels and metrics: examples/beam_model_check_proton.py (IDDs vs PSTAR, lateral
    profiles with the halo, field-size factor; also writes proton_metrics.json)."""
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from beam_model_check_proton import main as proton_main

    metrics = proton_main(["--out", out])
    # plain JSON types (the proton metrics hold NumPy scalars)
    return json.loads(json.dumps(metrics, default=lambda v: v.item() if hasattr(v, "item") else float(v)))


CHECKS = [photon_checks, proton_checks]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/beam_model_check", help="output folder (created)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the files of an earlier run in --out (refused otherwise)")
    args = ap.parse_args(argv)
    try:
        report.output_folder(args.out, args.overwrite)
    except FileExistsError as exc:  # nothing of an earlier run is replaced unasked
        ap.error(str(exc))
    os.makedirs(args.out, exist_ok=True)
    record = {}
    for check in CHECKS:
        name = check.__name__.removesuffix("_checks")
        record[name] = check(args.out)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk in ("output_factors", "penumbra_80_20_mm")}
                      for k, v in record.items()}, indent=1)[:3000])
    print("wrote", report.write_metrics(record, args.out))
    return record


if __name__ == "__main__":
    main()
