"""Radiobiology on numpy: linear-quadratic (LQ) parameters, BED / EQD2 and their inverses,
repopulation, incomplete repair, GARD / RSI, Poisson TCP, LKB NTCP and a hypoxia model.

Conventions (see DESIGN.md): doses are the **total physical dose of the course** in Gy, delivered
in ``fractions`` equal fractions (always an explicit, required argument: there is no default number
of fractions); alpha in Gy^-1, beta in Gy^-2, alpha/beta in Gy; times in the unit named by the
argument. Functions are vectorized (numpy broadcasting) and return a float when every input is a
scalar. Invalid input raises :class:`~objectives.errors.BiologyError` naming the field. A course
dose that looks like a dose per fraction (largest dose per fraction > 0 but below
:data:`PER_FRACTION_WARNING_GY`) raises a :class:`PerFractionDoseWarning` (see
:func:`check_course_dose`).

Sources of the model formulas and constants are given next to each; values marked (verify)
are typical literature values that a study should confirm for its own site and endpoint.
"""

from __future__ import annotations

import contextvars
import math
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from .errors import BiologyError

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

#: GARD model: beta fixed at 0.05 Gy^-2 for every patient (Scott et al., Lancet Oncol
#: 2017;18:202-211; alpha is derived per patient from RSI ~ SF2).
GARD_BETA_GY2 = 0.05

#: Typical alpha/beta values in Gy (REFERENCES.md; van Leeuwen et al., Radiat Oncol 2018;13:96).
#: Typical values only (verify for the site and endpoint).
TYPICAL_ALPHA_BETA_GY: dict[str, float] = {
    "prostate": 1.5,           # van Leeuwen 2018 (verify)
    "breast": 4.0,             # range 3.5-4.6, van Leeuwen 2018 (verify)
    "head and neck scc": 10.0,  # van Leeuwen 2018 (verify)
    "late normal tissue": 3.0,  # conventional late-responding tissue value (verify)
    "spinal cord": 2.0,        # van Leeuwen 2018 (verify)
    "rectum": 3.0,             # van Leeuwen 2018 (verify)
}

#: Repopulation of head-and-neck squamous cell carcinoma: kick-off time Tk about 21-28 days and
#: potential doubling time Tpot about 3 days (REFERENCES.md; typical values, verify; e.g.
#: Withers et al., Acta Oncol 1988;27:131 for the onset of accelerated repopulation).
HN_KICKOFF_DAYS = 21.0
HN_TPOT_DAYS = 3.0

#: Oxygen effect (Alper & Howard-Flanders, Nature 1956;178:978; parameters as used by
#: Wouters & Brown, Radiat Res 1997;147:541-550 and Titz & Jeraj, Phys Med Biol 2008;53:4471):
#: maximum oxygen enhancement ratio m ~ 3 and half-effect oxygen tension K ~ 3 mmHg (verify).
OER_MAX = 3.0
OER_K_MMHG = 3.0

# Below this x the Lea-Catcheside factor is evaluated by its Taylor series (see g_factor).
_G_SERIES_X = 0.5

#: Plausibility limit of :func:`check_course_dose`, Gy per fraction: a course whose largest dose
#: per fraction is above 0 but below this looks like a per-fraction dose passed as the course dose
#: (e.g. 2 Gy with 30 fractions). Not a clinical limit; low-dose courses can silence the warning.
PER_FRACTION_WARNING_GY = 0.5


# --------------------------------------------------------------------------------------------
# Plausibility of course doses
# --------------------------------------------------------------------------------------------

class PerFractionDoseWarning(UserWarning):
    """A total course dose looks like a dose per fraction (see :func:`check_course_dose`).

    Silence it for a genuine low-dose course with
    ``warnings.filterwarnings("ignore", category=PerFractionDoseWarning)``.
    """


# True while the caller has already checked the course dose (optimizer.bio_evaluate checks the
# whole plan dose once, so that a low-dose organ far from a hot target does not warn).
_COURSE_DOSE_CHECKED = contextvars.ContextVar("bioplan_course_dose_checked", default=False)

_LIBRARY_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), package) + os.sep
    for package in ("objectives", "optimizer"))


@contextmanager
def _course_dose_checked():
    """Within this context :func:`check_course_dose` is a no-op (the caller checked already)."""
    token = _COURSE_DOSE_CHECKED.set(True)
    try:
        yield
    finally:
        _COURSE_DOSE_CHECKED.reset(token)


def check_course_dose(total_dose_Gy, fractions, name: str = "total_dose_Gy") -> None:
    """Warn with :class:`PerFractionDoseWarning` when a total course dose looks like a dose per
    fraction: 0 < max(D / n) < :data:`PER_FRACTION_WARNING_GY` (0.5 Gy), i.e. for a scalar n,
    0 < max total dose < n x 0.5 Gy. All-zero doses (and zero voxels of a dose map) never warn;
    only the largest dose counts, so a map with a few cold voxels does not warn either.

    The shared check of every public function that takes a total course dose (BED, EQD2, GARD,
    TCP, RBE-weighted dose, ...). The warning points at the first caller outside bioplan.

    Parameters
    ----------
    total_dose_Gy : total physical dose(s) of the course, Gy (already validated >= 0)
    fractions : number of fractions (already validated integer >= 1), scalar or broadcastable
    name : the argument named in the message
    """
    if _COURSE_DOSE_CHECKED.get():
        return
    D = np.asarray(total_dose_Gy, dtype=float)
    n = np.asarray(fractions, dtype=float)
    if D.size == 0 or n.size == 0:
        return
    try:
        with np.errstate(all="ignore"):
            per_fraction = D / n
    except ValueError:  # shapes that do not broadcast: the calling function reports them
        return
    largest = float(np.max(per_fraction))
    if not 0.0 < largest < PER_FRACTION_WARNING_GY:
        return
    n_text = f"{int(n.ravel()[0])}" if n.size == 1 else "the given"
    message = (
        f"{name}: the largest dose is {float(np.max(D)):g} Gy in {n_text} fractions, only "
        f"{largest:.3g} Gy per fraction (< {PER_FRACTION_WARNING_GY:g} Gy); expected the total "
        f"physical dose of the course (per-fraction dose x fractions). Was a per-fraction dose passed? "
        f"For a genuine low-dose course silence this with warnings.filterwarnings('ignore', "
        f"category=PerFractionDoseWarning).")
    # point at the first frame outside the library (objectives/, optimizer/)
    frame, level = sys._getframe(0), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, PerFractionDoseWarning, stacklevel=level)


