"""Plan archive round trip, fluence maps, and evaluation metrics against hand calculations."""

import numpy as np
import pytest

from objectives import SquaredDeviation
from optimizer import Grid, Patient, Plan, PlanError, PlanProblem, Structure, evaluate


def test_dx_vx_by_hand():
    d = np.arange(1.0, 101.0)  # 100 equal voxels, 1..100 Gy
    # sorted descending, voxel i (1-based) sits at (i - 0.5) % of the volume:
    # D50 interpolates between 51 Gy (49.5 %) and 50 Gy (50.5 %) -> 50.5 Gy
    assert evaluate.dose_at_volume(d, 50) == pytest.approx(50.5)
    assert evaluate.dose_at_volume(d, 95) == pytest.approx(5.5)
    assert evaluate.dose_at_volume(d, 0) == 100.0 and evaluate.dose_at_volume(d, 100) == 1.0
    assert evaluate.volume_at_dose(d, 50) == pytest.approx(51.0)
    bins, vol = evaluate.dvh(d, bins=np.array([0.0, 1.0, 50.0, 100.0, 101.0]))
    np.testing.assert_allclose(vol, [100.0, 100.0, 51.0, 1.0, 0.0])
    # volume weighting: 20 Gy holds 25 % (centre 12.5 %), 10 Gy 75 % (centre 62.5 %);
    # D50 = 20 - (50 - 12.5) / 50 * 10 = 12.5 Gy
    assert evaluate.dose_at_volume([10.0, 20.0], 50, volumes=[3.0, 1.0]) == pytest.approx(12.5)


def test_indices_by_hand():
    d = np.concatenate([np.full(98, 50.0), [40.0, 60.0]])
    # D2 = 50 (interpolated between 60 at 0.5 % and 50 at 1.5 %, then 50 to 98 %); HI = 0 here
    assert evaluate.homogeneity_index(d) == pytest.approx(0.0, abs=1e-12)
    grid = np.zeros((1, 1, 10))
    grid[0, 0, 2:7] = 60.0  # PIV: 5 voxels
    target = np.zeros((1, 1, 10), bool)
    target[0, 0, 4:8] = True  # TV: 4 voxels, 3 of them inside the PIV
    assert evaluate.paddick_conformity_index(grid, target, 50.0) == pytest.approx(9 / 20)


def test_goal_parsing_errors():
    with pytest.raises(ValueError, match="metric"):
        evaluate.metric_value(np.ones(3), "D95%")


def test_plan_round_trip_is_exact(toy, tmp_path):
    patient, inf, _ = toy
    problem = PlanProblem(patient, inf, fractions=5)
    problem += SquaredDeviation("T", 10.0, weight=1.0)
    plan = problem.solve()
    path = tmp_path / "toy.plan"
    plan.save(path)
    back = Plan.load(path)
    np.testing.assert_array_equal(back.weights, plan.weights)
    np.testing.assert_array_equal(back.dose, plan.dose)
    np.testing.assert_array_equal(back.patient.ct_hu, plan.patient.ct_hu)
    for a, b in zip(plan.patient.structures, back.patient.structures):
        assert a.name == b.name and a.role == b.role
        np.testing.assert_array_equal(a.mask, b.mask)
    for k in plan.beamlets:
        np.testing.assert_array_equal(back.beamlets[k], plan.beamlets[k])
    assert back.solver["status"] == "optimal" and back.solver["objective"] == plan.solver["objective"]
    assert back.patient.grid == plan.patient.grid and back.fractions == 5
    with pytest.raises(FileExistsError, match="overwrite=True"):
        plan.save(path)
    plan.save(path, overwrite=True)
    (tmp_path / "junk.plan").write_bytes(b"not a zip")
    with pytest.raises(PlanError, match="not a bioplan plan archive"):
        Plan.load(tmp_path / "junk.plan")


def test_the_archive_keeps_the_density_table_and_save_refuses_what_load_would(toy, tmp_path):
    """A patient's own HU -> density table (matRad's ct.hlut) survives the archive (it fell back to
    the default table: 1.167 vs 1.297 at 500 HU); a plan load would refuse is not written."""
    import dataclasses

    patient, inf, _ = toy
    problem = PlanProblem(patient, inf, fractions=5)
    problem += SquaredDeviation("T", 10.0, weight=1.0)
    plan = problem.solve()
    own = Patient(patient.grid, np.full(patient.grid.shape, 500.0), patient.structures)
    own.density_table = np.array([[-1000.0, 0.0], [0.0, 1.0], [3000.0, 2.0]])
    own.density_table_source = "the file's ct.hlut"
    back = Plan.load(dataclasses.replace(plan, patient=own).save(tmp_path / "own.plan"))
    np.testing.assert_array_equal(back.patient.density_table, own.density_table)
    assert back.patient.density_table_source == "the file's ct.hlut"
    # by hand: 500 HU on the line from (0, 1) to (3000, 2)
    assert back.patient.relative_electron_density()[0, 0, 0] == pytest.approx(1.0 + 500.0 / 3000.0)
    assert getattr(Plan.load(plan.save(tmp_path / "plain.plan")).patient, "density_table", None) is None
    bad = {"a space in the name": dataclasses.replace(plan, extras={"RBE dose": np.ones(plan.dose.shape)}),
           "off the grid": dataclasses.replace(plan, extras={"bad": np.ones(3)}),
           "NaN dose": dataclasses.replace(plan, dose=np.where(plan.dose > 0, np.nan, 0.0))}
    for what, p in bad.items():
        target = tmp_path / f"{what}.plan"
        with pytest.raises(PlanError, match="not saved, Plan.load would refuse it: "):
            p.save(target)
        assert not target.exists(), what
        assert not list(tmp_path.glob(".*.tmp"))


def test_fluence_maps_place_weights(toy):
    patient, inf, _ = toy
    w = np.array([1.0, 2.0, 3.0, 4.0])
    plan = Plan.from_weights(patient, inf, w, 1)
    (m,) = plan.fluence_maps()
    np.testing.assert_array_equal(m, [[1.0, 2.0, 3.0, 4.0]])


def test_goal_table_on_known_dose():
    grid = Grid((1, 1, 4), (1, 1, 1))
    mask = np.ones(grid.shape, bool)
    patient = Patient(grid, np.zeros(grid.shape), [Structure("PTV", mask, "target")])
    plan = Plan(patient, np.zeros(1), 1, np.array([[[48.0, 50.0, 52.0, 54.0]]]), {"beam": np.zeros(1)},
                [], "photon")
    res = evaluate.evaluate_goals(plan, [("PTV", "max", "<=", 55.0), ("PTV", "D50", ">=", 52.0)])
    assert res[0].met and res[0].value == 54.0
    assert not res[1].met and res[1].value == pytest.approx(51.0)
