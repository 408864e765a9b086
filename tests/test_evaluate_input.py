"""Dose-volume metrics refuse a NaN, infinite, boolean or non-numeric threshold naming the
parameter, instead of answering 0 % / CI 0 or reading True as 1 %."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer import evaluate
from optimizer.errors import EvaluationError

DOSE = np.linspace(0.0, 60.0, 61)
BAD = [float("nan"), float("inf"), -float("inf"), True, False, np.bool_(True), "20", None, [20.0],
       np.array([20.0, 30.0]), 1j]


@pytest.mark.parametrize("bad", BAD)
def test_volume_at_dose_refuses_a_bad_dose(bad):
    with pytest.raises(EvaluationError, match="dose_Gy: expected a finite dose in Gy"):
        evaluate.volume_at_dose(DOSE, bad)


@pytest.mark.parametrize("bad", BAD + [0.0, -5.0])
def test_paddick_refuses_a_bad_prescription(bad):
    grid = DOSE.reshape(1, 1, -1)
    with pytest.raises(EvaluationError, match="prescription_Gy: expected a finite prescription dose > 0"):
        evaluate.paddick_conformity_index(grid, grid > 30, bad)


def test_paddick_refuses_a_nan_dose_grid():
    grid = DOSE.reshape(1, 1, -1).copy()
    grid[0, 0, 40] = np.nan  # a NaN voxel inside the target would silently drop out of the PIV
    with pytest.raises(EvaluationError, match="dose_grid: contains NaN"):
        evaluate.paddick_conformity_index(grid, grid > 30, 30.0)


@pytest.mark.parametrize("bad", BAD + [-1.0, 100.5])
def test_dose_at_volume_refuses_a_bad_volume(bad):
    with pytest.raises(EvaluationError, match="volume_pct: expected a volume in % from 0 to 100"):
        evaluate.dose_at_volume(DOSE, bad)


def test_numpy_and_integral_thresholds_still_work():
    assert evaluate.volume_at_dose(DOSE, np.float32(30.0)) == evaluate.volume_at_dose(DOSE, 30)
    assert evaluate.dose_at_volume(DOSE, np.int64(50)) == pytest.approx(evaluate.dose_at_volume(DOSE, 50.0))
    grid = DOSE.reshape(1, 1, -1)
    assert evaluate.paddick_conformity_index(grid, grid >= 30, np.float64(30.0)) == pytest.approx(1.0)
    assert evaluate.volume_at_dose(DOSE, -1.0) == pytest.approx(100.0)


def test_bed_at_volume_goes_through_the_same_check():
    from objectives.radiobiology import LQ
    from optimizer import Grid, Patient, Plan, Structure

    grid = Grid((1, 1, 4), (10.0, 10.0, 10.0))
    mask = np.ones(grid.shape, bool)
    patient = Patient(grid, np.zeros(grid.shape), [Structure("T", mask, "target")])
    plan = Plan(patient, np.zeros(1), 25, np.full(grid.shape, 50.0), {"beam": np.zeros(1, int)}, [], "photon")
    with pytest.raises(EvaluationError, match="volume_pct"):
        evaluate.bed_at_volume(plan, "T", LQ({"T": 10.0}), True)


def test_a_voxel_without_volume_is_no_part_of_any_volume_metric():
    """Volumes of 0 are accepted, but such a voxel still had a point on the cumulative volume
    curve: doses 100 / 10 / 10 / 10 with volumes 0 / 1 / 1 / 1 gave D2 89.2, D10 46.0 and max 100
    beside V50Gy = 0 %. Every metric now equals the one without that voxel."""
    from optimizer.evaluate.dose_volume import dose_at_volume, dose_statistics, volume_at_dose

    d, v = np.array([100.0, 10.0, 10.0, 10.0]), np.array([0.0, 1.0, 1.0, 1.0])
    with_zero, without = dose_statistics(d, v), dose_statistics(d[1:], v[1:])
    assert with_zero == without
    assert with_zero["max_Gy"] == 10.0 and dose_at_volume(d, 2, v) == 10.0 and volume_at_dose(d, 50, v) == 0.0
