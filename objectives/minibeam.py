"""Minibeam planning terms: valley-dose limits and a minimum peak-to-valley dose ratio.

Peak and valley voxels are given as [z, y, x] boolean masks of the planning grid (from
``optimizer.evaluate.pvdr.peak_valley_masks``); a term selects the structure's optimization
voxels inside them through ``ctx.voxel_index``, so the structure stays the user's OAR. All three
are linear in the dose (exact, no surrogate):

* :class:`ValleyMax`: every valley voxel of the structure d_i <= L (hard: on every valley voxel
  of the grid the plan is certified on), or weight x sum_valley v_i (d_i - L)_+ (soft);
* :class:`ValleyMean`: volume-weighted mean valley dose <= L (half-space);
* :class:`PVDRMin`: mean peak dose >= k x mean valley dose, i.e. k mean_V(d) - mean_P(d) <= 0,
  a half-space through the origin (projection closed form).

BED of peak and valley doses: add the peak / valley voxels as structures
(``optimizer.evaluate.pvdr.add_peak_valley_structures``) and use ``BEDMax`` / ``MeanBEDMax`` on
them; they are ordinary structures then.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from . import projections as pj
from .errors import TermError
from .quantities import array_module
from .shapes import _Limited
from .terms import Term, TermContext, nonneg_parameter


def _mask(value, name: str) -> np.ndarray:
    try:
        m = np.asarray(value)
    except (TypeError, ValueError):
        m = np.zeros(0)
    if m.ndim != 3 or m.dtype != bool:
        raise TermError(f"{name}: expected a [z, y, x] boolean mask of the planning grid")
    return m


def _select(mask: np.ndarray, ctx: TermContext, name: str, term: str) -> np.ndarray:
    if mask.shape != tuple(ctx.grid_shape):
        raise TermError(f"{term}.{name}: shape {mask.shape} does not match the planning grid "
                        f"{ctx.grid_shape}")
    sel = np.flatnonzero(mask.ravel()[np.asarray(ctx.voxel_index)])
    if len(sel) == 0:
        raise TermError(f"{term}.{name}: no voxel of structure '{ctx.structure}' in it (use a finer grid)")
    return sel


class ValleyMax(_Limited):
    """Valley dose ceiling in a structure: d_i <= limit on its valley voxels (Gy, total course)."""

    _limit_name = "limit"
    requires_affine = True

    def __init__(self, structure: str, limit: float, valley_mask, weight: float | None = None):
        super().__init__(structure, limit, None, weight)
        self.valley_mask = _mask(valley_mask, f"{type(self).__name__}.valley_mask")

    def _sel(self, ctx):
        return _select(self.valley_mask, ctx, "valley_mask", type(self).__name__)

    def _violation(self, q, ctx):
        return q[self._sel(ctx)] - self.limit

    def _cost(self, q, ctx):
        sel = self._sel(ctx)
        return ctx.volumes[sel] @ cp.pos(q[sel] - self.limit)

    def _violation_values(self, q, ctx):
        return q[array_module(q).asarray(self._sel(ctx))] - float(self.limit.value)

    def _cost_value(self, q, ctx) -> float:
        xp = array_module(q)
        sel = xp.asarray(self._sel(ctx))
        return float(pj.dot(xp.asarray(ctx.volumes)[sel], xp.maximum(q[sel] - float(self.limit.value), 0)))

    def _project(self, q, ctx):
        xp = array_module(q)
        out = xp.array(q, copy=True)
        sel = xp.asarray(self._sel(ctx))
        out[sel] = xp.minimum(q[sel], float(self.limit.value))
        return out

    def _prox(self, q, tau, ctx):
        xp = array_module(q)
        out = xp.array(q, copy=True)
        sel = xp.asarray(self._sel(ctx))
        step = tau * float(self.weight.value) * xp.asarray(ctx.volumes)[sel]
        out[sel] = pj.soft_excess_prox(q[sel], float(self.limit.value), step)
        return out


class ValleyMean(_Limited):
    """Volume-weighted mean valley dose of a structure <= limit (Gy, total course)."""

    requires_affine = True

    def __init__(self, structure: str, limit: float, valley_mask, weight: float | None = None):
        super().__init__(structure, limit, None, weight)
        self.valley_mask = _mask(valley_mask, f"{type(self).__name__}.valley_mask")

    def _a(self, ctx) -> np.ndarray:
        sel = _select(self.valley_mask, ctx, "valley_mask", type(self).__name__)
        a = np.zeros(len(ctx.volumes))
        a[sel] = ctx.volumes[sel] / ctx.volumes[sel].sum()
        return a

    def _violation(self, q, ctx):
        return self._a(ctx) @ q - self.limit

    def _violation_values(self, q, ctx):
        xp = array_module(q)
        return xp.asarray([pj.dot(xp.asarray(self._a(ctx)), q) - float(self.limit.value)])

    def _project(self, q, ctx):
        return pj.halfspace(q, array_module(q).asarray(self._a(ctx)), float(self.limit.value))


class PVDRMin(Term):
    """Minimum peak-to-valley dose ratio in a structure (e.g. the entrance region):
    mean peak dose >= ratio x mean valley dose (volume-weighted means over the structure's peak
    and valley voxels), as the linear constraint ratio x mean_V - mean_P <= 0 (exact)."""

    requires_affine = True

    def __init__(self, structure: str, ratio: float, peak_mask, valley_mask, weight: float | None = None):
        super().__init__(structure, weight, None)
        self.ratio = nonneg_parameter(ratio, f"{type(self).__name__}.ratio")
        if not float(self.ratio.value) >= 1:
            raise TermError(f"PVDRMin.ratio: expected a ratio >= 1, got {ratio!r}")
        self.peak_mask = _mask(peak_mask, "PVDRMin.peak_mask")
        self.valley_mask = _mask(valley_mask, "PVDRMin.valley_mask")

    def _means(self, ctx):
        out = []
        for name in ("peak_mask", "valley_mask"):
            sel = _select(getattr(self, name), ctx, name, "PVDRMin")
            a = np.zeros(len(ctx.volumes))
            a[sel] = ctx.volumes[sel] / ctx.volumes[sel].sum()
            out.append(a)
        return out

    def _violation(self, q, ctx):
        ap, av = self._means(ctx)
        return cp.reshape(self.ratio * (av @ q) - ap @ q, (1,), order="C")

    def _cost(self, q, ctx):
        return cp.pos(self._violation(q, ctx)[0])

    def _violation_values(self, q, ctx):
        xp = array_module(q)
        ap, av = self._means(ctx)
        a = xp.asarray(float(self.ratio.value) * av - ap)
        return xp.asarray([pj.dot(a, q)])

    def _project(self, q, ctx):
        ap, av = self._means(ctx)
        return pj.halfspace(q, array_module(q).asarray(float(self.ratio.value) * av - ap), 0.0)

    def describe(self) -> str:
        return f"PVDRMin({self._where}, {float(self.ratio.value):g})"
