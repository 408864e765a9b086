"""Linear-quadratic (LQ) parameters of a patient: alpha/beta and alpha per structure (a validated,
case- and whitespace-insensitive table) or per voxel (maps on the planning grid)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping

import numpy as np

from .._validate import _fmt, _positive, _scalar_positive, _voxel_index, _voxel_map
from ..errors import BiologyError

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


def _normalize(name: str) -> str:
    # Same rule as the structure lookup of optimizer.geometry: ignore case and all whitespace.
    return "".join(str(name).split()).lower()


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

