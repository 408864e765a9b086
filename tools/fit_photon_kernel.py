"""Fit the 6 MV photon pencil-beam kernel to published beam data and write its parameter file.

Run:  python tools/fit_photon_kernel.py [--out optimizer/beams/data/photon_6mv_kernel.json]

Reference data: ``optimizer/beams/data/photon_6mv_reference.json`` (PDDs 5 x 5, 10 x 10, 20 x 20
cm2 at SSD 100 cm, d_max, surface dose, output factors 2 x 2 to 20 x 20 cm2 at 10 cm depth, 80-20 %
penumbra at 10 cm; each block names its source). The model is the analytic central-axis / off-axis
dose of :class:`optimizer.beams.photon_kernel.PhotonScatterKernel` (the same code the influence
matrices use), so the fit and the dose calculation cannot drift apart. Each residual is
(model - reference) / tolerance; ``scipy.optimize.least_squares`` with bounds that keep every
component physical (primary narrow, scatter wider, far scatter widest). Prints the residuals.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from scipy.optimize import least_squares

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from optimizer._files import write_bytes  # noqa: E402
from optimizer.beams.photon_kernel import (  # noqa: E402
    DATA_DIR,
    DEFAULT_KERNEL_FILE,
    KernelComponent,
    PhotonScatterKernel,
    penumbra_80_20,
)

REFERENCE_FILE = os.path.join(DATA_DIR, "photon_6mv_reference.json")

# (name, [amplitude, mu/mm, beta/mm, sigma0 mm, slope], lower, upper, build-up?, density scaled?)
SPEC = [
    ("primary", [1.0, 0.0050, 0.60, 2.5, 0.010], [0.1, 0.0035, 0.05, 1.0, 0.0], [5, 0.0065, 3.0, 4.0, 0.02],
     True, True),
    ("scatter", [0.15, 0.0030, 0.05, 8.0, 0.05], [0.0, 0.0005, 0.006, 4.0, 0.0], [2, 0.0070, 1.0, 30.0, 0.3],
     True, True),
    ("far", [0.08, 0.0030, 0.03, 50.0, 0.10], [0.0, 0.0005, 0.006, 25.0, 0.0], [2, 0.0070, 1.0, 150.0, 0.5],
     True, True),
    ("electron", [0.2, 0.25, 0.0, 60.0, 0.0], [0.0, 0.05, 0.0, 15.0, 0.0], [5, 2.0, 0.0, 150.0, 0.0],
     False, False),
]


def _kernel(p: np.ndarray) -> PhotonScatterKernel:
    comps, i = [], 0
    for name, _, _, _, buildup, scaled in SPEC:
        a, mu, beta, s0, c = p[i:i + 5]
        i += 5
        if buildup:
            beta = max(beta, mu * 1.05)
        comps.append(KernelComponent(name, a, mu, beta if buildup else 0.0, s0, c, scaled))
    return PhotonScatterKernel(comps, source="tools/fit_photon_kernel.py")


def model_values(kernel: PhotonScatterKernel, ref: dict) -> dict:
    """The model's numbers for every reference quantity (same keys and order as the data)."""
    out = {"pdd": {}, "surface": [], "of": [], "dmax_cm": None, "penumbra_mm": None}
    fine = np.linspace(0.0, 300.0, 3001)
    for fs, block in ref["pdd"]["fields"].items():
        s = float(fs) * 10.0
        cax = kernel.cax_dose(s, fine)
        out["pdd"][fs] = list(np.interp(np.array(block["depth"]) * 10.0, fine, cax) / cax.max() * 100.0)
        if fs == "10":
            out["dmax_cm"] = float(fine[np.argmax(cax)] / 10.0)
    for fs in ref["surface_dose"]["field"]:
        cax = kernel.cax_dose(fs * 10.0, fine[:601])
        out["surface"].append(float(cax[0] / cax.max() * 100.0))
    block = ref["output_factors"]
    depth = block["depth_cm"] * 10.0
    ssd = block["sad_cm"] * 10.0 - depth
    d10 = kernel.cax_dose(100.0, depth, ssd)[0]
    out["of"] = [float(kernel.cax_dose(fs * 10.0, depth, ssd)[0] / d10) for fs in block["field"]]
    pen = ref["penumbra"]
    dz = pen["depth_cm"] * 10.0
    x = np.linspace(0.0, 100.0, 2001)
    prof = kernel.off_axis_dose(pen["field"] * 10.0, dz, x)
    out["penumbra_mm"] = penumbra_80_20(x, prof, prof[0])
    return out


