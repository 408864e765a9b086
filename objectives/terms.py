"""The planning-term protocol shared by every objective and constraint.

A term names a structure and turns the cvxpy expression of that structure's voxel doses into
either a soft penalty (it has a ``weight``) or hard constraints (``weight=None``). Hard terms
are written as a convex *violation* expression ``g(d)`` that must be ``<= 0`` element-wise;
the problem states ``g <= 0``, and when the hard set is infeasible it relaxes each term to
``g <= s_k`` to find the ones in conflict. Soft terms return a convex scalar.

Doses handed to terms are the **total course dose** in Gy of the structure's optimization
voxels (a cvxpy expression of length ``len(ctx.volumes)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from .errors import TermError


@dataclass
class TermContext:
    """What a term may know about the voxels its dose expression covers.

    Attributes
    ----------
    structure : resolved structure name
    volumes : relative voxel volumes (sum 1) of the optimization voxels, numpy (n,)
    voxel_index : flat C-order grid index of each optimization voxel, numpy (n,)
    fractions : number of fractions n of the course
    grid_shape : (nz, ny, nx) of the planning grid, so voxel maps can be indexed
    """

    structure: str
    volumes: np.ndarray
    voxel_index: np.ndarray
    fractions: int
    grid_shape: tuple[int, int, int]


def nonneg_parameter(value, name: str, *, shape=()) -> cp.Parameter:
    """A non-negative cvxpy Parameter with validation that names the field."""
    arr = np.asarray(value, dtype=float)
    if arr.shape != tuple(shape) and not (shape == () and arr.size == 1):
        raise TermError(f"{name}: expected shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise TermError(f"{name}: expected a finite value >= 0, got {value!r}")
    return cp.Parameter(shape, nonneg=True, value=arr.reshape(shape) if shape else float(arr))


def positive_number(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TermError(f"{name}: expected a number, got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise TermError(f"{name}: expected a finite number > 0, got {value!r}")
    return v


class Term:
    """Base class of all planning terms.

    Parameters
    ----------
    structure : name of the structure the term acts on
    weight : None for a hard term; a number >= 0 for a soft term (a cvxpy Parameter, so it can
        be swept without recompiling: ``term.weight.value = 10``)
    """

    #: True for terms that only make sense as soft penalties (e.g. squared deviations).
    soft_only = False
    #: True for terms that only make sense as hard constraints.
    hard_only = False

    def __init__(self, structure: str, weight: float | None = None):
        if not isinstance(structure, str) or not structure.strip():
            raise TermError(f"{type(self).__name__}.structure: expected a structure name")
        self.structure = structure
        if weight is None and self.soft_only:
            raise TermError(f"{type(self).__name__}: is a soft term and needs a weight >= 0")
        if weight is not None and self.hard_only:
            raise TermError(f"{type(self).__name__}: is a hard constraint and takes no weight")
        self.weight = None if weight is None else nonneg_parameter(weight, "weight")

    @property
    def hard(self) -> bool:
        return self.weight is None

    # -- to override ---------------------------------------------------------------------------
    def refresh(self, ctx: TermContext) -> None:
        """Recompute derived Parameter values (e.g. a dose floor from a BED prescription and
        alpha/beta) from the user-facing inputs. Called before every solve, so users can
        change inputs between solves without recompiling. Default: nothing to do."""

    def violation(self, dose: cp.Expression, ctx: TermContext) -> cp.Expression:
        """Convex expression that is <= 0 (element-wise) exactly when the term is met."""
        raise NotImplementedError

    def cost(self, dose: cp.Expression, ctx: TermContext, **extras) -> cp.Expression:
        """Unweighted convex scalar cost of the soft form (the objective adds ``weight x cost``).

        Default: volume-weighted sum of the positive part of the violation (a scalar violation
        is used as is). The problem puts the cost in an epigraph (``cost <= t_k``, objective
        ``weight x t_k``) so that a weight Parameter times a cost holding Parameters stays DPP."""
        g = self.violation(dose, ctx, **extras)
        if g.size == 1:
            return cp.sum(cp.pos(g))
        return ctx.volumes @ cp.pos(g)

    def penalty(self, dose: cp.Expression, ctx: TermContext) -> cp.Expression:
        """``weight x cost`` as one expression (convex; not DPP when the cost has Parameters)."""
        return self.weight * self.cost(dose, ctx)

    def describe(self) -> str:
        """Short human-readable label used in tables and error messages."""
        return f"{type(self).__name__}('{self.structure}')"

    def __repr__(self) -> str:
        kind = "hard" if self.hard else f"soft, weight={self.weight.value:g}"
        return f"{self.describe()} [{kind}]"


def volume_fraction(volume_pct, name: str = "volume_pct") -> float:
    v = positive_number(volume_pct, name)
    if v >= 100:
        raise TermError(f"{name}: expected a percentage in (0, 100), got {volume_pct!r}")
    return v / 100.0


def upper_cvar(dose: cp.Expression, volumes: np.ndarray, fraction: float):
    """Volume-weighted mean of the hottest ``fraction`` of the volume, in Rockafellar-Uryasev
    form ``min_t t + (1/fraction) sum_i v_i (d_i - t)_+`` (convex in d and t).

    Returns the expression and the auxiliary variable t (minimised by the solver)."""
    t = cp.Variable()
    return t + (volumes @ cp.pos(dose - t)) / fraction, t


def lower_cvar(dose: cp.Expression, volumes: np.ndarray, fraction: float):
    """Volume-weighted mean of the coldest ``fraction`` of the volume, as
    ``max_t t - (1/fraction) sum_i v_i (t - d_i)_+`` (concave in d and t)."""
    t = cp.Variable()
    return t - (volumes @ cp.pos(t - dose)) / fraction, t
