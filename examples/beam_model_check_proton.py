"""Proton beam-model check: pristine peaks, lateral profiles with the nuclear halo, field-size factor.

Run:  python examples/beam_model_check_proton.py --out out/beam_model_check

Compares the proton dose model (``optimizer.beams.proton_physics``, ``proton_halo`` and the
beam-data table ``proton_beamdata``) with its references and writes into ``--out``:

* ``proton_idd.png``: integrated depth doses at 100, 150 and 200 MeV with the table's energy
  spread and with the former default 0.3 %, the PSTAR CSDA range marked (R80 must sit on it);
* ``proton_lateral.png``: lateral dose profiles of one spot at 150 MeV (entrance, mid-range,
  near the peak), log scale, core alone vs core + halo, and the influence matrix's kernel (exact
  inside its shell, the dose beyond its reach folded into the shell), the reach marked;
* ``proton_fsf.png``: field-size factor (square field of side a vs 20 x 20 cm^2, central axis,
  mid-range) for 100-200 MeV, with the full halo and as the influence matrix sees it (the
  matrix's kernel with the halo reach, and with the core cut-off alone), and the factor of 4 x 4
  spot fields on the plan's influence matrix itself (``proton_halo.matrix_field_size_factor``);
* ``proton_idd_mc.png``: the model's pristine peaks, run with the Monte Carlo's initial spectrum,
  against matRad's generic Monte Carlo IDDs (100, 150, 200 MeV), normalised to the peak;
* ``proton_metrics.json``: the numbers behind the panels and their residuals against the references
  (R80 - PSTAR range; fall-off and peak / entrance against the Monte Carlo peaks, tolerances 1.0 mm
  and 6 %; FSF against the Monte Carlo double-Gaussian kernel, tolerance 0.02, and the published
  band; the matrix's factor against both, tolerances 0.02 and 0.01; the dose fraction the matrix
  cut-off folds and the matrix's nonzeros per dose point).

References: NIST PSTAR CSDA ranges; beam data: OpenTPS's default MCsquare beam model (source in
optimizer/beams/data/proton_generic.csv); Monte Carlo pristine peaks and double-Gaussian lateral
kernels of matRad's generic proton machine (DKFZ; optimizer/beams/data/proton_mc_reference.json);
halo dose fraction several % to ~15 % (Pedroni et al. PMB 2005;50:541, Soukup et al. PMB
2005;50:5089), halo radius ~ range / 3 (Gottschalk et al. PMB 2015;60:5627), hence an FSF of
0.85-1 for 4 x 4 vs 20 x 20 cm^2 at mid-range. Runs in a few seconds.
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
from scipy.special import erf  # noqa: E402

from optimizer import report  # noqa: E402
from optimizer._files import atomic_write  # noqa: E402
from optimizer.beams import proton_halo as ph  # noqa: E402
from optimizer.beams import proton_physics as pp  # noqa: E402
from optimizer.beams.photon_kernel import DATA_DIR  # noqa: E402
from optimizer.beams.proton import (  # noqa: E402
    DEFAULT_CUTOFF_SIGMA,
    HALO_RADIUS_SIGMAS,
    HALO_REACH_MIN_FRACTION,
    SHELL_FRACTION,
    ProtonBeams,
)
from optimizer.beams.proton_beamdata import ProtonBeamData  # noqa: E402

ENERGIES = (100.0, 150.0, 200.0)
#: Tolerances against the Monte Carlo pristine peaks (tests/test_proton_dose_model.py): 80-20 %
#: fall-off (mm) and peak / entrance dose (relative).
MC_FALLOFF_TOL_MM = 1.0
MC_PEAK_ENTRANCE_TOL = 0.06
#: Tolerance of the field-size factor against the Monte Carlo double-Gaussian kernel.
MC_FSF_TOL = 0.02
MC_FILE = os.path.join(DATA_DIR, "proton_mc_reference.json")
#: Tolerance of the influence matrix's field-size factor against the analytic model.
MATRIX_FSF_TOL = 0.01
#: Published band of the halo field-size factor, 4 x 4 vs 20 x 20 cm^2 at mid-range (docstring).
FSF_BAND = (0.85, 1.0)


def _fold(w, sc, sh, cut, halo_cut):
    """The matrix's cut-off at one depth (proton_halo.folded_cutoff with ProtonBeams' constants)."""
    return ph.folded_cutoff(cut, halo_cut, w, sc, sh, HALO_REACH_MIN_FRACTION, SHELL_FRACTION)


def _matrix_kernel(r, w, sc, sh, fold):
    """The influence matrix's lateral kernel (1/mm^2): exact inside the shell, the dose beyond the
    reach folded into the shell, nothing beyond."""
    k = ((1 - w) * np.exp(-0.5 * r**2 / sc**2) / (2 * np.pi * sc**2)
         + w * np.exp(-0.5 * r**2 / sh**2) / (2 * np.pi * sh**2))
    k = k * (1 + float(fold["fold"]) * ph.shell_shape(r, float(fold["shell_mm"]), float(fold["reach_mm"])))
    return np.where(r <= float(fold["reach_mm"]), k, 0.0)


def _central_dose(side_mm, w, sc, sh, fold=None):
    """Central-axis dose of a uniformly scanned square field of side ``side_mm`` per unit fluence
    and IDD; ``fold``: the matrix's kernel (:func:`_fold`; midpoint quadrature over the square)."""
    if fold is None:
        return ((1 - w) * erf(side_mm / (2 * math.sqrt(2) * sc)) ** 2
                + w * erf(side_mm / (2 * math.sqrt(2) * sh)) ** 2)
    h = 0.25
    c = np.arange(-side_mm / 2 + h / 2, side_mm / 2, h)
    xx, yy = np.meshgrid(c, c)
    return float(_matrix_kernel(np.hypot(xx, yy), w, sc, sh, fold).sum() * h * h)


