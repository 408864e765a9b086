"""Shapes: *how* a quantity of a structure's voxels is limited or penalised.

Every shape takes ``quantity=Dose()`` by default (:mod:`objectives.quantities`), so
``Max("Core", 40)`` limits the dose and ``Max("Core", 70, quantity=BED(lq))`` the voxel BED. A
shape declares which quantities keep it convex: upper limits and hot-tail means take any convex
quantity; lower limits and deviations need an affine one (lower limits of monotone quantities
go through :class:`Floor`, their exact dose equivalent); a non-convex combination is refused
naming the term. Limits are cvxpy Parameters (``term.limit.value = ...``) so sweeps re-solve
without recompiling.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from . import projections as pj
from .errors import TermError
from .quantities import ParameterSets, array_module, at_voxels
from .terms import (
    Term,
    TermContext,
    fixed_setting,
    lower_cvar,
    nonneg_parameter,
    real_number,
    upper_cvar,
    volume_fraction,
)


def _vol(ctx: TermContext, like):
    return array_module(like).asarray(ctx.volumes, dtype=float)


class _Limited(Term):
    """A shape with one scalar limit Parameter ``limit`` (in the quantity's unit)."""

    #: the limit's name in error messages (aliases keep their historical names, e.g. dose_Gy)
    _limit_name = "limit"

    def __init__(self, structure, limit, quantity=None, weight=None):
        super().__init__(structure, weight, quantity)
        self.limit = nonneg_parameter(limit, f"{type(self).__name__}.{self._limit_name}")

    @property
    def _parameter_attributes(self) -> tuple[str, ...]:
        # the limit under its own name and its alias (dose_Gy, bed_Gy, ...), refused as numbers
        return ("weight", "limit", self._limit_name)

    def _unit(self) -> str:
        return self.quantity.unit

    def describe(self) -> str:
        unit = f" {self._unit()}" if self._unit() else ""
        return f"{type(self).__name__}({self._where}, {self.limit.value:g}{unit})"


class Max(_Limited):
    """Every voxel q_i <= limit (hard), or weight x sum_i v_i max(q_i - limit, 0) (soft).
    Convex for every convex quantity. Projection: clip; prox: per-voxel soft threshold."""

    def _violation(self, q, ctx):
        return q - self.limit

    def _violation_values(self, q, ctx):
        return q - float(self.limit.value)

    def _project(self, q, ctx):
        return array_module(q).minimum(q, float(self.limit.value))

    def _prox(self, q, tau, ctx):
        return pj.soft_excess_prox(q, float(self.limit.value), tau * float(self.weight.value) * _vol(ctx, q))

    def project(self, forms, ctx, **extra):
        forms = self._forms(forms, extra)
        qty = self.quantity
        if qty.invertible and qty.increasing and qty.base_forms == ("dose",) and not qty.affine:
            xp = array_module(forms["dose"])
            ceiling = xp.asarray(qty.inverse(np.full(len(ctx.volumes), float(self.limit.value)), ctx))
            return {"dose": xp.minimum(forms["dose"], ceiling)}
        if qty.affine and len(qty.base_forms) > 1:
            # q = sum_k g_k f_k per voxel: project each voxel onto its half-space
            g = qty.gradient(forms, ctx)
            q = qty.value(forms, ctx)
            excess = array_module(q).maximum(q - float(self.limit.value), 0)
            norm2 = sum(gk * gk for gk in g.values())
            return {k: forms[k] - excess * g[k] / norm2 for k in g}
        return super().project(forms, ctx)


class Min(_Limited):
    """Every voxel q_i >= limit (hard), or weight x sum_i v_i max(limit - q_i, 0) (soft).
    Convex only for affine quantities (use :class:`Floor` for BED / EQD2 / GARD floors)."""

    requires_affine = True

    def _violation(self, q, ctx):
        return self.limit - q

    def _violation_values(self, q, ctx):
        return float(self.limit.value) - q

    def _project(self, q, ctx):
        return array_module(q).maximum(q, float(self.limit.value))

    def _prox(self, q, tau, ctx):
        step = tau * float(self.weight.value) * _vol(ctx, q)
        return pj.soft_shortfall_prox(q, float(self.limit.value), step)


class Mean(_Limited):
    """Volume-weighted mean sum_i v_i q_i <= limit (hard), or weight x max(mean - limit, 0)
    (soft; with limit 0 it minimises the mean). Convex for convex quantities; projection onto
    the half-space for affine ones."""

    def _violation(self, q, ctx):
        return ctx.volumes @ q - self.limit

    def _violation_values(self, q, ctx):
        return array_module(q).asarray([pj.dot(_vol(ctx, q), q) - float(self.limit.value)])

    def _project(self, q, ctx):
        if not self.quantity.affine:
            self._cvxpy_only("the projection of a non-affine mean")
        return pj.halfspace(q, _vol(ctx, q), float(self.limit.value))


class CVaRMax(_Limited):
    """Hot-tail mean: the volume-weighted mean of q over the hottest ``volume_pct`` % <= limit.

    A DVH (or BED-volume) limit "at most volume_pct % above limit" is not convex; this bound
    (CVaR; Rockafellar & Uryasev 2000; Romeijn et al., Oper Res 2006;54:201) is, and because the
    hot-tail mean is >= the value at that volume, meeting it guarantees the DVH limit: the
    surrogate is **conservative**. Convex for convex quantities (CVaR is non-decreasing in each
    q_i). Projection: exact, threshold and multiplier from the KKT conditions
    (:func:`objectives.projections.upper_cvar_projection`).
    """

    volume_pct = fixed_setting("volume_pct", "_volume_pct", "the volume")

    def __init__(self, structure, limit, volume_pct, quantity=None, weight=None):
        super().__init__(structure, limit, quantity, weight)
        self._fraction = volume_fraction(volume_pct, f"{type(self).__name__}.volume_pct")
        self._volume_pct = float(volume_pct)

    def _violation(self, q, ctx):
        cvar, _ = upper_cvar(q, ctx.volumes, self._fraction)
        return cvar - self.limit

    def _violation_values(self, q, ctx):
        xp = array_module(q)
        v = _vol(ctx, q) / float(np.sum(ctx.volumes))
        order = xp.argsort(-q)
        k = int(xp.searchsorted(xp.cumsum(v[order]), self._fraction))
        t = float(q[order][min(k, len(q) - 1)])
        return xp.asarray([t + pj.dot(v, xp.maximum(q - t, 0)) / self._fraction - float(self.limit.value)])

    def _project(self, q, ctx):
        return pj.upper_cvar_projection(q, _vol(ctx, q), self._fraction, float(self.limit.value))

    def _projection_jacobian(self, q, ctx):
        return pj.upper_cvar_projection_jacobian(q, _vol(ctx, q), self._fraction, float(self.limit.value))

    def describe(self):
        return (f"{type(self).__name__}({self._where}, {self.quantity.symbol}{self.volume_pct:g} <= "
                f"{self.limit.value:g} Gy)")


class CVaRMin(_Limited):
    """Cold-tail mean: the volume-weighted mean of q over the coldest ``100 - volume_pct`` % is
    >= limit. Conservative for the DVH goal "D_volume_pct >= limit" (the cold-tail mean is <=
    D_volume_pct). Concave in q, so only affine quantities."""

    requires_affine = True

    volume_pct = fixed_setting("volume_pct", "_volume_pct", "the volume")

    def __init__(self, structure, limit, volume_pct, quantity=None, weight=None):
        super().__init__(structure, limit, quantity, weight)
        self._fraction = 1.0 - volume_fraction(volume_pct, f"{type(self).__name__}.volume_pct")
        self._volume_pct = float(volume_pct)

    def _violation(self, q, ctx):
        cvar, _ = lower_cvar(q, ctx.volumes, self._fraction)
        return self.limit - cvar

    def _violation_values(self, q, ctx):
        xp = array_module(q)
        v = _vol(ctx, q) / float(np.sum(ctx.volumes))
        order = xp.argsort(q)
        k = int(xp.searchsorted(xp.cumsum(v[order]), self._fraction))
        t = float(q[order][min(k, len(q) - 1)])
        cold = t - pj.dot(v, xp.maximum(t - q, 0)) / self._fraction
        return xp.asarray([float(self.limit.value) - cold])

    def _project(self, q, ctx):
        return pj.lower_cvar_projection(q, _vol(ctx, q), self._fraction, float(self.limit.value))

    def _projection_jacobian(self, q, ctx):
        return pj.lower_cvar_projection_jacobian(q, _vol(ctx, q), self._fraction, float(self.limit.value))

    def describe(self):
        return (f"{type(self).__name__}({self._where}, {self.quantity.symbol}{self.volume_pct:g} >= "
                f"{self.limit.value:g} Gy)")


def geud_expression(q: cp.Expression, volumes, a: float) -> cp.Expression:
    """cvxpy gEUD of non-negative values with relative volumes ``volumes`` (sum 1), a >= 1."""
    if a == 1:
        return volumes @ q
    return cp.pnorm(cp.multiply(volumes ** (1.0 / a), q), a)


class GEUDMax(_Limited):
    """Generalized EUD upper limit (sum_i v_i q_i^a)^(1/a) <= limit, a >= 1 (a weighted a-norm:
    convex and non-decreasing in non-negative arguments; a = 1 is the mean, large a approaches
    the maximum). A non-affine quantity enters as pos(q), equal to q where q >= 0, so cvxpy can
    verify the composition. Soft form: weight x max(gEUD - limit, 0)."""

    a = fixed_setting("a", "_a_value", "the exponent")

    def __init__(self, structure, limit, a, quantity=None, weight=None):
        super().__init__(structure, limit, quantity, weight)
        self._a_value = real_number(a, f"{type(self).__name__}.a", "a number >= 1")
        if not (np.isfinite(self._a_value) and self._a_value >= 1):
            raise TermError(f"{type(self).__name__}.a: expected a finite a >= 1 (gEUD is convex only there), "
                            f"got {a!r}")

    def _violation(self, q, ctx):
        arg = q if self.quantity.affine else cp.pos(q)
        return geud_expression(arg, ctx.volumes, self.a) - self.limit

    def _violation_values(self, q, ctx):
        xp = array_module(q)
        base = q if self.quantity.affine else xp.maximum(q, 0)
        v = _vol(ctx, q)
        if self.a == 1:
            geud = pj.dot(v, base)
        else:
            geud = float(xp.sum(v * xp.abs(base) ** self.a) ** (1.0 / self.a))
        return xp.asarray([geud - float(self.limit.value)])

    def describe(self):
        return (f"{type(self).__name__}({self._where}, a={self.a:g}, <= {self.limit.value:g}"
                f"{' ' + self.quantity.unit if self.quantity.unit else ''})")


class _Squared(_Limited):
    """Soft only: weight x sum_i v_i r_i^2 with a residual r. On affine quantities the weighted
    cost is written QP-representably and DPP as ||a sqrt(v) q - b sqrt(v)||^2-type terms with
    the derived *scalar* Parameters a = sqrt(weight) and b = sqrt(weight) x limit, refreshed
    before every solve (scalars: a per-voxel Parameter vector would make cvxpy's DPP tensors grow
    with the square of the voxel count)."""

    soft_only = True
    smooth = True

    def __init__(self, structure, limit, quantity=None, weight=None):
        super().__init__(structure, limit, quantity, weight)
        self._a = cp.Parameter(nonneg=True, name=f"{type(self).__name__}.sqrt_weight")
        self._b = cp.Parameter(nonneg=True, name=f"{type(self).__name__}.sqrt_weight_x_limit")

    def _residual(self, q, limit):
        raise NotImplementedError

    def refresh(self, ctx):
        super().refresh(ctx)
        a = float(np.sqrt(float(self.weight.value)))
        self._a.value, self._b.value = a, a * float(self.limit.value)

    def _cost(self, q, ctx):
        return ctx.volumes @ cp.square(self._residual(q, self.limit))

    def _objective(self, q, ctx):
        if not self.quantity.affine:
            return None
        self.refresh(ctx)
        sqrt_v = np.sqrt(np.asarray(ctx.volumes, dtype=float))
        return cp.sum_squares(self._residual(self._a * cp.multiply(sqrt_v, q), self._b * sqrt_v))

    def _cost_value(self, q, ctx):
        r = self._residual_values(q, float(self.limit.value))
        return pj.dot(_vol(ctx, q), r * r)

    def _gradient(self, q, ctx):
        r = self._residual_values(q, float(self.limit.value))
        return 2.0 * _vol(ctx, q) * r * self._residual_sign

    #: the slopes the cost takes (its conjugate's domain): an over-dose penalty only rises
    _slope_range = (-np.inf, np.inf)

    def quadratic_conjugate(self, forms, ctx, **extra):
        # h_i(y) = (c_i / 2) r_i^2 with c_i = 2 w v_i and r the residual (y - t, one-sided or
        # not): h_i*(v) = v t + v^2 / (2 c_i) on the slopes h_i takes (by hand, Fenchel-Young)
        name = self.quantity.form
        w = float(self.weight.value) if self.weight is not None else 0.0
        if name is None or not self.quantity.affine or w <= 0:
            return None
        y = self._forms(forms, extra)[name]
        lower, upper = self._slope_range
        return {"form": name, "slope": w * self._gradient(y, ctx), "curvature": 2.0 * w * _vol(ctx, y),
                "limit": float(self.limit.value), "lower": lower, "upper": upper}


class SquaredOver(_Squared):
    """Soft: weight x sum_i v_i max(q_i - limit, 0)^2. Convex for convex non-negative q
    (square is non-decreasing on the non-negative excess)."""

    _residual_sign = 1.0

    def _residual(self, q, limit):
        return cp.pos(q - limit)

    def _residual_values(self, q, limit):
        return array_module(q).maximum(q - limit, 0)

    _slope_range = (0.0, np.inf)


class SquaredUnder(_Squared):
    """Soft: weight x sum_i v_i max(limit - q_i, 0)^2. Affine quantities only."""

    requires_affine = True
    _residual_sign = -1.0

    def _residual(self, q, limit):
        return cp.pos(limit - q)

    def _residual_values(self, q, limit):
        return array_module(q).maximum(limit - q, 0)

    _slope_range = (-np.inf, 0.0)


class SquaredDeviation(_Squared):
    """Soft: weight x sum_i v_i (q_i - limit)^2, a least-squares prescription. Affine only."""

    requires_affine = True
    _residual_sign = 1.0

    def _residual(self, q, limit):
        return q - limit

    def _residual_values(self, q, limit):
        return q - limit


def _scalar_or_map(value, name: str):
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TermError(f"{name}: expected a number or a 3-D [z, y, x] map, got {value!r}") from None
    if arr.ndim not in (0, 3):
        raise TermError(f"{name}: expected a number or a 3-D [z, y, x] map, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise TermError(f"{name}: expected finite values >= 0")
    return float(arr) if arr.ndim == 0 else arr


class Floor(Term):
    """Every voxel q_i >= limit_i for a quantity that is a monotone function of dose (BED,
    EQD2, GARD, dose): exactly the linear dose floor d_i >= d*_i = inverse(limit_i), even though
    a lower bound on a convex quantity is not convex as written. ``limit`` is a scalar or a 3-D
    [z, y, x] map on the planning grid ("dose painting by numbers"); d* is a Parameter
    recomputed by ``refresh`` from the limit, the quantity's inputs and the fractions.

    Soft form: weight x sum_i v_i max(d*_i - d_i, 0) (the shortfall of *dose*), or its square
    with ``squared=True``. The term works in dose space: its quantity expression is the dose.
    """

    _limit_name = "limit"

    def __init__(self, structure, limit, quantity=None, weight=None, squared: bool = False):
        super().__init__(structure, weight, quantity)
        if not (self.quantity.invertible and self.quantity.base_forms == ("dose",)):
            raise TermError(f"{type(self).__name__}('{structure}'): {self.quantity.describe()} is not a "
                            f"monotone function of dose; no exact floor")
        self.squared = bool(squared)
        if self.squared and weight is None:
            raise TermError(f"{type(self).__name__}.squared: only a soft term (with a weight) can be squared")
        self.smooth = self.squared
        self._floors = ParameterSets(type(self).__name__, ("floor",))
        self._set_limit(limit)

    def _set_limit(self, value) -> None:
        self._limit = _scalar_or_map(value, f"{type(self).__name__}.{self._limit_name}")

    def dose_floor_Gy(self, ctx: TermContext) -> np.ndarray:
        """The per-voxel total-dose floor d* (Gy) for the voxels of ``ctx`` (current inputs)."""
        presc = at_voxels(self._limit, ctx, f"{type(self).__name__}.{self._limit_name}")
        return np.asarray(self.quantity.inverse(presc, ctx), dtype=float)

    def refresh(self, ctx):
        try:
            floor = self.dose_floor_Gy(ctx)
        except TermError:
            raise
        except Exception as err:  # BiologyError from the inverse, named for the term
            raise type(err)(f"{self.describe()}: {err}") from None
        self._floors.set(ctx, {"floor": floor})

    def quantity_expression(self, forms, ctx, **extra):
        return self._forms(forms, extra)["dose"]

    def numeric_quantity(self, forms, ctx, **extra):
        return self._forms(forms, extra)["dose"]

    def _violation(self, q, ctx):
        if q.size != len(ctx.volumes):
            raise TermError(f"{self.describe()}: dose expression has {q.size} entries, expected "
                            f"{len(ctx.volumes)}")
        self.refresh(ctx)
        return self._floors.get(ctx)["floor"] - q

    def _cost(self, q, ctx):
        shortfall = cp.pos(self._violation(q, ctx))
        return ctx.volumes @ (cp.square(shortfall) if self.squared else shortfall)

    def _violation_values(self, q, ctx):
        return array_module(q).asarray(self.dose_floor_Gy(ctx)) - q

    def _cost_value(self, q, ctx):
        short = array_module(q).maximum(self._violation_values(q, ctx), 0)
        return pj.dot(_vol(ctx, q), short * short if self.squared else short)

    def _gradient(self, q, ctx):
        if not self.squared:
            self._cvxpy_only("the gradient of the linear shortfall")
        short = array_module(q).maximum(self._violation_values(q, ctx), 0)
        return -2.0 * _vol(ctx, q) * short

    def _project(self, q, ctx):
        return array_module(q).maximum(q, array_module(q).asarray(self.dose_floor_Gy(ctx)))

    def project(self, forms, ctx, **extra):
        return {"dose": self._project(self.numeric_quantity(forms, ctx, **extra), ctx)}

    def gradient(self, forms, ctx, **extra):
        return {"dose": self._gradient(self.numeric_quantity(forms, ctx, **extra), ctx)}

    def describe(self) -> str:
        p = self._limit
        text = f"{p:g}" if isinstance(p, float) else f"map {p.shape}"
        unit = f" {self.quantity.unit}" if self.quantity.unit else ""
        return f"{type(self).__name__}({self._where}, >= {text}{unit})"


# fluence terms live in their own module; re-exported here as shapes of the Weights quantity
from .fluence import FluenceSmoothness, neighbour_differences  # noqa: E402, F401
