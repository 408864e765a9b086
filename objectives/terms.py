"""The planning-term protocol shared by every objective and constraint.

A term is a shape (max, mean, CVaR, squared, ...; :mod:`objectives.shapes`) applied to a
quantity (dose, BED, LET x dose, ...; :mod:`objectives.quantities`) of a structure's voxels. It
is either a soft penalty (it has a ``weight``) or a hard constraint (``weight=None``). Hard terms
are written as a convex *violation* expression ``g(q)`` that must be ``<= 0`` element-wise; the
problem states ``g <= 0``, and when the hard set is infeasible it relaxes each term to
``g <= s_k`` to find the ones in conflict. Soft terms return a convex scalar cost.

Quantities handed to terms are **total course** values of the structure's optimization voxels
(a cvxpy expression of length ``len(ctx.volumes)``); for the default quantity that is the dose
in Gy, so a user-defined term only needs ``violation(dose, ctx)`` or ``cost(dose, ctx)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from ._validate import numeric_array
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
    beamlets : the beamlet / spot table (``beam``, ``row``, ``col``, ...) for terms on weights
    """

    structure: str
    volumes: np.ndarray
    voxel_index: np.ndarray
    fractions: int
    grid_shape: tuple[int, int, int]
    beamlets: dict | None = None


def nonneg_parameter(value, name: str, *, shape=()) -> cp.Parameter:
    """A non-negative cvxpy Parameter with validation that names the field."""
    arr = numeric_array(value, name, "a finite number >= 0", TermError)
    if arr.shape != tuple(shape) and not (shape == () and arr.size == 1):
        raise TermError(f"{name}: expected shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise TermError(f"{name}: expected a finite value >= 0, got {value!r}")
    return cp.Parameter(shape, nonneg=True, value=arr.reshape(shape) if shape else float(arr.item()))


def real_number(value, name: str, expected: str = "a number") -> float:
    """One real number (not a boolean or a string), else TermError naming ``name``."""
    arr = numeric_array(value, name, expected, TermError)
    if arr.ndim != 0:
        raise TermError(f"{name}: expected {expected}, got {value!r}")
    return float(arr.item())


def positive_number(value, name: str) -> float:
    v = real_number(value, name)
    if not np.isfinite(v) or v <= 0:
        raise TermError(f"{name}: expected a finite number > 0, got {value!r}")
    return v


class Term:
    """Base class of all planning terms: a *shape* applied to a *quantity* of a structure's voxels.

    Parameters
    ----------
    structure : name of the structure the term acts on (None only for terms on the beamlet
        weights, e.g. :class:`~objectives.shapes.FluenceSmoothness`)
    weight : None for a hard term; a number >= 0 for a soft term (a cvxpy Parameter, so it can
        be swept without recompiling: ``term.weight.value = 10``)
    quantity : what is measured (:mod:`objectives.quantities`); default the physical dose

    Two faces of one function (see DESIGN.md):

    - cvxpy: ``quantity_expression(forms, ctx)`` gives the per-voxel quantity ``q``;
      ``violation(forms, ctx)`` is a convex expression ``<= 0`` exactly when a hard term holds;
      ``cost(forms, ctx)`` the convex unweighted soft cost; ``objective(forms, ctx)`` optionally
      the weighted cost in a QP-representable DPP form (else the problem uses an epigraph).
    - numeric, on NumPy/CuPy arrays of the same forms: ``violation_values`` / ``cost_value`` /
      ``value``, ``gradient`` of the cost (smooth soft terms), ``project`` onto the hard set and
      ``prox`` of the weighted soft cost, each returning one array per form (what a first-order
      solver iterates on). A face a term cannot offer raises :class:`TermError` saying
      "cvxpy only".

    ``forms`` is the dose (a bare expression or array) or a mapping of form name -> values
    ("dose", "let_dose", "weights", ...); keywords add forms (``let_dose=...``). A shape
    implements the underscored methods (``_violation(q, ctx)``, ``_cost``, ``_project``, ...) on
    the quantity q, so it never needs to know which quantity it is applied to.
    """

    #: True for terms that only make sense as soft penalties (e.g. squared deviations).
    soft_only = False
    #: True for terms that only make sense as hard constraints.
    hard_only = False
    #: True for shapes that are convex only on affine quantities (lower bounds, deviations)
    requires_affine = False
    #: True when the soft cost is differentiable (gradient offered)
    smooth = False

    def __init__(self, structure: str | None, weight: float | None = None, quantity=None):
        from .quantities import Dose, Quantity

        quantity = Dose() if quantity is None else quantity
        if not isinstance(quantity, Quantity):
            raise TermError(f"{type(self).__name__}.quantity: expected an objectives.quantities.Quantity, "
                            f"got {quantity!r}")
        self.quantity = quantity
        if structure is None and quantity.base_forms != ("weights",):
            raise TermError(f"{type(self).__name__}.structure: expected a structure name")
        if structure is not None and (not isinstance(structure, str) or not structure.strip()):
            raise TermError(f"{type(self).__name__}.structure: expected a structure name, got {structure!r}")
        self.structure = structure
        if weight is None and self.soft_only:
            raise TermError(f"{type(self).__name__}: is a soft term and needs a weight >= 0")
        if weight is not None and self.hard_only:
            raise TermError(f"{type(self).__name__}: is a hard constraint and takes no weight")
        if self.requires_affine and not quantity.affine:
            raise TermError(f"{type(self).__name__}('{structure}'): not convex on the non-affine quantity "
                            f"{quantity.describe()}; use Floor for lower limits of monotone quantities")
        self.weight = None if weight is None else nonneg_parameter(weight, "weight")

    #: attributes holding the term's cvxpy Parameters (a subclass adds its limit's names)
    _parameter_attributes: tuple[str, ...] = ("weight",)

    def __setattr__(self, key, value):
        # ``term.weight = 5`` or ``term.dose_Gy = 20`` replaced a Parameter the built program reads
        # with a number it never reads (CLARABEL kept the old value), or made a hard term soft
        # behind the program's back
        d = self.__dict__
        if key in d and key in self._parameter_attributes and value is not d[key]:
            if key != "weight":
                raise TermError(f"{type(self).__name__}.{key}: is a cvxpy Parameter; set {key}.value = "
                                f"{value!r} to change the limit (it is re-read at the next solve)")
            what = ("set weight.value = ... to change it (it is re-read at the next solve)"
                    if d[key] is not None else "a hard term takes no weight; make a soft term instead")
            raise TermError(f"{type(self).__name__}.weight: is fixed as a cvxpy Parameter when the term is "
                            f"made; {what}, got {value!r}")
        super().__setattr__(key, value)

    def check_parameters(self) -> None:
        """Refuse a Parameter value set after the term was made that no solver can take:
        ``term.limit.value = inf`` silently removed the limit (cvxpy checks only the sign), NaN
        or None left the solvers to fail on it. PlanProblem.solve calls this for every term."""
        for key, value in self.__dict__.items():
            if isinstance(value, Term):
                value.check_parameters()  # a wrapped term (Robust)
            elif isinstance(value, cp.Parameter) and not key.startswith("_"):
                v = value.value
                if v is None or not np.all(np.isfinite(v)):
                    raise TermError(f"{type(self).__name__}('{self.structure}').{key}: expected a finite "
                                    f"value, got {v!r}; set {key}.value to a finite number")

    @property
    def hard(self) -> bool:
        return self.weight is None

    # -- forms --------------------------------------------------------------------------------
    def _forms(self, forms, extra: dict) -> dict:
        """A mapping of form name -> values: a bare expression or array is the dose."""
        out = dict(forms) if isinstance(forms, Mapping) else {"dose": forms}
        out.update({k: v for k, v in extra.items() if v is not None})
        return out

    def quantity_expression(self, forms, ctx: TermContext, **extra) -> cp.Expression:
        """The per-voxel quantity this term's shape acts on, from the forms' expressions."""
        return self.quantity.expression(self._forms(forms, extra), ctx)

    def numeric_quantity(self, forms, ctx: TermContext, **extra):
        """The per-voxel quantity from numeric forms (the counterpart of quantity_expression)."""
        return self.quantity.value(self._forms(forms, extra), ctx)

    # -- cvxpy face ----------------------------------------------------------------------------
    def refresh(self, ctx: TermContext) -> None:
        """Recompute derived Parameter values (e.g. a dose floor from a BED prescription and
        alpha/beta) from the user-facing inputs. Called before every solve, so users can
        change inputs between solves without recompiling."""
        self.quantity.refresh(ctx)

    def violation(self, forms, ctx: TermContext, **extra) -> cp.Expression:
        """Convex expression that is <= 0 (element-wise) exactly when the term is met. ``forms``:
        the dose expression, or a mapping of form name -> expression (keywords add forms)."""
        return self._violation(self.quantity_expression(forms, ctx, **extra), ctx)

    def cost(self, forms, ctx: TermContext, **extra) -> cp.Expression:
        """Unweighted convex scalar cost of the soft form (the objective adds ``weight x cost``)."""
        return self._cost(self.quantity_expression(forms, ctx, **extra), ctx)

    def objective(self, forms, ctx: TermContext, **extra) -> cp.Expression | None:
        """``weight x cost`` in a DPP form a QP solver accepts, or None; the problem then puts
        the cost in an epigraph (``cost <= t``, objective ``weight x t``), which keeps a
        Parameter-holding cost DPP but turns a quadratic cost into a cone."""
        return self._objective(self.quantity_expression(forms, ctx, **extra), ctx)

    def penalty(self, forms, ctx: TermContext, **extra) -> cp.Expression:
        """``weight x cost`` as one expression (convex; not DPP when the cost has Parameters)."""
        return self.weight * self.cost(forms, ctx, **extra)

    def quadratic_conjugate(self, forms, ctx: TermContext, **extra) -> dict | None:
        """For a soft term that is, voxel by voxel, a quadratic spline of one linear form y (the
        dose, ...): its weighted cost h_i(y_i) and convex conjugate h_i*(v) = v t_i + v^2 / (2 c_i)
        for ``lower <= v <= upper`` (infinite outside), as the dict ``{"form", "slope" (u =
        h'(y), per voxel), "curvature" (c), "limit" (t), "lower", "upper"}``. None (the default)
        where the term is not of that kind. A first-order solver moves its dual point within
        these ranges to turn an inexact gradient into a duality-gap bound that holds exactly."""
        return None

    # shapes implement these on the quantity q
    def _violation(self, q, ctx):
        raise NotImplementedError

    def _cost(self, q, ctx):
        """Default: volume-weighted sum of the positive part of the violation (a scalar
        violation is used as is)."""
        g = self._violation(q, ctx)
        if g.size == 1:
            return cp.sum(cp.pos(g))
        return ctx.volumes @ cp.pos(g)

    def _objective(self, q, ctx):
        return None

    # -- numeric face ----------------------------------------------------------------------------
    def _cvxpy_only(self, what: str):
        raise TermError(f"{self.describe()}: {what} is not available numerically (cvxpy only)")

    def violation_values(self, forms, ctx: TermContext, **extra):
        """Numeric violation at numeric forms (same shape as :meth:`violation`)."""
        return self._violation_values(self.numeric_quantity(forms, ctx, **extra), ctx)

    def cost_value(self, forms, ctx: TermContext, **extra) -> float:
        """Numeric unweighted soft cost."""
        return self._cost_value(self.numeric_quantity(forms, ctx, **extra), ctx)

    def value(self, forms, ctx: TermContext, **extra) -> float:
        """Hard term: the largest violation (<= 0 when met); soft term: weight x cost."""
        if self.hard:
            g = self.violation_values(forms, ctx, **extra)
            return float(_xp(g).max(g))
        return float(self.weight.value) * self.cost_value(forms, ctx, **extra)

    def gradient(self, forms, ctx: TermContext, **extra) -> dict:
        """Gradient of the unweighted cost with respect to each form (smooth soft terms)."""
        forms = self._forms(forms, extra)
        g = self._gradient(self.quantity.value(forms, ctx), ctx)
        return {k: g * dq for k, dq in self.quantity.gradient(forms, ctx).items()}

    def project(self, forms, ctx: TermContext, **extra) -> dict:
        """Euclidean projection of the forms onto the hard set {violation <= 0}. Quantities that
        are a form themselves project in quantity space; others need a shape-specific rule."""
        forms = self._forms(forms, extra)
        name = self.quantity.form
        if name is not None:
            return {name: self._project(forms[name], ctx)}
        self._cvxpy_only(f"the projection for {self.quantity.describe()}")

    def projection_jacobian(self, forms, ctx: TermContext, **extra) -> dict | None:
        """The Jacobian of z - P(z) (P: :meth:`project`) per form as (d, U, C), meaning
        diag(d) + U C U^T, where a shape couples voxels (a CVaR limit); None where it does not
        give one (a voxelwise limit's Jacobian is diagonal, which a solver can probe)."""
        forms = self._forms(forms, extra)
        name = self.quantity.form
        if name is None:
            return None
        jac = self._projection_jacobian(forms[name], ctx)
        return None if jac is None else {name: jac}

    def prox(self, forms, tau: float, ctx: TermContext, **extra) -> dict:
        """Proximal operator of ``tau x weight x cost`` at the forms (one-form quantities)."""
        forms = self._forms(forms, extra)
        name = self.quantity.form
        if name is not None:
            return {name: self._prox(forms[name], tau, ctx)}
        self._cvxpy_only(f"the proximal operator for {self.quantity.describe()}")

    # shapes implement these on the quantity q
    def _violation_values(self, q, ctx):
        self._cvxpy_only("the violation")

    def _cost_value(self, q, ctx) -> float:
        g = self._violation_values(q, ctx)
        xp = _xp(g)
        if g.size == 1:
            return float(xp.maximum(g, 0).sum())
        return float(xp.asarray(ctx.volumes) @ xp.maximum(g, 0))

    def _gradient(self, q, ctx):
        self._cvxpy_only("the gradient")

    def _project(self, q, ctx):
        self._cvxpy_only("the projection")

    def _prox(self, q, tau, ctx):
        self._cvxpy_only("the proximal operator")

    def _projection_jacobian(self, q, ctx):
        return None

    # -- labels --------------------------------------------------------------------------------
    @property
    def _where(self) -> str:
        """The structure, quoted, for labels; a term on the weights themselves has none."""
        return "weights" if self.structure is None else f"'{self.structure}'"

    def describe(self) -> str:
        """Short human-readable label used in tables and error messages."""
        return f"{type(self).__name__}({self._where})"

    def __repr__(self) -> str:
        kind = "hard" if self.hard else f"soft, weight={self.weight.value:g}"
        return f"{self.describe()} [{kind}]"


def _xp(a):
    from .quantities import array_module

    return array_module(a)


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


def fixed_setting(name: str, attr: str, what: str) -> property:
    """A term setting fixed when the term is made: it shapes the convex program (not a
    Parameter), so a later assignment, which the cached program would not see, is refused."""

    def get(self):
        d = self.__dict__
        if attr not in d and name in d:  # a term pickled before the setting was fixed
            return d[name]
        return getattr(self, attr)  # an instance value, or a property of its own (a quantity's)

    def refuse(self, value):
        raise TermError(f"{type(self).__name__}.{name}: {what} is fixed when the term is made (it shapes "
                        f"the convex program); make a new term and put it in the problem's place "
                        f"(problem.terms[i] = {type(self).__name__}(...)), got {value!r}")

    return property(get, refuse)
