"""The synthetic clinical-size case of benchmarks/bench_scaling.py, checked on a tiny size against
a brute-force 3-D construction: which voxels each pencil beam reaches, the dose it deposits, the
density (~400 non-zeros per voxel), and the on-disk round trip the solve process maps."""

import importlib.util
import os
import pathlib

import numpy as np
import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scaling.py"
_spec = importlib.util.spec_from_file_location("bench_scaling", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

N_VOXELS = 2000  # 14^3 grid, 1,520 body voxels, 9 x 8 x 8 beamlets


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("scaling"))
    meta = bench.build_matrix(N_VOXELS, d, chunk_rows=97)  # many chunks, with a ragged last one
    patient, inf = bench.load_case(d)
    return d, meta, patient, inf


def _brute_force(lay, flat):
    """Columns and values of the voxels ``flat`` from 3-D geometry: distance from the voxel
    centre to each beamlet's axis (a line along the beam direction), depth by marching back
    along the beam to the body surface (0.01 mm steps)."""
    x, y, z = lay.coords(flat)
    out = []
    for p in np.stack([x, y, z], axis=1):
        cols, vals = [], []
        for b in range(bench.BEAMS):
            th = 2 * np.pi * b / bench.BEAMS
            d_beam = np.array([np.cos(th), np.sin(th), 0.0])
            e_u = np.array([-np.sin(th), np.cos(th), 0.0])
            steps = np.arange(0, 4 * lay.radius, 0.01)
            back = p[None, :2] - steps[:, None] * d_beam[None, :2]
            depth = steps[np.argmax(np.hypot(back[:, 0], back[:, 1]) > lay.radius)]
            for i in range(lay.m):
                for j in range(lay.m):
                    c = ((i + 0.5 - lay.m / 2) * lay.pitch) * e_u + np.array(
                        [0.0, 0.0, (j + 0.5 - lay.m / 2) * lay.pitch])
                    dist = np.linalg.norm(np.cross(p - c, d_beam))
                    if dist <= lay.reach:
                        cols.append(b * lay.m ** 2 + i * lay.m + j)
                        vals.append(bench.GY_PER_WEIGHT * np.exp(-bench.MU_PER_MM * depth)
                                    * np.exp(-dist ** 2 / (2 * lay.sigma ** 2)))
        out.append((np.array(cols), np.array(vals)))
    return out


def test_rows_match_brute_force_geometry(case):
    _, meta, _, inf = case
    lay = bench.Layout(N_VOXELS)
    A = inf.matrix
    rng = np.random.default_rng(1)
    for r in rng.choice(A.shape[0], 25, replace=False):
        cols, vals = _brute_force(lay, inf.voxel_index[r:r + 1])[0]
        lo, hi = A.indptr[r], A.indptr[r + 1]
        np.testing.assert_array_equal(A.indices[lo:hi], cols)  # same beamlets, sorted
        # float32 values; the marched depth is within 0.01 mm (exp(-0.005 * 0.01) - 1 ~ 5e-5)
        np.testing.assert_allclose(A.data[lo:hi], vals, rtol=1e-4)


