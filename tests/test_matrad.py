"""matRad .mat import (v5 via scipy, v7.3 via h5py): voxel counts, index order, positions.

The test writers below produce matRad's layout: ``ct`` (struct with cubeHU = {cube(y, x, z)},
resolution, cubeDim = [ny nx nz], optional x/y/z) and ``cst`` (N x 6 cell, voxel indices 1-based
column-major linear indices into the cube). The v7.3 writer mimics MATLAB's HDF5 layout: a
512-byte user block holding the MAT header, arrays stored transposed with a MATLAB_class
attribute, char arrays as uint16, cells as datasets of object references into ``#refs#``,
structs as groups.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.io

from optimizer.geometry import HU_TO_RED_TABLE
from optimizer.matrad import MatradError, load_matrad

h5py = pytest.importorskip("h5py")

NY, NX, NZ = 12, 10, 6
RES = {"x": 3.0, "y": 2.0, "z": 5.0}


def _hu_zyx() -> np.ndarray:
    """A CT [z, y, x] whose value encodes its own index: HU = 1000*z + 10*y + x - 500."""
    z, y, x = np.meshgrid(np.arange(NZ), np.arange(NY), np.arange(NX), indexing="ij")
    return (1000.0 * z + 10.0 * y + x - 500.0)


def _matlab_index(iy: int, ix: int, iz: int) -> int:
    """1-based MATLAB linear index of 0-based (y, x, z) in a (NY, NX, NZ) column-major cube."""
    return 1 + iy + NY * (ix + NX * iz)


# An asymmetric "L" target in slice z=2 and a single-voxel OAR, as 0-based (y, x, z) voxels.
TARGET_VOXELS = [(1, 1, 2), (2, 1, 2), (3, 1, 2), (3, 2, 2), (3, 3, 2), (3, 4, 2), (7, 8, 4)]
OAR_VOXELS = [(1, 6, 3)]  # MATLAB (2, 7, 4) -> linear index 2 + 12*6 + 120*3 = 434


def _cell(items, shape=None):
    arr = np.empty(len(items) if shape is None else shape, dtype=object)
    flat = arr.reshape(-1, order="F") if shape is not None else arr
    for i, v in enumerate(items):
        flat[i] = v
    return arr if shape is None else flat.reshape(shape, order="F")


# matRad's default HU lookup table (dicom/hlutLibrary/matRad_default.hlut): HU, relative electron
# density; it differs from bioplan's HU_TO_RED_TABLE (e.g. 1.2 at 200 HU vs 1.13)
MATRAD_DEFAULT_HLUT = np.array([[-1024.0, 0.00324], [200.0, 1.2], [449.0, 1.20001],
                                [2000.0, 2.49066], [2048.0, 2.5306], [3071.0, 2.53061]])
# BODY voxels: the whole slab y 0..NY-1, x 0..NX-2, every slice (as 0-based (y, x, z))
BODY_VOXELS = [(iy, ix, iz) for iz in range(NZ) for ix in range(NX - 1) for iy in range(NY)]


def _patient_vars(with_axes: bool = True, hu: bool = True, hlut=None, body_name=None, density=False):
    cube = np.transpose(_hu_zyx(), (1, 2, 0)).copy()  # [z, y, x] -> (y, x, z)
    ct = {"resolution": {k: float(v) for k, v in RES.items()},
          "cubeDim": np.array([[NY, NX, NZ]], dtype=float)}
    if hu:
        ct["cubeHU"] = _cell([cube], (1, 1))
    table = HU_TO_RED_TABLE if hlut is None else hlut
    if not hu or density:
        red = np.interp(cube, table[:, 0], table[:, 1])
        ct["cube"] = _cell([red], (1, 1))
    if hlut is not None:
        ct["hlut"] = np.asarray(hlut, dtype=float)
    if with_axes:
        ct["x"] = (-40.0 + RES["x"] * np.arange(NX))[None, :]
        ct["y"] = (10.0 + RES["y"] * np.arange(NY))[None, :]
        ct["z"] = (-7.5 + RES["z"] * np.arange(NZ))[None, :]
    rows = []
    table_rows = [("PTV", "TARGET", TARGET_VOXELS), ("Rectum", "OAR", OAR_VOXELS), ("Empty", "IGNORED", [])]
    if body_name is not None:
        table_rows.append((body_name, "OAR", BODY_VOXELS))
    for i, (name, kind, voxels) in enumerate(table_rows):
        idx = np.array([[_matlab_index(*v)] for v in voxels], dtype=float).reshape(-1, 1)
        props = {"Priority": float(i + 1), "Visible": 1.0, "visibleColor": np.array([[1.0, 0.5, 0.0]])}
        rows.append([float(i), name, kind, _cell([idx], (1, 1)), props, _cell([], (0, 0))])
    cst = np.empty((len(rows), 6), dtype=object)
    for i, r in enumerate(rows):
        for j, v in enumerate(r):
            cst[i, j] = v
    return ct, cst


def write_matrad_v5(path, ct, cst):
    scipy.io.savemat(str(path), {"ct": ct, "cst": cst}, format="5")


def _h5_write(parent, name, value, f, counter):
    """Write one MATLAB value under parent[name] in MATLAB v7.3 layout."""
    if isinstance(value, dict):
        g = parent.create_group(name)
        g.attrs["MATLAB_class"] = np.bytes_("struct")
        for k, v in value.items():
            _h5_write(g, k, v, f, counter)
        return
    if isinstance(value, str):
        codes = np.array([[ord(c) for c in value]], dtype=np.uint16)  # MATLAB 1 x n
        if codes.size == 0:
            ds = parent.create_dataset(name, data=np.array([1, 0], dtype=np.uint64))
            ds.attrs["MATLAB_empty"] = np.uint8(1)
        else:
            ds = parent.create_dataset(name, data=codes.T)
        ds.attrs["MATLAB_class"] = np.bytes_("char")
        ds.attrs["MATLAB_int_decode"] = np.int32(2)
        return
    arr = np.asarray(value)
    if arr.dtype == object:
        refs = np.empty(arr.shape, dtype=h5py.ref_dtype)
        refs_group = f.require_group("#refs#")
        for idx in np.ndindex(arr.shape):
            counter[0] += 1
            key = f"r{counter[0]}"
            _h5_write(refs_group, key, arr[idx], f, counter)
            refs[idx] = refs_group[key].ref
        if arr.size == 0:
            ds = parent.create_dataset(name, data=np.array(arr.shape[::-1], dtype=np.uint64))
            ds.attrs["MATLAB_empty"] = np.uint8(1)
        else:
            ds = parent.create_dataset(name, data=refs.T, dtype=h5py.ref_dtype)
        ds.attrs["MATLAB_class"] = np.bytes_("cell")
        return
    if arr.ndim < 2:
        arr = arr.reshape(1, -1) if arr.ndim == 1 else arr.reshape(1, 1)
    if arr.size == 0:
        ds = parent.create_dataset(name, data=np.array(arr.shape[::-1], dtype=np.uint64))
        ds.attrs["MATLAB_empty"] = np.uint8(1)
    else:
        ds = parent.create_dataset(name, data=np.ascontiguousarray(arr.astype(np.float64).T))
    ds.attrs["MATLAB_class"] = np.bytes_("double")


def write_matrad_v73(path, ct, cst):
    with h5py.File(str(path), "w", userblock_size=512) as f:
        counter = [0]
        _h5_write(f, "ct", ct, f, counter)
        _h5_write(f, "cst", cst, f, counter)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: bioplan tests HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM")


WRITERS = {"v5": write_matrad_v5, "v73": write_matrad_v73}


@pytest.fixture(params=sorted(WRITERS))
def matfile(request, tmp_path):
    ct, cst = _patient_vars()
    path = tmp_path / f"phantom_{request.param}.mat"
    WRITERS[request.param](path, ct, cst)
    return path


def _expected_mask(voxels):
    m = np.zeros((NZ, NY, NX), dtype=bool)
    for iy, ix, iz in voxels:
        m[iz, iy, ix] = True
    return m


def test_v73_file_is_hdf5_with_matlab_layout(tmp_path):
    ct, cst = _patient_vars()
    path = tmp_path / "p.mat"
    write_matrad_v73(path, ct, cst)
    with h5py.File(path, "r") as f:
        assert f["ct"]["cubeHU"].attrs["MATLAB_class"] == b"cell"
        cube = f[f["ct"]["cubeHU"][0, 0]]
        assert cube.shape == (NZ, NX, NY)  # MATLAB (y, x, z) stored transposed
    with pytest.raises(NotImplementedError):
        scipy.io.loadmat(str(path))  # really a v7.3 file, not readable by scipy


def test_ct_voxel_order_and_grid(matfile):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = load_matrad(matfile)
    assert any("Empty" in str(w.message) for w in caught)
    assert p.grid.shape == (NZ, NY, NX)
    assert p.grid.spacing_mm == (RES["z"], RES["y"], RES["x"])
    assert p.grid.origin_mm == (-7.5, 10.0, -40.0)
    np.testing.assert_array_equal(p.ct_hu, _hu_zyx())
    assert p.ct_hu[3, 7, 2] == 1000 * 3 + 70 + 2 - 500


def test_structures_index_order_and_positions(matfile):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = load_matrad(matfile)
    assert p.structure_names == ["PTV", "Rectum"]
    ptv, oar = p.structure("PTV"), p.structure("Rectum")
    assert ptv.role == "target" and oar.role == "oar"
    assert ptv.n_voxels == len(TARGET_VOXELS) and oar.n_voxels == 1
    np.testing.assert_array_equal(ptv.mask, _expected_mask(TARGET_VOXELS))
    # hand-computed: MATLAB linear index 434 is (row 2, column 7, slice 4) -> [z=3, y=1, x=6]
    assert _matlab_index(1, 6, 3) == 434
    assert oar.mask[3, 1, 6]
    pos = p.grid.positions_mm(p.flat_indices("Rectum"))[0]
    np.testing.assert_allclose(pos, [-40.0 + 6 * RES["x"], 10.0 + 1 * RES["y"], -7.5 + 3 * RES["z"]])
    assert ptv.color == (1.0, 0.5, 0.0)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_default_world_axes_follow_matrad(tmp_path, fmt):
    ct, cst = _patient_vars(with_axes=False)
    path = tmp_path / "noaxes.mat"
    WRITERS[fmt](path, ct, cst)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = load_matrad(path)
    # matRad_getWorldAxes: firstVox = -(cubeDim/2) .* [res.x res.y res.z], cubeDim = [ny nx nz]
    x0, y0, z0 = -NY / 2 * RES["x"], -NX / 2 * RES["y"], -NZ / 2 * RES["z"]
    assert p.grid.origin_mm == (z0, y0, x0)


@pytest.mark.filterwarnings("ignore:.*has no voxels")
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_density_cube_is_converted_to_hu(tmp_path, fmt):
    ct, cst = _patient_vars(hu=False)
    path = tmp_path / "density.mat"
    WRITERS[fmt](path, ct, cst)
    with pytest.warns(UserWarning, match="cubeHU"):
        p = load_matrad(path)
    hu = np.clip(_hu_zyx(), HU_TO_RED_TABLE[0, 0], HU_TO_RED_TABLE[-1, 0])
    np.testing.assert_allclose(p.ct_hu, hu, atol=0.05)


def test_bad_files(tmp_path):
    ct, cst = _patient_vars()
    missing = tmp_path / "nocst.mat"
    scipy.io.savemat(str(missing), {"ct": ct})
    with pytest.raises(MatradError, match="cst"):
        load_matrad(missing)
    bad = cst.copy()
    bad[1, 3] = _cell([np.array([[NX * NY * NZ + 1.0]])], (1, 1))
    out_of_range = tmp_path / "range.mat"
    write_matrad_v5(out_of_range, ct, bad)
    with pytest.raises(MatradError, match="Rectum"):
        load_matrad(out_of_range)
    text = tmp_path / "notes.mat"
    text.write_text("not a mat file\n")
    with pytest.raises(MatradError, match="notes.mat"):
        load_matrad(text)
    with pytest.raises(FileNotFoundError):
        load_matrad(tmp_path / "absent.mat")


# -- body contour: a matRad 'OAR' named like the body is a helper -------------------------------


@pytest.mark.filterwarnings("ignore:.*has no voxels")
@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("body", ["BODY", "External", " skin ", "OUTLINE", "Patient"])
def test_body_contour_of_type_oar_becomes_helper(tmp_path, fmt, body):
    """Defect: the body contour came in as an OAR, so it was never sampled nor a helper."""
    ct, cst = _patient_vars(body_name=body)
    path = tmp_path / "body.mat"
    WRITERS[fmt](path, ct, cst)
    with pytest.warns(UserWarning, match="body contour"):
        p = load_matrad(path)
    assert p.structure(body.strip()).role == "other"
    assert p.structure(body.strip()).n_voxels == len(BODY_VOXELS)
    assert p.structure("Rectum").role == "oar" and p.structure("PTV").role == "target"


@pytest.mark.filterwarnings("ignore:.*has no voxels")
def test_body_names_override(tmp_path):
    ct, cst = _patient_vars(body_name="BODY")
    path = tmp_path / "body.mat"
    write_matrad_v5(path, ct, cst)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", ".*has no voxels")
        p = load_matrad(path, body_names=())  # no body list: every OAR stays an OAR, no warning
    assert p.structure("BODY").role == "oar"
    with pytest.warns(UserWarning, match="Rectum"):
        p = load_matrad(path, body_names=["rectum"])
    assert p.structure("Rectum").role == "other" and p.structure("BODY").role == "oar"


# -- the file's HU -> density table ------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*has no voxels")
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_file_hlut_is_used_and_recorded(tmp_path, fmt):
    """Defect: ct.hlut was ignored; the patient carried no record of the HU -> density table."""
    ct, cst = _patient_vars(hlut=MATRAD_DEFAULT_HLUT, density=True)
    path = tmp_path / "hlut.mat"
    WRITERS[fmt](path, ct, cst)
    p = load_matrad(path)
    np.testing.assert_array_equal(p.density_table, MATRAD_DEFAULT_HLUT)
    assert "ct.hlut" in p.density_table_source
    np.testing.assert_array_equal(p.ct_hu, _hu_zyx())  # cubeHU is still the CT
    # the table reproduces the file's own density cube (matRad_calcWaterEqD's interpolation)
    red = p.relative_electron_density(p.density_table)
    np.testing.assert_allclose(red, p.density_cube, rtol=1e-5, atol=1e-6)
    assert not np.allclose(red, p.relative_electron_density(HU_TO_RED_TABLE), atol=0.01)


@pytest.mark.filterwarnings("ignore:.*has no voxels")
def test_default_table_is_recorded_when_file_has_none(tmp_path):
    ct, cst = _patient_vars()
    path = tmp_path / "nohlut.mat"
    write_matrad_v5(path, ct, cst)
    p = load_matrad(path)
    np.testing.assert_array_equal(p.density_table, HU_TO_RED_TABLE)
    assert "HU_TO_RED_TABLE" in p.density_table_source and "no ct.hlut" in p.density_table_source
    assert p.density_cube is None


@pytest.mark.filterwarnings("ignore:.*has no voxels")
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_density_only_cube_inverted_with_file_hlut(tmp_path, fmt):
    """Defect: a density-only ct.cube was inverted with bioplan's table even when the file
    carried its own, giving wrong HU; now the file's table is inverted and the cube is kept."""
    ct, cst = _patient_vars(hu=False, hlut=MATRAD_DEFAULT_HLUT)
    path = tmp_path / "cube_hlut.mat"
    WRITERS[fmt](path, ct, cst)
    with pytest.warns(UserWarning, match="cubeHU"):
        p = load_matrad(path)
    assert "ct.cube" in p.density_table_source and "ct.hlut" in p.density_table_source
    np.testing.assert_array_equal(p.density_table, MATRAD_DEFAULT_HLUT)
    hu = np.clip(_hu_zyx(), MATRAD_DEFAULT_HLUT[0, 0], MATRAD_DEFAULT_HLUT[-1, 0])
    np.testing.assert_allclose(p.ct_hu, hu, atol=0.5)
    cube = np.transpose(np.asarray(ct["cube"][0, 0]), (2, 0, 1))
    np.testing.assert_allclose(p.density_cube, cube, rtol=1e-6)
    np.testing.assert_allclose(p.relative_electron_density(p.density_table), cube, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:.*has no voxels")
def test_density_only_cube_without_hlut_says_default_table(tmp_path):
    ct, cst = _patient_vars(hu=False)
    path = tmp_path / "cube.mat"
    write_matrad_v5(path, ct, cst)
    with pytest.warns(UserWarning, match="HU_TO_RED_TABLE"):
        p = load_matrad(path)
    assert "ct.cube" in p.density_table_source and "HU_TO_RED_TABLE" in p.density_table_source
    np.testing.assert_array_equal(p.density_table, HU_TO_RED_TABLE)
    assert p.density_cube is not None


@pytest.mark.filterwarnings("ignore:.*has no voxels")
def test_bad_hlut_falls_back_with_warning(tmp_path):
    bad = np.array([[0.0, 1.0], [-100.0, 0.9], [100.0, 1.1]])  # HU not increasing
    ct, cst = _patient_vars()
    ct["hlut"] = bad
    path = tmp_path / "badhlut.mat"
    write_matrad_v5(path, ct, cst)
    with pytest.warns(UserWarning, match="ct.hlut"):
        p = load_matrad(path)
    np.testing.assert_array_equal(p.density_table, HU_TO_RED_TABLE)
    assert "ct.hlut" in p.density_table_source and "HU_TO_RED_TABLE" in p.density_table_source


# -- influence matrices computed elsewhere: matRad dij rows and the grid check -----------------


def _box_patient():
    """The test grid with a water box (y 4..10, x 5..8, every slice) in air."""
    from optimizer import Grid, Patient, Structure

    grid = Grid((NZ, NY, NX), (RES["z"], RES["y"], RES["x"]))
    body = np.zeros(grid.shape, bool)
    body[:, 4:11, 5:9] = True
    ct = np.where(body, 0.0, -1000.0)
    return Patient(grid, ct, [Structure("Body", body, "other")]), body


def _matrad_dij(body):
    """A dij in matRad's layout: rows are all voxels in column-major (y, x, z) order; beamlet j
    gives (1 + j) Gy to every body voxel of slice z = j."""
    dij = np.zeros((NY * NX * NZ, NZ))
    for iz, iy, ix in zip(*np.nonzero(body)):
        dij[_matlab_index(iy, ix, iz) - 1, iz] = 1.0 + iz
    return dij


def test_from_matrad_dij_converts_row_order():
    """Defect: matRad's column-major (y, x, z) rows had to be converted by hand (and were not)."""
    import scipy.sparse as sp

    from optimizer import BeamError, InfluenceMatrix

    patient, body = _box_patient()
    dij = _matrad_dij(body)
    inf = InfluenceMatrix.from_matrad_dij(sp.csc_matrix(dij), patient.grid)
    dose = inf.dose_per_fraction(np.ones(NZ))
    expected = np.where(body, 1.0 + np.arange(NZ)[:, None, None], 0.0)
    np.testing.assert_allclose(dose, expected)
    inf.check_patient(patient)  # plausible
    # the same rows given as explicit 1-based matRad indices (only the non-empty ones, shuffled)
    rows = np.flatnonzero(dij.any(axis=1))
    perm = np.random.default_rng(1).permutation(len(rows))
    inf2 = InfluenceMatrix.from_matrad_dij(dij[rows[perm]], patient.grid, voxel_index=rows[perm] + 1,
                                           beamlets={"beam": np.arange(NZ) % 2})
    np.testing.assert_allclose(inf2.dose_per_fraction(np.ones(NZ)), expected)
    assert list(inf2.beamlets["beam"]) == [0, 1, 0, 1, 0, 1]
    with pytest.raises(BeamError, match="1-based"):  # 0-based indices by mistake
        InfluenceMatrix.from_matrad_dij(dij, patient.grid, voxel_index=np.arange(len(dij)))
    with pytest.raises(BeamError, match="rows"):
        InfluenceMatrix.from_matrad_dij(dij[:-1], patient.grid)
    with pytest.raises(BeamError, match="repeats"):
        InfluenceMatrix.from_matrad_dij(dij[rows[:2]], patient.grid, voxel_index=[rows[0] + 1] * 2)


def test_check_patient_rejects_other_grid_and_misordered_rows():
    """Defect: an influence matrix on another grid, or with matRad (y, x, z) indices used as
    C-order [z, y, x] ones, was accepted and planned on silently."""
    import scipy.sparse as sp

    from optimizer import BeamError, Grid, InfluenceMatrix

    patient, body = _box_patient()
    dij = _matrad_dij(body)
    rows = np.flatnonzero(dij.any(axis=1))
    # the mistake: matRad's 0-based linear index taken as bioplan's C-order flat index
    wrong = InfluenceMatrix(sp.csr_matrix(dij[rows]), rows, patient.grid, {"beam": np.zeros(NZ)})
    assert wrong.air_fraction(patient) > 0.5
    with pytest.raises(BeamError, match=r"(?s)HU < -900.*order.*from_matrad_dij"):
        wrong.check_patient(patient)
    other = Grid((NZ, NY, NX), (RES["z"], RES["y"], RES["x"]), (0.0, 0.0, 1.0))
    shifted = InfluenceMatrix(sp.csr_matrix(dij[rows]), rows, other, {"beam": np.zeros(NZ)})
    both = r"(?s)grid.*origin_mm=\(0.0, 0.0, 1.0\).*origin_mm=\(0.0, 0.0, 0.0\)"
    with pytest.raises(BeamError, match=both):
        shifted.check_patient(patient)


def test_check_patient_catches_transposed_rows_on_square_grid():
    """On a square (ny == nx) grid matRad's order read as C order is an in-plane transpose that
    keeps most of the dose inside the body: caught by comparing with the matRad reading."""
    from optimizer import BeamError, Grid, InfluenceMatrix, Patient, PhotonBeams, Structure

    n, nz = 40, 4
    grid = Grid((nz, n, n), (5.0, 5.0, 5.0), (-7.5, -97.5, -97.5))
    z, y, x = np.meshgrid(*grid.axes_mm(), indexing="ij")
    body = (x / 90) ** 2 + (y / 55) ** 2 <= 1
    lung = ((np.abs(x) - 45) / 30) ** 2 + (y / 35) ** 2 <= 1
    ptv = ((x - 10) ** 2 + (y + 15) ** 2 <= 15**2) & body
    patient = Patient(grid, np.where(body, np.where(lung, -750.0, 0.0), -1000.0),
                      [Structure("PTV", ptv, "target"), Structure("Body", body)])
    inf = PhotonBeams(range(0, 360, 72), beamlet_mm=10).influence(patient, target="PTV")
    inf.check_patient(patient)  # the real matrix passes
    iz, iy, ix = np.unravel_index(inf.voxel_index, grid.shape)
    as_matrad = iy + n * (ix + n * iz)  # 0-based matRad index, stored unconverted
    order = np.argsort(as_matrad)
    wrong = InfluenceMatrix(inf.matrix[order], as_matrad[order], grid, inf.beamlets, inf.beams)
    assert 0.05 < wrong.air_fraction(patient) < 0.5
    with pytest.raises(BeamError, match="from_matrad_dij"):
        wrong.check_patient(patient)
    # from_matrad_dij on the 1-based matRad indices gives back the real matrix
    back = InfluenceMatrix.from_matrad_dij(inf.matrix[order], grid, voxel_index=as_matrad[order] + 1)
    np.testing.assert_array_equal(back.voxel_index, inf.voxel_index)
    assert (back.matrix != inf.matrix).nnz == 0
