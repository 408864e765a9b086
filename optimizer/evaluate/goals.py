"""Clinical goals: one evaluator and one result type for physical and biological goals.

A goal is a tuple ``(structure, metric, op, limit)``. The metric is a quantity followed by a
volume metric of :mod:`optimizer.evaluate.dose_volume`: ``"D95"``, ``"mean"``, ``"max"``, ``"V20Gy"``
(physical dose), ``"BED D95"``, ``"EQD2 mean"``, ``"BED max"``, ``"GARD min"``, ``"BED V60Gy"``.
``op`` is ``">="`` or ``"<="``; ``limit`` is in the metric's unit.

Schema of a result (:meth:`GoalResult.as_dict`), the same for every goal::

    {"structure": str, "metric": str, "op": ">=" | "<=", "limit": float, "value": float,
     "unit": str, "met": bool}

``unit`` is "Gy" for physical dose metrics (Dx, mean, max, min), "%" for volume metrics (Vx of
any quantity), "Gy BED" / "Gy EQD2" for BED / EQD2 dose metrics and "" for GARD
(dimensionless). ``optimizer.report`` adds the historical ``limit_Gy`` / ``value_Gy`` keys to
physical-dose rows of ``metrics.json``.

Tolerance (:func:`goal_tolerance`): a goal is met within the tolerance the solver certified hard
terms to (``plan.solver["hard_tolerance"]``, Gy of physical dose) or the ``tolerance`` given (in
the goal's unit, for goals in Gy, Gy BED or Gy EQD2); never below ``GOAL_RELATIVE_TOLERANCE``
(1e-6) x |limit|, or ``rel_tol`` x |limit| when that is larger. With the certified tolerance, a
BED, EQD2 or GARD goal (not a volume one) is judged with what that dose tolerance changes its
metric by: the metric recomputed with every voxel's dose moved by it, towards the limit. A BED
floor certified to 0.01 Gy of dose is thus met at BED limit - 0.01 (1 + 2d/(alpha/beta)). Volume
(%) goals, and GARD goals given an explicit ``tolerance``, get only the relative part.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import EvaluationError
from . import dose_volume as _dvh
from .biology import UNITS, quantity_name, values

logger = logging.getLogger(__name__)

#: Smallest tolerance a goal is judged with, relative to its limit: doses printed to 0.01 Gy
#: that differ from the limit in the 7th digit are solver round-off, not a missed goal.
GOAL_RELATIVE_TOLERANCE = 1e-6

_OPS = (">=", "<=")


@dataclass
class GoalResult:
    """One evaluated goal: ``value op limit`` judged within ``tolerance``.

    Attributes
    ----------
    structure, metric, op, limit : the goal as given (``limit`` in ``unit``)
    value : the plan's value of the metric, in ``unit``
    met : whether ``value op limit`` holds within ``tolerance``
    unit : "Gy", "%", "Gy BED", "Gy EQD2" or "" (GARD); see the module docstring
    tolerance : the absolute tolerance the goal was judged with, in ``unit``
    quantity : "dose", "BED", "EQD2" or "GARD" (what the metric is computed on)
    """

    structure: str
    metric: str
    op: str
    limit: float
    value: float
    met: bool
    unit: str = "Gy"
    tolerance: float = 0.0
    quantity: str = "dose"

    def as_dict(self) -> dict:
        """The goal schema: ``{"structure", "metric", "op", "limit", "value", "unit", "met"}``."""
        return {"structure": self.structure, "metric": self.metric, "op": self.op,
                "limit": self.limit, "value": self.value, "unit": self.unit, "met": self.met}


#: Historical name of the biological goal result; every goal result is a :class:`GoalResult`.
BioGoalResult = GoalResult


# -- metric strings on plans -------------------------------------------------------------------

def _split(spec: str) -> tuple[str, str]:
    parts = str(spec).split()
    if len(parts) == 1:
        return "dose", parts[0]
    if len(parts) == 2:
        return quantity_name(parts[0]), parts[1]
    raise EvaluationError(f"metric: expected e.g. 'D95', 'BED D95' or 'EQD2 mean', got {spec!r}")


def metric_unit(spec: str) -> str:
    """Unit of a metric string's value: "%" for Vx, else the quantity's unit (Gy, Gy BED, ...)."""
    quantity, m = _split(spec)
    return "%" if _dvh.is_volume_metric(m) else UNITS[quantity]


def metric(plan, structure: str, spec: str, lq=None, rsi=None) -> float:
    """Value of a metric string on a plan: "D95" (physical, Gy), "BED D95", "EQD2 mean",
    "BED max", "GARD min", "BED V60Gy" (%), ... (a quantity, then an
    :func:`optimizer.evaluate.metric_value` metric); its unit is :func:`metric_unit`."""
    quantity, m = _split(spec)
    _dvh._parse_metric(m)  # name a bad metric before reading any biology
    return _dvh.metric_value(values(plan, structure, quantity, lq=lq, rsi=rsi), m)


# -- tolerance ---------------------------------------------------------------------------------

def _tolerance_number(x, name: str) -> float:
    if isinstance(x, bool) or not (isinstance(x, (int, float, np.number)) and np.isfinite(x) and x >= 0):
        raise EvaluationError(f"{name}: expected a finite number >= 0, got {x!r}")
    return float(x)


def goal_tolerance(plan, limit: float, tolerance: float | None = None, rel_tol: float = 0.0) -> float:
    """Tolerance a goal with this limit is judged with: ``tolerance`` if given (in the goal's
    unit), else the plan's certified hard-term tolerance (``plan.solver["hard_tolerance"]``, 0
    when absent); never below ``max(GOAL_RELATIVE_TOLERANCE, rel_tol) x |limit|``."""
    tolerance = (_certified_dose_tolerance(plan) if tolerance is None
                 else _tolerance_number(tolerance, "tolerance"))
    relative = max(GOAL_RELATIVE_TOLERANCE, _tolerance_number(rel_tol, "rel_tol"))
    return max(tolerance, relative * abs(float(limit)))


def _certified_dose_tolerance(plan) -> float:
    """The plan's certified hard-term tolerance (``plan.solver["hard_tolerance"]``, 0 when absent)."""
    return _tolerance_number((getattr(plan, "solver", None) or {}).get("hard_tolerance", 0.0),
                             "plan.solver['hard_tolerance']")


