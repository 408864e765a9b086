"""The fast paths of the proton dose calculation (issue 9, dose time) against the direct formulas.

* ``proton_physics._smeared_power`` (a log-space cubic Hermite table) against the parabolic
  cylinder formula (``_smeared_power_direct``, scipy's pbdv) and against an independent
  arbitrary-precision evaluation of the same integral (mpmath's pcfd, 30 digits). Tolerance:
  1e-7 relative, the accuracy of pbdv itself (it jumps by up to 7e-8 where its algorithm switches
  at |zeta| = 5.8); 1e-8 for the dose exponents nu > -0.5.
* ``proton._DepthTable`` against ``np.interp``: bit for bit.
* ``proton._pairs_within_reach`` against the brute-force distance of every spot to every voxel
  and against scipy's KD-tree (the search it replaced): the same pairs, the same distances.
* ``proton._by_column``: the CSC block equals the COO-built matrix.
* The whole influence matrix (dose and LET x dose) with the table against the same matrix with
  the direct formula patched in: same sparsity, values within 1e-6 relative.
"""

import mpmath
import numpy as np
import pytest
import scipy.sparse as sp
from scipy import integrate
from scipy.spatial import cKDTree

from optimizer import phantoms
from optimizer.beams import proton as pr
from optimizer.beams import proton_halo as ph
from optimizer.beams import proton_physics as pp
from optimizer.beams.proton import ProtonBeams
from optimizer.geometry import Structure

P = pp.BK_P
NUS = {"stopping": 1 / P - 1, "nuclear": 1 / P, "LET": 2 / P - 2}


def _mp_smeared(nu: float, zeta: float) -> float:
    # E[(zeta + Z)_+^nu] = int_0^inf x^nu phi(x - zeta) dx, as Gamma(nu+1)/sqrt(2 pi)
    # exp(-zeta^2/4) D_(-nu-1)(-zeta) in 30-digit arithmetic (mpmath, independent of scipy)
    mpmath.mp.dps = 30
    z = mpmath.mpf(zeta)
    return float(mpmath.gamma(nu + 1) / mpmath.sqrt(2 * mpmath.pi) * mpmath.exp(-z * z / 4)
                 * mpmath.pcfd(-nu - 1, -z))


@pytest.mark.parametrize("name", list(NUS))
def test_smeared_power_table_matches_arbitrary_precision_integral(name):
    nu = NUS[name]
    zeta = np.array([-11.99, -9.3, -6.1, -5.85, -5.75, -3.3, -1.01, -0.2, 0.0, 0.37, 1.9, 4.4,
                     5.79, 5.81, 8.8, 13.3, 19.99])
    ref = np.array([_mp_smeared(nu, z) for z in zeta])
    fast = pp._smeared_power(nu, zeta)
    assert np.max(np.abs(fast / ref - 1)) < 1e-7
    # and by adaptive quadrature with the algebraic weight x^nu (QUADPACK, no special function)
    for z0 in (-2.5, 0.37, 3.0):
        quad, _ = integrate.quad(lambda x, z0=z0: np.exp(-0.5 * (x - z0) ** 2) / np.sqrt(2 * np.pi),
                                 0.0, z0 + 15.0, weight="alg", wvar=(nu, 0.0), epsabs=0, epsrel=1e-12)
        assert pp._smeared_power(nu, np.array([z0]))[0] == pytest.approx(quad, rel=1e-8)


@pytest.mark.parametrize("nu", [*NUS.values(), 0.0, 1.5])
def test_smeared_power_table_matches_the_formula_everywhere(nu):
    rng = np.random.default_rng(7)
    zeta = np.concatenate([rng.uniform(-14, 30, 50_000), [-12.0, 20.0, 20.0 + 1e-9, -12.0 - 1e-9, 0.0]])
    fast = pp._smeared_power(nu, zeta)
    direct = pp._smeared_power_direct(nu, zeta)
    inside = direct > 0
    assert np.array_equal(fast > 0, inside)  # 0 below zeta = -12 in both
    rel = np.abs(fast[inside] / direct[inside] - 1)
    assert rel.max() < (1e-8 if nu > -0.5 else 1e-7)
    # beyond the table (asymptotic series) the two are the same function
    big = zeta > pp._ZETA_ASYMPTOTIC
    assert np.array_equal(fast[big], direct[big])
    # scalars and shapes
    assert np.shape(pp._smeared_power(nu, 1.0)) == ()
    assert pp._smeared_power(nu, np.zeros((2, 3))).shape == (2, 3)


def test_depth_table_is_np_interp_bit_for_bit():
    rng = np.random.default_rng(3)
    depth = np.arange(0.0, 160.0 + 0.2, 0.1)  # as _beam_dose builds it
    tabs = {"a": np.sin(depth / 7.0) + 2.0, "b": np.exp(-depth / 40.0)}
    x = np.concatenate([rng.uniform(-1.0, 159.0, 20_000), depth[:-2], [0.0, -0.5, depth[5] + 1e-13]])
    got = pr._DepthTable(depth, tabs)(x)
    for name, tab in tabs.items():
        assert np.array_equal(got[name], np.interp(x, depth, tab))
    uneven = np.sort(rng.uniform(0, 50, 300))  # the searchsorted branch
    got = pr._DepthTable(uneven, {"c": np.cos(uneven)})(x[x < 49])
    assert np.array_equal(got["c"], np.interp(x[x < 49], uneven, np.cos(uneven)))


