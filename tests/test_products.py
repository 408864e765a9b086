"""The float32-storage / float64-arithmetic products of the first-order solver
(:mod:`optimizer.solvers.products`) against SciPy's float64 products, and a solve that uses them."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.sparse as sp

from optimizer.solvers import products

pytestmark = pytest.mark.skipif(not products.available(), reason="numba not installed")


def _matrix(seed, n_rows=3000, n_cols=70, density=0.05):
    rng = np.random.default_rng(seed)
    M = sp.random(n_rows, n_cols, density=density, format="csr", dtype=np.float32, random_state=rng)
    M = M.tolil()
    M[::7] = 0  # empty rows (voxels no beamlet reaches)
    return M.tocsr()


@pytest.mark.parametrize("threads", [1, 2])
def test_products_equal_float64_products_of_the_stored_matrix(threads, monkeypatch):
    monkeypatch.setattr(products, "RANGES_PER_THREAD", 3)
    M = _matrix(threads)
    big = sp.vstack([M] * 400, format="csr")  # > 1e6 non-zeros: several row ranges
    rng = np.random.default_rng(5)
    with ThreadPoolExecutor(2) as pool:
        for A in (M, big):
            P = products.Float32Product(A, threads)
            ref = A.astype(np.float64)
            x = rng.random(A.shape[1]) * 1e3
            r = rng.standard_normal(A.shape[0])
            r[rng.random(A.shape[0]) < 0.5] = 0.0  # rows no term acts on are skipped
            rows = np.flatnonzero(rng.random(A.shape[0]) < 0.3)  # a working set of rows
            for use in (None, pool):
                y, g = P.matvec(x, use), P.rmatvec(r, use)
                w = np.abs(r)
                np.testing.assert_allclose(P.column_norms_sq(w, use), ref.multiply(ref).T @ w, rtol=1e-11)
                np.testing.assert_allclose(P.matvec_rows(x, rows, use), (ref @ x)[rows], rtol=1e-12,
                                           atol=1e-9 * np.abs(y).max())
                assert y.dtype == g.dtype == np.float64
                # float64 accumulation: agreement to float64 rounding, not float32 (1e-7)
                np.testing.assert_allclose(y, ref @ x, rtol=1e-12, atol=1e-9 * np.abs(y).max())
                np.testing.assert_allclose(g, ref.T @ r, rtol=1e-11, atol=1e-11 * np.abs(g).max())
    assert len(products.Float32Product(big, threads).ranges) > 1
    # the float32 values are read in place: nothing is copied
    assert products.Float32Product(M, 1).data is M.data


def test_float32_storage_certifies_the_same_plan_as_float64(monkeypatch):
    from optimizer import PhotonBeams, PlanProblem, phantoms

    patient = phantoms.tg119_cshape(spacing_mm=12.0)
    phantoms.add_cshape_helper_structures(patient)
    inf = PhotonBeams(range(0, 360, 72), beamlet_mm=10.0).influence(patient, target="PTV")
    plans = {}
    for dtype in ("float64", "float32"):
        problem = PlanProblem(patient, inf, fractions=25, max_voxels_per_structure=None)
        for term in phantoms.cshape_planning_terms():
            problem += term
        plans[dtype] = problem.solve(solver="FIRST_ORDER", matrix_dtype=dtype)
    a, b = plans["float64"].solver, plans["float32"].solver
    # "auto" (the default) stores float64 below FLOAT32_NNZ non-zeros and float32 from there on
    import optimizer.solvers.first_order as fo

    assert problem.solve(solver="FIRST_ORDER").solver["matrix_dtype"] == "float64"
    monkeypatch.setattr(fo, "FLOAT32_NNZ", inf.nnz)
    assert problem.solve(solver="FIRST_ORDER").solver["matrix_dtype"] == "float32"
    assert a["status"] == b["status"] == "optimal"
    assert b["matrix_dtype"] == "float32"
    assert abs(a["objective"] - b["objective"]) <= 1e-3 * abs(a["objective"])
    assert b["max_violation"] <= 0.01 and b["rel_gap"] <= 1e-4


def test_dose_from_weights_is_the_float64_product():
    from optimizer.geometry import Grid
    from optimizer.influence import InfluenceMatrix

    M = _matrix(3, n_rows=60, n_cols=8)
    grid = Grid((3, 4, 5), (2.0, 2.0, 2.0))
    inf = InfluenceMatrix(M, np.arange(60), grid, {"beam": np.zeros(8, int), "row": np.zeros(8, int),
                                                    "col": np.arange(8)}, [{"gantry_deg": 0.0}])
    w = np.random.default_rng(2).random(8) * 100
    dose = inf.dose_per_fraction(w).ravel()
    np.testing.assert_allclose(dose, M.astype(np.float64) @ w, rtol=1e-13)
    assert products.matvec64(M.tocsc(), w) == pytest.approx(M.astype(np.float64) @ w, rel=1e-12)
