"""Volume metrics of voxel values: cumulative DVHs, Dx / Vx, statistics, homogeneity and
conformity indices, and the metric strings ("D95", "V20Gy", "mean", ...) goals are written in.

These functions take voxel values, not plans: the physical dose of a structure (Gy) or any other
per-voxel quantity (BED, EQD2 in Gy; GARD, dimensionless), so "BED D95" follows exactly the
conventions of the physical D95.

Conventions
-----------
* DVHs are cumulative and volume-weighted: V(D) = fraction (%) of the structure's volume whose
  voxel value is >= D.
* ``Dx`` (e.g. D95) is the minimum value received by the hottest x % of the volume. Voxel values
  are sorted in decreasing order and their cumulative volume is placed at each voxel's centre
  in volume (the i-th hottest voxel of n equal voxels sits at (i - 0.5)/n); Dx is the linear
  interpolation at x %, clamped to the hottest / coldest voxel at the ends.
* ``Vx`` is the volume (%) receiving at least x Gy, counted voxel-by-voxel (no interpolation).
"""

from __future__ import annotations

import numbers
import re

import numpy as np

from ..errors import EvaluationError


def _values(values: np.ndarray, volumes: np.ndarray | None = None):
    try:
        d = np.asarray(values, dtype=float).ravel()
        v = np.ones_like(d) if volumes is None else np.asarray(volumes, dtype=float).ravel()
    except (TypeError, ValueError):
        raise EvaluationError("dose/volumes: expected arrays of numbers") from None
    if d.size == 0:
        raise EvaluationError("dose: the structure has no voxels")
    if not np.all(np.isfinite(d)):
        raise EvaluationError("dose: contains NaN or infinite values")
    if v.shape != d.shape:
        raise EvaluationError(f"volumes: expected {d.shape} voxel volumes, got {v.shape}")
    if not np.all(np.isfinite(v)) or np.any(v < 0) or v.sum() <= 0:
        raise EvaluationError("volumes: expected finite voxel volumes >= 0 with a positive sum")
    keep = v > 0  # a voxel without volume is no part of any volume metric (it set D2 and max)
    return d[keep], v[keep] / v.sum()


def _number(value, name: str, expected: str, ok=None) -> float:
    """One finite real number (a Python or numpy int or float; not a bool, string or array) for
    which ``ok(value)`` holds, as a float; else EvaluationError naming ``name`` and ``expected``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not np.isfinite(value) or (ok is not None and not ok(value)):
        raise EvaluationError(f"{name}: expected {expected}, got {value!r}")
    return float(value)


def dose_at_volume(dose: np.ndarray, volume_pct: float, volumes: np.ndarray | None = None) -> float:
    """D_x: the dose (Gy) that the hottest ``volume_pct`` % of the volume receives at least."""
    volume_pct = _number(volume_pct, "volume_pct", "a volume in % from 0 to 100", lambda x: 0 <= x <= 100)
    d, v = _values(dose, volumes)
    order = np.argsort(-d, kind="stable")
    d, v = d[order], v[order]
    centre = (np.cumsum(v) - v / 2) * 100.0
    return float(np.interp(volume_pct, centre, d))


def volume_at_dose(dose: np.ndarray, dose_Gy: float, volumes: np.ndarray | None = None) -> float:
    """V_x: volume (%) receiving at least ``dose_Gy``."""
    dose_Gy = _number(dose_Gy, "dose_Gy", "a finite dose in Gy")
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
    """Min, mean, max and D98/D95/D50/D10/D5/D2 (Gy) of a structure's voxel doses; keys
    ``min_Gy``, ``mean_Gy``, ``max_Gy``, ``D98_Gy``, ... (for GARD values the unit is none)."""
    d, v = _values(dose, volumes)
    out = {"min_Gy": float(d.min()), "mean_Gy": float(v @ d), "max_Gy": float(d.max())}
    for x in (98, 95, 50, 10, 5, 2):
        out[f"D{x}_Gy"] = dose_at_volume(d, x, v)
    return out


def homogeneity_index(dose: np.ndarray) -> float:
    """ICRU Report 83 homogeneity index (D2 - D98) / D50 of a target (0 = homogeneous)."""
    d50 = dose_at_volume(dose, 50)
    if d50 <= 0:
        raise EvaluationError("homogeneity_index: D50 is zero")
    return (dose_at_volume(dose, 2) - dose_at_volume(dose, 98)) / d50


def paddick_conformity_index(dose_grid: np.ndarray, target_mask: np.ndarray, prescription_Gy: float) -> float:
    """Paddick (J Neurosurg 2000;93 Suppl 3:219) CI = TV_PIV^2 / (TV x PIV), 1 = perfect.

    TV: target volume; PIV: volume of the prescription isodose (whole grid); TV_PIV: target
    volume inside it.
    """
    prescription_Gy = _number(prescription_Gy, "prescription_Gy", "a finite prescription dose > 0 Gy",
                              lambda x: x > 0)
    try:
        dose_grid = np.asarray(dose_grid, dtype=float)
    except (TypeError, ValueError):
        raise EvaluationError("dose_grid: expected an array of doses (Gy)") from None
    if not np.all(np.isfinite(dose_grid)):
        raise EvaluationError("dose_grid: contains NaN or infinite values")
    target_mask = np.asarray(target_mask, dtype=bool)
    if dose_grid.shape != target_mask.shape:
        raise EvaluationError(f"target_mask: expected the dose grid's shape {dose_grid.shape}, "
                              f"got {target_mask.shape}")
    piv = dose_grid >= prescription_Gy
    tv = int(target_mask.sum())
    if tv == 0 or piv.sum() == 0:
        return 0.0
    return float((piv & target_mask).sum() ** 2 / (tv * piv.sum()))


# -- metric strings ----------------------------------------------------------------------------

_METRIC = re.compile(r"^(D(\d+(?:\.\d+)?)|V(\d+(?:\.\d+)?)Gy|mean|max|min)$", re.IGNORECASE)
_STATISTIC = {"mean": np.mean, "max": np.max, "min": np.min}


def _parse_metric(metric: str) -> re.Match:
    m = _METRIC.match(str(metric).strip())
    if not m:
        raise EvaluationError(f"metric: expected 'Dxx', 'VxxGy', 'mean', 'max' or 'min', got {metric!r}")
    return m


def is_volume_metric(metric: str) -> bool:
    """True for a ``VxxGy`` metric (its value is a volume in %, not a dose)."""
    return _parse_metric(metric).group(3) is not None


def metric_value(dose: np.ndarray, metric: str) -> float:
    """Value of a metric string: "D95" (Gy), "V20Gy" (%), "mean", "max", "min" (Gy) of voxel
    values of equal volume."""
    m = _parse_metric(metric)
    d, _ = _values(dose)
    if m.group(2):
        return dose_at_volume(d, float(m.group(2)))
    if m.group(3):
        return volume_at_dose(d, float(m.group(3)))
    return float(_STATISTIC[m.group(1).lower()](d))
