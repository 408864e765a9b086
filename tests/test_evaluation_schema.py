"""The evaluation room speaks one language: one goal schema and one tolerance for physical and
biological goals, metrics.json rows that old readers still read, plots that leave matplotlib's
backend alone, and one error hierarchy under BioplanError."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import optimizer
from objectives import LQ, bed
from objectives.errors import BiologyError, BioplanError, TermError
from optimizer import Grid, Patient, Plan, Structure, bio_evaluate, evaluate, plots, report
from optimizer.errors import (
    BeamError,
    EvaluationError,
    GeometryError,
    InfeasiblePlanError,
    PlanError,
    PlotError,
    SolverError,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {"structure", "metric", "op", "limit", "value", "unit", "met"}


def known_plan(t_dose, o_dose, fractions=25, solver=None):
    """1 x 2 x k grid of 1 cm^3 voxels: row 0 the target "T", row 1 the organ "O"."""
    k = max(len(t_dose), len(o_dose))
    grid = Grid((1, 2, k), (10.0, 10.0, 10.0))
    t = np.zeros(grid.shape, bool)
    t[0, 0, : len(t_dose)] = True
    o = np.zeros(grid.shape, bool)
    o[0, 1, : len(o_dose)] = True
    dose = np.zeros(grid.shape)
    dose[0, 0, : len(t_dose)] = t_dose
    dose[0, 1, : len(o_dose)] = o_dose
    patient = Patient(grid, np.zeros(grid.shape), [Structure("T", t, "target"), Structure("O", o, "oar")])
    return Plan(patient, np.zeros(1), fractions, dose, {"beam": np.zeros(1, int)}, [], "photon",
                dict(solver or {}))


LQ_TO = LQ({"T": 10.0, "O": 3.0}, alpha={"T": 0.3, "O": 0.1})


# -- one schema --------------------------------------------------------------------------------

@pytest.mark.parametrize("metric, unit", [
    ("D95", "Gy"), ("mean", "Gy"), ("max", "Gy"), ("min", "Gy"), ("V40Gy", "%"),
    ("BED D95", "Gy BED"), ("BED mean", "Gy BED"), ("EQD2 max", "Gy EQD2"), ("BED V60Gy", "%"),
    ("GARD min", ""),
])
def test_every_goal_has_the_one_schema_and_its_unit(metric, unit):
    plan = known_plan([50.0, 52.0], [30.0, 0.0])
    (res,) = evaluate.evaluate_goals(plan, [("T", metric, ">=", 1.0)], lq=LQ_TO)
    d = res.as_dict()
    assert set(d) == SCHEMA
    assert d["unit"] == unit == evaluate.metric_unit(metric)
    assert d["metric"] == metric and d["op"] == ">=" and d["limit"] == 1.0 and d["met"] is True
    assert isinstance(d["value"], float)
    json.dumps(d)  # JSON-ready


def test_values_by_hand_for_each_quantity():
    plan = known_plan([50.0, 50.0], [30.0, 0.0])
    goals = [("T", "D95", ">=", 50.0), ("T", "BED min", ">=", 60.0), ("T", "EQD2 mean", "<=", 50.0),
             ("O", "BED max", "<=", 40.0), ("T", "V50Gy", ">=", 100.0), ("T", "GARD min", ">=", 18.0)]
    res = evaluate.evaluate_goals(plan, goals, lq=LQ_TO)
    # 50 Gy / 25 fx at a/b 10: BED 60, EQD2 50; 30 Gy at a/b 3: BED 42; GARD 0.3 * 60 = 18
    np.testing.assert_allclose([r.value for r in res], [50.0, 60.0, 50.0, 42.0, 100.0, 18.0], rtol=1e-12)
    assert [r.met for r in res] == [True, True, True, False, True, True]
    # the historical biological entry point is the same evaluator with the same results
    old = bio_evaluate.evaluate_bio_goals(plan, goals, lq=LQ_TO)
    assert [r.as_dict() for r in old] == [r.as_dict() for r in res]
    assert bio_evaluate.BioGoalResult is evaluate.GoalResult


def test_summary_and_comparison_rows_use_the_schema():
    a, b = known_plan([50.0, 50.0], [30.0, 0.0]), known_plan([55.0, 55.0], [20.0, 0.0])
    goals = [("T", "BED min", ">=", 60.0), ("O", "D95", "<=", 35.0)]
    summary = bio_evaluate.plan_summary(a, LQ_TO, goals=goals)
    assert all(set(g) == SCHEMA for g in summary["goals"])
    assert [g["unit"] for g in summary["goals"]] == ["Gy BED", "Gy"]
    table = bio_evaluate.comparison({"A": a, "B": b}, LQ_TO, names=["T"], metrics=("D95", "BED max"),
                                    goals=goals)
    units = {(r["metric"], "op" in r): r["unit"] for r in table["rows"]}
    assert units == {("D95", False): "Gy", ("BED max", False): "Gy BED", ("BED min", True): "Gy BED",
                     ("D95", True): "Gy"}


# -- metrics.json ------------------------------------------------------------------------------

def test_metrics_json_physical_rows_keep_the_historical_keys(tmp_path):
    plan = known_plan([50.0, 52.0], [30.0, 0.0], solver={"status": "optimal"})
    goals = [("T", "D95", ">=", 50.0), ("O", "V20Gy", "<=", 60.0), ("T", "BED min", ">=", 60.0)]
    record = report.metrics(plan, "toy", goals, {"total": 1.0}, lq=LQ_TO)
    path = report.write_metrics(record, os.fspath(tmp_path))
    rows = json.loads(Path(path).read_text())["goals"]
    d95, v20, bio = rows
    assert set(d95) == SCHEMA | {"limit_Gy", "value_Gy"} and set(v20) == SCHEMA | {"limit_Gy", "value_Gy"}
    assert d95["limit_Gy"] == d95["limit"] == 50.0 and d95["value_Gy"] == d95["value"]
    assert d95["unit"] == "Gy" and v20["unit"] == "%" and v20["value_Gy"] == v20["value"] == 50.0
    assert set(bio) == SCHEMA and bio["unit"] == "Gy BED"  # no "_Gy" keys on biological rows
    # physical goals alone need no biology
    record = report.metrics(plan, "toy", goals[:2], {"total": 1.0})
    assert [g["met"] for g in record["goals"]] == [True, True]


# -- one tolerance -----------------------------------------------------------------------------

@pytest.mark.parametrize("hard_tolerance, met", [(0.02, True), (0.005, False)])
def test_bio_goals_are_judged_with_what_the_certified_dose_tolerance_moves_them(hard_tolerance, met):
    """The certified tolerance is in Gy of dose. At 50 Gy / 25 fx and alpha/beta 10 a dose
    change h moves BED by h (1 + 2d/(a/b)) = 1.4 h (d = 2 Gy) and GARD (alpha 0.3, beta 0.03) by
    h (alpha + 2 beta D / n) = 0.42 h, to first order. Each goal misses its limit by 0.01 (BED by
    0.014, GARD by 0.0042): met with h = 0.02, not with h = 0.005. (Before, a BED goal took h as
    Gy BED and GARD only 1e-6 relative, so a certified GARD floor was reported NOT met.)"""
    D = 50.0
    plan = known_plan([D, D], [0.0], solver={"hard_tolerance": hard_tolerance})
    b, g = float(bed(D, 25, 10.0)), 0.3 * float(bed(D, 25, 10.0))
    goals = [("T", "min", ">=", D + 0.01), ("T", "BED min", ">=", b + 0.014), ("T", "max", "<=", D - 0.01),
             ("T", "BED max", "<=", b - 0.014), ("T", "GARD min", ">=", g + 0.0042),
             ("T", "EQD2 min", ">=", D + 0.01 * 1.4 / 1.2)]
    res = evaluate.evaluate_goals(plan, goals, lq=LQ_TO)
    assert [r.met for r in res] == [met] * 6
    h = hard_tolerance
    assert [r.tolerance for r in res] == pytest.approx([h, 1.4 * h, h, 1.4 * h, 0.42 * h, 1.4 / 1.2 * h],
                                                       rel=1e-3)
    # an explicit tolerance is in the goal's unit (Gy, Gy BED, Gy EQD2; GARD: relative only)
    explicit = evaluate.evaluate_goals(plan, goals, tolerance=0.015, lq=LQ_TO)
    assert [r.met for r in explicit] == [True, True, True, True, False, True]
    assert not any(r.met for r in evaluate.evaluate_goals(plan, goals, tolerance=0.0, lq=LQ_TO))


def test_round_off_is_met_and_a_relative_tolerance_applies_to_every_quantity():
    D = 50.0
    plan = known_plan([D, D], [0.0])  # no certified tolerance: 1e-6 relative only
    b = float(bed(D, 25, 10.0))
    goals = [("T", "min", ">=", D * (1 + 5e-7)), ("T", "BED min", ">=", b * (1 + 5e-7)),
             ("T", "GARD min", ">=", 0.3 * b * (1 + 5e-7))]
    assert all(r.met for r in evaluate.evaluate_goals(plan, goals, lq=LQ_TO))
    far = [(s, m, op, lim * (1 + 1e-4)) for s, m, op, lim in goals]
    assert not any(r.met for r in evaluate.evaluate_goals(plan, far, lq=LQ_TO))
    assert all(r.met for r in evaluate.evaluate_goals(plan, far, lq=LQ_TO, rel_tol=2e-4))
    # volume goals (%) take only the relative part, never the dose tolerance
    hot = known_plan([D, D], [0.0], solver={"hard_tolerance": 5.0})
    (v,) = evaluate.evaluate_goals(hot, [("T", "V50Gy", "<=", 99.0)])
    assert not v.met and v.unit == "%"


def test_goal_table_prints_units_and_the_tolerance():
    plan = known_plan([50.0, 50.0], [30.0, 0.0], solver={"hard_tolerance": 0.001})
    text = evaluate.goal_table(plan, [("T", "D95", ">=", 50.0), ("O", "BED max", "<=", 40.0)], lq=LQ_TO)
    lines = text.splitlines()
    assert "unit" in lines[0]
    assert "Gy" in lines[1] and "yes" in lines[1]
    assert "Gy BED" in lines[2] and "NO" in lines[2]
    assert "0.001 Gy" in lines[-1] and "1e-06" in lines[-1]


@pytest.mark.parametrize("goals, match", [
    ([("T", "D95", ">", 50.0)], "op"),
    ([("T", "D95%", ">=", 50.0)], "metric"),
    ([("T", "D95", ">=")], r"goals\[0\]"),
    ([("T", "D95", ">=", float("nan"))], "limit"),
    ("T D95 >= 50", "goals"),
])
def test_bad_goals_raise_an_evaluation_error(goals, match):
    plan = known_plan([50.0, 50.0], [30.0, 0.0])
    with pytest.raises(EvaluationError, match=match):
        evaluate.evaluate_goals(plan, goals)


def test_negative_dose_and_bad_tolerance_are_evaluation_errors():
    with pytest.raises(EvaluationError, match="negative dose"):
        evaluate.evaluate_goals(known_plan([50.0, -1.0], [0.0]), [("T", "D95", ">=", 50.0)])
    with pytest.raises(EvaluationError, match="tolerance"):
        evaluate.evaluate_goals(known_plan([50.0], [0.0]), [("T", "D95", ">=", 50.0)], tolerance=-1.0)


# -- plots -------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["use", "env"])
def test_importing_plots_leaves_the_backend_alone(how):
    setup = "import matplotlib; matplotlib.use('svg'); " if how == "use" else "import matplotlib; "
    code = (setup + "before = matplotlib.get_backend(); import sys, optimizer.plots; "
            "after = matplotlib.get_backend(); "
            "print(before, after, 'matplotlib.pyplot' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    if how == "env":
        env["MPLBACKEND"] = "pdf"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                         check=True).stdout.split()
    before, after, pyplot_loaded = out
    assert before == after == ("svg" if how == "use" else "pdf")
    assert pyplot_loaded == "False"


def _legend(fig):
    (ax,) = fig.axes
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_dvh_legend_labels_for_one_plan_and_several(tmp_path):
    a, b = known_plan([50.0, 52.0], [30.0, 0.0]), known_plan([48.0, 55.0], [20.0, 5.0])
    fig = plots.dvh(a)
    assert _legend(fig) == ["T", "O"]  # one plan: each curve labelled by its structure
    assert _legend(plots.dvh(a, labels="IMRT")) == ["T IMRT", "O IMRT"]
    assert _legend(plots.dvh([a, b])) == ["T plan 1", "O plan 1", "T plan 2", "O plan 2"]
    assert _legend(plots.dvh([a, b], names=["T"], labels=["A", "B"])) == ["T A", "T B"]
    fig.savefig(tmp_path / "dvh.png")  # a pyplot-free figure still saves
    assert (tmp_path / "dvh.png").stat().st_size > 1000
    with pytest.raises(PlotError, match="labels"):
        plots.dvh([a, b], labels=["only one"])
    with pytest.raises(PlotError, match="plans"):
        plots.dvh([])


# -- one error hierarchy -----------------------------------------------------------------------

@pytest.mark.parametrize("error", [
    GeometryError, BeamError, PlanError, InfeasiblePlanError, SolverError, EvaluationError, PlotError,
    BiologyError, TermError, optimizer.DicomError, optimizer.MatradError,
])
def test_every_error_type_is_a_bioplan_error(error):
    assert issubclass(error, BioplanError) and issubclass(error, ValueError)


def test_solver_error_is_a_plan_error_and_a_runtime_error():
    assert issubclass(SolverError, PlanError) and issubclass(SolverError, RuntimeError)
    with pytest.raises(PlanError):
        raise SolverError("status 'inaccurate'")
    assert not issubclass(InfeasiblePlanError, SolverError)


def test_geometry_plots_and_evaluation_raise_their_own_errors():
    with pytest.raises(GeometryError, match="table"):
        optimizer.hu_to_red(np.zeros(3), table=[[0.0, 1.0], [0.0, 1.1]])
    with pytest.raises(GeometryError, match="table"):
        optimizer.hu_to_red(np.zeros(3), table=[[0.0, 1.0], [np.nan, 1.1]])
    with pytest.raises(PlotError, match="beam"):
        plots.spot_maps([{0: np.ones((2, 2))}], beam=3)
    with pytest.raises(EvaluationError, match="volume_pct"):
        evaluate.dose_at_volume([1.0, 2.0], 120)


_OWN = ["optimizer/evaluate", "optimizer/plots.py", "optimizer/report.py", "optimizer/geometry.py",
        "optimizer/bio_evaluate.py"]


def test_evaluation_plots_and_geometry_raise_no_bare_builtin_errors():
    files = [p for own in _OWN
             for p in ((ROOT / own).rglob("*.py") if (ROOT / own).is_dir() else [ROOT / own])]
    bare = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(exc, ast.Name) and exc.id in ("ValueError", "TypeError", "BioplanError") \
                        and isinstance(node.exc, ast.Call):
                    bare.append(f"{path.relative_to(ROOT)}:{node.lineno} {exc.id}")
    assert not bare, bare


def test_metrics_json_is_strict_json_with_null_for_missing_numbers(tmp_path):
    """NaN and infinite values were written as NaN / Infinity, which strict JSON readers (jq,
    JavaScript) refuse; they are now null, and NumPy scalars are plain numbers."""
    record = {"case": "x", "structures": {"T": {"D95_Gy": float("nan"), "max_Gy": float("inf"),
                                                "mean_Gy": np.float32(2.5), "dvh": np.array([1.0, np.nan])}}}
    path = report.write_metrics(record, os.fspath(tmp_path))

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    back = json.loads(Path(path).read_text(), parse_constant=refuse)
    assert back["structures"]["T"] == {"D95_Gy": None, "max_Gy": None, "mean_Gy": 2.5, "dvh": [1.0, None]}
