"""Euclidean projections and proximal operators the numeric term protocol needs.

All functions take 1-D arrays (NumPy or CuPy) and return new arrays; ``v`` are relative voxel
volumes (positive). Each is exact up to floating point, and checked in
``tests/test_term_contract.py`` against cvxpy solutions of the same projection problems.
"""

from __future__ import annotations

import numpy as np

from .quantities import array_module


def halfspace(z, a, b: float):
    """Projection onto {q : a @ q <= b}."""
    xp = array_module(z)
    excess = float(a @ z) - b
    if excess <= 0:
        return xp.array(z, copy=True)
    return z - (excess / float(a @ a)) * a


def soft_excess_prox(z, limit, step):
    """prox of sum_i step_i max(q_i - limit_i, 0) (step_i = tau x weight x v_i)."""
    xp = array_module(z)
    return xp.where(z > limit + step, z - step, xp.where(z >= limit, limit, z))


def soft_shortfall_prox(z, limit, step):
    """prox of sum_i step_i max(limit_i - q_i, 0)."""
    xp = array_module(z)
    return xp.where(z < limit - step, z + step, xp.where(z <= limit, limit, z))


def _weighted_excess_projection(z, v, t: float, r: float):
    """Projection of z onto {q : sum_i v_i (q_i - t)_+ <= r}, r >= 0.

    Solution: q_i = z_i - mu v_i where z_i - t > mu v_i, t where 0 <= z_i - t <= mu v_i, z_i
    below t, with mu >= 0 from the piecewise-linear equation sum_i v_i (u_i - mu v_i)_+ = r
    (u = z - t), solved after sorting the breakpoints u_i / v_i."""
    xp = array_module(z)
    u = z - t
    pos = u > 0
    if float(v[pos] @ u[pos]) <= r:
        return xp.array(z, copy=True)
    up, vp = u[pos], v[pos]
    ratio = up / vp
    order = xp.argsort(-ratio)
    ratio, up, vp = ratio[order], up[order], vp[order]
    s_vu = xp.cumsum(vp * up)
    s_vv = xp.cumsum(vp * vp)
    # with the first k breakpoints active, mu = (s_vu[k-1] - r) / s_vv[k-1]; valid when it lies
    # in [ratio[k], ratio[k-1]]
    mu_k = (s_vu - r) / s_vv
    nxt = xp.concatenate([ratio[1:], xp.zeros(1, dtype=ratio.dtype)])
    ok = (mu_k >= nxt) & (mu_k <= ratio)
    k = int(xp.argmax(ok)) if bool(ok.any()) else len(ratio) - 1
    mu = float(mu_k[k])
    return xp.where(u > mu * v, z - mu * v, xp.where(u >= 0, t, z))


def upper_cvar_projection(z, v, fraction: float, limit: float, iterations: int = 200):
    """Projection of z onto {q : CVaR_fraction(q; v) <= limit}, the volume-weighted mean of the
    hottest ``fraction`` of the volume (Rockafellar-Uryasev form
    ``min_t t + (1/fraction) sum_i v_i (q_i - t)_+``).

    The set is the shadow of the convex set {(q, t) : sum_i v_i (q_i - t)_+ <= fraction
    (limit - t)}; the squared distance to its slice at t is convex in t (partial minimization of
    a jointly convex problem), so t is found by golden-section search and each slice is a
    weighted threshold projection (O(n log n)).
    """
    xp = array_module(z)
    v = xp.asarray(v, dtype=z.dtype)
    vsum = float(v.sum())
    v = v / vsum
    # already feasible?
    order = xp.argsort(-z)
    cum = xp.cumsum(v[order])
    k = int(xp.searchsorted(cum, fraction))
    t0 = float(z[order][min(k, len(z) - 1)])
    if t0 + float(v @ xp.maximum(z - t0, 0)) / fraction <= limit + 1e-15 * max(1.0, abs(limit)):
        return xp.array(z, copy=True)

    def slice_projection(t):
        return _weighted_excess_projection(z, v, t, fraction * (limit - t))

    if float(v.max() - v.min()) <= 1e-12 * float(v.max()):
        dist = _equal_volume_distance(z, float(v[0]), fraction, limit)
    else:
        def dist(t):
            q = slice_projection(t)
            return float(((q - z) ** 2).sum())

    span = float(z.max() - z.min()) + abs(limit) + 1.0
    lo, hi = min(float(z.min()), limit) - span, limit
    g = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = dist(a), dist(b)
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = dist(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = dist(b)
        if hi - lo <= 1e-13 * span:
            break
    return slice_projection(0.5 * (lo + hi))


def lower_cvar_projection(z, v, fraction: float, limit: float):
    """Projection onto {q : mean of the coldest ``fraction`` of the volume >= limit}."""
    return -upper_cvar_projection(-z, v, fraction, -limit)


def _equal_volume_distance(z, v: float, fraction: float, limit: float):
    """Squared distance from z to the slice at t, for equal voxel volumes v: the active set of
    the threshold projection is a prefix of z sorted in decreasing order, so prefix sums give
    each distance in O(n) without re-sorting (the search over t calls it ~100 times)."""
    xp = array_module(z)
    s = -xp.sort(-z)
    s1 = xp.concatenate([xp.zeros(1, dtype=s.dtype), xp.cumsum(s)])
    s2 = xp.concatenate([xp.zeros(1, dtype=s.dtype), xp.cumsum(s * s)])
    n = len(s)
    k_all = xp.arange(1, n + 1, dtype=s.dtype)

    def dist(t: float) -> float:
        R = fraction * (limit - t) / v
        m = int(xp.searchsorted(-s, -t, side="left"))  # elements strictly above t
        if m == 0 or float(s1[m]) - m * t <= R:
            return 0.0
        k = k_all[:m]
        mu = (s1[1:m + 1] - k * t - R) / k
        valid = s[:m] - t - mu > 0
        kk = int(xp.nonzero(valid)[0][-1]) + 1  # the largest prefix that stays active
        mu_k = (float(s1[kk]) - kk * t - R) / kk
        # the elements kk..m-1 land on t; those above t + mu_k lose mu_k
        mid = float(s2[m] - s2[kk]) - 2 * t * float(s1[m] - s1[kk]) + (m - kk) * t * t
        return kk * mu_k * mu_k + mid

    return dist