# --------------------------------------------------------------------------------------------
# Validation helpers (private)
# --------------------------------------------------------------------------------------------

def _fmt(value) -> str:
    arr = np.asarray(value)
    if arr.ndim == 0:
        try:
            return f"{float(arr):g}"
        except (TypeError, ValueError):
            return repr(value)
    return f"array of shape {arr.shape}"


def _array(value, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise BiologyError(f"{name}: expected a number or an array of numbers, got {value!r}") from None
    return arr


def _first_bad(arr: np.ndarray, bad: np.ndarray) -> str:
    if arr.ndim == 0:
        return f"{float(arr):g}"
    flat = np.flatnonzero(bad.ravel())[0]
    return f"{arr.ravel()[flat]:g} at index {np.unravel_index(flat, arr.shape)}"


def _unit(unit: str) -> str:
    return f" {unit}" if unit else ""


def _positive(value, name: str, unit: str = "Gy") -> np.ndarray:
    arr = _array(value, name)
    bad = ~np.isfinite(arr) | (arr <= 0)
    if np.any(bad):
        raise BiologyError(f"{name}: expected a value > 0{_unit(unit)}, got {_first_bad(arr, bad)}")
    return arr


def _nonneg(value, name: str, unit: str = "Gy") -> np.ndarray:
    arr = _array(value, name)
    bad = ~np.isfinite(arr) | (arr < 0)
    if np.any(bad):
        raise BiologyError(f"{name}: expected a value >= 0{_unit(unit)}, got {_first_bad(arr, bad)}")
    return arr


def _finite(value, name: str) -> np.ndarray:
    arr = _array(value, name)
    bad = ~np.isfinite(arr)
    if np.any(bad):
        raise BiologyError(f"{name}: expected a finite value, got {_first_bad(arr, bad)}")
    return arr


def _fractions(value, name: str = "fractions") -> np.ndarray:
    arr = _array(value, name)
    bad = ~np.isfinite(arr) | (arr < 1) | (arr != np.round(arr))
    if np.any(bad):
        raise BiologyError(f"{name}: expected an integer >= 1, got {_first_bad(arr, bad)}")
    return arr


def _rsi(value, name: str = "rsi") -> np.ndarray:
    arr = _array(value, name)
    bad = ~np.isfinite(arr) | (arr <= 0) | (arr >= 1)
    if np.any(bad):
        raise BiologyError(f"{name}: expected a radiosensitivity index in (0, 1), got {_first_bad(arr, bad)}")
    return arr


def _out(arr):
    arr = np.asarray(arr, dtype=float)
    return float(arr) if arr.ndim == 0 else arr


def _normalize(name: str) -> str:
    # Same rule as the structure lookup of optimizer.geometry: ignore case and all whitespace.
    return "".join(str(name).split()).lower()


# --------------------------------------------------------------------------------------------
# LQ parameters
# --------------------------------------------------------------------------------------------

class _StructureTable(MutableMapping):
    """A dict keyed by structure name, case- and whitespace-insensitive, validating values."""

    def __init__(self, field: str, unit: str, values: Mapping[str, float] | None):
        self._field, self._unit = field, unit
        self._data: dict[str, tuple[str, float]] = {}
        if values is not None:
            if not isinstance(values, Mapping):
                raise BiologyError(f"{field}: expected a mapping of structure name to value, got {values!r}")
            for key, value in values.items():
                self[key] = value

    def __setitem__(self, key: str, value) -> None:
        if not isinstance(key, str) or not key.strip():
            raise BiologyError(f"{self._field}: expected structure names as keys, got {key!r}")
        v = _positive(value, f"{self._field}[{key!r}]", self._unit)
        if v.ndim != 0:
            raise BiologyError(f"{self._field}[{key!r}]: expected a single number, got {_fmt(value)}")
        self._data[_normalize(key)] = (key, float(v))

    def __getitem__(self, key: str) -> float:
        return self._data[_normalize(key)][1]

    def __delitem__(self, key: str) -> None:
        del self._data[_normalize(key)]

    def __contains__(self, key) -> bool:
        return isinstance(key, str) and _normalize(key) in self._data

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._data.values())

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr({name: value for name, value in self._data.values()})


