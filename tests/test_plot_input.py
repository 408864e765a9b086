"""``optimizer.plots`` raises PlotError, naming the argument, for input it cannot draw: a single
structure name is one name (not a list of letters), a patient without structures, a wrong-shape
map, out-of-range or fractional slice indices, no fluence maps, a path instead of a Plan, and
NaN in the map (refused by dose_slices as by dvh)."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer import Grid, Patient, Plan, Structure, plots
from optimizer.errors import PlotError


def _plan(structures=True) -> Plan:
    grid = Grid((4, 6, 6), (5.0, 5.0, 5.0))
    t = np.zeros(grid.shape, bool)
    t[1:3, 2:4, 2:4] = True
    o = np.zeros(grid.shape, bool)
    o[1:3, 4:6, 2:4] = True
    dose = np.where(t, 50.0, 10.0)
    structs = [Structure("PTV", t, "target"), Structure("OAR", o, "oar")] if structures else []
    patient = Patient(grid, np.zeros(grid.shape), structs)
    beams = [{"gantry_deg": 0.0, "map_shape": [2, 3], "beamlet_mm": 5.0},
             {"gantry_deg": 180.0, "map_shape": [2, 3], "beamlet_mm": 5.0}]
    table = {"beam": np.repeat([0, 1], 6), "row": np.tile(np.repeat([0, 1], 3), 2),
             "col": np.tile([0, 1, 2], 4)}
    return Plan(patient, np.linspace(0.1, 1.2, 12), 25, dose, table, beams, "photon")


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_dvh_takes_one_structure_name_as_one_name():
    fig = plots.dvh(_plan(), names="PTV")
    assert _legend(fig.axes[0]) == ["PTV"]
    assert _legend(plots.dvh(_plan(), names=["PTV", "OAR"]).axes[0]) == ["PTV", "OAR"]


def test_dvh_unknown_structure_is_a_plot_error_naming_names():
    with pytest.raises(PlotError, match=r"names: structure 'Lung' not found; known structures: PTV, OAR"):
        plots.dvh(_plan(), names="Lung")
    with pytest.raises(PlotError, match="names: expected structure names"):
        plots.dvh(_plan(), names=[3])


def test_dvh_of_a_patient_without_structures():
    with pytest.raises(PlotError, match="names: no structures to draw"):
        plots.dvh(_plan(structures=False))


@pytest.mark.parametrize("not_a_plan", ["file.plan", b"file.plan", 3, None, {"dose": 1}])
def test_dvh_of_something_else_than_a_plan(not_a_plan):
    with pytest.raises(PlotError, match="plans: expected an optimizer.Plan"):
        plots.dvh(not_a_plan)


def test_dvh_of_a_path_hints_at_loading_it(tmp_path):
    with pytest.raises(PlotError, match=r"got PosixPath.*Plan\.load|got WindowsPath.*Plan\.load"):
        plots.dvh(tmp_path / "file.plan")


def test_dvh_names_the_plan_and_structure_with_nan_dose():
    a, b = _plan(), _plan()
    b.dose[1, 2, 2] = np.nan
    with pytest.raises(PlotError, match=r"plans\[1\] structure 'PTV' dose: contains NaN"):
        plots.dvh([a, b])


def test_dose_slices_draws_a_patient_without_structures_without_contours():
    fig = plots.dose_slices(_plan(structures=False))
    assert fig.axes[0].get_legend() is None
    assert len(fig.axes[0].images) == 2  # CT and dose


def test_dose_slices_takes_one_structure_name():
    fig = plots.dose_slices(_plan(), names="PTV")
    assert _legend(fig.axes[0]) == ["PTV"]


@pytest.mark.parametrize("kwargs, match", [
    ({"values": np.zeros((4, 6))}, r"values: expected a 3-D map of the grid's shape \(4, 6, 6\)"),
    ({"values": np.zeros((6, 6, 4))}, r"values: expected a 3-D map of the grid's shape"),
    ({"values": "dose"}, r"values: expected an array of numbers"),
    ({"z_index": 999}, r"z_index: expected an integer slice index along z in 0\.\.3, got 999"),
    ({"z_index": 2.5}, r"z_index: expected an integer slice index along z in 0\.\.3, got 2\.5"),
    ({"z_index": -1}, r"z_index: expected an integer slice index"),
    ({"z_index": True}, r"z_index: expected an integer slice index"),
    ({"z_index": "1"}, r"z_index: expected an integer slice index"),
    ({"x_index": 6}, r"x_index: expected an integer slice index along x in 0\.\.5"),
    ({"names": "Lung"}, r"names: structure 'Lung' not found"),
    ({"threshold_pct": float("nan")}, r"threshold_pct: expected a percentage"),
])
def test_dose_slices_bad_arguments(kwargs, match):
    with pytest.raises(PlotError, match=match):
        plots.dose_slices(_plan(), **kwargs)


def test_dose_slices_accepts_numpy_and_integral_indices():
    plots.dose_slices(_plan(), z_index=np.int64(1), x_index=2.0)


def test_dose_slices_refuses_nan_like_dvh():
    plan = _plan()
    plan.dose[1, 2, 2] = np.nan
    with pytest.raises(PlotError, match=r"plan\.dose: contains NaN or infinite values"):
        plots.dose_slices(plan)
    values = np.zeros(plan.dose.shape)
    values[0, 0, 0] = np.inf
    with pytest.raises(PlotError, match=r"values: contains NaN or infinite values"):
        plots.dose_slices(_plan(), values=values)


def test_dose_slices_of_a_path():
    with pytest.raises(PlotError, match="plan: expected an optimizer.Plan, got str"):
        plots.dose_slices("file.plan")


def test_fluence_maps_bad_maps():
    plan = _plan()
    assert len(plots.fluence_maps(plan).axes) >= 2
    with pytest.raises(PlotError, match=r"maps: no maps to draw \(expected one 2-D array per beam, 2 "):
        plots.fluence_maps(plan, maps=[])
    with pytest.raises(PlotError, match=r"maps: expected one 2-D array per beam \(2 beams\), got 3"):
        plots.fluence_maps(plan, maps=[np.ones((2, 3))] * 3)
    with pytest.raises(PlotError, match=r"maps\[1\]: expected a non-empty 2-D array"):
        plots.fluence_maps(plan, maps=[np.ones((2, 3)), np.ones(3)])
    with pytest.raises(PlotError, match=r"maps\[0\]: contains NaN"):
        plots.fluence_maps(plan, maps=[np.full((2, 3), np.nan), np.ones((2, 3))])
    with pytest.raises(PlotError, match="maps: expected a list of 2-D arrays"):
        plots.fluence_maps(plan, maps=np.ones((2, 3)))
    with pytest.raises(PlotError, match="plan: expected an optimizer.Plan"):
        plots.fluence_maps("file.plan")