def _peak_metrics(depth, idd):
    """(80-20 % distal fall-off mm, peak / entrance dose, R80 mm) of a sampled depth-dose curve."""
    i = int(np.argmax(idd))
    tail = idd[i:] / idd[i]
    r80 = float(np.interp(-0.8, -tail, depth[i:]))
    return float(np.interp(-0.2, -tail, depth[i:])) - r80, float(idd[i] / idd[0]), r80


def _mc_comparison(out: str) -> dict:
    """Model vs matRad's Monte Carlo pristine peaks (same initial spectrum); panel and residuals."""
    with open(MC_FILE) as f:
        mc = json.load(f)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = {"source": mc["source"], "tolerance_falloff_mm": MC_FALLOFF_TOL_MM,
            "tolerance_peak_entrance": MC_PEAK_ENTRANCE_TOL, "peaks": []}
    for ref, color in zip(mc["peaks"], ("C0", "C1", "C2")):
        zr, dr = np.array(ref["depth_mm"]), np.array(ref["idd"])
        mean = ref["spectrum_mean_MeV"]
        spread = 100 * ref["spectrum_sigma_MeV"] / mean
        z = np.arange(0.0, zr[-1], 0.05)
        idd = pp.pristine_peak(mean, z, energy_spread_pct=spread)[1]
        f_m, p_m, r_m = _peak_metrics(z, idd)
        f_r, p_r, r_r = _peak_metrics(zr, dr)
        ax.plot(zr, dr, "o", color=color, ms=2, label=f"{ref['nominal_MeV']:.1f} MeV Monte Carlo (matRad)")
        ax.plot(z, idd / idd.max(), "-", color=color, lw=1, label=f"model, {mean:.1f} MeV, {spread:.2f} %")
        rows["peaks"].append({
            "nominal_MeV": ref["nominal_MeV"], "spectrum_mean_MeV": mean, "spread_pct": spread,
            "falloff_model_mm": f_m, "falloff_mc_mm": f_r, "falloff_residual_mm": f_m - f_r,
            "peak_entrance_model": p_m, "peak_entrance_mc": p_r, "peak_entrance_residual": p_m / p_r - 1,
            "r80_model_mm": r_m, "r80_mc_mm": r_r, "r80_residual_mm": r_m - r_r,
            "within_tolerance": bool(abs(f_m - f_r) <= MC_FALLOFF_TOL_MM
                                     and abs(p_m / p_r - 1) <= MC_PEAK_ENTRANCE_TOL)})
    ax.set_xlabel("depth in water, mm")
    ax.set_ylabel("IDD relative to the peak")
    ax.set_title("Pristine peaks: model (line) vs Monte Carlo (points), same initial spectrum", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, os.path.join(out, "proton_idd_mc.png"))
    return rows


