"""Input validation shared by the numeric (numpy) side of ``objectives``: radiobiology and RBE.

Every validator takes the value and the name of the field it came from, converts the value to a
float numpy array (or a Python number where it says so) and raises
:class:`~objectives.errors.BiologyError` naming that field, the expected range and, for arrays,
the first offending value and its index. Non-finite values (NaN, inf) are refused everywhere.

``_out`` is the matching output convention: a float when the result is a scalar, else the array.
"""

from __future__ import annotations

import numpy as np

from .errors import BiologyError


def _fmt(value) -> str:
    """Short text of a value for messages: the number, or the shape of an array."""
    arr = np.asarray(value)
    if arr.ndim == 0:
        try:
            return f"{float(arr):g}"
        except (TypeError, ValueError):
            return repr(value)
    return f"array of shape {arr.shape}"


def _first_bad(arr: np.ndarray, bad: np.ndarray) -> str:
    """The first value flagged in ``bad``, with its index when ``arr`` is an array."""
    if arr.ndim == 0:
        return f"{float(arr):g}"
    flat = np.flatnonzero(bad.ravel())[0]
    return f"{arr.ravel()[flat]:g} at index {np.unravel_index(flat, arr.shape)}"


def _unit(unit: str) -> str:
    return f" {unit}" if unit else ""


def numeric_array(value, name: str, expected: str, error=BiologyError) -> np.ndarray:
    """``value`` as a float array (any values, NaN included), else ``error`` naming ``name``:
    booleans, strings and other non-numeric values are refused (an alpha/beta of True was 1 Gy,
    of '3' 3 Gy; a MaxDose limit of True 1 Gy). The one such check of ``objectives``."""
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError):
        raw = None
    if raw is None or raw.dtype.kind not in "iuf":
        raise error(f"{name}: expected {expected}, got {value!r}")
    return raw.astype(float)


def _array(value, name: str) -> np.ndarray:
    """``value`` as a float array (:func:`numeric_array`), BiologyError naming ``name``."""
    return numeric_array(value, name, "a number or an array of numbers")


def _require(arr: np.ndarray, bad, name: str, expected: str) -> np.ndarray:
    """``arr`` if it is finite and nothing is flagged in ``bad``; else an error naming ``name``."""
    flagged = ~np.isfinite(arr) | bad
    if np.any(flagged):
        raise BiologyError(f"{name}: expected {expected}, got {_first_bad(arr, flagged)}")
    return arr


def _positive(value, name: str, unit: str = "Gy") -> np.ndarray:
    """Finite values > 0 (``unit`` only names the unit in the message)."""
    arr = _array(value, name)
    return _require(arr, arr <= 0, name, f"a value > 0{_unit(unit)}")


def _nonneg(value, name: str, unit: str = "Gy") -> np.ndarray:
    """Finite values >= 0."""
    arr = _array(value, name)
    return _require(arr, arr < 0, name, f"a value >= 0{_unit(unit)}")


def _finite(value, name: str) -> np.ndarray:
    """Finite values of any sign."""
    return _require(_array(value, name), False, name, "a finite value")


def _fractions(value, name: str = "fractions") -> np.ndarray:
    """Numbers of fractions: integers >= 1, scalar or array (floats with integral values pass)."""
    arr = _array(value, name)
    return _require(arr, (arr < 1) | (arr != np.round(arr)), name, "an integer >= 1")


def _fraction_count(value, name: str = "fractions") -> int:
    """One number of fractions as an int >= 1: a Python or numpy integer, or an integral float.
    Booleans, strings and arrays are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not float(value).is_integer() or value < 1:
        raise BiologyError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


def _rsi(value, name: str = "rsi") -> np.ndarray:
    """Radiosensitivity indices, each in the open interval (0, 1)."""
    arr = _array(value, name)
    return _require(arr, (arr <= 0) | (arr >= 1), name, "a radiosensitivity index in (0, 1)")


def _scalar_positive(value, name: str, unit: str) -> float:
    """One finite number > 0, as a float."""
    arr = _positive(value, name, unit)
    if arr.ndim != 0:
        raise BiologyError(f"{name}: expected a single number, got {_fmt(value)}")
    return float(arr)


def _voxel_map(value, name: str, unit: str) -> np.ndarray | None:
    """None, or a 3-D [z, y, x] array of finite values > 0."""
    if value is None:
        return None
    arr = _positive(value, name, unit)
    if arr.ndim != 3:
        raise BiologyError(f"{name}: expected a 3-D [z, y, x] array, got shape {arr.shape}")
    return arr


def _voxel_index(voxel_index, size: int) -> np.ndarray:
    """A 1-D integer array of flat indices into a grid of ``size`` voxels."""
    idx = np.asarray(voxel_index)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise BiologyError(f"voxel_index: expected a 1-D integer array, got {idx.dtype} of shape {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        raise BiologyError(f"voxel_index: expected flat indices in [0, {size}), got {idx.min()}..{idx.max()}")
    return idx


def _out(arr):
    """A float for a 0-d result, else the float array."""
    arr = np.asarray(arr, dtype=float)
    return float(arr) if arr.ndim == 0 else arr