@pytest.mark.parametrize("regular", [True, False])
def test_pair_search_finds_exactly_the_brute_force_pairs(regular):
    rng = np.random.default_rng(11)
    if regular:  # a layer's spots: part of an 8 mm grid
        gu, gv = np.meshgrid(np.arange(-6, 7) * 8.0, np.arange(-4, 5) * 8.0)
        keep = rng.random(gu.size) < 0.6
        su, sv = gu.ravel()[keep], gv.ravel()[keep]
    else:
        su, sv = rng.uniform(-50, 50, 80), rng.uniform(-30, 30, 80)
    u, v = rng.uniform(-90, 90, 4000), rng.uniform(-70, 70, 4000)
    reach = rng.uniform(5.0, 25.0, 4000)
    js, vi, d = pr._pairs_within_reach(su, sv, u, v, reach)
    dist = np.sqrt((su[None, :] - u[:, None]) ** 2 + (sv[None, :] - v[:, None]) ** 2)
    vb, jb = np.nonzero(dist <= reach[:, None])
    within = d <= reach[vi]
    assert within.sum() == len(vb)  # nothing missed, nothing twice
    assert set(zip(js[within].tolist(), vi[within].tolist())) == set(zip(jb.tolist(), vb.tolist()))
    assert np.array_equal(d, dist[vi, js])
    assert np.all(d <= reach[vi] * (1 + 1e-8))  # candidates only within the (widened) reach
    # the same distances as the KD-tree search it replaced
    kd = cKDTree(np.stack([su, sv], 1)).sparse_distance_matrix(
        cKDTree(np.stack([u, v], 1)), float(reach.max()), output_type="dok_matrix")
    assert all(kd[j, i] == di for j, i, di in zip(js[within][:500], vi[within][:500], d[within][:500]))
    assert pr._pairs_within_reach(su, sv, u[:0], v[:0], reach[:0])[0].size == 0
    far = pr._pairs_within_reach(su, sv, u + 1000.0, v + 1000.0, reach)  # no spot within reach
    assert far[0].size == 0 and far[1].size == 0


def test_csc_block_from_grouped_pairs_equals_coo_matrix():
    rng = np.random.default_rng(5)
    n = 5000
    flat = rng.choice(300 * 40, n, replace=False)  # unique (row, col)
    rows, cols = (flat // 40).astype(np.int32), flat % 40
    data = rng.random(n).astype(np.float32)
    order, indptr = pr._by_column(cols, 40)
    block = sp.csc_matrix((data[order], rows[order], indptr), shape=(300, 40))
    ref = sp.coo_matrix((data, (rows, cols)), shape=(300, 40)).tocsr()
    got = pr._assemble([block], 300)
    assert got.has_sorted_indices
    assert np.array_equal(got.indptr, ref.indptr) and np.array_equal(got.indices, ref.indices)
    assert np.array_equal(got.data, ref.data)


def test_reach_alone_equals_the_folded_cutoff_reach():
    beams = ProtonBeams([0.0])
    depth = np.linspace(0.0, 260.0, 500)
    for e in (100.0, 200.0):
        full = beams._reach_table(e, depth)
        alone = beams._reach_table(e, depth, reach_only=True)
        assert np.array_equal(full["reach_mm"], alone["reach_mm"])
        assert np.array_equal(alone["halo"], ph.halo_sigma_mm(e, depth, beams.sigma_air_mm(e)))


def test_influence_matrix_with_the_table_equals_the_direct_formula(monkeypatch):
    p = phantoms.water_box(size_mm=(45, 150, 150), spacing_mm=5.0)
    z, y, x = np.meshgrid(*p.grid.axes_mm(), indexing="ij")
    p.add_structure(Structure("PTV", (np.abs(x) <= 8) & (np.abs(z) <= 8) & (np.abs(y) <= 12), "target"))
    beams = ProtonBeams([0.0, 90.0], spot_spacing_mm=6.0, layer_spacing_mm=8.0, margin_mm=0.0)
    fast = beams.influence(p, "PTV")
    monkeypatch.setattr(pp, "_smeared_power", pp._smeared_power_direct)
    direct = ProtonBeams([0.0, 90.0], spot_spacing_mm=6.0, layer_spacing_mm=8.0,
                         margin_mm=0.0).influence(p, "PTV")
    for form in ("dose", "let_dose"):
        a, b = fast.forms[form].matrix, direct.forms[form].matrix
        assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
        assert a.nnz > 1000
        rel = np.abs(a.data.astype(float) - b.data) / np.abs(b.data.astype(float))
        assert rel.max() <= 1e-6
