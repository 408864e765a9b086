"""Summaries of a study's rows: per-arm means with percentile-bootstrap confidence intervals, and
paired differences between arms (e.g. the TCP gain of the personalized arm over the
conventional one in the same patients).

Percentile bootstrap (Efron & Tibshirani, An Introduction to the Bootstrap, 1993, ch. 13): draw
``n_boot`` resamples of the n values with replacement, compute the statistic of each, and take
the (1 - level)/2 and (1 + level)/2 quantiles of those (``numpy.quantile``, linear
interpolation). Patients, not rows, are the resampling unit of a paired difference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import EvaluationError

#: Outcome columns summarized per arm (mean and bootstrap CI of each).
SUMMARY_COLUMNS = ("TCP", "NTCP", "NTCP_Cord", "NTCP_Gland", "GARD_min", "GARD_mean", "PTV_D95_Gy",
                   "Hypoxic_mean_Gy", "Cord_max_Gy", "Gland_mean_Gy")


def bootstrap_ci(values: Sequence[float], statistic: Callable = np.mean, n_boot: int = 2000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(estimate, lower, upper): the statistic of ``values`` and its percentile-bootstrap
    confidence interval at ``level``.

    Parameters
    ----------
    values : 1-D finite numbers (NaN are refused: drop failed rows first)
    statistic : function of a 1-D array (or, vectorized, of an (n_boot, n) array with
        ``axis=1``, as ``np.mean`` / ``np.median``); default the mean
    n_boot : number of resamples (>= 1)
    level : confidence level in (0, 1)
    seed : seed of the resampling (the same seed gives the same interval)
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise EvaluationError(f"values: expected a non-empty 1-D sequence of numbers, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise EvaluationError("values: NaN or infinite entries; drop failed rows before bootstrapping")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise EvaluationError(f"n_boot: expected an integer >= 1, got {n_boot!r}")
    if not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise EvaluationError(f"level: expected a number in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(int(n_boot), x.size))
    samples = x[idx]
    try:
        stats = np.asarray(statistic(samples, axis=1), dtype=float)
    except TypeError:  # a statistic without an axis argument
        stats = np.array([float(statistic(s)) for s in samples])
    lo, hi = np.quantile(stats, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(statistic(x)), float(lo), float(hi)


def _ok(rows: list[dict], arm: str) -> list[dict]:
    return [r for r in rows if r["arm"] == arm and r["status"] == "optimal"]


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def paired(rows: list[dict], arm: str, reference: str, column: str) -> tuple[list[str], np.ndarray]:
    """Patients with an optimal row in both arms, and column(arm) - column(reference) per patient."""
    ref = {r["patient_id"]: r[column] for r in _ok(rows, reference)}
    pids, diff = [], []
    for r in _ok(rows, arm):
        if r["patient_id"] in ref and math.isfinite(r[column]) and math.isfinite(ref[r["patient_id"]]):
            pids.append(r["patient_id"])
            diff.append(r[column] - ref[r["patient_id"]])
    return pids, np.asarray(diff, dtype=float)


def summarize(rows: list[dict], arms: Sequence[str], reference: str | None = None, n_boot: int = 2000,
              level: float = 0.95, seed: int = 0, columns: Sequence[str] = SUMMARY_COLUMNS) -> dict:
    """Per-arm summary of optimal rows: ``{ARM: {"patients", "failed", "infeasible",
    "<col>_mean", "<col>_ci" ([lo, hi]), ..., "TCP_gain_mean", "TCP_gain_ci", "NTCP_change_mean",
    "NTCP_change_ci", "paired_patients"}}``; the gains are paired differences against
    ``reference`` (default the first arm), absent for the reference itself. Means over no
    patients are None."""
    arms = list(arms)
    reference = arms[0] if reference is None else reference
    out = {}
    for k, arm in enumerate(arms):
        mine = [r for r in rows if r["arm"] == arm]
        ok = [r for r in mine if r["status"] == "optimal"]
        s: dict = {"patients": len(ok), "failed": sum(r["status"] == "failed" for r in mine),
                   "infeasible": sum(r["status"] == "infeasible" for r in mine)}
        for col in columns:
            vals = _finite(r[col] for r in ok)
            est = bootstrap_ci(vals, n_boot=n_boot, level=level, seed=seed + k) if vals else (None,) * 3
            s[f"{col}_mean"], s[f"{col}_ci"] = est[0], (None if est[0] is None else [est[1], est[2]])
        if ok:
            total = max(sum(r["goals_total"] for r in ok), 1)
            s["goals_met_fraction"] = float(sum(r["goals_met"] for r in ok) / total)
        if arm != reference:
            for col, name in (("TCP", "TCP_gain"), ("NTCP", "NTCP_change")):
                pids, d = paired(rows, arm, reference, col)
                est = (bootstrap_ci(d, n_boot=n_boot, level=level, seed=seed + 100 + k) if len(d)
                       else (None,) * 3)
                s[f"{name}_mean"], s[f"{name}_ci"] = est[0], (None if est[0] is None else [est[1], est[2]])
            s["paired_patients"] = len(pids)
            s["reference"] = reference
        out[arm] = s
    return out


def summary_table(summary: dict, columns=("TCP", "NTCP", "GARD_min", "PTV_D95_Gy")) -> str:
    """Plain-text table of :func:`summarize`: one row per arm, mean [CI] of each column."""
    def cell(s, key):
        m, ci = s.get(f"{key}_mean"), s.get(f"{key}_ci")
        if m is None:
            return "-"
        return f"{m:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]"

    keys = list(columns) + ["TCP_gain", "NTCP_change"]
    head = f"{'arm':<22}{'n':>4}{'fail':>5}" + "".join(f" {k:>27}" for k in keys)
    lines = [head, "-" * len(head)]
    for arm, s in summary.items():
        fails = s["failed"] + s["infeasible"]
        lines.append(f"{arm:<22}{s['patients']:>4}{fails:>5}" + "".join(f" {cell(s, k):>27}" for k in keys))
    return "\n".join(lines)