class LQ:
    """Linear-quadratic parameters of a patient: alpha/beta (Gy) per structure, optionally alpha
    (Gy^-1) per structure, and optionally per-voxel maps on the planning grid.

    Parameters
    ----------
    alpha_beta : mapping structure name -> alpha/beta in Gy (> 0). Names are matched ignoring
        case and whitespace. The table is live: ``lq.alpha_beta["PTV"] = 3.0`` is validated and
        picked up by terms at their next ``refresh``.
    default : alpha/beta in Gy for structures not in the table; None (default) makes an unknown
        structure an error.
    alpha : mapping structure name -> alpha in Gy^-1 (> 0), needed for TCP, GARD-like and
        repopulation calculations only.
    alpha_default : alpha in Gy^-1 for structures not in ``alpha``; None: unknown is an error.
    alpha_beta_map : 3-D array [z, y, x] of alpha/beta in Gy on the planning grid.
    alpha_map : 3-D array [z, y, x] of alpha (Gy^-1).
    beta_map : 3-D array [z, y, x] of beta (Gy^-2); only together with ``alpha_map`` (and then
        without ``alpha_beta_map``): the alpha/beta map is then alpha_map / beta_map.
    grid_shape : optional (nz, ny, nx); if given, the maps are checked against it now.

    Voxel maps take precedence over per-structure values. Every value must be finite and > 0.

    Every voxel has **one** source of alpha/beta, used alike for BED / EQD2, TCP and GARD
    (beta = alpha / (alpha/beta) always holds):

    ========================================  ==================  ===================
    maps given                                alpha/beta          alpha
    ========================================  ==================  ===================
    none                                      table / default     table / default
    ``alpha_beta_map``                        map                 table / default
    ``alpha_map``                             table / default     map
    ``alpha_map`` + ``beta_map``              alpha_map/beta_map  map
    ``alpha_map`` + ``alpha_beta_map``        map                 map
    ========================================  ==================  ===================

    A ``beta_map`` without ``alpha_map``, or with ``alpha_beta_map``, is refused with a
    :class:`~objectives.errors.BiologyError` (at construction, and at the next lookup when the
    maps are changed later): it would give BED one alpha/beta and TCP/GARD another.
    """

    def __init__(self, alpha_beta: Mapping[str, float] | None = None, default: float | None = None, *,
                 alpha: Mapping[str, float] | None = None, alpha_default: float | None = None,
                 alpha_beta_map: np.ndarray | None = None, alpha_map: np.ndarray | None = None,
                 beta_map: np.ndarray | None = None, grid_shape: tuple[int, int, int] | None = None):
        self.alpha_beta = _StructureTable("alpha_beta", "Gy", alpha_beta)
        self.alpha = _StructureTable("alpha", "Gy^-1", alpha)
        self.default = default
        self.alpha_default = alpha_default
        self.alpha_beta_map = alpha_beta_map
        self.alpha_map = alpha_map
        self.beta_map = beta_map
        self._check_sources()
        if grid_shape is not None:
            for name in ("alpha_beta_map", "alpha_map", "beta_map"):
                self._check_map_shape(name, getattr(self, name), grid_shape)

    # -- validated attributes -------------------------------------------------------------------
    @property
    def alpha_beta(self) -> _StructureTable:
        return self._alpha_beta

    @alpha_beta.setter
    def alpha_beta(self, value) -> None:
        self._alpha_beta = value if isinstance(value, _StructureTable) else \
            _StructureTable("alpha_beta", "Gy", value)

    @property
    def alpha(self) -> _StructureTable:
        return self._alpha

    @alpha.setter
    def alpha(self, value) -> None:
        self._alpha = value if isinstance(value, _StructureTable) else \
            _StructureTable("alpha", "Gy^-1", value)

    @property
    def default(self) -> float | None:
        return self._default

    @default.setter
    def default(self, value) -> None:
        self._default = None if value is None else float(_scalar_positive(value, "default", "Gy"))

    @property
    def alpha_default(self) -> float | None:
        return self._alpha_default

    @alpha_default.setter
    def alpha_default(self, value) -> None:
        self._alpha_default = None if value is None else float(
            _scalar_positive(value, "alpha_default", "Gy^-1"))

    @property
    def alpha_beta_map(self) -> np.ndarray | None:
        return self._alpha_beta_map

    @alpha_beta_map.setter
    def alpha_beta_map(self, value) -> None:
        self._alpha_beta_map = _voxel_map(value, "alpha_beta_map", "Gy")

    @property
    def alpha_map(self) -> np.ndarray | None:
        return self._alpha_map

    @alpha_map.setter
    def alpha_map(self, value) -> None:
        self._alpha_map = _voxel_map(value, "alpha_map", "Gy^-1")
        self._check_pair()

    @property
    def beta_map(self) -> np.ndarray | None:
        return self._beta_map

    @beta_map.setter
    def beta_map(self, value) -> None:
        self._beta_map = _voxel_map(value, "beta_map", "Gy^-2")
        self._check_pair()

    def _check_pair(self) -> None:
        a, b = getattr(self, "_alpha_map", None), getattr(self, "_beta_map", None)
        if a is not None and b is not None and a.shape != b.shape:
            raise BiologyError(f"beta_map: expected the shape of alpha_map {a.shape}, got {b.shape}")

    def _check_sources(self) -> None:
        """One alpha/beta source per voxel: a beta map only together with an alpha map and
        without an alpha/beta map (checked at construction and before every lookup, since the
        maps may be set one at a time)."""
        if self._beta_map is None:
            return
        if self._alpha_beta_map is not None:
            raise BiologyError(
                "alpha_beta_map, beta_map: expected one source of alpha/beta per voxel, got both "
                "(with alpha_map: alpha_map / beta_map could disagree with alpha_beta_map; without it: "
                "beta_map would be ignored for GARD/TCP). Give alpha_beta_map (with alpha or alpha_map) "
                "or alpha_map together with beta_map, not beta_map and alpha_beta_map")
        if self._alpha_map is None:
            raise BiologyError(
                "beta_map: given without alpha_map; expected alpha_map and beta_map together "
                "(alpha/beta = alpha_map / beta_map), or an alpha_beta_map (beta = alpha / (alpha/beta)) "
                "instead. A beta map alone would give BED / EQD2 the table alpha/beta and TCP / GARD "
                "the beta map")

    @staticmethod
    def _check_map_shape(name: str, arr, grid_shape) -> None:
        if arr is not None and arr.shape != tuple(int(s) for s in grid_shape):
            raise BiologyError(
                f"{name}: expected the planning grid shape {tuple(grid_shape)} [z, y, x], got {arr.shape}")

    # -- lookups --------------------------------------------------------------------------------
    def _voxels(self, name: str, arr: np.ndarray, voxel_index, grid_shape) -> np.ndarray:
        if grid_shape is None:
            raise BiologyError(f"grid_shape: needed to index {name}")
        self._check_map_shape(name, arr, grid_shape)
        idx = _voxel_index(voxel_index, arr.size)
        return arr.ravel()[idx]

    def _count(self, voxel_index) -> int:
        return int(np.asarray(voxel_index).size)

    def has_structure(self, structure: str) -> bool:
        """True if ``structure`` has its own alpha/beta entry (not just the default)."""
        return structure in self.alpha_beta

    def alpha_beta_for(self, structure: str, voxel_index: np.ndarray,
                       grid_shape: tuple[int, int, int] | None = None) -> np.ndarray:
        """Per-voxel alpha/beta (Gy) of ``structure`` at the given voxels.

        Parameters
        ----------
        structure : structure name (case and whitespace are ignored)
        voxel_index : flat C-order indices into the planning grid, shape (k,)
        grid_shape : (nz, ny, nx) of the planning grid; required when voxel maps are set

        Returns
        -------
        numpy array (k,) of alpha/beta in Gy: from ``alpha_beta_map`` if set, else from
        ``alpha_map / beta_map`` if both are set, else the structure's value or the default.
        """
        self._check_sources()
        if self.alpha_beta_map is not None:
            return self._voxels("alpha_beta_map", self.alpha_beta_map, voxel_index, grid_shape)
        if self.alpha_map is not None and self.beta_map is not None:
            a = self._voxels("alpha_map", self.alpha_map, voxel_index, grid_shape)
            b = self._voxels("beta_map", self.beta_map, voxel_index, grid_shape)
            return a / b
        return np.full(self._count(voxel_index), self.structure_alpha_beta(structure))

    def structure_alpha_beta(self, structure: str) -> float:
        """alpha/beta (Gy) of ``structure`` from the table, else ``default``."""
        if structure in self.alpha_beta:
            return self.alpha_beta[structure]
        if self.default is None:
            raise BiologyError(
                f"alpha_beta[{structure!r}]: no alpha/beta for this structure and no default "
                f"(known: {sorted(self.alpha_beta)})")
        return self.default

    def alpha_for(self, structure: str, voxel_index: np.ndarray,
                  grid_shape: tuple[int, int, int] | None = None) -> np.ndarray:
        """Per-voxel alpha (Gy^-1) of ``structure`` at the given voxels: from ``alpha_map`` if set,
        else the structure's ``alpha`` entry or ``alpha_default``."""
        self._check_sources()
        if self.alpha_map is not None:
            return self._voxels("alpha_map", self.alpha_map, voxel_index, grid_shape)
        if structure in self.alpha:
            value = self.alpha[structure]
        elif self.alpha_default is not None:
            value = self.alpha_default
        else:
            raise BiologyError(f"alpha[{structure!r}]: no alpha for this structure and no alpha_default")
        return np.full(self._count(voxel_index), value)

    def beta_for(self, structure: str, voxel_index: np.ndarray,
                 grid_shape: tuple[int, int, int] | None = None) -> np.ndarray:
        """Per-voxel beta (Gy^-2): ``beta_map`` when set (with ``alpha_map``), else
        alpha / (alpha/beta) from :meth:`alpha_for` and :meth:`alpha_beta_for`."""
        self._check_sources()
        if self.beta_map is not None:
            return self._voxels("beta_map", self.beta_map, voxel_index, grid_shape)
        return self.alpha_for(structure, voxel_index, grid_shape) / self.alpha_beta_for(
            structure, voxel_index, grid_shape)

    def __repr__(self) -> str:
        maps = [n for n in ("alpha_beta_map", "alpha_map", "beta_map") if getattr(self, n) is not None]
        return (f"LQ(alpha_beta={self.alpha_beta!r}, default={self.default!r}, alpha={self.alpha!r}"
                + (f", maps={maps}" if maps else "") + ")")


