"""Plan evaluation on the full grid: DVHs, Dx / Vx, dose statistics, indices and goal tables.

Conventions
-----------
* DVHs are cumulative and volume-weighted: V(D) = fraction (%) of the structure's volume whose
  voxel dose is >= D.
* ``Dx`` (e.g. D95) is the minimum dose received by the hottest x % of the volume. Voxel doses
  are sorted in decreasing order and their cumulative volume is placed at each voxel's centre
  in volume (the i-th hottest voxel of n equal voxels sits at (i - 0.5)/n); Dx is the linear
  interpolation at x %, clamped to the hottest / coldest voxel at the ends.
* ``Vx`` is the volume (%) receiving at least x Gy, counted voxel-by-voxel (no interpolation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from objectives.errors import BioplanError


def _values(values: np.ndarray, volumes: np.ndarray | None = None):
    d = np.asarray(values, dtype=float).ravel()
    if d.size == 0:
        raise BioplanError("dose: the structure has no voxels")
    if not np.all(np.isfinite(d)):
        raise BioplanError("dose: contains NaN or infinite values")
    v = np.ones_like(d) if volumes is None else np.asarray(volumes, dtype=float).ravel()
    if v.shape != d.shape:
        raise BioplanError(f"volumes: expected {d.shape} voxel volumes, got {v.shape}")
    return d, v / v.sum()


def dose_at_volume(dose: np.ndarray, volume_pct: float, volumes: np.ndarray | None = None) -> float:
    """D_x: the dose (Gy) that the hottest ``volume_pct`` % of the volume receives at least."""
    if not 0 <= volume_pct <= 100:
        raise BioplanError(f"volume_pct: expected 0..100, got {volume_pct}")
    d, v = _values(dose, volumes)
    order = np.argsort(-d, kind="stable")
    d, v = d[order], v[order]
    centre = (np.cumsum(v) - v / 2) * 100.0
    return float(np.interp(volume_pct, centre, d))


def volume_at_dose(dose: np.ndarray, dose_Gy: float, volumes: np.ndarray | None = None) -> float:
    """V_x: volume (%) receiving at least ``dose_Gy``."""
    d, v = _values(dose, volumes)
    return float(v[d >= dose_Gy].sum() * 100.0)


def dvh(dose: np.ndarray, volumes: np.ndarray | None = None, bins: np.ndarray | None = None):
    """Cumulative DVH: (dose bins in Gy, volume % receiving >= each bin)."""
    d, v = _values(dose, volumes)
    if bins is None:
        bins = np.linspace(0.0, max(d.max(), 1e-9) * 1.05, 400)
    order = np.argsort(d)
    ds, cum = d[order], np.cumsum(v[order][::-1])[::-1]  # cum[i]: volume with dose >= ds[i]
    idx = np.searchsorted(ds, bins, side="left")
    vol = np.where(idx < len(ds), cum[np.minimum(idx, len(ds) - 1)], 0.0) * 100.0
    return np.asarray(bins), vol


def dose_statistics(dose: np.ndarray, volumes: np.ndarray | None = None) -> dict[str, float]:
    """Min, mean, max and D98/D95/D50/D10/D2 (Gy) of a structure's voxel doses."""
    d, v = _values(dose, volumes)
    out = {"min_Gy": float(d.min()), "mean_Gy": float(v @ d), "max_Gy": float(d.max())}
    for x in (98, 95, 50, 10, 5, 2):
        out[f"D{x}_Gy"] = dose_at_volume(d, x, v)
    return out


def homogeneity_index(dose: np.ndarray) -> float:
    """ICRU Report 83 homogeneity index (D2 - D98) / D50 of a target (0 = homogeneous)."""
    d50 = dose_at_volume(dose, 50)
    if d50 <= 0:
        raise BioplanError("homogeneity_index: D50 is zero")
    return (dose_at_volume(dose, 2) - dose_at_volume(dose, 98)) / d50


def paddick_conformity_index(dose_grid: np.ndarray, target_mask: np.ndarray, prescription_Gy: float) -> float:
    """Paddick (J Neurosurg 2000;93 Suppl 3:219) CI = TV_PIV^2 / (TV x PIV), 1 = perfect.

    TV: target volume; PIV: volume of the prescription isodose (whole grid); TV_PIV: target
    volume inside it.
    """
    piv = dose_grid >= prescription_Gy
    tv = int(target_mask.sum())
    if tv == 0 or piv.sum() == 0:
        return 0.0
    return float((piv & target_mask).sum() ** 2 / (tv * piv.sum()))


