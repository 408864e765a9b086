"""Property-based test over the public constructors and ``solve`` (issue 15, item 11).

One argument at a time is replaced by an arbitrary value (None, bools, ints, NaN/inf floats,
strings, lists, arrays of the wrong shape); the call must either succeed or raise a
``BioplanError`` subclass whose message names the field. Never a raw TypeError,
AttributeError or NumPy traceback.
"""

import numpy as np
import pytest
from conftest import make_toy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from objectives import LQ, DVHMin, MaxDose, SquaredDeviation
from objectives.errors import BioplanError
from optimizer import Grid, Patient, PhotonBeams, PlanProblem, Structure

ANY = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4), st.lists(st.floats(-5, 5), max_size=4),
    st.builds(lambda n: np.full(n, np.nan), st.integers(0, 4)),
)
PATIENT, INF, _ = make_toy()
GRID_SHAPE = PATIENT.grid.shape


def _call(make, field):
    try:
        make()
    except BioplanError as err:
        assert field.lower() in str(err).lower(), f"message does not name {field!r}: {err}"
    except Exception as err:  # noqa: BLE001 - the property: nothing but BioplanError escapes
        pytest.fail(f"{type(err).__name__} escaped for field {field!r}: {err}")


CASES = {
    "Grid.shape": (lambda v: Grid(v, (1, 1, 1)), "shape"),
    "Grid.spacing_mm": (lambda v: Grid((1, 2, 3), v), "spacing_mm"),
    "Grid.origin_mm": (lambda v: Grid((1, 2, 3), (1, 1, 1), v), "origin_mm"),
    "Structure.name": (lambda v: Structure(v, np.ones(GRID_SHAPE, bool)), "name"),
    "Structure.mask": (lambda v: Structure("X", v), "mask"),
    "Structure.role": (lambda v: Structure("X", np.ones(GRID_SHAPE, bool), v), "role"),
    "Patient.ct_hu": (lambda v: Patient(PATIENT.grid, v), "ct_hu"),
    "Patient.structures": (lambda v: Patient(PATIENT.grid, np.zeros(GRID_SHAPE), v), "structure"),
    "PlanProblem.fractions": (lambda v: PlanProblem(PATIENT, INF, v), "fractions"),
    "PlanProblem.max_voxels_per_structure": (
        lambda v: PlanProblem(PATIENT, INF, 5, max_voxels_per_structure=v), "max_voxels_per_structure"),
    "PlanProblem.seed": (lambda v: PlanProblem(PATIENT, INF, 5, seed=v), "seed"),
    "PlanProblem.hard_tolerance": (
        lambda v: PlanProblem(PATIENT, INF, 5, hard_tolerance=v), "hard_tolerance"),
    "PlanProblem.influence": (lambda v: PlanProblem(PATIENT, v, 5), "influence"),
    "MaxDose.dose_Gy": (lambda v: MaxDose("T", v), "dose_Gy"),
    "MaxDose.weight": (lambda v: MaxDose("T", 10.0, weight=v) if v is not None else None, "weight"),
    "MaxDose.structure": (lambda v: MaxDose(v, 10.0), "structure"),
    "DVHMin.volume_pct": (lambda v: DVHMin("T", 10.0, volume_pct=v), "volume_pct"),
    "LQ.alpha_beta": (lambda v: LQ({"T": v}), "alpha_beta"),
    "LQ.default": (lambda v: LQ(default=v), "default"),
    "PhotonBeams.gantry_deg": (lambda v: PhotonBeams(v), "gantry_deg"),
    "PhotonBeams.beamlet_mm": (lambda v: PhotonBeams([0], beamlet_mm=v), "beamlet_mm"),
    "PhotonBeams.cutoff_sigma": (lambda v: PhotonBeams([0], cutoff_sigma=v), "cutoff_sigma"),
    "PhotonBeams.min_relative": (lambda v: PhotonBeams([0], min_relative=v), "min_relative"),
}


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=ANY)
def test_constructors_fail_only_with_named_bioplan_errors(name, value):
    make, field = CASES[name]
    _call(lambda: make(value), field)


def _problem():
    problem = PlanProblem(PATIENT, INF, fractions=5)
    problem += SquaredDeviation("T", 20.0, weight=1.0)
    problem += MaxDose("O", 8.0)
    return problem


@settings(max_examples=25, deadline=None)
@given(solver=ANY, max_rounds=st.one_of(st.just(3), ANY))
def test_solve_fails_only_with_named_bioplan_errors(solver, max_rounds):
    problem = _problem()
    try:
        plan = problem.solve(solver=solver, max_rounds=max_rounds)
    except BioplanError as err:
        msg = str(err).lower()
        assert "solver" in msg or "max_rounds" in msg, err
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"{type(err).__name__} escaped from solve(solver={solver!r}, "
                    f"max_rounds={max_rounds!r}): {err}")
    else:
        assert plan.solver["status"] == "optimal"
