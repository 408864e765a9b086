"""Validation of plan archives before their contents are trusted (used by ``Plan.load``).

An archive is a zip holding ``plan.json`` and ``arrays.npz``. A re-packed or crafted archive
could declare arrays far larger than the file (a 2 MB file allocating 2 GB) or hold arrays that
do not fit its grid; everything is checked from the JSON and the ``.npy`` headers first, and
only then are arrays decompressed.
"""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np

from objectives.errors import BioplanError

from .errors import PlanError
from .geometry import ROLES, Grid

ARCHIVE_VERSION = 1
_MODALITIES = ("photon", "proton", "minibeam")
_MAX_JSON_BYTES = 64 * 2**20


def _fail(path: str, what: str):
    raise PlanError(f"{path}: {what}")


def _int_at_least(value, minimum: int) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) and value >= minimum


def read_meta(source, name: str | None = None) -> tuple[dict, Grid, bytes]:
    """Open the archive (a path, or a file object with ``name`` for the messages), validate
    ``plan.json``; return it, its grid and the npz bytes."""
    path = os.fspath(source) if name is None else name
    try:
        with zipfile.ZipFile(source) as zf:
            members = {i.filename: i for i in zf.infolist()}
            for name in ("plan.json", "arrays.npz"):
                if name not in members:
                    _fail(path, f"not a bioplan plan archive (no {name})")
            if members["plan.json"].file_size > _MAX_JSON_BYTES:
                _fail(path, f"plan.json declares {members['plan.json'].file_size} bytes; refused")
            meta = json.loads(zf.read("plan.json"))
            npz_info = members["arrays.npz"]
            if npz_info.file_size > 2**40:
                _fail(path, "arrays.npz declares an implausible size; refused")
            npz_bytes = zf.read("arrays.npz") if npz_info.compress_type == zipfile.ZIP_STORED else None
            if npz_bytes is None:
                _fail(path, "arrays.npz must be stored uncompressed in the outer zip (as save writes it)")
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise PlanError(f"{path}: not a bioplan plan archive ({exc})") from None
    if not isinstance(meta, dict):
        _fail(path, "plan.json: expected a JSON object")
    if meta.get("density_table", True) is not True or not isinstance(meta.get("density_table_source", ""),
                                                                     (str, type(None))):
        _fail(path, "plan.json: density_table must be true when present, density_table_source a string")
    if meta.get("archive_version") != ARCHIVE_VERSION:
        _fail(path, f"archive_version {meta.get('archive_version')!r} is not supported")
    required = {"patient": str, "grid": dict, "structures": list, "fractions": int, "modality": str,
                "beams": list, "beamlet_columns": list, "extras": list, "solver": dict}
    for key, kind in required.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            _fail(path, f"plan.json: {key} missing or not a {kind.__name__}")
    if not _int_at_least(meta["fractions"], 1):
        _fail(path, f"plan.json: fractions must be an integer >= 1, got {meta['fractions']!r}")
    if meta["modality"] not in _MODALITIES:
        _fail(path, f"plan.json: modality must be one of {_MODALITIES}, got {meta['modality']!r}")
    g = meta["grid"]
    try:
        shape = g["shape"]
        if not (isinstance(shape, list) and len(shape) == 3 and all(_int_at_least(v, 1) for v in shape)):
            raise PlanError(f"shape must be 3 integers >= 1, got {shape!r}")
        grid = Grid(tuple(shape), tuple(g["spacing_mm"]), tuple(g["origin_mm"]))
    except (KeyError, TypeError, BioplanError) as exc:
        raise PlanError(f"{path}: plan.json grid invalid ({exc})") from None
    for i, s in enumerate(meta["structures"]):
        ok = (isinstance(s, dict) and isinstance(s.get("name"), str) and s.get("role") in ROLES
              and (s.get("color") is None or (isinstance(s["color"], list) and len(s["color"]) == 3)))
        if not ok:
            _fail(path, f"plan.json: structures[{i}] must have a name, a role in {ROLES} and a color or null")
    for key in ("beamlet_columns", "extras"):
        if not all(isinstance(k, str) and k.isidentifier() for k in meta[key]):
            _fail(path, f"plan.json: {key} must be a list of names")
    if "beam" not in meta["beamlet_columns"]:
        _fail(path, "plan.json: beamlet_columns must include 'beam'")
    return meta, grid, npz_bytes


def _header(zf: zipfile.ZipFile, member: str, path: str):
    with zf.open(member) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            _fail(path, f"{member}: unsupported .npy version {version}")
    if dtype.hasobject or dtype.kind not in "biuf":
        _fail(path, f"{member}: dtype {dtype} is not a plain numeric type")
    return tuple(shape), dtype


def read_checked_arrays(path: str, meta: dict, grid: Grid, npz_bytes: bytes, max_mb: float) -> dict:
    """Check every array's header against the grid and the beamlet count, then load them."""
    if not (isinstance(max_mb, (int, float)) and max_mb > 0):
        raise PlanError(f"max_mb: expected a positive number of MB, got {max_mb!r}")
    n_mask = (grid.n_voxels + 7) // 8
    expected = {"dose": grid.shape, "ct_hu": grid.shape, "weights": None}
    expected.update({f"mask_{i}": (n_mask,) for i in range(len(meta["structures"]))})
    expected.update({f"beamlet_{k}": None for k in meta["beamlet_columns"]})
    expected.update({f"extra_{k}": grid.shape for k in meta["extras"]})
    if meta.get("density_table") is True:
        expected["density_table"] = "table"
    try:
        with zipfile.ZipFile(io.BytesIO(npz_bytes)) as zf:
            names = set(zf.namelist())
            headers = {}
            for key in expected:
                if key + ".npy" not in names:
                    _fail(path, f"arrays.npz has no '{key}' array")
                headers[key] = _header(zf, key + ".npy", path)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise PlanError(f"{path}: arrays.npz is damaged ({exc})") from None
    n_beamlets = headers["weights"][0]
    if len(n_beamlets) != 1 or n_beamlets[0] < 1:
        _fail(path, f"weights: expected a 1-D array of beamlet weights, got shape {n_beamlets}")
    for key, (shape, _dtype) in headers.items():
        if expected[key] == "table":  # HU -> relative density: N x 2, N >= 2
            if len(shape) != 2 or shape[1] != 2 or shape[0] < 2 or shape[0] > 10000:
                _fail(path, f"{key}: expected an N x 2 table (HU, relative density), got shape {shape}")
            continue
        want = expected[key] if expected[key] is not None else n_beamlets
        if shape != tuple(want):
            _fail(path, f"{key}: shape {shape} does not match the archive (expected {tuple(want)})")
    total = sum(int(np.prod(s, dtype=np.int64)) * dt.itemsize for s, dt in headers.values())
    if total > max_mb * 2**20:
        _fail(path, f"arrays would take {total / 2**20:.0f} MB in memory, over max_mb={max_mb:g}; "
                    f"pass a larger max_mb if the archive is trusted")
    try:
        with np.load(io.BytesIO(npz_bytes), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in expected}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise PlanError(f"{path}: arrays.npz is damaged ({exc})") from None
    for key in ("dose", "weights", "ct_hu") + (("density_table",) if "density_table" in arrays else ()):
        if not np.all(np.isfinite(arrays[key])):
            _fail(path, f"{key}: contains NaN or infinite values")
    for key in ("dose", "weights"):
        if np.any(arrays[key] < 0):
            _fail(path, f"{key}: contains negative values")
    return arrays
