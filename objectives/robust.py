"""Robust planning terms: one term over uncertainty scenarios (issue 10).

``Robust(term, mode, scenarios=n)`` applies a planning term to the dose of its structure in each
of ``n`` scenarios (setup shifts, range errors): the linear forms ``dose_s0 .. dose_s{n-1}``
of an influence set built by :func:`optimizer.robust.influence.scenario_influence` (Gy, total
course, like every dose a term sees). Modes, all exact convex programs:

- ``"composite"``: the worst scenario's cost, ``max_s cost(d_s)`` (an epigraph over the scenario
  costs; Fredriksson et al., Med Phys 2011;38:1672);
- ``"voxelwise"``: the term on the voxelwise worst-case dose, per voxel the minimum over the
  scenarios for lower limits (targets) and the maximum for upper limits (organs at risk)
  (Pflugfelder et al., Phys Med Biol 2008;53:1689). The side follows the wrapped shape
  (``Min``, ``CVaRMin``, ``SquaredUnder``, ``Floor``: lower; ``Max``, ``Mean``, ``CVaRMax``,
  ``GEUDMax``, ``SquaredOver``: upper) or is given as ``side=``; the min of affine doses is
  concave and a lower-limit shape is convex and non-increasing in it (and the max convex under
  a non-decreasing convex shape), so the composition stays convex;
- ``"expected"``: the mean cost over the scenarios (equal probabilities).

A hard robust term holds in every scenario (``composite`` and ``voxelwise`` mean the same for a
constraint: its worst case is every scenario); ``"expected"`` is for soft terms only. The term
carries the wrapped term's weight Parameter (a sweep of ``term.weight`` re-solves the robust
problem) and works on any term whose quantity reads the dose alone (dose, BED, EQD2, GARD).

Numeric faces (first-order solver): violation, cost and projection in every mode (scenario
blocks are separable, so the projection of a hard term is the wrapped projection per
scenario); gradient and prox for ``"expected"`` (the mean of the scenario gradients / the prox
per scenario at step tau / n). The worst cases are not smooth: their gradient and prox say
"cvxpy only"; the first-order solver lifts a soft worst case of a smooth wrapped cost exactly
(an epigraph variable t with ``cost_s <= t`` for composite, per-voxel variables u with
``u <= d_s`` / ``u >= d_s`` for voxelwise: :mod:`optimizer.solvers.epigraph`), and
``PlanProblem`` solves the others (e.g. a soft ``Max``) with CLARABEL.
"""

from __future__ import annotations

from collections.abc import Sized

import cvxpy as cp

from . import shapes
from .errors import TermError
from .quantities import Quantity, array_module
from .terms import Term, TermContext

MODES = ("composite", "voxelwise", "expected")

#: Shapes whose voxelwise worst case is the minimum dose over the scenarios (lower limits)
_LOWER = (shapes.Min, shapes.CVaRMin, shapes.SquaredUnder, shapes.Floor)
#: ... and the maximum (upper limits)
_UPPER = (shapes.Max, shapes.Mean, shapes.CVaRMax, shapes.GEUDMax, shapes.SquaredOver)


def scenario_form(k: int) -> str:
    """Name of the dose form of scenario k (0-based) in an influence set: ``"dose_s{k}"``."""
    return f"dose_s{int(k)}"


class ScenarioDoses(Quantity):
    """The total-course dose (Gy) of a structure's voxels in each of ``n`` scenarios: the forms
    ``dose_s0 .. dose_s{n-1}``. Only :class:`Robust` reads it (per scenario, through the
    wrapped term's own quantity)."""

    form = None
    invertible = False

    def __init__(self, n: int):
        self.n = n
        self.base_forms = tuple(scenario_form(k) for k in range(n))

    def expression(self, forms, ctx):
        raise TermError(f"{self.describe()}: read per scenario by Robust; no single expression")

    value = gradient = expression

    def describe(self) -> str:
        return f"ScenarioDoses({self.n})"


def _count(scenarios) -> int:
    if isinstance(scenarios, bool):
        raise TermError(f"Robust.scenarios: expected a number of scenarios >= 1 or a list of them, got "
                        f"{scenarios!r}")
    if isinstance(scenarios, Sized) and not isinstance(scenarios, (str, bytes)):
        n = len(scenarios)
    else:
        try:
            n = int(scenarios)
        except (TypeError, ValueError):
            n = 0
        if n != scenarios:
            n = 0
    if n < 1:
        raise TermError(f"Robust.scenarios: expected a number of scenarios >= 1 or a list of them, got "
                        f"{scenarios!r}")
    return n