def _scalar_positive(value, name: str, unit: str) -> float:
    arr = _positive(value, name, unit)
    if arr.ndim != 0:
        raise BiologyError(f"{name}: expected a single number, got {_fmt(value)}")
    return float(arr)


def _voxel_map(value, name: str, unit: str) -> np.ndarray | None:
    if value is None:
        return None
    arr = _positive(value, name, unit)
    if arr.ndim != 3:
        raise BiologyError(f"{name}: expected a 3-D [z, y, x] array, got shape {arr.shape}")
    return arr


def _voxel_index(voxel_index, size: int) -> np.ndarray:
    idx = np.asarray(voxel_index)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise BiologyError(f"voxel_index: expected a 1-D integer array, got {idx.dtype} of shape {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        raise BiologyError(f"voxel_index: expected flat indices in [0, {size}), got {idx.min()}..{idx.max()}")
    return idx


# --------------------------------------------------------------------------------------------
# BED / EQD2
# --------------------------------------------------------------------------------------------

def bed(total_dose_Gy, fractions, alpha_beta_Gy):
    """Biologically effective dose BED = D (1 + D / (n alpha/beta)).

    Parameters
    ----------
    total_dose_Gy : total physical dose D of the course, Gy (>= 0), scalar or array
    fractions : number of equal fractions n (integer >= 1)
    alpha_beta_Gy : alpha/beta in Gy (> 0)

    Returns
    -------
    BED in Gy (float or array, broadcast shape).

    Warns
    -----
    PerFractionDoseWarning : if the doses look like per-fraction doses (:func:`check_course_dose`);
        the same holds for every function here that takes ``total_dose_Gy`` and ``fractions``.
    """
    D = _nonneg(total_dose_Gy, "total_dose_Gy")
    n = _fractions(fractions)
    ab = _positive(alpha_beta_Gy, "alpha_beta_Gy")
    check_course_dose(D, n)
    return _out(D * (1.0 + D / (n * ab)))


def eqd2(total_dose_Gy, fractions, alpha_beta_Gy):
    """Equivalent dose in 2 Gy fractions, EQD2 = BED / (1 + 2 / (alpha/beta)), Gy.

    Parameters are those of :func:`bed`.
    """
    ab = _positive(alpha_beta_Gy, "alpha_beta_Gy")
    return _out(np.asarray(bed(total_dose_Gy, fractions, ab)) / (1.0 + 2.0 / ab))


def dose_for_bed(bed_Gy, fractions, alpha_beta_Gy):
    """Total physical dose (Gy) in n fractions whose BED is ``bed_Gy``: the exact inverse of
    :func:`bed` on D >= 0 (BED is strictly increasing there),
    D = n (a/b) / 2 (sqrt(1 + 4 B / (n a/b)) - 1), evaluated as 2 B / (1 + sqrt(1 + 4 B/(n a/b)))
    to avoid cancellation for small B.

    Parameters
    ----------
    bed_Gy : BED in Gy (>= 0)
    fractions : integer >= 1
    alpha_beta_Gy : alpha/beta in Gy (> 0)
    """
    B = _nonneg(bed_Gy, "bed_Gy")
    n = _fractions(fractions)
    ab = _positive(alpha_beta_Gy, "alpha_beta_Gy")
    return _out(2.0 * B / (1.0 + np.sqrt(1.0 + 4.0 * B / (n * ab))))


def dose_for_eqd2(eqd2_Gy, fractions, alpha_beta_Gy):
    """Total physical dose (Gy) in n fractions whose EQD2 is ``eqd2_Gy`` (exact inverse of
    :func:`eqd2`): ``dose_for_bed(EQD2 (1 + 2/(a/b)), n, a/b)``."""
    E = _nonneg(eqd2_Gy, "eqd2_Gy")
    ab = _positive(alpha_beta_Gy, "alpha_beta_Gy")
    return dose_for_bed(E * (1.0 + 2.0 / ab), fractions, ab)


def bed_with_repopulation(total_dose_Gy, fractions, alpha_beta_Gy, alpha_Gy, overall_time_days,
                          kickoff_days, tpot_days):
    """BED (Gy) corrected for tumour repopulation during the course:
    BED = D (1 + D/(n a/b)) - ln2 max(T - Tk, 0) / (alpha Tpot).

    Typical head-and-neck SCC values are ``HN_KICKOFF_DAYS`` (Tk ~21-28 d) and ``HN_TPOT_DAYS``
    (Tpot ~3 d) (REFERENCES.md; verify). The result may be negative for short, low-dose courses
    with long overall times; it is returned as computed.

    Parameters
    ----------
    total_dose_Gy, fractions, alpha_beta_Gy : as for :func:`bed`
    alpha_Gy : alpha in Gy^-1 (> 0)
    overall_time_days : overall treatment time T, days (>= 0)
    kickoff_days : time Tk at which repopulation starts, days (>= 0)
    tpot_days : potential doubling time Tpot, days (> 0)
    """
    b = np.asarray(bed(total_dose_Gy, fractions, alpha_beta_Gy))
    alpha = _positive(alpha_Gy, "alpha_Gy", "Gy^-1")
    T = _nonneg(overall_time_days, "overall_time_days", "days")
    Tk = _nonneg(kickoff_days, "kickoff_days", "days")
    Tp = _positive(tpot_days, "tpot_days", "days")
    return _out(b - math.log(2.0) * np.maximum(T - Tk, 0.0) / (alpha * Tp))


def g_factor(x):
    """Lea-Catcheside dose-protraction factor G(x) = 2 (x - 1 + exp(-x)) / x^2 for
    x = mu t >= 0 (mu = ln2 / T_half the repair rate, t the delivery time of one fraction).

    G(0) = 1 (acute delivery); G -> 2/x for large x. Below x = 0.5 the Taylor series
    G = sum_k 2 (-x)^k / (k + 2)! is used (cancellation-free; truncation error < 1e-13).
    """
    x0 = _nonneg(x, "x", "")
    x = np.atleast_1d(x0)
    out = np.empty_like(x, dtype=float)
    small = x < _G_SERIES_X
    xs = x[small]
    series = np.zeros_like(xs)
    for k in range(12):  # terms 2 (-x)^k / (k+2)!
        series += 2.0 * (-xs) ** k / math.factorial(k + 2)
    out[small] = series
    xl = x[~small]
    out[~small] = 2.0 * (xl + np.expm1(-xl)) / xl ** 2
    return _out(out.reshape(x0.shape))


def bed_protracted(total_dose_Gy, fractions, alpha_beta_Gy, delivery_time_min, repair_half_time_min):
    """BED (Gy) of fractions each delivered at constant dose rate over ``delivery_time_min``,
    with mono-exponential sublethal-damage repair during delivery (Lea-Catcheside):
    BED = D (1 + G(mu t) D / (n a/b)), mu = ln2 / T_half.

    Parameters
    ----------
    total_dose_Gy, fractions, alpha_beta_Gy : as for :func:`bed`
    delivery_time_min : beam-on time t of one fraction, minutes (>= 0)
    repair_half_time_min : repair half-time T_half, minutes (> 0)
    """
    D = _nonneg(total_dose_Gy, "total_dose_Gy")
    n = _fractions(fractions)
    ab = _positive(alpha_beta_Gy, "alpha_beta_Gy")
    t = _nonneg(delivery_time_min, "delivery_time_min", "min")
    th = _positive(repair_half_time_min, "repair_half_time_min", "min")
    check_course_dose(D, n)
    g = np.asarray(g_factor(math.log(2.0) / th * t))
    return _out(D * (1.0 + g * D / (n * ab)))


# --------------------------------------------------------------------------------------------
# GARD (genomic-adjusted radiation dose)
# --------------------------------------------------------------------------------------------

def alpha_from_rsi(rsi, beta_Gy2: float = GARD_BETA_GY2):
    """alpha (Gy^-1) from the radiosensitivity index, reading RSI as the surviving fraction at
    2 Gy: SF2 = exp(-2 alpha - 4 beta), so alpha = -ln(RSI)/2 - 2 beta (= -ln(RSI)/2 - 0.1 for
    the GARD beta 0.05 Gy^-2; Scott et al., Lancet Oncol 2017;18:202-211).

    RSI must lie in (0, 1). Note alpha < 0 for RSI > exp(-4 beta) (0.819 for beta 0.05).
    """
    r = _rsi(rsi)
    b = _scalar_positive(beta_Gy2, "beta_Gy2", "Gy^-2")
    return _out(-np.log(r) / 2.0 - 2.0 * b)


def _gard_alpha(rsi, alpha, beta_Gy2):
    if (rsi is None) == (alpha is None):
        raise BiologyError("rsi/alpha: give exactly one of rsi (in (0, 1)) or alpha (Gy^-1)")
    if rsi is not None:
        return np.asarray(alpha_from_rsi(rsi, beta_Gy2))
    return _finite(alpha, "alpha")


def gard(total_dose_Gy, fractions, rsi=None, alpha=None, beta_Gy2: float = GARD_BETA_GY2):
    """Genomic-adjusted radiation dose GARD = n d (alpha + beta d) with d = D / n
    (Scott et al., Lancet Oncol 2017;18:202-211). For 2 Gy fractions GARD = -n ln(RSI).

    Parameters
    ----------
    total_dose_Gy : total physical dose D, Gy (>= 0)
    fractions : integer n >= 1
    rsi : radiosensitivity index in (0, 1) (alpha is derived with :func:`alpha_from_rsi`), or
    alpha : alpha in Gy^-1 directly (exactly one of rsi / alpha)
    beta_Gy2 : beta in Gy^-2, default 0.05 (the GARD model's fixed value)

    Returns
    -------
    GARD (dimensionless, the LQ log cell kill), float or array.
    """
    D = _nonneg(total_dose_Gy, "total_dose_Gy")
    n = _fractions(fractions)
    b = _scalar_positive(beta_Gy2, "beta_Gy2", "Gy^-2")
    a = _gard_alpha(rsi, alpha, b)
    check_course_dose(D, n)
    return _out(D * (a + b * D / n))


def dose_for_gard(target_gard, fractions, rsi=None, alpha=None, beta_Gy2: float = GARD_BETA_GY2):
    """Total physical dose (Gy) in n fractions that reaches GARD ``target_gard`` (exact inverse
    of :func:`gard`): the larger root of (beta/n) D^2 + alpha D - G = 0,
    D = n (sqrt(alpha^2 + 4 beta G / n) - alpha) / (2 beta). For G > 0 every D >= 0 with
    GARD(D) >= G satisfies D >= this root (GARD is convex with GARD(0) = 0), so it is the exact
    dose floor even when alpha < 0.

    Parameters
    ----------
    target_gard : GARD to reach (>= 0)
    fractions, rsi, alpha, beta_Gy2 : as for :func:`gard`
    """
    G = _nonneg(target_gard, "target_gard", "")
    n = _fractions(fractions)
    b = _scalar_positive(beta_Gy2, "beta_Gy2", "Gy^-2")
    a = _gard_alpha(rsi, alpha, b)
    s = np.sqrt(a * a + 4.0 * b * G / n)
    # rationalized form 2G / (alpha + s) when alpha > 0 (no cancellation), direct form otherwise
    positive = a > 0
    stable = 2.0 * G / np.where(positive, a + s, 1.0)
    return _out(np.where(positive, stable, n * (s - a) / (2.0 * b)))


def gard_prescription(target_gard, fractions, rsi, beta_Gy2: float = GARD_BETA_GY2):
    """Physical total dose (Gy) to prescribe in ``fractions`` fractions so that a tumour with
    radiosensitivity index ``rsi`` (scalar or per-voxel map) reaches ``target_gard``.

    With conventional ~2 Gy fractions choose n near target / (-ln RSI); the dose returned is
    exact for the given n (:func:`dose_for_gard`). Example: RSI 0.3, GARD 36.1, n = 30 gives
    about 60 Gy.
    """
    return dose_for_gard(target_gard, fractions, rsi=rsi, beta_Gy2=beta_Gy2)


# --------------------------------------------------------------------------------------------
# TCP / NTCP
# --------------------------------------------------------------------------------------------

def _lq_beta(alpha, beta, alpha_beta):
    if (beta is None) == (alpha_beta is None):
        raise BiologyError("beta/alpha_beta: give exactly one of beta (Gy^-2) or alpha_beta (Gy)")
    if beta is not None:
        return _nonneg(beta, "beta", "Gy^-2")
    return alpha / _positive(alpha_beta, "alpha_beta", "Gy")


def log_tcp(total_dose_Gy, fractions, alpha, beta=None, *, alpha_beta=None,
            clonogen_density_per_cc, voxel_volumes_cc):
    """Natural log of the Poisson LQ tumour control probability,
    ln TCP = -sum_i N_i SF_i, N_i = rho_i V_i, SF_i = exp(-(alpha D_i + beta D_i^2 / n))
    (n equal fractions of D_i / n each, no repopulation).

    Parameters
    ----------
    total_dose_Gy : total dose per voxel, Gy (>= 0), shape (k,)
    fractions : integer n >= 1
    alpha : Gy^-1 (> 0), scalar or per voxel
    beta : Gy^-2 (>= 0), or give ``alpha_beta`` (Gy) instead
    clonogen_density_per_cc : clonogens per cm^3 (>= 0), scalar or per voxel (1e7 /cc is a
        common modelling value, e.g. Webb & Nahum, Phys Med Biol 1993;38:653; verify)
    voxel_volumes_cc : voxel volumes in cm^3 (>= 0), scalar or per voxel

    Returns
    -------
    ln TCP (<= 0), float.
    """
    D = _nonneg(total_dose_Gy, "total_dose_Gy")
    n = _fractions(fractions)
    a = _positive(alpha, "alpha", "Gy^-1")
    b = _lq_beta(a, beta, alpha_beta)
    rho = _nonneg(clonogen_density_per_cc, "clonogen_density_per_cc", "per cc")
    vol = _nonneg(voxel_volumes_cc, "voxel_volumes_cc", "cc")
    try:
        D, a, b, rho, vol = np.broadcast_arrays(D, a, b, rho, vol)
    except ValueError:
        raise BiologyError("voxel_volumes_cc/clonogen_density_per_cc/alpha: shapes do not match "
                           "total_dose_Gy") from None
    check_course_dose(D, n)
    log_kill = a * D + b * D * D / n
    with np.errstate(divide="ignore"):
        log_n = np.log(rho * vol)
    return float(-np.sum(np.exp(log_n - log_kill)))


def tcp_poisson(total_dose_Gy, fractions, alpha, beta=None, *, alpha_beta=None,
                clonogen_density_per_cc, voxel_volumes_cc):
    """Poisson LQ tumour control probability TCP = prod_i exp(-N_i SF_i) = exp(:func:`log_tcp`).

    Parameters are those of :func:`log_tcp`. Returns TCP in [0, 1] (float).
    """
    return math.exp(log_tcp(total_dose_Gy, fractions, alpha, beta, alpha_beta=alpha_beta,
                            clonogen_density_per_cc=clonogen_density_per_cc,
                            voxel_volumes_cc=voxel_volumes_cc))


def geud(doses_Gy, volumes, a: float) -> float:
    """Generalized equivalent uniform dose (sum_i v_i d_i^a)^(1/a), v normalized to sum 1, Gy.

    Parameters
    ----------
    doses_Gy : voxel (or DVH-bin) doses, Gy (>= 0)
    volumes : relative or absolute volumes (>= 0, not all zero), same length
    a : volume-effect exponent (> 0 here; a = 1 gives the mean dose)
    """
    d = _nonneg(doses_Gy, "doses_Gy").ravel()
    v = _nonneg(volumes, "volumes", "").ravel()
    if d.shape != v.shape:
        raise BiologyError(f"volumes: expected shape {d.shape} to match doses_Gy, got {v.shape}")
    a = _scalar_positive(a, "a", "")
    total = v.sum()
    if total <= 0:
        raise BiologyError("volumes: expected a positive total volume")
    dmax = d.max() if d.size else 0.0
    if dmax == 0:
        return 0.0
    v = v / total
    return float(dmax * np.sum(v * (d / dmax) ** a) ** (1.0 / a))


_DOSE_KINDS = ("EQD2", "physical")


def ntcp_lkb(doses_Gy, volumes, td50_Gy: float, m: float, n_volume: float, *, dose_kind: str,
             fractions=None, alpha_beta_Gy=None) -> float:
    """Lyman-Kutcher-Burman NTCP in the gEUD form: NTCP = Phi((gEUD - TD50) / (m TD50)),
    gEUD with exponent a = 1 / n (Kutcher & Burman, IJROBP 1989;16:1623; Niemierko 1999),
    evaluated on **EQD2** doses.

    The published parameters (:data:`NTCP_PARAMETERS`, Burman/Emami-type and QUANTEC fits) were
    fitted to conventionally fractionated (~2 Gy) doses, so the gEUD is taken over EQD2. Which dose
    ``doses_Gy`` holds is stated by the required ``dose_kind`` (there is no default):

    * ``dose_kind="EQD2"`` : the doses are already EQD2 (Gy); ``fractions`` and ``alpha_beta_Gy``
      must not be given;
    * ``dose_kind="physical"`` : the doses are total physical doses of a course of ``fractions``
      equal fractions; they are converted first with :func:`eqd2` and the organ's
      ``alpha_beta_Gy`` (both required).

    Parameters
    ----------
    doses_Gy : voxel (or DVH-bin) doses, Gy, of the kind named by ``dose_kind``
    volumes : relative or absolute volumes of those voxels/bins
    td50_Gy : uniform EQD2 giving 50 % complication probability, Gy (> 0)
    m : slope parameter (> 0)
    n_volume : volume-effect parameter n (> 0); a = 1/n
    dose_kind : "EQD2" or "physical" (case-insensitive), keyword only, required
    fractions : integer >= 1, only with ``dose_kind="physical"``
    alpha_beta_Gy : alpha/beta of the organ in Gy (> 0, scalar or per voxel), only with
        ``dose_kind="physical"``

    Returns
    -------
    NTCP in [0, 1] (float).
    """
    kind = next((k for k in _DOSE_KINDS if isinstance(dose_kind, str) and dose_kind.strip().lower()
                 == k.lower()), None)
    if kind is None:
        raise BiologyError(f"dose_kind: expected 'EQD2' (doses already EQD2) or 'physical' (total "
                           f"physical doses, with fractions and alpha_beta_Gy), got {dose_kind!r}")
    if kind == "EQD2":
        for field, value in (("fractions", fractions), ("alpha_beta_Gy", alpha_beta_Gy)):
            if value is not None:
                raise BiologyError(f"{field}: expected None with dose_kind='EQD2' (the doses are "
                                   f"already EQD2); use dose_kind='physical' to convert physical doses")
    else:
        for field, value, form in (("fractions", fractions, "an integer >= 1"),
                                   ("alpha_beta_Gy", alpha_beta_Gy, "the organ's alpha/beta in Gy (> 0)")):
            if value is None:
                raise BiologyError(f"{field}: expected {form} with dose_kind='physical' (needed to "
                                   f"convert the physical doses to EQD2)")
    td50 = _scalar_positive(td50_Gy, "td50_Gy", "Gy")
    m = _scalar_positive(m, "m", "")
    n = _scalar_positive(n_volume, "n_volume", "")
    doses = doses_Gy
    if kind == "physical":
        d = _nonneg(doses_Gy, "doses_Gy")
        n_fx = _fractions(fractions)
        check_course_dose(d, n_fx, "doses_Gy")
        with _course_dose_checked():
            doses = eqd2(d, n_fx, _positive(alpha_beta_Gy, "alpha_beta_Gy"))
    g = geud(doses, volumes, 1.0 / n)
    return float(ndtr((g - td50) / (m * td50)))


@dataclass(frozen=True)
class LKBParameters:
    """LKB parameters of one organ and endpoint (doses in Gy, EQD2 for other fractionations)."""

    td50_Gy: float
    m: float
    n: float
    endpoint: str
    source: str


#: Commonly used LKB parameters. Keys are lower-case organ names. Check the endpoint and the
#: source before use; entries marked (verify) have not been re-checked against the original.
NTCP_PARAMETERS: dict[str, LKBParameters] = {
    # Burman et al., IJROBP 1991;21:123-135 (fit to Emami et al., IJROBP 1991;21:109)
    "spinal cord": LKBParameters(66.5, 0.175, 0.05, "myelitis / necrosis", "Burman 1991"),
    # Burman 1991 (verify)
    "brainstem": LKBParameters(65.0, 0.14, 0.16, "necrosis / infarction", "Burman 1991 (verify)"),
    # Burman 1991 (verify)
    "heart": LKBParameters(48.0, 0.10, 0.35, "pericarditis", "Burman 1991 (verify)"),
    # Burman 1991 (verify)
    "liver": LKBParameters(40.0, 0.15, 0.32, "liver failure", "Burman 1991 (verify)"),
    # QUANTEC parotid, Deasy et al., IJROBP 2010;76(3 Suppl):S58-S63 (verify)
    "parotid": LKBParameters(39.9, 0.40, 1.0, "xerostomia (saliva flow < 25 %)", "Deasy 2010 (verify)"),
    # QUANTEC rectum, Michalski et al., IJROBP 2010;76(3 Suppl):S123-S129 (verify)
    "rectum": LKBParameters(76.9, 0.13, 0.09, "grade >= 2 late rectal toxicity", "Michalski 2010 (verify)"),
    # Seppenwoolde et al., IJROBP 2003;55:724, quoted by QUANTEC lung, Marks et al.,
    # IJROBP 2010;76(3 Suppl):S70-S76 (verify)
    "lung": LKBParameters(30.8, 0.37, 0.99, "radiation pneumonitis grade >= 2",
                          "Seppenwoolde 2003 / Marks 2010 (verify)"),
}


# --------------------------------------------------------------------------------------------
# Personalization: hypoxia
# --------------------------------------------------------------------------------------------

def oer(po2_mmHg, oer_max: float = OER_MAX, k_mmHg: float = OER_K_MMHG):
    """Oxygen enhancement of radiosensitivity relative to anoxia (Alper & Howard-Flanders,
    Nature 1956;178:978): OER(pO2) = (m pO2 + K) / (pO2 + K), 1 at pO2 = 0, -> m when oxic.

    Parameters
    ----------
    po2_mmHg : oxygen partial pressure, mmHg (>= 0)
    oer_max : m, maximum OER (> 1 typically; default 3)
    k_mmHg : K, pO2 of half-maximum effect, mmHg (> 0; default 3)
    """
    p = _nonneg(po2_mmHg, "po2_mmHg", "mmHg")
    m = _scalar_positive(oer_max, "oer_max", "")
    K = _scalar_positive(k_mmHg, "k_mmHg", "mmHg")
    return _out((m * p + K) / (p + K))


def alpha_map_from_hypoxia(po2_mmHg_map, alpha_oxic: float, beta_oxic: float,
                           oer_max: float = OER_MAX, k_mmHg: float = OER_K_MMHG):
    """Per-voxel LQ parameters of a hypoxic tumour from a pO2 map.

    Hypoxia is modelled as dose modification (Wouters & Brown, Radiat Res 1997;147:541;
    Titz & Jeraj, Phys Med Biol 2008;53:4471): a voxel at pO2 needs OMF times the oxic dose,
    OMF = OER_max / OER(pO2) (:func:`oer`), so alpha = alpha_oxic / OMF and
    beta = beta_oxic / OMF^2 (alpha/beta grows by OMF).

    Parameters
    ----------
    po2_mmHg_map : 3-D [z, y, x] array of pO2 in mmHg (>= 0)
    alpha_oxic : alpha of well-oxygenated cells, Gy^-1 (> 0)
    beta_oxic : beta of well-oxygenated cells, Gy^-2 (> 0)
    oer_max, k_mmHg : the OER model's m and K (defaults 3 and 3 mmHg, verify)

    Returns
    -------
    (alpha_map Gy^-1, beta_map Gy^-2), arrays of the input shape; pass them to
    ``LQ(alpha_map=..., beta_map=...)``.
    """
    p = _nonneg(po2_mmHg_map, "po2_mmHg_map", "mmHg")
    if p.ndim != 3:
        raise BiologyError(f"po2_mmHg_map: expected a 3-D [z, y, x] array, got shape {p.shape}")
    a = _scalar_positive(alpha_oxic, "alpha_oxic", "Gy^-1")
    b = _scalar_positive(beta_oxic, "beta_oxic", "Gy^-2")
    m = _scalar_positive(oer_max, "oer_max", "")
    omf = m / np.asarray(oer(p, m, k_mmHg))
    return a / omf, b / omf ** 2
