"""Decomposition of an integer intensity matrix into MLC apertures (step-and-shoot), and the
leaf trajectories of a sliding-window delivery.

Rows are leaf pairs, columns are positions along the leaf motion (IEC X). An aperture opens one
contiguous run of columns ``lo..hi`` (inclusive) per row, or closes the row (``lo = hi = -1``).
A decomposition is a list of ``(units, lo, hi)``: the sum over it of ``units`` times each
aperture's open cells is the intensity matrix, exactly.

* :func:`reducing_levels` - Xia & Verhey, "Multileaf collimator leaf sequencing algorithm for
  intensity modulated beams with multiple static segments", Med Phys 1998;25:1424-1434: each step
  takes the delivery unit ``d = 2**(m - 1)`` with ``m = max(1, floor(log2 L))`` for the largest
  remaining level L, opens in each row the run of cells with residual >= d that holds the row's
  largest residual, and subtracts d there. Fewer segments than the sweep for many levels.
* :func:`sweep` - Bortfeld, Kahler, Waldron & Boyer, "X-ray field compensation with multileaf
  collimators", Int J Radiat Oncol Biol Phys 1994;28:723-730 (the unidirectional "sweep" /
  close-in-free leaf sequence): in each row the k-th unit aperture opens at the k-th unit rise of
  the profile and closes at the k-th unit fall; it delivers each row with the least total
  intensity (sum of the positive steps) and is the step-and-shoot form of the sliding window.
* :func:`sliding_window_times` - the dynamic form of the sweep (Spirou & Chui, Med Phys
  1994;21:1031; Svensson, Kallman & Brahme, Phys Med Biol 1994;39:37): leaves move left to right,
  the leading (right) leaf opens point x at time a(x), the trailing (left) leaf closes it at
  b(x) = a(x) + I(x), both at the maximum speed unless stopped; the least total MU under the
  leaf-speed limit.
"""

from __future__ import annotations

import numpy as np

Aperture = tuple[int, np.ndarray, np.ndarray]  # (units, lo, hi): per row first/last open column or -1


def _check(intensity) -> np.ndarray:
    a = np.asarray(intensity)
    if a.ndim != 2:
        raise ValueError(f"intensity: expected a 2-D integer matrix (leaf pairs x positions), got shape "
                         f"{a.shape}")
    if a.size and (not np.all(np.isfinite(a)) or np.any(a < 0) or np.any(a != np.round(a))):
        raise ValueError("intensity: expected non-negative integers")
    return a.astype(np.int64)


def _runs(row_open: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs (first, last) of True in a 1-D boolean array."""
    d = np.diff(np.r_[0, row_open.astype(np.int8), 0])
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1
    return list(zip(starts.tolist(), ends.tolist()))


def reducing_levels(intensity) -> list[Aperture]:
    """Xia & Verhey's reducing-level decomposition of a non-negative integer matrix (see module)."""
    residual = _check(intensity).copy()
    n_rows = residual.shape[0]
    out: list[Aperture] = []
    while residual.size and residual.max() > 0:
        level = int(residual.max())
        m = max(1, int(np.floor(np.log2(level))))
        unit = 2 ** (m - 1)
        lo = -np.ones(n_rows, np.int64)
        hi = -np.ones(n_rows, np.int64)
        for r in range(n_rows):
            row = residual[r]
            if row.max() < unit:
                continue
            peak = int(np.argmax(row))  # the run holding the row's largest residual (first maximum)
            for a, b in _runs(row >= unit):
                if a <= peak <= b:
                    lo[r], hi[r] = a, b
                    break
        for r in np.flatnonzero(lo >= 0):
            residual[r, lo[r]: hi[r] + 1] -= unit
        out.append((unit, lo, hi))
    return out


def sweep(intensity) -> list[Aperture]:
    """Bortfeld et al.'s unidirectional sweep (see module): unit apertures, consecutive equal
    apertures merged."""
    a = _check(intensity)
    n_rows, n_cols = a.shape
    lefts, rights = [], []
    for r in range(n_rows):
        steps = np.diff(np.r_[0, a[r], 0])
        # the k-th unit rise opens column c (left leaf at c), the k-th unit fall closes after c - 1
        lefts.append(np.repeat(np.arange(n_cols + 1), np.maximum(steps, 0)))
        rights.append(np.repeat(np.arange(n_cols + 1), np.maximum(-steps, 0)) - 1)
    n_units = max((len(x) for x in lefts), default=0)
    out: list[Aperture] = []
    for k in range(n_units):
        lo = np.array([x[k] if k < len(x) else -1 for x in lefts], np.int64)
        hi = np.array([x[k] if k < len(x) else -1 for x in rights], np.int64)
        if out and np.array_equal(out[-1][1], lo) and np.array_equal(out[-1][2], hi):
            out[-1] = (out[-1][0] + 1, lo, hi)
        else:
            out.append((1, lo, hi))
    return out


def apertures_sum(apertures: list[Aperture], shape: tuple[int, int]) -> np.ndarray:
    """Sum of units x open cells of a decomposition (the intensity it delivers, no leakage)."""
    total = np.zeros(shape, np.int64)
    for units, lo, hi in apertures:
        for r in np.flatnonzero(lo >= 0):
            total[r, lo[r]: hi[r] + 1] += units
    return total
