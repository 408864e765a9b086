"""MATLAB .mat files (v4-v7 with scipy, v7.3 = HDF5 with h5py) read into plain Python for
:mod:`optimizer.io.matrad`.

Neutral form: struct -> dict, cell -> object ndarray (MATLAB shape), char -> str,
numeric/logical -> ndarray (MATLAB shape). v7.3 files store every array transposed (HDF5 is
row-major), cell arrays as datasets of object references (targets usually in the ``#refs#``
group), structs as groups, char arrays as uint16 code units, each with a ``MATLAB_class``
attribute, and empty arrays as their dimensions with ``MATLAB_empty`` = 1. Only 1 x 1 structs
are read (enough for matRad's ``ct`` and ``cst{i,5}``).
"""

from __future__ import annotations

import numpy as np

from objectives.errors import BioplanError


class MatradError(BioplanError):
    """A matRad .mat file lacks what bioplan needs, or its contents are inconsistent."""


def load_mat_variables(path: str, names: tuple[str, ...] = ("ct", "cst")) -> dict:
    """The variables ``names`` (those present) of a .mat file of any version, in neutral form."""
    return _load_v73(path, names) if _is_hdf5(path) else _load_v5(path, names)


def _from_v5(obj):
    if isinstance(obj, np.ndarray):
        if obj.dtype.names:  # struct array; 1 x 1 expected
            if obj.size != 1:
                return [_from_v5(o) for o in obj.ravel(order="F")]
            rec = obj.ravel()[0]
            return {n: _from_v5(rec[n]) for n in obj.dtype.names}
        if obj.dtype.kind in "US":
            return "".join(str(s) for s in obj.ravel(order="F"))
        if obj.dtype == object:
            out = np.empty(obj.shape, dtype=object)
            for idx in np.ndindex(obj.shape):
                out[idx] = _from_v5(obj[idx])
            return out
        return obj
    if isinstance(obj, (str, bytes)):
        return obj if isinstance(obj, str) else obj.decode("latin-1")
    return obj


def _load_v5(path: str, names: tuple[str, ...]) -> dict:
    from scipy.io import loadmat

    try:
        raw = loadmat(path, variable_names=list(names), squeeze_me=False, chars_as_strings=True)
    except NotImplementedError as exc:  # scipy's message for v7.3 files
        raise MatradError(f"{path}: MATLAB v7.3 file but h5py could not read it ({exc})") from exc
    except Exception as exc:
        raise MatradError(f"{path}: not a readable MATLAB .mat file ({type(exc).__name__}: {exc})") from exc
    return {k: _from_v5(raw[k]) for k in names if k in raw}


def _attr_str(node, name: str) -> str:
    v = node.attrs.get(name)
    if v is None:
        return ""
    if isinstance(v, np.ndarray):
        v = v.ravel()[0] if v.size else b""
    return v.decode() if isinstance(v, bytes) else str(v)


def _from_h5(node, f, depth: int = 0):
    import h5py

    if depth > 32:
        raise MatradError(f"{f.filename}: nesting deeper than 32 levels at {node.name}")
    if isinstance(node, h5py.Group):
        return {k: _from_h5(v, f, depth + 1) for k, v in node.items() if not k.startswith("#")}
    cls = _attr_str(node, "MATLAB_class")
    empty = "MATLAB_empty" in node.attrs and bool(np.asarray(node.attrs["MATLAB_empty"]).ravel()[0])
    if empty:
        dims = np.asarray(node[()]).ravel()
        shape = tuple(int(d) for d in dims) if dims.size else (0, 0)
        return "" if cls == "char" else np.empty(shape, dtype=object if cls == "cell" else float)
    data = node[()]
    if cls == "cell" or (isinstance(data, np.ndarray) and data.dtype == h5py.ref_dtype):
        refs = np.asarray(data).T  # MATLAB shape
        out = np.empty(refs.shape, dtype=object)
        for idx in np.ndindex(refs.shape):
            out[idx] = _from_h5(f[refs[idx]], f, depth + 1)
        return out
    arr = np.asarray(data).T  # HDF5 holds MATLAB arrays transposed
    if cls == "char":
        arr = np.atleast_2d(arr)
        return "\n".join("".join(chr(int(c)) for c in row) for row in arr)
    if cls == "logical":
        return arr.astype(bool)
    return arr


def _load_v73(path: str, names: tuple[str, ...]) -> dict:
    try:
        import h5py
    except ImportError as exc:
        raise MatradError(f"{path}: MATLAB v7.3 (HDF5) file; install h5py to read it") from exc
    try:
        with h5py.File(path, "r") as f:
            return {k: _from_h5(f[k], f) for k in names if k in f}
    except MatradError:
        raise
    except Exception as exc:
        raise MatradError(f"{path}: cannot read MATLAB v7.3 file ({type(exc).__name__}: {exc})") from exc


def _is_hdf5(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(4096)
    sig = b"\x89HDF\r\n\x1a\n"
    return any(head[o: o + 8] == sig for o in (0, 512, 1024, 2048))
