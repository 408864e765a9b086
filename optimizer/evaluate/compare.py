"""Summaries and side-by-side comparison tables of plans: physical and biological metrics, TCP,
NTCP, GARD and goals (judged by :func:`optimizer.evaluate.evaluate_goals`)."""

from __future__ import annotations

from collections.abc import Mapping

from objectives import radiobiology as rb

from ..errors import EvaluationError
from .biology import bed_values, dose_values, eqd2_values, values
from .goals import evaluate_goals, metric, metric_unit
from .outcome import DEFAULT_CLONOGEN_DENSITY_PER_CC, ntcp, statistics, tcp

_DEFAULT_METRICS = ("D95", "D50", "D2", "mean", "BED D95", "BED D50", "BED D2", "BED mean",
                    "EQD2 mean", "EQD2 max")


def plan_summary(plan, lq, names=None, tcp_structures=(), ntcp_parameters=None, rsi=None,
                 clonogen_density_per_cc=DEFAULT_CLONOGEN_DENSITY_PER_CC, goals=(),
                 goal_rel_tol: float = 0.0, goal_tolerance: float | None = None) -> dict:
    """Key physical and biological metrics of one plan as a JSON-ready dict.

    Parameters
    ----------
    plan : a solved Plan
    lq : LQ (or mapping name -> LQ) for BED / EQD2 / TCP (and GARD when ``rsi`` is None)
    names : structures to summarize (default all)
    tcp_structures : targets whose Poisson TCP and GARD statistics are reported (their LQ
        needs alpha)
    ntcp_parameters : mapping structure -> organ key of NTCP_PARAMETERS or LKBParameters
    rsi : radiosensitivity index (scalar or map): GARD from the RSI (Scott 2017) instead of
        from the LQ's alpha and beta
    goals : (structure, metric, op, limit) goals, physical or biological metric strings
    goal_rel_tol, goal_tolerance : ``rel_tol`` and ``tolerance`` of
        :func:`optimizer.evaluate.evaluate_goals` (default: the plan's certified tolerance)

    Returns
    -------
    ``{"structures": {name: {"dose": stats, "BED": stats, "EQD2": stats}}, "TCP": {name: p},
    "NTCP": {name: p}, "GARD": {name: stats}, "goals": [...]}`` (stats as
    :func:`optimizer.evaluate.dose_statistics`, Gy; GARD stats are dimensionless; goals in the
    schema of :meth:`optimizer.evaluate.GoalResult.as_dict`).
    """
    names = list(names or plan.patient.structure_names)
    out: dict = {"structures": {}, "TCP": {}, "NTCP": {}, "GARD": {}, "goals": []}
    for n in names:
        out["structures"][n] = {"dose": statistics(dose_values(plan, n)),
                                "BED": statistics(bed_values(plan, n, lq)),
                                "EQD2": statistics(eqd2_values(plan, n, lq))}
    for n in tcp_structures:
        out["TCP"][n] = tcp(plan, n, lq, clonogen_density_per_cc)
        out["GARD"][n] = statistics(values(plan, n, "GARD", lq=lq, rsi=rsi))
    for n, p in (ntcp_parameters or {}).items():
        out["NTCP"][n] = ntcp(plan, n, lq, p)
    out["goals"] = [g.as_dict() for g in evaluate_goals(plan, goals, goal_tolerance, lq=lq, rsi=rsi,
                                                         rel_tol=goal_rel_tol)]
    return out