class _DoseShifted:
    """A read-only view of a plan whose dose is moved by ``shift_gy`` in every voxel (clipped at
    0): the plan a certified dose tolerance allows, for judging biological goals."""

    def __init__(self, plan, shift_gy: float):
        self._plan = plan
        self.dose = np.maximum(np.asarray(plan.dose, dtype=float) + shift_gy, 0.0)

    def __getattr__(self, name):
        return getattr(self._plan, name)

    def structure_dose(self, name: str) -> np.ndarray:
        return self.dose[self._plan.patient.structure(name).mask]


# -- the evaluator -----------------------------------------------------------------------------

def _goal(goal, i: int) -> tuple[str, str, str, float]:
    if isinstance(goal, (str, bytes)) or not isinstance(goal, Sequence) or len(goal) != 4:
        raise EvaluationError(f"goals[{i}]: expected (structure, metric, op, limit), got {goal!r}")
    structure, spec, op, limit = goal
    if op not in _OPS:
        raise EvaluationError(f"goals[{i}] op: expected '>=' or '<=', got {op!r}")
    if isinstance(limit, bool) or not (isinstance(limit, (int, float, np.number)) and np.isfinite(limit)):
        raise EvaluationError(f"goals[{i}] limit: expected a finite number, got {limit!r}")
    return structure, spec, op, float(limit)


