"""Dose-rate maps of a PBS plan (per fraction, Gy/s) and dose-rate-volume histograms.

Two definitions, both from the spot-resolved dose and the delivery model
(:mod:`optimizer.flash.delivery`):

* **DADR**, dose-averaged dose rate (van de Water et al., Acta Oncol 2019;58:1463-1469):
  DADR_i = sum_j d_ij r_ij / sum_j d_ij, with d_ij = D_ij w_j the dose of spot j in voxel i and
  r_ij = d_ij / t_j its dose rate (t_j: the spot's irradiation time, minimum spot time included).
* **PBS dose rate** (Folkerts et al., "A framework for defining FLASH dose rate for pencil beam
  scanning", Med Phys 2020;47:6396-6404): PBSDR_i = (D_i - 2 d*) / (t_i(D_i - d*) - t_i(d*)),
  where t_i(x) is the time at which the dose accumulated in voxel i reaches x (the dose of a spot
  grows linearly during its irradiation; the beam is off while scanning and switching layers) and
  d* a threshold dose that cuts the slow start and end of the accumulation. Undefined (NaN) where
  D_i <= 2 d*.

Both are per fraction (the dose of one fraction and its delivery time). Maps are on the full grid
[z, y, x], NaN where the dose per fraction is below ``min_dose_Gy``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import PlanError
from ..influence import InfluenceMatrix
from .delivery import Machine, Timeline, delivery_timeline

#: FLASH dose-rate threshold commonly used, Gy/s (e.g. van de Water et al. 2019; Folkerts et al. 2020).
FLASH_RATE_GY_S = 40.0


def _weights(influence: InfluenceMatrix, weights) -> np.ndarray:
    if not isinstance(influence, InfluenceMatrix):
        raise PlanError(f"influence: expected an InfluenceMatrix, got {type(influence).__name__}")
    return influence._check_weights(weights)


def _threshold(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PlanError(f"{name}: expected a dose >= 0 Gy, got {value!r}") from None
    if not np.isfinite(v) or v < 0:
        raise PlanError(f"{name}: expected a finite dose >= 0 Gy, got {value!r}")
    return v


def _timeline(influence, w, timeline, machine) -> Timeline:
    if timeline is None:
        return delivery_timeline(influence.beamlets, w, machine)
    if not isinstance(timeline, Timeline) or timeline.duration_s.shape != w.shape:
        raise PlanError("timeline: expected the optimizer.flash.Timeline of these weights")
    # a timeline of other weights (or another machine) gave rates 10x off without a word
    expected = (Machine() if machine is None else machine).spot_times_s(w)
    if not np.allclose(timeline.duration_s, expected, rtol=1e-9, atol=0.0):
        raise PlanError("timeline: its spot times are not those of these weights on this machine (a "
                        "timeline of other weights, or of another Machine); rebuild it with "
                        "delivery_timeline(influence.beamlets, weights, machine), or leave it out")
    return timeline


def _on_grid(influence: InfluenceMatrix, rows: np.ndarray) -> np.ndarray:
    out = np.full(influence.grid.n_voxels, np.nan)
    out[influence.voxel_index] = rows
    return out.reshape(influence.grid.shape)


def dadr_map(influence: InfluenceMatrix, weights, machine: Machine | None = None, *,
             timeline: Timeline | None = None, min_dose_Gy: float = 0.0) -> np.ndarray:
    """Dose-averaged dose rate per voxel, Gy/s (module docstring), on the full grid.

    Parameters
    ----------
    influence : dose influence, Gy per fraction per unit weight
    weights : spot weights
    machine : delivery model (spot times); default :class:`~optimizer.flash.Machine`
    timeline : a precomputed :func:`~optimizer.flash.delivery_timeline` of these weights (optional)
    min_dose_Gy : voxels with a dose per fraction below this (or 0) are NaN
    """
    w = _weights(influence, weights)
    tl = _timeline(influence, w, timeline, machine)
    min_dose = _threshold(min_dose_Gy, "min_dose_Gy")
    D = sp.csr_matrix(influence.matrix, dtype=np.float64)
    dose = D @ w
    # sum_j d_ij^2 / t_j = sum_j D_ij^2 (w_j^2 / t_j)
    w2t = np.zeros_like(w)
    on = tl.duration_s > 0
    w2t[on] = w[on] ** 2 / tl.duration_s[on]
    num = D.multiply(D) @ w2t
    rate = np.full(dose.shape, np.nan)
    ok = (dose > 0) & (dose >= min_dose)
    rate[ok] = num[ok] / dose[ok]
    return _on_grid(influence, rate)


def pbs_dose_rate_map(influence: InfluenceMatrix, weights, machine: Machine | None = None, *,
                      timeline: Timeline | None = None, threshold_Gy: float = 0.01,
                      min_dose_Gy: float = 0.0) -> np.ndarray:
    """PBS dose rate per voxel (Folkerts et al. 2020), Gy/s, on the full grid.

    Parameters
    ----------
    influence, weights, machine, timeline : as :func:`dadr_map`
    threshold_Gy : the threshold dose d* per fraction, Gy (> 0). Folkerts et al. leave it to the
        user; our default 0.01 Gy is a choice (set it for the study at hand)
    min_dose_Gy : voxels with a dose per fraction below this are NaN (as are those with D <= 2 d*)
    """
    w = _weights(influence, weights)
    tl = _timeline(influence, w, timeline, machine)
    d_star = _threshold(threshold_Gy, "threshold_Gy")
    if d_star <= 0:
        raise PlanError("threshold_Gy: expected a threshold dose > 0 Gy")
    min_dose = _threshold(min_dose_Gy, "min_dose_Gy")
    # columns in delivery order; undelivered spots dropped
    order = tl.order
    M = sp.csr_matrix(influence.matrix, dtype=np.float64)[:, order] @ sp.diags(w[order])
    M = sp.csr_matrix(M)
    M.sort_indices()
    M.eliminate_zeros()
    data, indptr, pos = M.data, M.indptr, M.indices  # pos: delivery rank of each entry
    starts, durs = tl.start_s[order], tl.duration_s[order]
    counts = np.diff(indptr)
    cum = np.cumsum(data)
    cum0 = np.concatenate([[0.0], cum])
    base = cum0[indptr[:-1]]  # cumulative sum before each row
    total = cum0[indptr[1:]] - base  # dose per fraction of each row
    rate = np.full(M.shape[0], np.nan)
    ok = (counts > 0) & (total > 2 * d_star) & (total >= min_dose)
    rows = np.flatnonzero(ok)

    def time_at(level):
        """Time at which row's accumulated dose reaches ``level`` (per row of ``rows``)."""
        k = np.searchsorted(cum, base[rows] + level, side="left")
        k = np.minimum(np.maximum(k, indptr[rows]), indptr[rows + 1] - 1)
        before = cum[k] - data[k] - base[rows]
        frac = np.clip((level - before) / data[k], 0.0, 1.0)
        j = pos[k]
        return starts[j] + frac * durs[j]

    t0 = time_at(np.full(len(rows), d_star))
    t1 = time_at(total[rows] - d_star)
    dt = t1 - t0
    with np.errstate(divide="ignore", invalid="ignore"):
        rate[rows] = np.where(dt > 0, (total[rows] - 2 * d_star) / dt, np.inf)
    return _on_grid(influence, rate)


