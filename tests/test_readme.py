"""The README's "A term of your own" block runs as written, and its term works through both
faces: the planner (cvxpy) and the numeric protocol."""

import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _block(heading: str) -> str:
    text = README.read_text()
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, f"no python block under '{heading}'"
    return blocks[0]


def test_user_defined_term_block_runs_and_is_short():
    code = _block("A term of your own")
    term_lines = code.split("class DoseSpread")[1].split("\n\n")[0].count("\n") + 1
    assert term_lines <= 15
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    plan, term = ns["plan"], ns["DoseSpread"]("PTV", weight=0.2)
    assert plan.solver["status"] == "optimal"
    dose = plan.structure_dose("PTV")
    from objectives import TermContext

    ctx = TermContext("PTV", np.full(dose.size, 1.0 / dose.size), np.arange(dose.size), 25, (1, 1, dose.size))
    assert term.value(dose, ctx) == pytest.approx(0.2 * (dose.max() - dose.mean()), rel=1e-12)
    # the spread term made the PTV more homogeneous than the prescription term alone
    from objectives import SquaredDeviation
    from optimizer import PlanProblem

    alone = PlanProblem(ns["patient"], ns["influence"], fractions=25)
    alone += SquaredDeviation("PTV", 50.0, weight=1.0)
    d0 = alone.solve().structure_dose("PTV")
    assert dose.max() - dose.mean() < d0.max() - d0.mean()


def test_shapes_block_builds_terms():
    ns: dict = {}
    exec(compile(_block("Terms: a shape applied to a quantity"), "README.md", "exec"), ns)
