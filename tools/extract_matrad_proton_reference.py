"""Extract the proton reference data of the beam-model checks from matRad's generic proton machine.

Run:  python tools/extract_matrad_proton_reference.py protons_Generic.mat \\
          optimizer/beams/data/proton_mc_reference.json --commit <matRad commit>

Source: matRad (DKFZ; github.com/e0404/matRad), ``matRad/basedata/protons_Generic.mat``, machine
"Generic", "Double-Gaussian dose kernels fitted to MC simulations using a generic machine model"
(meta.description; created 11-Sep-2024 by the matRad Developer Team @ DKFZ). For the energies
nearest to 100, 150 and 200 MeV the script keeps (numbers only):

* the Monte Carlo integrated depth dose (``depths`` mm, ``Z`` relative) and the initial energy
  spectrum (Gaussian: mean and sigma, MeV) it was simulated with;
* the double-Gaussian lateral kernel at half the range (``weight`` of the wide Gaussian,
  ``sigma1`` and ``sigma2`` in mm: spreads in the medium, without the initial beam width).

Needs SciPy (``scipy.io.loadmat``, MATLAB v5 files).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

TARGETS_MEV = (100.0, 150.0, 200.0)


def extract(mat_path: str, commit: str) -> dict:
    from scipy.io import loadmat

    machine = loadmat(mat_path, squeeze_me=True, struct_as_record=False)["machine"]
    data = machine.data
    energies = np.array([float(d.energy) for d in data])
    out = {"source": ("matRad (DKFZ), github.com/e0404/matRad, matRad/basedata/protons_Generic.mat at commit "
                      f"{commit}: '{machine.meta.description}' ({machine.meta.created_by}, "
                      f"{machine.meta.created_on}); extracted by tools/extract_matrad_proton_reference.py"),
           "units": {"depth_mm": "mm (water)", "idd": "relative (Z / max Z)", "energy": "MeV",
                     "sigma": "mm", "weight": "fraction of the dose in the wide Gaussian"},
           "peaks": []}
    for target in TARGETS_MEV:
        d = data[int(np.argmin(abs(energies - target)))]
        z = np.asarray(d.depths, dtype=float)
        idd = np.asarray(d.Z, dtype=float)
        mid = 0.5 * float(d.range)
        out["peaks"].append({
            "nominal_MeV": round(float(d.energy), 4),
            "spectrum_mean_MeV": round(float(d.energySpectrum.mean), 4),
            "spectrum_sigma_MeV": round(float(d.energySpectrum.sigma), 5),
            "range_mm": round(float(d.range), 3),
            "depth_mm": [round(float(v), 3) for v in z],
            "idd": [round(float(v), 5) for v in idd / idd.max()],
            "mid_range_mm": round(mid, 3),
            "mid_range_kernel": {k: round(float(np.interp(mid, z, np.asarray(getattr(d, k), dtype=float))), 5)
                                 for k in ("weight", "sigma1", "sigma2")},
        })
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mat", help="matRad protons_Generic.mat")
    ap.add_argument("out", help="JSON file to write")
    ap.add_argument("--commit", required=True, help="matRad commit the file was read at")
    args = ap.parse_args(argv)
    record = extract(args.mat, args.commit)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}: {[p['nominal_MeV'] for p in record['peaks']]} MeV")
    return record


if __name__ == "__main__":
    main()