def residuals(kernel: PhotonScatterKernel, ref: dict) -> list[tuple[str, float, float, float]]:
    """(label, model, reference, tolerance) of every fitted quantity."""
    m = model_values(kernel, ref)
    rows = []
    for fs, block in ref["pdd"]["fields"].items():
        for d, r, v in zip(block["depth"], block["pdd"], m["pdd"][fs]):
            rows.append((f"PDD {fs}x{fs} d={d:g} cm (%)", v, r, block["tolerance"]))
    dm = ref["pdd"]["dmax_cm"]
    rows.append(("d_max 10x10 (cm)", m["dmax_cm"], dm["value"], dm["tolerance"]))
    sd = ref["surface_dose"]
    for fs, r, v in zip(sd["field"], sd["percent"], m["surface"]):
        rows.append((f"surface {fs:g}x{fs:g} (%)", v, r, sd["tolerance"]))
    of = ref["output_factors"]
    for fs, r, tol, v in zip(of["field"], of["value"], of["tolerance"], m["of"]):
        if tol > 0:
            rows.append((f"OF {fs:g}x{fs:g}", v, r, tol))
    pen = ref["penumbra"]
    rows.append(("penumbra 80-20 10x10 d=10 cm (mm)", m["penumbra_mm"], pen["value_mm"], pen["tolerance_mm"]))
    return rows


def fit(ref: dict) -> tuple[PhotonScatterKernel, list]:
    x0 = np.concatenate([s[1] for s in SPEC])
    lo = np.concatenate([s[2] for s in SPEC])
    hi = np.concatenate([s[3] for s in SPEC])
    fixed = lo == hi  # parameters without freedom (no build-up of the electron component)
    free = ~fixed

    def full(q):
        p = x0.copy()
        p[free] = q
        p[fixed] = lo[fixed]
        return p

    def fun(q):
        rows = residuals(_kernel(full(q)), ref)
        return np.array([(v - r) / t for _, v, r, t in rows])

    x_start = np.clip(x0[free], lo[free] + 1e-9, hi[free] - 1e-9)
    res = least_squares(fun, x_start, bounds=(lo[free], hi[free]), x_scale="jac", max_nfev=4000)
    kernel = _kernel(full(res.x))
    return kernel, residuals(kernel, ref)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_KERNEL_FILE, help="parameter file to write")
    args = ap.parse_args(argv)
    with open(REFERENCE_FILE) as f:
        ref = json.load(f)
    kernel, rows = fit(ref)
    print(f"{'quantity':40s} {'model':>9s} {'reference':>9s} {'tol':>6s} {'res/tol':>8s}")
    for label, v, r, t in rows:
        print(f"{label:40s} {v:9.3f} {r:9.3f} {t:6.3f} {(v - r) / t:8.2f}")
    record = kernel.to_dict()
    record["source"] = ("Fitted by tools/fit_photon_kernel.py to optimizer/beams/data/"
                        "photon_6mv_reference.json (BJR Suppl. 25 6 MV PDDs, Followill et al. JACMP 2012 "
                        "output factors, Apipunyasopon et al. JACMP 2013 surface dose; see that file)")
    record["depth_form"] = ("photon components: a beta/(beta-mu) (exp(-mu d) - exp(-beta d)) (Bortfeld "
                            "et al., Med Phys 1993;20:311); electron (beta 0): a exp(-mu d); sigma(d) = "
                            "sqrt(sigma0^2 + (slope d)^2); lengths in mm")
    record["fit_residuals"] = [{"quantity": lab, "model": round(v, 4), "reference": r, "tolerance": t}
                               for lab, v, r, t in rows]
    text = json.dumps(record, indent=1) + "\n"
    write_bytes(args.out, text.encode(), overwrite=True)
    print("wrote", args.out)
    return record


if __name__ == "__main__":
    main()
