"""Robust evaluation: a plan's dose in every uncertainty scenario, DVH bands, nominal and
worst-case dose metrics, and the ``robust`` block of ``metrics.json``.

The scenario doses come from the scenario forms (``dose_s0``, ...) of the influence set built by
:func:`optimizer.robust.influence.scenario_influence`: total course dose in Gy (the plan's
weights x fractions), in the voxels of the structures that set covers.

``robust`` block::

    {"scenarios": [{"name", "shift_mm", "range_pct", "range_mm"}, ...],
     "plans": {LABEL: {"nominal": {NAME: {"D95_Gy", "D10_Gy", "mean_Gy", "max_Gy"}},
                       "worst": {NAME: {...}},
                       "per_scenario": {NAME: {"D95_Gy": [one per scenario], ...}}}}}

"worst" is, per metric, the worst value over the scenarios: the lowest Dx for x > 50 (D95,
D98: coverage) and "min", the highest for every other metric (D10, D50, mean, max).
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import EvaluationError
from ..influence import InfluenceSet
from . import dose_volume as dv

#: metrics reported by default (Gy)
DEFAULT_METRICS = ("D95", "D10", "mean", "max")


def _scenario_matrices(influence) -> list:
    from ..robust.influence import scenario_forms

    if not isinstance(influence, InfluenceSet):
        raise EvaluationError("influence: expected the InfluenceSet with scenario forms from "
                              "optimizer.robust.influence.scenario_influence")
    try:
        return scenario_forms(influence)
    except Exception as err:
        raise EvaluationError(str(err)) from None


def _check(plan, influence, structures) -> None:
    if influence.grid != plan.patient.grid:
        raise EvaluationError("influence: on another grid than the plan's patient (use the dose-grid plan)")
    if len(plan.weights) != influence.n_beamlets:
        raise EvaluationError(f"influence: has {influence.n_beamlets} beamlets, the plan {len(plan.weights)}")
    covered = getattr(influence, "scenario_structures", None)
    for name in structures:
        plan.patient.structure(name)  # unknown names fail with the known list
        if covered is not None and plan.patient.structure(name).name not in covered:
            raise EvaluationError(f"structures: '{name}' has no scenario doses (covered: "
                                  f"{', '.join(covered)}); list it in scenario_influence(structures=...)")


def scenario_doses(plan, influence) -> list[np.ndarray]:
    """Total-course dose (Gy, [z, y, x]) of ``plan`` in every scenario of ``influence`` (0 outside
    the covered structures)."""
    mats = _scenario_matrices(influence)
    _check(plan, influence, [])
    return [m.dose_per_fraction(plan.weights) * plan.fractions for m in mats]


def _worst(metric: str, values) -> float:
    m = re.fullmatch(r"D(\d+(?:\.\d+)?)", metric)
    low_is_worse = (m is not None and float(m.group(1)) > 50) or metric == "min"
    return float(min(values) if low_is_worse else max(values))


def robust_metrics(plan, influence, structures, metrics=DEFAULT_METRICS) -> dict:
    """Nominal, worst-case and per-scenario dose metrics (Gy) of ``structures``.

    Returns ``{"nominal": {NAME: {"D95_Gy", ...}}, "worst": {...}, "per_scenario": {NAME:
    {"D95_Gy": [...]}}}``; nominal is the plan's own dose (the nominal influence)."""
    if isinstance(structures, str) or not structures:
        raise EvaluationError(f"structures: expected a non-empty list of names, got {structures!r}")
    _check(plan, influence, structures)
    doses = scenario_doses(plan, influence)
    out = {"nominal": {}, "worst": {}, "per_scenario": {}}
    for name in structures:
        mask = plan.patient.structure(name).mask
        if not mask.any():
            raise EvaluationError(f"structures: '{name}' has no voxels")
        per = {f"{m}_Gy": [dv.metric_value(d[mask], m) for d in doses] for m in metrics}
        out["per_scenario"][name] = per
        out["nominal"][name] = {f"{m}_Gy": dv.metric_value(plan.dose[mask], m) for m in metrics}
        out["worst"][name] = {f"{m}_Gy": _worst(m, per[f"{m}_Gy"]) for m in metrics}
    return out


def dvh_band(plan, influence, structure: str, bins: np.ndarray | None = None) -> dict:
    """DVH band of a structure: per dose level (Gy) the nominal volume (%) and the minimum and
    maximum over the scenarios. Returns ``{"dose_Gy", "nominal", "lower", "upper"}``."""
    _check(plan, influence, [structure])
    mask = plan.patient.structure(structure).mask
    doses = scenario_doses(plan, influence)
    if bins is None:
        top = max(float(plan.dose[mask].max()), max(float(d[mask].max()) for d in doses))
        bins = np.linspace(0.0, 1.05 * max(top, 1e-9), 300)
    _, nominal = dv.dvh(plan.dose[mask], bins=bins)
    vols = np.stack([dv.dvh(d[mask], bins=bins)[1] for d in doses])
    return {"dose_Gy": np.asarray(bins), "nominal": nominal, "lower": vols.min(axis=0),
            "upper": vols.max(axis=0)}


def robust_block(scenarios, plans: dict) -> dict:
    """The ``robust`` block of ``metrics.json`` from the scenario list and ``{LABEL:
    robust_metrics(...)}``."""
    return {"scenarios": [s.record() for s in scenarios],
            "plans": {label: {k: r[k] for k in ("nominal", "worst", "per_scenario") if k in r}
                      for label, r in plans.items()}}