def evaluate_goals(plan, goals, tolerance: float | None = None, *, lq=None, rsi=None,
                   rel_tol: float = 0.0) -> list[GoalResult]:
    """Check goals ``(structure, metric, op, limit)``, physical or biological, on a plan's
    full-grid dose.

    Parameters
    ----------
    plan : a Plan
    goals : iterable of ``(structure, metric, op, limit)``; metric as :func:`metric`
    tolerance : absolute tolerance in the goal's unit for dose-like goals (Gy, Gy BED, Gy EQD2);
        default the solver's certified hard-term tolerance ``plan.solver["hard_tolerance"]``
        (0 when absent). Pass ``tolerance=0`` for the exact comparison (still 1e-6 relative).
    lq : LQ (or mapping structure -> LQ) for BED / EQD2 / GARD goals
    rsi : radiosensitivity index (scalar or 3-D map) for GARD goals (else GARD from ``lq``)
    rel_tol : relative tolerance (x |limit|) when larger than ``GOAL_RELATIVE_TOLERANCE``

    Returns
    -------
    One :class:`GoalResult` per goal, in order.
    """
    if isinstance(goals, (str, bytes)):
        raise EvaluationError(f"goals: expected a list of (structure, metric, op, limit), got {goals!r}")
    out = []
    for i, goal in enumerate(goals):
        structure, spec, op, limit = _goal(goal, i)
        quantity, _ = _split(spec)
        value = metric(plan, structure, spec, lq=lq, rsi=rsi)
        unit = metric_unit(spec)
        dose_like = unit.startswith("Gy")  # % and dimensionless GARD: only the relative part
        if tolerance is None and quantity != "dose" and unit != "%":
            # the certified tolerance is in Gy of physical dose: a BED / EQD2 / GARD goal gets what
            # a dose within it can change the metric by (dBED/dD = 1 + 2d/(alpha/beta) > 1)
            shift = _certified_dose_tolerance(plan) * (1.0 if op == ">=" else -1.0)
            moved = metric(_DoseShifted(plan, shift), structure, spec, lq=lq, rsi=rsi) if shift else value
            tol = goal_tolerance(plan, limit, abs(float(moved) - float(value)), rel_tol)
        else:
            tol = goal_tolerance(plan, limit, tolerance if dose_like else 0.0, rel_tol)
        met = value >= limit - tol if op == ">=" else value <= limit + tol
        out.append(GoalResult(structure, spec, op, limit, float(value), bool(met), unit, tol, quantity))
        logger.debug("goal %s %s %s %g %s: value %g, %s (tolerance %g)", structure, spec, op, limit, unit,
                     value, "met" if met else "NOT met", tol)
    return out


def evaluate_bio_goals(plan, goals, lq=None, rsi=None, tolerance: float | None = None,
                       rel_tol: float = 0.0) -> list[GoalResult]:
    """:func:`evaluate_goals` with the historical argument order (``lq`` and ``rsi`` first)."""
    return evaluate_goals(plan, goals, tolerance, lq=lq, rsi=rsi, rel_tol=rel_tol)


def goal_table(plan, goals, tolerance: float | None = None, *, lq=None, rsi=None,
               rel_tol: float = 0.0) -> str:
    """Plain-text table of goals (any quantity) with value, unit and met / not met, and the
    tolerance used printed under it; arguments as :func:`evaluate_goals`."""
    results = evaluate_goals(plan, goals, tolerance, lq=lq, rsi=rsi, rel_tol=rel_tol)
    ws = max([12] + [len(str(g.structure)) + 2 for g in results])
    wm = max([8] + [len(g.metric) + 2 for g in results])
    rows = [f"{'structure':<{ws}}{'metric':<{wm}}{'goal':>12}{'value':>10}  {'unit':<9}met"]
    for g in results:
        rows.append(f"{g.structure:<{ws}}{g.metric:<{wm}}{g.op + ' ' + format(g.limit, 'g'):>12}"
                    f"{g.value:>10.2f}  {g.unit or '-':<9}{'yes' if g.met else 'NO'}")
    base = goal_tolerance(plan, 0.0, tolerance)
    relative = max(GOAL_RELATIVE_TOLERANCE, _tolerance_number(rel_tol, "rel_tol"))
    if tolerance is None:  # the certified dose tolerance: biological goals get what it moves them by
        rows.append(f"(met within {base:g} Gy or {relative:g} x the goal, whichever is larger; BED, EQD2 and "
                    f"GARD goals within what {base:g} Gy of dose moves them by; % goals within {relative:g} "
                    f"x the goal)")
    else:
        rows.append(f"(met within {base:g} Gy (Gy BED, Gy EQD2) or {relative:g} x the goal, whichever is "
                    f"larger; % and GARD goals within {relative:g} x the goal)")
    return "\n".join(rows)


def structure_metrics(plan, names=None) -> dict[str, dict[str, float]]:
    """``dose_statistics`` of each structure's physical dose (all structures by default)."""
    names = names or plan.patient.structure_names
    return {n: _dvh.dose_statistics(values(plan, n, "dose")) for n in names}