def comparison(plans: Mapping[str, object], lq, names=None, tcp_structures=(), ntcp_parameters=None,
               rsi=None, clonogen_density_per_cc=DEFAULT_CLONOGEN_DENSITY_PER_CC, goals=(),
               metrics=_DEFAULT_METRICS, goal_rel_tol: float = 0.0,
               goal_tolerance: float | None = None) -> dict:
    """Side-by-side metrics of two or more plans (the dict form of :func:`compare_plans`).

    Parameters
    ----------
    plans : mapping label -> Plan (all on the same patient)
    lq : one LQ / mapping structure -> LQ used for every plan, or a mapping plan label ->
        (LQ or mapping) when the plans are to be evaluated with different biology
    names : structures of the metric rows (default all); ``metrics`` : metric strings of those
        rows (see :func:`optimizer.evaluate.metric`)
    tcp_structures : targets with TCP, "GARD min" and "GARD mean" rows (GARD from ``rsi`` if
        given, else from the LQ's alpha and beta)
    ntcp_parameters : mapping structure -> LKB parameters (organ key or LKBParameters)
    goals, goal_rel_tol, goal_tolerance : goal rows, judged by
        :func:`optimizer.evaluate.evaluate_goals` (``rel_tol``, ``tolerance``)

    Returns
    -------
    ``{"labels": [...], "rows": [{"structure", "metric", "unit", "values": {label: value}}, ...]}``
    (TCP and NTCP rows have unit "1"); goal rows add ``"op"``, ``"limit"`` and
    ``"met": {label: bool}``.
    """
    if not isinstance(plans, Mapping) or len(plans) < 1:
        raise EvaluationError("plans: expected a mapping of label to Plan")
    labels = list(plans)
    first = next(iter(plans.values()))
    names = list(names or first.patient.structure_names)
    lq_of = _per_plan_lq(lq, labels)
    goals = list(goals)
    rows = []
    for n in names:
        for spec in metrics:
            rows.append({"structure": n, "metric": spec, "unit": metric_unit(spec),
                         "values": {k: metric(p, n, spec, lq=lq_of[k]) for k, p in plans.items()}})
    for n in tcp_structures:
        rows.append({"structure": n, "metric": "TCP", "unit": "1",
                     "values": {k: tcp(p, n, lq_of[k], clonogen_density_per_cc) for k, p in plans.items()}})
        for spec in ("GARD min", "GARD mean"):
            rows.append({"structure": n, "metric": spec, "unit": metric_unit(spec),
                         "values": {k: metric(p, n, spec, lq=lq_of[k], rsi=rsi) for k, p in plans.items()}})
    for n, par in (ntcp_parameters or {}).items():
        rows.append({"structure": n, "metric": "NTCP", "unit": "1",
                     "values": {k: ntcp(p, n, lq_of[k], par) for k, p in plans.items()}})
    results = {k: evaluate_goals(p, goals, goal_tolerance, lq=lq_of[k], rsi=rsi, rel_tol=goal_rel_tol)
               for k, p in plans.items()}
    for i, (structure, spec, op, limit) in enumerate(goals):
        res = {k: results[k][i] for k in labels}
        rows.append({"structure": structure, "metric": spec, "unit": metric_unit(spec), "op": op,
                     "limit": float(limit), "values": {k: r.value for k, r in res.items()},
                     "met": {k: r.met for k, r in res.items()}})
    return {"labels": labels, "rows": rows}


def _per_plan_lq(lq, labels):
    if isinstance(lq, Mapping) and set(lq) == set(labels) and len(labels) > 0 \
            and all(isinstance(v, (rb.LQ, Mapping)) for v in lq.values()):
        # a mapping keyed by plan label (only when its keys are exactly the labels)
        return dict(lq)
    return {k: lq for k in labels}


def compare_plans(plans: Mapping[str, object], lq, **kwargs) -> str:
    """Plain-text side-by-side table of :func:`comparison` (same arguments): one row per
    structure and metric, one column per plan; goal rows add the goal and "yes"/"NO"."""
    table = comparison(plans, lq, **kwargs)
    labels = table["labels"]
    width = max(12, *(len(k) + 2 for k in labels))
    head = f"{'structure':<12}{'metric':<14}{'goal':>12}" + "".join(f"{k:>{width}}" for k in labels)
    lines = [head, "-" * len(head)]
    for row in table["rows"]:
        goal = f"{row['op']} {row['limit']:g}" if "op" in row else ""
        cells = []
        for k in labels:
            text = _fmt(row["values"][k], row["metric"])
            if "met" in row:
                text += " " + ("yes" if row["met"][k] else "NO")
            cells.append(f"{text:>{width}}")
        lines.append(f"{row['structure']:<12}{row['metric']:<14}{goal:>12}" + "".join(cells))
    return "\n".join(lines)


def _fmt(v: float, spec: str) -> str:
    if spec in ("TCP", "NTCP"):
        return f"{v:.3g}" if v >= 1e-3 or v == 0 else f"{v:.1e}"
    return f"{v:.2f}"
