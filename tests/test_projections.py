"""Exact CVaR projections (objectives.projections) against brute-force cvxpy projections and hand
calculations: equal and unequal voxel volumes, ties, already feasible points, fraction 1 (the mean:
a half-space), a fraction below the smallest voxel volume (the maximum: a clip), and the
safeguarded fallback search."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

from objectives import projections as pj


def _cvar(q, v, a, upper=True):
    """Volume-weighted mean of the hottest (upper) or coldest fraction a of the volume."""
    v = v / v.sum()
    s = 1.0 if upper else -1.0
    x = s * q
    order = np.argsort(-x)
    k = int(np.searchsorted(np.cumsum(v[order]), a))
    t = x[order][min(k, len(q) - 1)]
    return s * (t + v @ np.maximum(x - t, 0) / a)


def _brute(z, v, a, limit, upper=True):
    """The projection as a cvxpy problem in Rockafellar-Uryasev form, solved by CLARABEL."""
    v = v / v.sum()
    q, t = cp.Variable(len(z)), cp.Variable()
    if upper:
        cons = [t + cp.sum(cp.multiply(v, cp.pos(q - t))) / a <= limit]
    else:
        cons = [t - cp.sum(cp.multiply(v, cp.pos(t - q))) / a >= limit]
    cp.Problem(cp.Minimize(cp.sum_squares(q - z)), cons).solve(
        solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    return q.value


def _instances(seed, count):
    r = np.random.default_rng(seed)
    for i in range(count):
        n = int(r.integers(2, 60))
        z = r.normal(50.0, 8.0, n)
        if i % 4 == 0:
            z = np.round(z / 4.0) * 4.0  # ties
        v = np.ones(n) if i % 2 else r.uniform(0.1, 3.0, n)
        a = float(r.choice([1e-3, 0.02, r.uniform(0.05, 1.0), 1.0]))
        yield z, v, a, float(r.uniform(38.0, 58.0))


@pytest.mark.parametrize("upper", [True, False])
def test_random_projections_match_cvxpy(upper):
    fn = pj.upper_cvar_projection if upper else pj.lower_cvar_projection
    for z, v, a, limit in _instances(11 if upper else 12, 40):
        p = fn(z, v, a, limit)
        ref = _brute(z, v, a, limit, upper)
        np.testing.assert_allclose(p, ref, atol=2e-5)
        # feasible to rounding, and never farther from z than the interior-point answer
        gap = _cvar(p, v, a, upper) - limit
        assert (gap if upper else -gap) <= 1e-9 * max(1.0, abs(limit))
        assert np.linalg.norm(p - z) <= np.linalg.norm(ref - z) + 1e-7


def test_already_feasible_point_is_returned_unchanged():
    z = np.array([10.0, 20.0, 30.0, 40.0])
    v = np.array([1.0, 2.0, 1.0, 0.5])
    # hottest 25 % of the volume (v / 4.5: 0.111 at 40, 0.139 of 0.222 at 30): mean 34.44 Gy
    p = pj.upper_cvar_projection(z, v, 0.25, 34.45)
    np.testing.assert_array_equal(p, z)
    assert p is not z
    # coldest 50 %: 10 (0.222) and 20 (0.278 of 0.444): (2.222 + 5.556) / 0.5 = 15.56 Gy
    np.testing.assert_array_equal(pj.lower_cvar_projection(z, v, 0.5, 15.5), z)
    # just past the limits the point moves
    assert not np.array_equal(pj.upper_cvar_projection(z, v, 0.25, 34.4), z)
    assert not np.array_equal(pj.lower_cvar_projection(z, v, 0.5, 15.6), z)


def test_all_equal_values_with_equal_volumes_land_on_the_limit():
    # the set and the point are invariant under permutations, so the projection is too: q_i = L
    z = np.full(30, 60.0)
    np.testing.assert_allclose(pj.upper_cvar_projection(z, np.ones(30), 0.1, 50.0), 50.0, atol=1e-12)
    np.testing.assert_allclose(pj.lower_cvar_projection(z, np.ones(30), 0.3, 64.0), 64.0, atol=1e-12)


def test_fraction_one_is_the_mean_half_space():
    r = np.random.default_rng(3)
    z, v = r.normal(50, 5, 25), r.uniform(0.5, 2.0, 25)
    w = v / v.sum()
    limit = float(w @ z) - 3.0
    by_hand = z - (w @ z - limit) / (w @ w) * w  # projection onto {w . q <= limit}
    np.testing.assert_allclose(pj.upper_cvar_projection(z, v, 1.0, limit), by_hand, atol=1e-10)
    np.testing.assert_allclose(pj.lower_cvar_projection(z, v, 1.0, limit + 6.0),
                               z + (limit + 6.0 - w @ z) / (w @ w) * w, atol=1e-10)


def test_fraction_below_the_smallest_voxel_is_the_maximum():
    # CVaR over a fraction smaller than every voxel's volume is the maximum: the set is q <= L
    r = np.random.default_rng(4)
    z, v = r.normal(50, 5, 40), r.uniform(0.5, 2.0, 40)
    a = 0.5 * float((v / v.sum()).min())
    np.testing.assert_allclose(pj.upper_cvar_projection(z, v, a, 52.0), np.minimum(z, 52.0), atol=1e-10)
    np.testing.assert_allclose(pj.lower_cvar_projection(z, v, a, 47.0), np.maximum(z, 47.0), atol=1e-10)


def test_single_voxel():
    z, v = np.array([70.0]), np.array([2.0])
    np.testing.assert_allclose(pj.upper_cvar_projection(z, v, 1e-3, 60.0), [60.0], atol=1e-12)
    np.testing.assert_allclose(pj.lower_cvar_projection(z, v, 0.5, 75.0), [75.0], atol=1e-12)


def test_safeguarded_fallback_matches_cvxpy(monkeypatch):
    """The search over mu alone (used when the Newton steps on pieces do not settle) is exact too."""
    monkeypatch.setattr(pj, "_newton_on_pieces", lambda *args, **kw: None)
    monkeypatch.setattr(pj, "_newton_on_sorted", lambda *args, **kw: None)
    for z, v, a, limit in _instances(21, 16):
        p = pj.upper_cvar_projection(z, v, a, limit)
        np.testing.assert_allclose(p, _brute(z, v, a, limit), atol=2e-5)


def test_large_instance_satisfies_the_kkt_conditions():
    """n = 20,000 (too big for a quick cvxpy check): q = z - p with p_i = clip(z_i - t, 0, mu v_i),
    sum p = a mu and CVaR(q) = L; verify through the optimality of q for the support-function form:
    z - q is a non-negative multiple of a maximiser w of w . q over {0 <= w_i <= v_i / a, sum w = 1}."""
    r = np.random.default_rng(7)
    n, a, limit = 20000, 0.05, 55.0
    z, v = r.normal(50, 6, n), r.uniform(0.5, 2.0, n)
    q = pj.upper_cvar_projection(z, v, a, limit)
    w = v / v.sum()
    assert abs(_cvar(q, v, a) - limit) <= 1e-9
    p = z - q
    assert p.min() >= -1e-12
    lam = p.sum()
    wstar = p / lam  # the maximiser the KKT conditions name
    assert wstar.max() <= (w / a).max() + 1e-12 and np.all(wstar <= w / a + 1e-12)
    np.testing.assert_allclose(wstar @ q, _cvar(q, v, a), rtol=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_equal_volume_steps_on_the_sorted_values_match_the_safeguarded_search(monkeypatch, ties):
    """Equal volumes take the O(log n)-per-step Newton on the sorted values; it lands on the
    projection the safeguarded search finds (its own exact method), on the limit."""
    r = np.random.default_rng(9)
    calls = []
    for n, a, limit in ((20000, 0.1, 53.0), (5000, 0.02, 55.0), (3, 0.5, 50.0)):
        z = r.normal(52, 2, n)
        if ties:
            z = np.round(z * 2.0) / 2.0
        v = np.full(n, 0.3)
        calls.clear()
        with monkeypatch.context() as m:
            m.setattr(pj, "_newton_on_sorted", lambda *args, **kw: calls.append(args))
            searched = pj.upper_cvar_projection(z, v, a, limit)
        assert calls  # the equal volumes did take the sorted path
        fast = pj.upper_cvar_projection(z, v, a, limit)
        np.testing.assert_allclose(fast, searched, atol=1e-9)
        assert abs(_cvar(fast, v, a) - limit) <= 1e-9 * limit


def test_dot_matches_numpy():
    r = np.random.default_rng(8)
    a, b = r.normal(size=1001), r.normal(size=1001)
    assert pj.dot(a, b) == pytest.approx(float(np.dot(a, b)), rel=1e-12)


@pytest.mark.parametrize("upper", [True, False])
@pytest.mark.parametrize("equal", [True, False])
@pytest.mark.parametrize("limit_share", [0.3, 0.9, 1.5])
def test_the_cvar_projection_jacobian_equals_central_differences(upper, equal, limit_share):
    """diag(d) + U C U^T against central differences of z - P(z) (distinct values: the partition
    holds within the step). limit_share places the limit between the mean and the tail's CVaR:
    0.3 and 0.9 leave voxels capped and at the threshold (0.9 with equal volumes, upper: capped
    only, the D = 0 case), 1.5 is feasible (zero)."""
    rng = np.random.default_rng(7 + 2 * equal + upper)
    n, a = 40, 0.2
    z = rng.normal(50.0, 4.0, n)
    v = np.ones(n) if equal else rng.uniform(0.5, 2.0, n)
    tail = _cvar(z, v, a, upper)
    mean = float(v @ z / v.sum())
    limit = mean + limit_share * (tail - mean)
    project = pj.upper_cvar_projection if upper else pj.lower_cvar_projection
    jacobian = pj.upper_cvar_projection_jacobian if upper else pj.lower_cvar_projection_jacobian
    d, U, C = jacobian(z, v, a, limit)
    J = np.diag(d) + U @ C @ U.T
    h = 1e-6

    def residual(q):
        return q - project(q, v, a, limit)

    numeric = np.empty((n, n))
    for j in range(n):
        e = np.zeros(n)
        e[j] = h
        numeric[:, j] = (residual(z + e) - residual(z - e)) / (2 * h)
    np.testing.assert_allclose(J, numeric, atol=1e-6)
    assert np.abs(J).max() > 0 if limit_share < 1 else np.abs(J).max() == 0
    # firm non-expansiveness of P: the Jacobian of z - P(z) is symmetric with eigenvalues in [0, 1]
    eig = np.linalg.eigvalsh(J)
    assert eig.min() > -1e-9 and eig.max() < 1 + 1e-9
