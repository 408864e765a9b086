"""benchmarks/bench_lbfgs_memory.py: its cases build the documented problems, a solver error becomes a
row with the reason, and a bad case name is refused (the timed solves themselves take minutes)."""

import importlib.util
import pathlib

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_lbfgs_memory.py"
_spec = importlib.util.spec_from_file_location("bench_lbfgs_memory", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_a_solver_error_is_a_row_that_says_why(capsys):
    bench.main(["--cases", "proton8", "--memory", "0"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("machine:") and "memory" in out[1] and "evals" in out[1]
    row = out[2]
    assert row.split("|")[0].strip() == "proton8" and "failed after" in row
    assert "memory: expected an integer >= 1, got 0" in row


def test_the_proton_case_is_the_documented_one():
    problem = bench._problem("proton8")
    assert problem.influence.modality == "proton"
    assert problem.patient.grid.spacing_mm == pytest.approx((8.0, 8.0, 8.0))
    names = [t.describe() for t in problem.terms]
    assert any("Core" in n and "24" in n for n in names) and len(names) == 7
    assert all(t.hard for t in problem.terms if "DVH" in type(t).__name__)


def test_bad_case_is_refused():
    with pytest.raises(SystemExit):
        bench.main(["--cases", "electron"])
