"""benchmarks/bench_certificate.py: its measurement of a plan (soft objective and hard violation by
the first-order model) agrees with a hand calculation, and the comparison of both solvers on a toy
finds the certificate holding (the timed CT cases take minutes)."""

import importlib.util
import pathlib

import numpy as np
import pytest
from conftest import make_toy

from objectives import MaxDose, SquaredDeviation
from optimizer import PlanProblem

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_certificate.py"
_spec = importlib.util.spec_from_file_location("bench_certificate", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_measured_objective_and_violation_by_hand():
    patient, inf, dense = make_toy()
    problem = PlanProblem(patient, inf, fractions=5, max_voxels_per_structure=None)
    problem += SquaredDeviation("T", 20.0, weight=2.0)
    problem += MaxDose("O", 3.0)
    w = np.full(inf.n_beamlets, 1.0)
    dose = 5 * dense @ w  # course dose, Gy
    t, o = patient.structure("T").mask.ravel(), patient.structure("O").mask.ravel()
    soft, viol = bench.measured(problem, w)
    assert soft == pytest.approx(2.0 * np.mean((dose[t] - 20.0) ** 2), rel=1e-5)
    assert viol == pytest.approx(dose[o].max() - 3.0, rel=1e-5)


def test_the_certificate_holds_on_a_toy():
    patient, inf, _ = make_toy()
    problem = PlanProblem(patient, inf, fractions=5, max_voxels_per_structure=None)
    problem += SquaredDeviation("T", 20.0, weight=1.0)
    problem += MaxDose("O", 9.0)
    r = bench.compare(problem)
    assert r["viol_cl"] <= 1e-3 and r["viol_fo"] <= 0.01
    assert r["excess"] <= r["claimed_gap"]