def test_density_and_banded_columns(case):
    _, meta, _, inf = case
    A = inf.matrix
    per_row = np.diff(A.indptr)
    per_col = np.diff(A.tocsc().indptr)
    assert meta["per_row"]["mean"] == pytest.approx(per_row.mean())
    assert meta["per_col"]["median"] == pytest.approx(np.median(per_col))
    assert per_row.mean() == pytest.approx(bench.NNZ_PER_VOXEL, rel=0.05)
    assert per_row.min() > 0  # every body voxel is in every field
    # a column is a band: its voxels lie on a line along its beam, within 3 sigma of the axis
    # (the brute-force test checks that), and the band runs through the body: its depth span
    # along the beam is most of the diameter for the central beamlets
    lay = bench.Layout(N_VOXELS)
    x, y, _ = lay.coords(inf.voxel_index)
    col = A.tocsc()
    j = (lay.m // 2) * lay.m + lay.m // 2  # beam 0 (along +x), a central beamlet
    rows = col.indices[col.indptr[j]:col.indptr[j + 1]]
    assert np.ptp(x[rows]) >= 0.85 * 2 * lay.radius - 2 * bench.VOXEL_MM
    assert np.ptp(y[rows]) <= 2 * lay.reach


def test_clinical_density_is_about_200M():
    # the calibrated cut-off gives ~400 non-zeros per voxel on voxels it was not fitted on;
    # _counts is the per-voxel count the brute-force test checks through the matrix rows
    lay = bench.Layout(bench.CLINICAL)
    assert (len(lay.voxel_index), lay.n_beamlets) == (499_488, 9 * 47 * 47)
    rng = np.random.default_rng(7)
    flat = rng.choice(lay.voxel_index, 1000, replace=False)
    x, y, z = lay.coords(flat)
    n = sum(lay._counts(*lay.beam_frame(b, x, y, z)[:2], lay.reach) for b in range(bench.BEAMS))
    assert n.mean() == pytest.approx(bench.NNZ_PER_VOXEL, rel=0.03)
    assert n.mean() * len(lay.voxel_index) == pytest.approx(2e8, rel=0.05)


def test_counts_equal_matrix_rows(case):
    _, _, _, inf = case
    lay = bench.Layout(N_VOXELS)
    x, y, z = lay.coords(inf.voxel_index)
    n = sum(lay._counts(*lay.beam_frame(b, x, y, z)[:2], lay.reach) for b in range(bench.BEAMS))
    np.testing.assert_array_equal(n, np.diff(inf.matrix.indptr))


def test_mapped_matrix_is_used_in_place_and_chunking_changes_nothing(case, tmp_path):
    d, meta, patient, inf = case
    A = inf.matrix
    for a in (A.data, A.indices, A.indptr):
        assert not a.flags.writeable  # the read-only mapped files, not a copy
    assert A.dtype == np.float32 and A.indices.dtype == np.int32
    assert meta["matrix_MB"] == pytest.approx((A.data.nbytes + A.indices.nbytes + A.indptr.nbytes) / 2 ** 20)
    bench.build_matrix(N_VOXELS, str(tmp_path))  # one chunk
    for name in ("data.f32", "indices.i32"):
        assert (tmp_path / name).read_bytes() == (pathlib.Path(d) / name).read_bytes()
    assert {s.name for s in patient.structures} == {"PTV", "OAR", "Tissue"}
    body = np.zeros(patient.grid.n_voxels, bool)
    body[inf.voxel_index] = True
    # the structures hold body voxels only (air outside the cylinder has no matrix row)
    for s in patient.structures:
        assert not np.any(s.mask.ravel() & ~body)


def test_case_files_removed_on_failure(tmp_path, monkeypatch):
    def boom(kind, case_dir, params, timeout_s):
        assert os.listdir(case_dir) == []
        open(os.path.join(case_dir, "data.f32"), "wb").close()
        raise RuntimeError("killed")

    monkeypatch.setattr(bench, "_child", boom)
    with pytest.raises(RuntimeError):
        bench.run_case(N_VOXELS, {}, 10.0, str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_bad_size(capsys):
    with pytest.raises(ValueError, match="n_voxels"):
        bench.Layout(10)
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "500"])
    assert "--sizes: expected body voxel counts >= 1000, got 500" in capsys.readouterr().err


def test_failed_solve_row_keeps_the_residuals_reached():
    msg = ("first-order solver: no certified optimum after 40 outer iterations (2988 evaluations): "
           "max hard violation 0.00162 (tolerance 0.01), relative gap 4.34e-03 (tolerance 0.0001), "
           "KKT residual 1.30e-03; try solver='CLARABEL'")
    assert bench._residuals(msg) == {"evals": 2988, "max_violation": 0.00162, "rel_gap": 4.34e-3}
    r = bench._residuals("out of memory")
    assert r["evals"] == 0 and np.isnan(r["max_violation"]) and np.isnan(r["rel_gap"])