# -- goals -----------------------------------------------------------------------------------

_METRIC = re.compile(r"^(D(\d+(?:\.\d+)?)|V(\d+(?:\.\d+)?)Gy|mean|max|min)$", re.IGNORECASE)


@dataclass
class GoalResult:
    structure: str
    metric: str
    op: str
    limit: float
    value: float
    met: bool

    def as_dict(self) -> dict:
        return {"structure": self.structure, "metric": self.metric, "op": self.op,
                "limit_Gy": self.limit, "value_Gy": self.value, "met": self.met}


def metric_value(dose: np.ndarray, metric: str) -> float:
    """Value of a metric string: "D95" (Gy), "V20Gy" (%), "mean", "max", "min" (Gy)."""
    m = _METRIC.match(metric.strip())
    if not m:
        raise BioplanError(f"metric: expected 'Dxx', 'VxxGy', 'mean', 'max' or 'min', got {metric!r}")
    d = np.asarray(dose, dtype=float)
    if m.group(2):
        return dose_at_volume(d, float(m.group(2)))
    if m.group(3):
        return volume_at_dose(d, float(m.group(3)))
    return float({"mean": d.mean, "max": d.max, "min": d.min}[metric.strip().lower()]())


#: Smallest tolerance a goal is judged with, relative to its limit: doses printed to 0.01 Gy
#: that differ from the limit in the 7th digit are solver round-off, not a missed goal.
GOAL_RELATIVE_TOLERANCE = 1e-6


def goal_tolerance(plan, limit: float, tolerance: float | None = None) -> float:
    """Tolerance a goal with this limit is judged with: ``tolerance`` if given (in the goal's
    unit), else the plan's certified hard-term tolerance (``plan.solver["hard_tolerance"]``, 0
    when absent); never below ``GOAL_RELATIVE_TOLERANCE x |limit|``."""
    if tolerance is None:
        tolerance = float((getattr(plan, "solver", None) or {}).get("hard_tolerance", 0.0))
    elif not (isinstance(tolerance, (int, float)) and np.isfinite(tolerance) and tolerance >= 0):
        raise BioplanError(f"tolerance: expected a finite number >= 0, got {tolerance!r}")
    return max(float(tolerance), GOAL_RELATIVE_TOLERANCE * abs(float(limit)))


def evaluate_goals(plan, goals, tolerance: float | None = None) -> list[GoalResult]:
    """Check goals ``(structure, metric, op, limit)`` on a plan's full-grid dose.

    A goal is met within :func:`goal_tolerance`: by default the tolerance the solver certified
    hard terms to (``plan.solver["hard_tolerance"]``), at least 1e-6 relative to the limit.
    Pass ``tolerance=0`` for the exact comparison (still 1e-6 relative).
    """
    out = []
    for structure, metric, op, limit in goals:
        if op not in (">=", "<="):
            raise BioplanError(f"goal op: expected '>=' or '<=', got {op!r}")
        value = metric_value(plan.structure_dose(structure), metric)
        is_volume = metric.strip()[:1].upper() == "V"  # V20Gy is in %: only the relative part
        tol = goal_tolerance(plan, limit, 0.0 if is_volume else tolerance)
        met = value >= limit - tol if op == ">=" else value <= limit + tol
        out.append(GoalResult(structure, metric, op, float(limit), value, bool(met)))
    return out


def goal_table(plan, goals, tolerance: float | None = None) -> str:
    """Plain-text table of goals with value and met / not met, and the tolerance used."""
    rows = [f"{'structure':<12}{'metric':<8}{'goal':>12}{'value':>10}  met"]
    for g in evaluate_goals(plan, goals, tolerance):
        rows.append(f"{g.structure:<12}{g.metric:<8}{g.op + ' ' + format(g.limit, 'g'):>12}"
                    f"{g.value:>10.2f}  {'yes' if g.met else 'NO'}")
    base = goal_tolerance(plan, 0.0, tolerance)
    rows.append(f"(met within {base:g} Gy for dose goals or {GOAL_RELATIVE_TOLERANCE:g} x the goal, "
                f"whichever is larger)")
    return "\n".join(rows)


def structure_metrics(plan, names=None) -> dict[str, dict[str, float]]:
    """``dose_statistics`` of each structure (all by default)."""
    names = names or plan.patient.structure_names
    return {n: dose_statistics(plan.structure_dose(n)) for n in names}
