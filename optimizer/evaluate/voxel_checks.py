"""Voxel-by-voxel checks of floors and ceilings (``value_i op limit_i`` in every voxel), e.g. a
dose-painting BED prescription map, on values recomputed from a plan's full-grid dose."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EvaluationError
from .biology import UNITS, _at, _index, quantity_name, values


@dataclass
class VoxelCheck:
    """Result of a voxel-by-voxel check ``value_i op limit_i``.

    ``margin`` is the signed margin of the worst voxel (the one with the smallest relative
    margin), value - limit for a floor (">=") and limit - value for a ceiling ("<="), in
    ``unit`` ("Gy", "Gy BED", "Gy EQD2", or "" for GARD): negative means beyond the limit.
    ``relative_margin`` is that margin divided by the voxel's limit. ``met`` allows ``rel_tol``
    of relative shortfall (solver tolerance).
    """

    label: str
    op: str
    n_voxels: int
    n_violated: int
    margin: float
    relative_margin: float
    worst_voxel: int  # flat grid index of the worst voxel (-1 if no index was given)
    rel_tol: float
    unit: str = "Gy"

    @property
    def met(self) -> bool:
        return self.relative_margin >= -self.rel_tol

    def as_dict(self) -> dict:
        return {"label": self.label, "op": self.op, "n_voxels": self.n_voxels,
                "n_violated": self.n_violated, "worst_margin": self.margin, "unit": self.unit,
                "worst_relative_margin": self.relative_margin, "worst_voxel": self.worst_voxel,
                "rel_tol": self.rel_tol, "met": self.met}

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return (f"{self.label}: {'met' if self.met else 'NOT met'}, worst margin {self.margin:+.4g}{unit} "
                f"({self.relative_margin:+.2e} relative), {self.n_violated}/{self.n_voxels} voxels beyond "
                f"the limit by more than {self.rel_tol:g} relative")


def check_voxels(voxel_values, limit, op: str, label: str = "", rel_tol: float = 1e-4,
                 voxel_index=None, unit: str = "Gy") -> VoxelCheck:
    """Check ``voxel_values op limit`` in every voxel (``limit`` scalar or one per voxel).

    ``op`` is ">=" (floor) or "<=" (ceiling); ``rel_tol`` is the relative tolerance for "met"
    and for counting violated voxels.
    """
    if op not in (">=", "<="):
        raise EvaluationError(f"op: expected '>=' or '<=', got {op!r}")
    if isinstance(rel_tol, bool) or not (isinstance(rel_tol, (int, float, np.number))
                                         and np.isfinite(rel_tol) and rel_tol >= 0):
        raise EvaluationError(f"rel_tol: expected a finite number >= 0, got {rel_tol!r}")
    v = np.asarray(voxel_values, dtype=float).ravel()
    lim = np.broadcast_to(np.asarray(limit, dtype=float), v.shape) if np.ndim(limit) == 0 else \
        np.asarray(limit, dtype=float).ravel()
    if lim.shape != v.shape:
        raise EvaluationError(f"limit: expected a scalar or {v.size} values, got {lim.size}")
    if v.size == 0:
        raise EvaluationError("voxel_values: nothing to check")
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(lim))):
        raise EvaluationError("voxel_values/limit: NaN or infinite values")
    margin = v - lim if op == ">=" else lim - v
    rel = margin / np.maximum(np.abs(lim), 1e-12)
    worst = int(np.argmin(rel))
    idx = -1 if voxel_index is None else int(np.asarray(voxel_index).ravel()[worst])
    return VoxelCheck(label, op, int(v.size), int(np.count_nonzero(rel < -rel_tol)),
                      float(margin[worst]), float(rel[worst]), idx, float(rel_tol), unit)


def check_bio_limit(plan, structure: str, quantity: str, op: str, limit, lq=None, rsi=None,
                    rel_tol: float = 1e-4, label: str | None = None) -> VoxelCheck:
    """Voxel-by-voxel check of a floor or ceiling of ``quantity`` ("dose", "BED", "EQD2",
    "GARD") on a plan's full-grid dose.

    ``limit`` is a scalar or a 3-D grid map (e.g. a dose-painting BED prescription); the
    values are recomputed from ``plan.dose`` (not taken from solver variables). The check's
    unit is the quantity's (:data:`optimizer.evaluate.UNITS`).
    """
    q = quantity_name(quantity)
    v = values(plan, structure, q, lq=lq, rsi=rsi)
    lim = _at(limit, plan, structure, "limit")
    if label is None:
        text = "map" if np.ndim(limit) else f"{float(limit):g}"
        label = f"{structure} {q} {op} {text}"
    return check_voxels(v, lim, op, label, rel_tol, _index(plan, structure), UNITS[q])