class Robust(Term):
    """A planning term over uncertainty scenarios (module docstring).

    Parameters
    ----------
    term : the nominal term (hard or soft); its quantity must read the dose alone
    mode : "composite" (worst scenario), "voxelwise" (voxelwise worst-case dose) or "expected"
    scenarios : number of scenarios n (or the scenario list itself, e.g. ``nominal9()``); the
        problem's influence set must carry the forms ``dose_s0 .. dose_s{n-1}``
    side : voxelwise mode only: "lower" (per voxel the minimum dose over the scenarios) or
        "upper" (the maximum); default from the wrapped shape
    """

    def __init__(self, term: Term, mode: str = "composite", scenarios=9, side: str | None = None):
        if not isinstance(term, Term) or isinstance(term, Robust):
            raise TermError(f"Robust.term: expected a (non-robust) objectives Term, got {term!r}")
        if mode not in MODES:
            raise TermError(f"Robust.mode: expected one of {MODES}, got {mode!r}")
        if term.quantity.base_forms != ("dose",):
            raise TermError(f"Robust.term: {term.describe()} reads {term.quantity.base_forms}; robust terms "
                            "wrap terms of the dose alone (dose, BED, EQD2, GARD)")
        if term.hard and mode == "expected":
            raise TermError(f"Robust.mode: 'expected' is for soft terms; the hard {term.describe()} holds in "
                            "every scenario with mode='composite'")
        super().__init__(term.structure, None, ScenarioDoses(_count(scenarios)))
        self.term, self.mode = term, mode
        self.__dict__["weight"] = term.weight  # the wrapped term's Parameter: one weight to sweep
        self.soft_only, self.hard_only = term.soft_only, term.hard_only
        self.smooth = bool(term.smooth) and mode == "expected"
        if hasattr(term, "limit"):
            self.limit = term.limit
        self.side = None
        if mode == "voxelwise":
            if side is None:
                side = "lower" if isinstance(term, _LOWER) else "upper" if isinstance(term, _UPPER) else None
                if side is None:
                    raise TermError(f"Robust.side: {term.describe()} is neither a lower nor an upper limit; "
                                    "give side='lower' or 'upper' for the voxelwise worst case")
            if side not in ("lower", "upper"):
                raise TermError(f"Robust.side: expected 'lower' or 'upper', got {side!r}")
            self.side = side

    @property
    def n_scenarios(self) -> int:
        return self.quantity.n

    # -- forms per scenario -------------------------------------------------------------------
    def scenario_forms(self, forms, extra: dict | None = None) -> list[dict]:
        """One ``{"dose": ...}`` mapping per scenario from the scenario forms."""
        forms = self._forms(forms, extra or {})
        missing = [f for f in self.quantity.base_forms if f not in forms]
        if missing:
            more = "..." if len(missing) > 3 else ""
            raise TermError(f"{self.describe()}: needs the scenario dose forms {missing[:3]}{more}"
                            f"; got {sorted(forms)} (build the influence with optimizer.robust.influence."
                            "scenario_influence)")
        return [{"dose": forms[f]} for f in self.quantity.base_forms]

    def refresh(self, ctx: TermContext) -> None:
        self.term.refresh(ctx)

    def _worst_quantity(self, per, combine):
        return per[0] if len(per) == 1 else combine(per)

    # -- cvxpy face ----------------------------------------------------------------------------
    def violation(self, forms, ctx, **extra):
        gs = [self.term.violation(f, ctx) for f in self.scenario_forms(forms, extra)]
        return cp.hstack([cp.reshape(g, (g.size,), order="C") for g in gs])

    def cost(self, forms, ctx, **extra):
        scen = self.scenario_forms(forms, extra)
        if self.mode == "voxelwise":
            qs = [self.term.quantity_expression(f, ctx) for f in scen]
            q = self._worst_quantity(qs, lambda a: cp.minimum(*a) if self.side == "lower" else cp.maximum(*a))
            return self.term._cost(q, ctx)
        costs = [self.term.cost(f, ctx) for f in scen]
        if self.mode == "expected":
            return sum(costs) / len(costs)
        return self._worst_quantity(costs, lambda a: cp.maximum(*a))

    def objective(self, forms, ctx, **extra):
        if self.mode != "expected":
            return None  # the worst cases go into the problem's epigraph (cost <= t)
        objs = [self.term.objective(f, ctx) for f in self.scenario_forms(forms, extra)]
        return None if any(o is None for o in objs) else sum(objs) / len(objs)

    # -- numeric face --------------------------------------------------------------------------
    def violation_values(self, forms, ctx, **extra):
        gs = [self.term.violation_values(f, ctx) for f in self.scenario_forms(forms, extra)]
        xp = array_module(*gs)
        return xp.concatenate([xp.reshape(xp.asarray(g), (-1,)) for g in gs])

    def cost_value(self, forms, ctx, **extra) -> float:
        scen = self.scenario_forms(forms, extra)
        if self.mode == "voxelwise":
            qs = [self.term.numeric_quantity(f, ctx) for f in scen]
            xp = array_module(*qs)
            stack = xp.stack(qs)
            q = stack.min(axis=0) if self.side == "lower" else stack.max(axis=0)
            return float(self.term._cost_value(q, ctx))
        costs = [self.term.cost_value(f, ctx) for f in scen]
        return float(sum(costs) / len(costs)) if self.mode == "expected" else float(max(costs))

    def gradient(self, forms, ctx, **extra) -> dict:
        if self.mode != "expected":
            self._cvxpy_only(f"the gradient of the {self.mode} worst case (not smooth)")
        n = self.n_scenarios
        return {name: self.term.gradient(f, ctx)["dose"] / n
                for name, f in zip(self.quantity.base_forms, self.scenario_forms(forms, extra))}

    def project(self, forms, ctx, **extra) -> dict:
        """Per scenario (the hard set is a product over the scenario blocks)."""
        return {name: self.term.project(f, ctx)["dose"]
                for name, f in zip(self.quantity.base_forms, self.scenario_forms(forms, extra))}

    def prox(self, forms, tau: float, ctx, **extra) -> dict:
        if self.mode != "expected":
            self._cvxpy_only(f"the proximal operator of the {self.mode} worst case")
        n = self.n_scenarios
        return {name: self.term.prox(f, tau / n, ctx)["dose"]
                for name, f in zip(self.quantity.base_forms, self.scenario_forms(forms, extra))}

    # -- labels --------------------------------------------------------------------------------
    def describe(self) -> str:
        side = f" {self.side}" if getattr(self, "side", None) else ""
        inner = getattr(self, "term", None)
        return (f"Robust({inner.describe() if inner else '?'}, {getattr(self, 'mode', '?')}{side}, "
                f"{self.quantity.n} scenarios)")
