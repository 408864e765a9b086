"""Report of a study: figures (TCP gain vs RSI, NTCP by arm, GARD distributions) and the
``metrics.json`` record.

Figures are ``matplotlib.figure.Figure`` objects built without pyplot, as in
:mod:`optimizer.plots`. Only rows with status "optimal" enter the figures and the summary;
failed and infeasible rows are counted and listed with their reasons.

``metrics.json`` schema::

    {"case": "cohort_study", "patients", "arms": [names], "rows", "failed",
     "failures": [{"patient_id", "arm", "status", "reason"}],
     "summary": {ARM: stats.summarize(...)[ARM]  ("TCP_mean", "TCP_ci", "NTCP_mean", ...)},
     "setup": StudySetup.as_dict(), "timings_s": {...}, "workers", "executor"}
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from ..report import write_metrics
from .stats import paired, summarize

_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _ok(rows, arm, column):
    sel = [r for r in rows if r["arm"] == arm and r["status"] == "optimal" and math.isfinite(r[column])]
    return sel


def tcp_gain_vs_rsi(rows: list[dict], arms: list[str], reference: str | None = None) -> Figure:
    """Paired TCP difference (arm - reference, same patient) against the tumour RSI, one marker
    per arm; left panel: TCP of every arm against RSI."""
    reference = reference or arms[0]
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax0, ax1 = fig.subplots(1, 2)
    for i, arm in enumerate(arms):
        sel = _ok(rows, arm, "TCP")
        ax0.scatter([r["rsi"] for r in sel], [r["TCP"] for r in sel], marker=_MARKERS[i % len(_MARKERS)],
                    label=f"{arm} (n={len(sel)})", alpha=0.75)
    ax0.set_xlabel("tumour RSI (SF2)")
    ax0.set_ylabel("TCP (Poisson, with hypoxia)")
    ax0.set_ylim(-0.03, 1.03)
    ax0.set_title("TCP by arm")
    ax0.legend(fontsize=8)
    by_pid = {r["patient_id"]: r["rsi"] for r in rows}
    for i, arm in enumerate(arms):
        if arm == reference:
            continue
        pids, d = paired(rows, arm, reference, "TCP")
        ax1.scatter([by_pid[p] for p in pids], d, marker=_MARKERS[i % len(_MARKERS)], alpha=0.75,
                    label=f"{arm} - {reference} (n={len(pids)})", color=f"C{i}")
    ax1.axhline(0.0, color="0.4", lw=0.8)
    ax1.set_xlabel("tumour RSI (SF2)")
    ax1.set_ylabel(f"TCP gain over {reference}")
    ax1.set_title("TCP gain vs radiosensitivity (same patient)")
    if len(arms) > 1:
        ax1.legend(fontsize=8)
    return fig


def ntcp_by_arm(rows: list[dict], arms: list[str], organs=("NTCP", "NTCP_Cord", "NTCP_Gland")) -> Figure:
    """Box plots with the patients' points of each NTCP column by arm (one panel per column)."""
    fig = Figure(figsize=(4.0 * len(organs), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(organs)))
    rng = np.random.default_rng(0)  # horizontal jitter of the points only
    for ax, col in zip(axes, organs):
        data = [[r[col] for r in _ok(rows, arm, col)] for arm in arms]
        ax.boxplot([d if d else [np.nan] for d in data], showfliers=False)
        ax.set_xticks(range(1, len(arms) + 1), arms, rotation=20, fontsize=8)
        for i, d in enumerate(data):
            ax.scatter(1 + i + rng.uniform(-0.12, 0.12, len(d)), d, s=12, alpha=0.6, color=f"C{i}")
        title = {"NTCP": "any complication (cord, gland)", "NTCP_Cord": "cord (LKB, Burman 1991)",
                 "NTCP_Gland": "gland (LKB parotid, QUANTEC)"}.get(col, col)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("NTCP (LKB on EQD2)")
    return fig


def gard_distributions(rows: list[dict], arms: list[str], target: float | None = None) -> Figure:
    """Histograms of the target's minimum and mean voxel GARD (hypoxia-modified alpha, beta)
    per arm; a dashed line at the GARD target when given."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, col, label in zip(axes, ("GARD_min", "GARD_mean"), ("minimum voxel GARD", "mean voxel GARD")):
        vals = [[r[col] for r in _ok(rows, arm, col)] for arm in arms]
        flat = [v for vs in vals for v in vs]
        if flat:
            lo, hi = min(flat), max(flat)
            bins = np.linspace(lo - 0.5, hi + 0.5, 21)
            for i, (arm, v) in enumerate(zip(arms, vals)):
                ax.hist(v, bins=bins, alpha=0.45, label=f"{arm} (n={len(v)})", color=f"C{i}")
        if target is not None:
            ax.axvline(target, color="k", ls="--", lw=1, label=f"GARD target {target:g}")
        ax.set_xlabel(f"{label} in the PTV (dimensionless)")
        ax.set_ylabel("patients")
        ax.legend(fontsize=8)
    fig.suptitle("GARD distributions by arm (Scott et al. 2017; voxel alpha, beta with hypoxia)")
    return fig


def write_report(result, arms: list[str], out_dir: str, *, patients: int, setup: dict | None = None,
                 reference: str | None = None, gard_target: float | None = None, n_boot: int = 2000,
                 seed: int = 0, extra_timings: dict | None = None) -> dict:
    """Write the figures and ``metrics.json`` of a finished study into ``out_dir``; return the record.

    Parameters
    ----------
    result : the :class:`~optimizer.studies.runner.StudyResult`
    arms : arm names in display order (the first is the reference of the paired gains)
    patients : number of patients of the cohort
    setup : the setup dict recorded in the metrics
    gard_target : drawn on the GARD histograms
    n_boot, seed : bootstrap resamples and seed of the summary CIs
    extra_timings : more entries for ``timings_s`` (e.g. the report's own time)
    """
    import os

    import matplotlib

    rows = result.rows
    summary = summarize(rows, arms, reference=reference, n_boot=n_boot, seed=seed)
    os.makedirs(out_dir, exist_ok=True)
    with matplotlib.rc_context({"figure.dpi": 100}):
        tcp_gain_vs_rsi(rows, arms, reference).savefig(os.path.join(out_dir, "tcp_gain_vs_rsi.png"), dpi=100)
        ntcp_by_arm(rows, arms).savefig(os.path.join(out_dir, "ntcp_by_arm.png"), dpi=100)
        gard_distributions(rows, arms, gard_target).savefig(os.path.join(out_dir, "gard_distributions.png"),
                                                            dpi=100)
    ok = [r for r in rows if r["status"] == "optimal"]

    def mean(col):
        vals = [r[col] for r in ok if math.isfinite(r[col])]
        return float(np.mean(vals)) if vals else None

    timings = {k: round(float(v), 3) for k, v in result.timings_s.items()}
    timings.update({"row_wall_mean": mean("wall_s"), "dose_mean": mean("dose_s"),
                    "solve_mean": mean("solve_s"), "compile_mean": mean("compile_s")})
    timings.update({k: round(float(v), 3) for k, v in (extra_timings or {}).items()})
    record = {
        "case": "cohort_study", "patients": int(patients), "arms": list(arms), "rows": len(rows),
        "failed": int(result.failed), "computed_this_run": int(result.computed),
        "failures": [{k: r[k] for k in ("patient_id", "arm", "status", "reason")}
                     for r in rows if r["status"] != "optimal"],
        "summary": summary, "setup": setup or {}, "timings_s": timings, "workers": int(result.workers),
        "executor": result.executor,
    }
    write_metrics(record, out_dir)
    return record
