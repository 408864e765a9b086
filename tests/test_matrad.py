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


def _patient_vars(with_axes: bool = True, hu: bool = True):
    cube = np.transpose(_hu_zyx(), (1, 2, 0)).copy()  # [z, y, x] -> (y, x, z)
    ct = {"resolution": {k: float(v) for k, v in RES.items()},
          "cubeDim": np.array([[NY, NX, NZ]], dtype=float)}
    if hu:
        ct["cubeHU"] = _cell([cube], (1, 1))
    else:
        red = np.interp(cube, HU_TO_RED_TABLE[:, 0], HU_TO_RED_TABLE[:, 1])
        ct["cube"] = _cell([red], (1, 1))
    if with_axes:
        ct["x"] = (-40.0 + RES["x"] * np.arange(NX))[None, :]
        ct["y"] = (10.0 + RES["y"] * np.arange(NY))[None, :]
        ct["z"] = (-7.5 + RES["z"] * np.arange(NZ))[None, :]
    rows = []
    for i, (name, kind, voxels) in enumerate(
        [("PTV", "TARGET", TARGET_VOXELS), ("Rectum", "OAR", OAR_VOXELS), ("Empty", "IGNORED", [])]
    ):
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
