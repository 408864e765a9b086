"""Robust scenario doses on a dose grid (``scenario_influence(..., dose_grid=)``): computed on the
nominal influence's dose grid with depths traced through the CT, so the nominal scenario is the
nominal influence, and a shifted / range-error scenario at dose-grid points that are CT voxel
centres equals that scenario computed on the CT grid itself (2 mm CT, 6 mm dose grid)."""

import numpy as np
import pytest

from optimizer import Grid, PlanError, ProtonBeams, Structure, phantoms
from optimizer.robust.influence import scenario_influence
from optimizer.robust.scenarios import Scenario


def _case():
    ct = phantoms.water_box(size_mm=(40.0, 100.0, 60.0), spacing_mm=2.0, air_margin_mm=21.0)
    z, y, x = np.meshgrid(*ct.grid.axes_mm(), indexing="ij")
    ct.add_structure(Structure("T", (np.abs(z) <= 6) & (np.abs(x) <= 6) & (np.abs(y) <= 20), "target"))
    g = ct.grid
    dose_grid = Grid(tuple((n - 1) // 3 + 1 for n in g.shape), (6.0, 6.0, 6.0), g.origin_mm)
    beams = ProtonBeams([0.0], energies_MeV=[90.0], spot_spacing_mm=6.0, margin_mm=0.0)
    return ct, dose_grid, beams


SCENARIOS = [Scenario("nominal"), Scenario("y+", (0.0, 4.0, 0.0)), Scenario("r", range_pct=3.5, range_mm=1.0)]


def test_scenarios_on_a_dose_grid_trace_the_ct():
    ct, dose_grid, beams = _case()
    nominal = beams.influence(ct, target="T", dose_grid=dose_grid, isocenter_mm=(0, 0, 0))
    # dose_grid and target_rule come from the nominal influence; the patient is the CT one
    inf = scenario_influence(beams, ct, SCENARIOS, ["T"], nominal, target="T", isocenter_mm=(0, 0, 0),
                             client=None)
    assert inf.grid == dose_grid and inf.ct_grid == ct.grid
    s0 = inf.forms["dose_s0"]
    rows = s0.voxel_index
    assert np.abs(s0.rows_of(rows) - nominal.rows_of(rows)).max() <= 1e-6 * nominal.matrix.max()
    # the scenarios on the CT grid, read at the CT voxels that are dose-grid centres
    fine = scenario_influence(beams, ct, SCENARIOS, ["T"], target="T", isocenter_mm=(0, 0, 0), client=None)
    key = [{(round(u, 3), round(v, 3)): i for i, (u, v) in enumerate(zip(s.beamlets["u_mm"],
                                                                         s.beamlets["v_mm"]))}
           for s in (inf, fine)]
    common = sorted(set(key[0]) & set(key[1]))
    assert len(common) >= 4
    cols = [[k_[c] for c in common] for k_ in key]
    z, y, x = np.unravel_index(rows, dose_grid.shape)
    at = np.ravel_multi_index((3 * z, 3 * y, 3 * x), ct.grid.shape)
    for k in (1, 2):
        a = inf.forms[f"dose_s{k}"].rows_of(rows)[:, cols[0]].sum(axis=1)
        b = fine.forms[f"dose_s{k}"].rows_of(at)[:, cols[1]].sum(axis=1)
        high = b > 0.1 * b.max()
        assert high.sum() > 10
        np.testing.assert_allclose(a[high], b[high], rtol=1e-3)


def test_a_dose_grid_influence_with_the_dose_grid_patient_is_refused():
    ct, dose_grid, beams = _case()
    nominal = beams.influence(ct, target="T", dose_grid=dose_grid, isocenter_mm=(0, 0, 0))
    coarse = ct.resample(dose_grid)
    with pytest.raises(PlanError, match="problem.ct_patient"):
        scenario_influence(beams, coarse, SCENARIOS[:1], ["T"], nominal, target="T", client=None)
