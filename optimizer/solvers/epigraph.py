"""Exact worst cases of soft robust terms in the first-order solver (augmented Lagrangian).

A soft ``Robust(term, "composite" | "voxelwise")`` is not differentiable (a maximum over the
scenarios), so :mod:`optimizer.solvers.first_order` lifts it with auxiliary variables that ride
along with the beamlet weights in the inner L-BFGS-B / SPG solve (free, where the weights are
>= 0), and smooth inequality constraints handled by the augmented Lagrangian:

- composite, ``w max_s c_s(y_s)`` with c_s the wrapped (smooth) cost in scenario s: one scalar
  ``t``, objective ``w t``, constraints ``c_s(y_s) - t <= 0`` (the epigraph of the maximum).
  t is minimised out exactly in every evaluation (the augmented Lagrangian is piecewise
  quadratic in t: sum_s max(0, mu_s + rho (c_s - t)) = w, by sorting), so it is no variable of
  the inner solve, the multipliers always sum to w, and the result stays C1 in the doses;
- voxelwise, ``w c(min_s d_s)`` (lower limits; ``max_s`` for upper limits): one variable per
  voxel ``u``, objective ``w c(u)``, constraints ``u - d_s <= 0`` (``d_s - u <= 0``). Exact
  because c is non-increasing (non-decreasing) in u, so ``u = min_s d_s`` at the optimum.

Each constraint block ``g <= 0`` enters through the Hestenes-Powell-Rockafellar term
``(1 / (2 rho)) (max(0, mu + rho g)^2 - mu^2)``, continuously differentiable when g is (smooth
wrapped costs: squared under/overdose); multipliers ``mu <- max(0, mu + rho g)``.

Certificate: for any convex weights p over the scenarios (per voxel for voxelwise),
``max_s c_s >= sum_s p_s c_s`` and, c being monotone, ``c(min_s d_s) >= c(sum_s p_s d_s)``:
the p-mixture is a smooth convex minorant of the worst case, so its linearisation gives a
valid Lagrangian lower bound. With p = the normalised multipliers (the dual of the epigraph:
``sum_s mu_s = w`` at the optimum) the minorant touches the worst case at the optimum and the
duality gap closes; the gap adds ``true - minorant >= 0`` to the usual linearisation term.
"""

from __future__ import annotations

import numpy as np


def unsupported_reason(term) -> str | None:
    """Why the first-order path cannot take a soft robust worst case (None when it can)."""
    inner = term.term
    if not getattr(inner, "smooth", False):
        return (f"{term.describe()}: the {term.mode} worst case needs a smooth scenario cost for its "
                f"epigraph, and {inner.describe()} has no gradient (not smooth)")
    if term.mode == "voxelwise":
        from objectives.robust import _LOWER, _UPPER

        monotone = _LOWER if term.side == "lower" else _UPPER
        if not isinstance(inner, monotone):
            return (f"{term.describe()}: the voxelwise worst case needs a cost that is "
                    f"{'non-increasing' if term.side == 'lower' else 'non-decreasing'} in the dose "
                    f"(side='{term.side}'); {inner.describe()} is not")
    return None


def is_worst_case(term) -> bool:
    """A soft robust term in composite or voxelwise mode (handled here)."""
    from objectives.robust import Robust

    return isinstance(term, Robust) and not term.hard and term.mode in ("composite", "voxelwise")