def dose_rate_region(dose_Gy: np.ndarray, mask: np.ndarray, min_dose_Gy: float) -> np.ndarray:
    """The voxels of ``mask`` whose dose (``dose_Gy``, same grid; e.g. a reference plan's total
    dose) is at least ``min_dose_Gy``: the region a :class:`~objectives.dose_rate.DADRMin`
    constrains. Returns a 3-D boolean map."""
    dose = np.asarray(dose_Gy, dtype=float)
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != dose.shape:
        raise PlanError(f"mask: expected a boolean map of the dose's shape {dose.shape}, got "
                        f"{mask.dtype} {mask.shape}")
    return mask & (dose >= _threshold(min_dose_Gy, "min_dose_Gy"))


def rate_volume_pct(rate_map: np.ndarray, mask: np.ndarray, rate_Gy_s: float = FLASH_RATE_GY_S) -> float:
    """% of the voxels of ``mask`` with a defined rate (not NaN: enough dose) whose rate is at
    least ``rate_Gy_s``; NaN when no voxel of the mask has a defined rate."""
    rate = np.asarray(rate_map, dtype=float)[np.asarray(mask, dtype=bool)]
    rate = rate[~np.isnan(rate)]
    if rate.size == 0:
        return float("nan")
    return 100.0 * float(np.mean(rate >= rate_Gy_s))


def rate_volume_histogram(rate_map: np.ndarray, mask: np.ndarray, bins=None) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative dose-rate-volume histogram of the voxels of ``mask`` with a defined rate:
    (rates in Gy/s, % of those voxels with at least that rate)."""
    rate = np.asarray(rate_map, dtype=float)[np.asarray(mask, dtype=bool)]
    rate = rate[np.isfinite(rate)]
    if bins is None:
        top = float(rate.max()) * 1.05 if rate.size else 1.0
        bins = np.linspace(0.0, max(top, 1e-9), 400)
    bins = np.asarray(bins, dtype=float)
    if rate.size == 0:
        return bins, np.zeros_like(bins)
    s = np.sort(rate)
    return bins, 100.0 * (len(s) - np.searchsorted(s, bins, side="left")) / len(s)


def dadr_reachable(influence: InfluenceMatrix, machine: Machine | None = None,
                   rate_Gy_s: float = FLASH_RATE_GY_S, factor: float = 1.0) -> np.ndarray:
    """Voxels (3-D boolean map) where some spot alone reaches ``factor x rate_Gy_s``: D_ij M >= f R.

    DADR_i is a dose-weighted mean of the spot rates D_ij M (at the beam current, no minimum-time
    stretch), so max_j D_ij M >= R is necessary for DADR_i >= R at *any* weights; a hard DADR limit
    on a voxel without such a spot forces every spot reaching it to 0. Intersect a
    :func:`dose_rate_region` with this map (``factor`` > 1 leaves room) to constrain only voxels
    where the limit can be met."""
    machine = Machine() if machine is None else machine
    try:
        f = float(factor)
    except (TypeError, ValueError):
        raise PlanError(f"factor: expected a number > 0, got {factor!r}") from None
    if not np.isfinite(f) or f <= 0:
        raise PlanError(f"factor: expected a finite number > 0, got {factor!r}")
    peak = np.zeros(influence.grid.n_voxels)
    peak[influence.voxel_index] = np.asarray(sp.csr_matrix(influence.matrix).max(axis=1).todense()).ravel()
    return (peak * machine.weight_rate_per_s >= f * float(rate_Gy_s)).reshape(influence.grid.shape)