def _mc_fsf(table) -> dict:
    """4 x 4 / 20 x 20 cm^2 FSF at half the range from matRad's Monte Carlo double-Gaussian kernel
    (its narrow sigma combined with the table's in-air spot)."""
    with open(MC_FILE) as f:
        mc = json.load(f)
    out = {}
    for e, ref in zip(ENERGIES, mc["peaks"]):
        k = ref["mid_range_kernel"]
        sc = math.hypot(k["sigma1"], table.spot_sigma_air_mm_at(e))
        out[f"{e:g}"] = _central_dose(40.0, k["weight"], sc, k["sigma2"]) / _central_dose(
            200.0, k["weight"], sc, k["sigma2"])
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the files of an earlier run in --out (refused otherwise)")
    ap.add_argument("--beam-data", default=None, help="a .csv/.json beam-data table (default: generic)")
    ap.add_argument("--cutoff-sigma", type=float, default=DEFAULT_CUTOFF_SIGMA)
    ap.add_argument("--halo-cutoff-sigma", type=float, default=HALO_RADIUS_SIGMAS,
                    help="halo reach of the matrix in halo sigmas (0: the core cut-off alone)")
    args = ap.parse_args(argv)
    try:
        report.output_folder(args.out, args.overwrite)
    except FileExistsError as exc:  # nothing of an earlier run is replaced unasked
        ap.error(str(exc))
    os.makedirs(args.out, exist_ok=True)
    if args.beam_data and args.beam_data.lower().endswith(".txt"):  # an MCsquare / OpenTPS BDL
        table = ProtonBeamData.from_bdl(args.beam_data)
    else:
        table = ProtonBeamData.from_file(args.beam_data) if args.beam_data else ProtonBeamData.default()
    metrics = {"beam_data": table.as_dict(), "cutoff_sigma": args.cutoff_sigma,
               "halo_cutoff_sigma": args.halo_cutoff_sigma, "energies": {}}

    # -- pristine peaks ------------------------------------------------------------------------
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for e, color in zip(ENERGIES, ("C0", "C1", "C2")):
        spread = table.energy_spread_pct_at(e)
        rng = pp.csda_range_mm(e)
        rec = {"energy_spread_pct": spread, "spot_sigma_air_mm": table.spot_sigma_air_mm_at(e),
               "pstar_range_mm": rng}
        ratios = {}
        for s, style in ((spread, "-"), (0.3, ":")):
            z, idd = pp.pristine_peak(e, energy_spread_pct=s)
            ratios[s] = float(idd.max() / idd[0])
            ax.plot(z, idd, style, color=color, lw=1.5 if style == "-" else 1.0,
                    label=f"{e:g} MeV, {s:g} %" + (" (table)" if s == spread else ""))
        ax.axvline(rng, color=color, lw=0.6, ls="--")
        rec["r80_mm"] = pp.r80_mm(e, spread)
        rec["r80_minus_pstar_mm"] = rec["r80_mm"] - rng
        rec["falloff_80_20_mm"] = pp.distal_falloff_80_20_mm(e, spread)
        rec["falloff_wider_than_0.3pct_mm"] = rec["falloff_80_20_mm"] - pp.distal_falloff_80_20_mm(e, 0.3)
        rec["peak_to_plateau"] = ratios[spread]
        rec["peak_to_plateau_lower_than_0.3pct"] = ratios[0.3] / ratios[spread] - 1.0
        metrics["energies"][f"{e:g}"] = rec
    ax.set_xlabel("depth in water, mm")
    ax.set_ylabel("IDD, MeV cm$^2$/g per proton")
    ax.set_title("Pristine peaks: table energy spread (solid) vs 0.3 % (dotted); PSTAR range dashed",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, os.path.join(args.out, "proton_idd.png"))

    # -- lateral profiles of one spot (150 MeV) --------------------------------------------------
    e = 150.0
    spread, air = table.energy_spread_pct_at(e), table.spot_sigma_air_mm_at(e)
    rng = pp.csda_range_mm(e)
    r = np.linspace(0, 80, 801)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lateral = {}
    for frac, color in ((0.05, "C0"), (0.5, "C1"), (0.9, "C2")):
        z = frac * rng
        full = ph.lateral_dose(e, z, r, sigma_air_mm=air, energy_spread_pct=spread)
        core = ph.lateral_dose(e, z, r, sigma_air_mm=air, energy_spread_pct=spread, halo=False)
        sc = float(pp.lateral_sigma_mm(e, z, air))
        w = float(ph.halo_weight(e, z, spread))
        sh = float(ph.halo_sigma_mm(e, z, air))
        fold = _fold(w, sc, sh, args.cutoff_sigma, args.halo_cutoff_sigma)
        idd = pp.pristine_peak(e, np.array([z]), spread)[1][0]  # the IDD lateral_dose carries
        matrix = _matrix_kernel(r, w, sc, sh, fold) * idd
        ax.semilogy(r, full / full[0], "-", color=color, label=f"z = {z:.0f} mm, core + halo")
        ax.semilogy(r, core / full[0], ":", color=color, label=f"z = {z:.0f} mm, core alone")
        ax.semilogy(r, np.where(matrix > 0, matrix / full[0], np.nan), "-.", color=color, lw=0.8,
                    label=f"z = {z:.0f} mm, matrix kernel (folded)")
        ax.axvline(float(fold["reach_mm"]), color=color, lw=0.6, ls="--")
        lateral[f"{z:.1f}"] = {"halo_weight": w, "core_sigma_mm": sc, "halo_sigma_mm": sh,
                               "reach_mm": float(fold["reach_mm"]), "shell_mm": float(fold["shell_mm"]),
                               "fraction_folded": float(fold["folded"]),
                               "fraction_folded_core_cut_alone": 1.0 - float(ph.fraction_within(
                                   args.cutoff_sigma * sc, w, sc, sh))}
    ax.set_ylim(1e-6, 1.5)
    ax.set_xlabel("distance from the spot axis, mm")
    ax.set_ylabel("dose relative to the axis")
    ax.set_title(f"{e:g} MeV spot: core and nuclear halo; dashed: matrix reach ({args.cutoff_sigma:g} core "
                 f"or {args.halo_cutoff_sigma:g} halo sigmas)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, os.path.join(args.out, "proton_lateral.png"))
    metrics["lateral_150MeV"] = lateral
    metrics["monte_carlo_peaks"] = _mc_comparison(args.out)
    fsf_mc = _mc_fsf(table)

    # -- field-size factor --------------------------------------------------------------------------
    sides = np.array([10.0, 20.0, 30.0, 40.0, 60.0, 80.0, 100.0, 150.0])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    fsf = {}
    for e, color in zip(ENERGIES, ("C0", "C1", "C2")):
        spread, air = table.energy_spread_pct_at(e), table.spot_sigma_air_mm_at(e)
        z = 0.5 * pp.csda_range_mm(e)
        w = float(ph.halo_weight(e, z, spread))
        sc = float(pp.lateral_sigma_mm(e, z, air))
        sh = float(ph.halo_sigma_mm(e, z, air))
        fold = _fold(w, sc, sh, args.cutoff_sigma, args.halo_cutoff_sigma)
        fold0 = _fold(w, sc, sh, args.cutoff_sigma, 0.0)
        ref_full = _central_dose(200.0, w, sc, sh)
        full = [_central_dose(a, w, sc, sh) / ref_full for a in sides]
        cut = [_central_dose(a, w, sc, sh, fold) / _central_dose(200.0, w, sc, sh, fold) for a in sides]
        cut0 = [_central_dose(a, w, sc, sh, fold0) / _central_dose(200.0, w, sc, sh, fold0) for a in sides]
        core = [_central_dose(a, 0.0, sc, sc) / _central_dose(200.0, 0.0, sc, sc) for a in sides]
        # the plan's influence matrix itself: 4 x 4 and 20 x 20 cm^2 spot fields in water
        mat = ph.matrix_field_size_factor(ProtonBeams([0], cutoff_sigma=args.cutoff_sigma, beam_data=table,
                                                      halo_cutoff_sigma=args.halo_cutoff_sigma), e)
        mat0 = ph.matrix_field_size_factor(ProtonBeams([0], cutoff_sigma=args.cutoff_sigma, beam_data=table,
                                                       halo_cutoff_sigma=0.0), e)
        ax.plot(sides / 10, full, "-o", color=color, ms=3, label=f"{e:g} MeV, full halo")
        ax.plot(sides / 10, cut, "--", color=color, label=f"{e:g} MeV, matrix kernel (halo reach, folded)")
        ax.plot(sides / 10, cut0, "-.", color=color, lw=0.8,
                label=f"{e:g} MeV, matrix kernel, core cut-off alone")
        ax.plot(sides / 10, core, ":", color=color, lw=0.8, label=f"{e:g} MeV, core alone")
        ax.plot([4.0], [mat["fsf"]], "x", color=color, ms=8, label=f"{e:g} MeV, influence matrix, 4 x 4")
        ax.plot([4.0], [mat0["fsf"]], "+", color=color, ms=8,
                label=f"{e:g} MeV, influence matrix, core cut-off alone")
        k4 = int(np.flatnonzero(sides == 40.0)[0])
        key = f"{e:g}"
        fsf[key] = {"side_cm": (sides / 10).tolist(), "fsf_full_halo": full, "fsf_matrix_kernel": cut,
                    "fsf_matrix_kernel_core_cut_alone": cut0,
                    "fsf_core_only": core, "fsf_4x4_vs_20x20": full[k4],
                    "fsf_4x4_in_published_band": FSF_BAND[0] <= full[k4] <= FSF_BAND[1],
                    "fsf_4x4_matrix": mat["fsf"], "fsf_4x4_matrix_core_cut_alone": mat0["fsf"],
                    "fsf_4x4_matrix_analytic_same_spots": mat["analytic_fsf"],
                    "matrix_nnz_per_dose_point": mat["nnz"],
                    "matrix_nnz_per_dose_point_core_cut_alone": mat0["nnz"],
                    "fsf_4x4_monte_carlo": fsf_mc[key],
                    "fsf_4x4_residual_vs_monte_carlo": full[k4] - fsf_mc[key],
                    "fsf_4x4_within_tolerance": abs(full[k4] - fsf_mc[key]) <= MC_FSF_TOL,
                    "fsf_4x4_matrix_residual_vs_monte_carlo": mat["fsf"] - fsf_mc[key],
                    "fsf_4x4_matrix_residual_vs_analytic": mat["fsf"] - mat["analytic_fsf"],
                    "fsf_4x4_matrix_within_tolerance": bool(
                        abs(mat["fsf"] - fsf_mc[key]) <= MC_FSF_TOL
                        and abs(mat["fsf"] - mat["analytic_fsf"]) <= MATRIX_FSF_TOL)}
        ax.plot([4.0], [fsf_mc[f"{e:g}"]], "s", color=color, mfc="none", ms=7,
                label=f"{e:g} MeV, Monte Carlo double Gaussian (matRad)")
    ax.axhspan(*FSF_BAND, color="0.9", zorder=0)
    ax.set_xlabel("square field side, cm")
    ax.set_ylabel("central-axis dose / dose in 20 x 20 cm$^2$")
    ax.set_title("Field-size factor at mid-range (grey: published band at 4 x 4)", fontsize=9)
    ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    _save(fig, os.path.join(args.out, "proton_fsf.png"))
    metrics["field_size_factor"] = fsf

    path = os.path.join(args.out, "proton_metrics.json")
    text = json.dumps(metrics, indent=2, default=float).encode()
    atomic_write(path, lambda f: f.write(text), overwrite=True)
    for e, rec in metrics["energies"].items():
        print(f"{e:>4} MeV: spread {rec['energy_spread_pct']:.2f} %, "
              f"R80 - PSTAR {rec['r80_minus_pstar_mm']:+.3f} mm, "
              f"fall-off {rec['falloff_80_20_mm']:.2f} mm (+{rec['falloff_wider_than_0.3pct_mm']:.2f}), "
              f"peak/plateau {rec['peak_to_plateau']:.2f} "
              f"(-{100 * rec['peak_to_plateau_lower_than_0.3pct']:.1f} %), "
              f"FSF 4x4/20x20 {fsf[e]['fsf_4x4_vs_20x20']:.3f} (matrix {fsf[e]['fsf_4x4_matrix']:.3f}, "
              f"MC {fsf[e]['fsf_4x4_monte_carlo']:.3f})")
    for row in metrics["monte_carlo_peaks"]["peaks"]:
        print(f"vs Monte Carlo {row['nominal_MeV']:.1f} MeV: fall-off {row['falloff_residual_mm']:+.2f} mm, "
              f"peak/entrance {100 * row['peak_entrance_residual']:+.1f} %, "
              f"R80 {row['r80_residual_mm']:+.2f} mm")
    print(f"wrote {path}")
    return metrics


def _save(fig, path: str) -> None:
    def write(f):
        fig.savefig(f, format="png", dpi=110)
    atomic_write(path, write, overwrite=True)
    plt.close(fig)


if __name__ == "__main__":
    main()