class Epigraph:
    """The lifted worst case of one soft robust term (module docstring). ``names`` are the
    scenario form names in order; dose arrays are total-course Gy."""

    def __init__(self, term, ctx):
        self.term, self.ctx = term, ctx
        self.names = term.quantity.base_forms
        self.composite = term.mode == "composite"
        self.sign = 1.0 if term.side == "lower" else -1.0  # constraint sign * (u - d_s) <= 0

    @property
    def weight(self) -> float:
        return float(self.term.weight.value)

    def n_aux(self, n_voxels: int) -> int:
        return 0 if self.composite else n_voxels

    def _costs(self, doses, xp):
        inner = self.term.term
        return [inner.cost_value({"dose": d}, self.ctx) for d in doses]

    def start(self, forms, xp):
        """Auxiliary values at the current doses (the worst case itself), zero multipliers and
        the penalty: rho0 w / (the worst cost) for the scalar epigraph, rho0 w v_i per voxel
        (v: relative voxel volume; the squared costs' curvature is 2 w v_i)."""
        doses = [forms[k] for k in self.names]
        if self.composite:
            costs = self._costs(doses, xp)
            return xp.zeros(0), xp.zeros(len(doses)), max(max(costs), 1e-12)
        stack = xp.stack(doses)
        u = stack.min(axis=0) if self.sign > 0 else stack.max(axis=0)
        return u.astype(float), xp.zeros(stack.shape), None

    def penalty(self, rho0: float, scale, xp):
        """The augmented-Lagrangian penalty of the constraint block."""
        w = max(self.weight, 1e-12)
        if self.composite:
            return rho0 * w / scale
        return rho0 * w * xp.asarray(self.ctx.volumes, dtype=float)

    def alm(self, forms, a, mu, rho, xp):
        """Value of ``w (objective in a) + HPR terms``, gradients per scenario form and in a,
        and the updated multipliers ``max(0, mu + rho g)``."""
        w = self.weight
        doses = [forms[k] for k in self.names]
        inner = self.term.term
        if self.composite:
            costs = xp.asarray(self._costs(doses, xp), dtype=float)
            t = self._best_t(costs, mu, rho)
            r = xp.maximum(mu + rho * (costs - t), 0.0)
            value = w * t + float(r @ r - mu @ mu) / (2 * rho)
            grads = {k: float(rs) * inner.gradient({"dose": d}, self.ctx)["dose"] if float(rs) > 0
                     else None for k, d, rs in zip(self.names, doses, r)}
            return value, grads, xp.zeros(0), r
        s = self.sign
        r = xp.maximum(mu + rho * (s * (a[None, :] - xp.stack(doses))), 0.0)
        value = w * inner.cost_value({"dose": a}, self.ctx) + float(((r * r - mu * mu) / (2 * rho)).sum())
        grad_a = w * inner.gradient({"dose": a}, self.ctx)["dose"] + s * r.sum(axis=0)
        return value, {k: -s * r[i] for i, k in enumerate(self.names)}, grad_a, r

    def _best_t(self, costs, mu, rho) -> float:
        """argmin_t w t + sum_s max(0, mu_s + rho (c_s - t))^2 / (2 rho): the t where
        sum_s rho max(0, b_s - t) = w with b_s = c_s + mu_s / rho (top-k breakpoints)."""
        w = self.weight
        b = np.sort(np.asarray([float(c) for c in costs]) + np.asarray([float(m) for m in mu]) / rho)[::-1]
        if w <= 0:
            return float(b[0])
        top = np.cumsum(b)
        for k in range(1, len(b) + 1):
            t = (top[k - 1] - w / rho) / k
            if k == len(b) or t >= b[k]:
                return float(t)
        return float(b[-1])

    def infeasibility(self, forms, a, xp) -> float:
        """Largest constraint violation, relative: composite ``(max_s c_s - t)+ / max_s c_s``,
        voxelwise ``max (sign (u - d_s))+ / max |d_s|`` (drives the penalty up when it stalls)."""
        doses = [forms[k] for k in self.names]
        if self.composite:
            return 0.0  # t is exact for the current multipliers (their sum is w)
        stack = xp.stack(doses)
        excess = float(xp.maximum(self.sign * (a[None, :] - stack), 0.0).max()) if stack.size else 0.0
        return excess / max(float(xp.abs(stack).max()) if stack.size else 0.0, 1e-12)

    def bound(self, forms, mu, xp):
        """The weighted true worst case, the p-mixture minorant (p: normalised multipliers, or
        the worst scenario where they are all zero) and the minorant's gradients per form."""
        w = self.weight
        doses = [forms[k] for k in self.names]
        inner = self.term.term
        true = w * self.term.cost_value(forms, self.ctx)
        if self.composite:
            costs = np.asarray([float(c) for c in self._costs(doses, xp)])
            m = np.asarray([float(v) for v in mu])
            p = m / m.sum() if m.sum() > 0 else np.eye(len(costs))[int(np.argmax(costs))]
            grads = {k: w * float(ps) * inner.gradient({"dose": d}, self.ctx)["dose"]
                     for k, d, ps in zip(self.names, doses, p) if ps > 0}
            return true, w * float(p @ costs), grads
        stack = xp.stack(doses)
        total = mu.sum(axis=0)
        worst = stack.argmin(axis=0) if self.sign > 0 else stack.argmax(axis=0)
        onehot = (xp.arange(len(doses))[:, None] == worst[None, :]).astype(float)
        tiny = 1e-12 * max(float(total.max()) if total.size else 0.0, 1e-300)
        p = xp.where(total[None, :] > tiny, mu / xp.maximum(total, tiny)[None, :], onehot)
        mix = (p * stack).sum(axis=0)
        g = w * inner.gradient({"dose": mix}, self.ctx)["dose"]
        sur = w * inner.cost_value({"dose": mix}, self.ctx)
        return true, sur, {k: g * p[i] for i, k in enumerate(self.names)}
