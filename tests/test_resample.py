"""Coarser dose grids: Patient.resample (CT trilinear, structures by the centre-point rule) and
resample_dose (trilinear back onto the CT grid), checked against exact values."""

import dataclasses

import numpy as np
import pytest

from optimizer import (
    BeamError,
    GeometryError,
    Grid,
    Patient,
    PhotonBeams,
    PlanError,
    PlanProblem,
    Structure,
    phantoms,
)
from optimizer.resample import coarse_grid, resample_dose, support_mask


@pytest.fixture(scope="module")
def fine():
    return phantoms.tg119_cshape(spacing_mm=2.5)


def _ct_centroid(ct, name="PTV"):
    return tuple(ct.grid.positions_mm(np.flatnonzero(ct.structure(name).mask.ravel())).mean(axis=0))


def test_coarse_grid_covers_the_same_box(fine):
    g = coarse_grid(fine.grid, 5.0)
    lo_f = np.asarray(fine.grid.origin_mm) - np.asarray(fine.grid.spacing_mm) / 2
    lo_c = np.asarray(g.origin_mm) - np.asarray(g.spacing_mm) / 2
    np.testing.assert_allclose(lo_c, lo_f)
    hi_f = lo_f + np.asarray(fine.grid.shape) * fine.grid.spacing_mm
    hi_c = lo_c + np.asarray(g.shape) * g.spacing_mm
    assert np.all(hi_c >= hi_f - 1e-9) and np.all(hi_c < hi_f + 5.0)


def test_structures_and_ct_after_resampling(fine):
    coarse = fine.resample(5.0, target_rule="centre")
    for name, tol in (("PTV", 0.08), ("Core", 0.15), ("Body", 0.03)):
        v_f = fine.structure(name).n_voxels * fine.grid.voxel_volume_cc
        v_c = coarse.structure(name).n_voxels * coarse.grid.voxel_volume_cc
        assert v_c == pytest.approx(v_f, rel=tol), name
    body = coarse.structure("Body").mask
    assert np.all(np.abs(coarse.ct_hu[body][2:-2]) < 1001)
    assert coarse.ct_hu[0, 0, 0] == pytest.approx(-1000.0)  # a corner in air


def test_target_support_rule_carries_dose_floors_to_the_ct_grid(fine):
    """A dose of 1 on the coarse target (0 elsewhere), interpolated back: every fine target voxel
    gets exactly 1 under the support rule (only target voxels enter its interpolation), while the
    centre-point rule lets edge voxels mix in untargeted ones."""
    mask_f = fine.structure("PTV").mask
    for rule, all_one in (("support", True), ("centre", False)):
        coarse = fine.resample(5.0, target_rule=rule)
        ptv = coarse.structure("PTV").mask
        back = resample_dose(ptv.astype(float), coarse.grid, fine.grid)[mask_f]
        assert bool(np.abs(back - 1.0).max() < 1e-12) is all_one, rule
        assert back.min() < 0.8 or all_one
    # the support rule contains the centre-point rule and adds at most a one-voxel rim
    support = fine.resample(5.0, target_rule="support").structure("PTV").mask
    centre = fine.resample(5.0).structure("PTV").mask
    assert np.all(support >= centre) and support.sum() < 2.5 * centre.sum()
    # other roles keep the centre-point rule
    assert np.array_equal(fine.resample(5.0, target_rule="support").structure("Core").mask,
                          fine.resample(5.0).structure("Core").mask)
    with pytest.raises(GeometryError, match="target_rule"):
        fine.resample(5.0, target_rule="half")


def test_resample_dose_is_exact_for_a_linear_field(fine):
    coarse = coarse_grid(fine.grid, 5.0)
    z, y, x = np.meshgrid(*coarse.axes_mm(), indexing="ij")
    dose = 10.0 + 0.1 * x - 0.05 * y + 0.02 * z
    back = resample_dose(dose, coarse, fine.grid)
    zf, yf, xf = np.meshgrid(*fine.grid.axes_mm(), indexing="ij")
    inner = np.ones(fine.grid.shape, bool)
    for a, ax in zip((zf, yf, xf), coarse.axes_mm()):
        inner &= (a >= ax[0]) & (a <= ax[-1])
    exact = 10.0 + 0.1 * xf - 0.05 * yf + 0.02 * zf
    assert np.abs(back[inner] - exact[inner]).max() < 1e-9
    with pytest.raises(GeometryError, match="dose"):
        resample_dose(dose[:-1], coarse, fine.grid)


def test_plan_on_a_coarse_grid_brought_back_to_the_ct_grid():
    ct_patient = phantoms.tg119_cshape(spacing_mm=4.0)
    dose_patient = ct_patient.resample(8.0)
    inf = PhotonBeams(range(0, 360, 72), beamlet_mm=10.0).influence(dose_patient, "PTV")
    problem = PlanProblem(dose_patient, inf, fractions=25)
    problem += SquaredDeviationPTV()
    plan = problem.solve()
    on_ct = resample_dose(plan.dose, dose_patient.grid, ct_patient.grid)
    ptv_coarse = plan.structure_dose("PTV").mean()
    ptv_ct = on_ct[ct_patient.structure("PTV").mask].mean()
    # the 8 mm grid resolves the PTV edge only coarsely: the CT-grid mean is a few % lower
    assert ptv_ct == pytest.approx(ptv_coarse, rel=0.05)
    assert ptv_ct < ptv_coarse


def SquaredDeviationPTV():
    from objectives import SquaredDeviation

    return SquaredDeviation("PTV", 50.0, weight=1.0)


def test_bad_spacing_and_vanishing_structures(fine):
    with pytest.raises(GeometryError, match="spacing_mm"):
        fine.resample(-1.0)
    with pytest.raises(GeometryError, match="spacing_mm"):
        fine.resample("5 mm")
    for bad in (True, "12", [True, 12, 12]):  # True would be a 1 mm grid, "12" 12 mm
        with pytest.raises(GeometryError, match="spacing_mm"):
            fine.resample(bad)
    tiny = fine.grid.shape
    m = np.zeros(tiny, bool)
    m[10, 40, 60] = True
    p = phantoms.tg119_cshape(spacing_mm=2.5)
    p.add_structure(Structure("Dot", m, "oar"))
    with pytest.warns(UserWarning, match="Dot"):
        coarse = p.resample(10.0)
    assert "Dot" not in coarse


def test_plan_on_patient_and_the_example_reports_both_grids(tmp_path):
    import json
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "examples"))
    import tg119_cshape

    record = tg119_cshape.main(["--out", str(tmp_path), "--spacing-mm", "6", "--dose-grid-mm", "10",
                                "--beamlet-mm", "10", "--smoothness", "0"])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["dose_grid_mm"] == 10 and len(on_disk["goals_on_ct_grid"]) == len(on_disk["goals"])
    assert record["goals"][0]["met"]  # the hard D95 surrogate holds on the dose grid
    ct = phantoms.tg119_cshape(spacing_mm=6.0)
    assert on_disk["goals_on_ct_grid"][0]["structure"] == "PTV"
    assert ct.grid.n_voxels > on_disk["sizes"]["grid_voxels"]


def test_influence_on_a_dose_grid_plans_on_the_resampled_patient():
    """influence(..., dose_grid=) has the voxels and beamlets of the influence on
    patient.resample (its dose region the voxels the CT body's interpolation reads; its depths
    are traced through the CT: test_dose_grid_depth); PlanProblem takes the
    CT-grid patient, plans on the resampled one, and resamples again when a CT-grid structure
    changes; an influence computed for another CT grid is refused by name."""
    from objectives import MaxDose

    ct = phantoms.tg119_cshape(spacing_mm=6.0)
    beams = PhotonBeams([0, 120, 240], beamlet_mm=10.0)
    inf = beams.influence(ct, target="PTV", dose_grid=12.0)
    coarse = ct.resample(12.0)
    # the default region: the dose-grid voxels the CT body's interpolation reads
    region = support_mask(ct.body().mask, ct.grid, coarse.grid)
    assert region.sum() > coarse.body().mask.sum()
    # aimed at the CT target's centroid (the resampled target's is lopsided)
    ref = beams.influence(coarse, target="PTV", dose_mask=region, isocenter_mm=_ct_centroid(ct))
    assert inf.grid == ref.grid != ct.grid
    # its beamlets cover the CT target (as on the CT grid), more than the resampled one's
    on_ct = beams.influence(ct, target="PTV")
    assert all((inf.beamlets[k] == on_ct.beamlets[k]).all() for k in ("beam", "row", "col", "u_mm", "v_mm"))
    assert inf.matrix.shape[1] > ref.matrix.shape[1]
    # so they reach every voxel the resampled target's do, all in the default region
    assert np.isin(ref.voxel_index, inf.voxel_index).all()
    assert np.isin(inf.voxel_index, np.flatnonzero(region.ravel())).all()
    problem = PlanProblem(ct, inf, fractions=25, max_voxels_per_structure=None)
    assert problem.ct_patient is ct and problem.patient.grid == inf.grid
    n_core = problem.patient.structure("Core").n_voxels
    problem += SquaredDeviationPTV()
    problem += MaxDose("Core", 30.0)
    plan = problem.solve(solver="CLARABEL")
    assert plan.dose.shape == inf.grid.shape
    assert plan.on_patient(ct).dose.shape == ct.grid.shape
    # a bigger core on the CT grid reaches the dose-grid problem at the next solve
    ct.add_structure(Structure("Core", ct.structure("Core").mask | ct.structure("PTV").mask, "oar"),
                     replace=True)
    problem._sync()
    assert problem.patient.structure("Core").n_voxels > n_core
    other = phantoms.tg119_cshape(spacing_mm=5.0)
    with pytest.raises(PlanError, match=r"influence: computed on a grid .* by influence\(..., "
                                        r"dose_grid=...\) of a patient on \(20, 37, 53\)"):
        PlanProblem(other, inf, fractions=25)


def test_the_example_plans_the_ptv_on_the_ct_grid(tmp_path):
    """examples/tg119_cshape.py --ct-grid-structures PTV: the hard D95 surrogate (>= 50.5 Gy) is
    optimized on the PTV's CT voxels, so the D95 goal holds on the CT grid, where the plan on the
    dose grid alone misses it at this coarse grid."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "examples"))
    import tg119_cshape

    common = ["--spacing-mm", "6", "--dose-grid-mm", "10", "--beamlet-mm", "10", "--smoothness", "0"]
    plain = tg119_cshape.main(["--out", str(tmp_path / "plain"), *common])
    on_ct = tg119_cshape.main(["--out", str(tmp_path / "ct"), *common, "--ct-grid-structures", "PTV"])
    assert on_ct["ct_grid_structures"] == ["PTV"] and plain["ct_grid_structures"] == []
    d95_plain, d95_ct = plain["goals_on_ct_grid"][0], on_ct["goals_on_ct_grid"][0]
    assert d95_plain["metric"] == d95_ct["metric"] == "D95"
    assert not d95_plain["met"] and d95_ct["met"] and d95_ct["value"] >= 50.5 - 0.01
    with pytest.raises(SystemExit):
        tg119_cshape.main(["--out", str(tmp_path / "bad"), "--ct-grid-structures", "PTV"])


def test_the_default_dose_region_on_a_dose_grid_gives_the_whole_surface_dose_on_the_ct_grid():
    """The dose-grid voxels the interpolation of CT body voxels reads all get dose: the CT-grid
    dose equals the one from a dose region of the whole grid (the coarse body alone left the outer
    CT layer reading voxels without dose: up to 0.19 of 1.98 Gy low at 8 / 12 mm)."""
    from optimizer import PhotonBeams, phantoms
    from optimizer.resample import interpolation_matrix

    ct = phantoms.tg119_cshape(spacing_mm=8.0)
    coarse = ct.resample(12.0)
    beams = PhotonBeams([0, 120, 240], beamlet_mm=10.0)
    body = ct.flat_indices("Body")
    P = interpolation_matrix(coarse.grid, ct.grid, body)
    on_ct = []
    for mask in (None, np.ones(coarse.grid.shape, bool)):
        inf = beams.influence(ct, target="PTV", dose_grid=12.0, dose_mask=mask)
        dose = np.zeros(coarse.grid.n_voxels)
        dose[inf.voxel_index] = inf.matrix @ np.ones(inf.n_beamlets)
        on_ct.append(P @ dose)
    assert on_ct[1].max() > 1.0
    np.testing.assert_allclose(on_ct[0], on_ct[1], atol=1e-6)


@pytest.mark.parametrize("fine_mm", [1.0, 0.976562, 1.171875])
@pytest.mark.parametrize("ratio", [2, 3, 4])
def test_centre_rule_ties_go_to_the_upper_fine_voxel(fine_mm, ratio):
    """At an even spacing ratio every coarse centre lies on a fine voxel boundary: it takes the
    upper fine voxel on every axis, at every ratio and with DICOM spacings' float noise (np.rint
    took the lower voxel at ratio 2, the upper at ratio 4, and alternated with 0.976562 mm)."""

    rng = np.random.default_rng(ratio)
    n = 12 * ratio
    column = rng.random(n) < 0.5
    mask = np.broadcast_to(column, (n, n, n)).copy()  # along x; the same for every z, y
    mask_z = np.moveaxis(mask, 2, 0).copy()  # along z
    grid = Grid((n, n, n), (fine_mm,) * 3, (-3.7, 12.1, 100.3))
    fine = Patient(grid, np.zeros(grid.shape), [Structure("X", mask, "oar"), Structure("Z", mask_z, "oar")])
    coarse = fine.resample(ratio * fine_mm)
    assert coarse.grid.shape == (12, 12, 12)
    # the centre of coarse voxel k sits at fine index ratio k + (ratio - 1) / 2: the upper voxel on a tie
    expected = column[ratio * np.arange(12) + ratio // 2]
    assert (coarse.structure("X").mask == expected[None, None, :]).all()
    assert (coarse.structure("Z").mask == expected[:, None, None]).all()


def test_a_grid_as_dose_grid_and_its_errors():
    """influence(..., dose_grid=Grid) computes on that grid and PlanProblem plans on it; a grid
    away from the patient and a bad dose_grid are refused naming dose_grid."""

    ct = phantoms.tg119_cshape(spacing_mm=6.0)
    beams = PhotonBeams([0, 180], beamlet_mm=10.0)
    lo = np.asarray(ct.grid.origin_mm) - 3.0
    grid = Grid((14, 17, 20), (10.0, 11.0, 12.0), tuple(lo + 4.0))  # not aligned with the CT box
    with pytest.warns(UserWarning, match="structure 'Body': only 67.2 % of its volume lies inside"):
        inf = beams.influence(ct, target="PTV", dose_grid=grid)
    assert inf.grid == grid
    problem = PlanProblem(ct, inf, fractions=25)
    assert problem.patient.grid == grid and problem.patient.structure("PTV").n_voxels > 0
    # the beamlets of the CT grid (around the CT target), in the region the CT body's
    # interpolation reads on that grid
    on_ct = beams.influence(ct, target="PTV")
    assert all((inf.beamlets[k] == on_ct.beamlets[k]).all() for k in ("beam", "row", "col", "u_mm", "v_mm"))
    assert np.isin(inf.voxel_index, np.flatnonzero(support_mask(ct.body().mask, ct.grid, grid).ravel())).all()
    # a grid that holds the target only in part (92.9 % of the PTV's CT voxels) used to be planned
    # on that part silently
    partly = r"dose_grid: the \(10.0, 11.0, 12.0\) mm dose grid .* covers only 92.9 % of the target 'PTV'"
    with pytest.warns(UserWarning), pytest.raises(BeamError, match=partly):
        beams.influence(ct, target="PTV", dose_grid=dataclasses.replace(grid, origin_mm=tuple(lo + 30.0)))
    away = dataclasses.replace(grid, origin_mm=(5000.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match="dose_grid: the grid spans .* does not overlap"):
        beams.influence(ct, target="PTV", dose_grid=away)
    with pytest.raises(GeometryError, match="dose_grid: expected a voxel size in mm, 3 of them .* or an "
                                            "optimizer.Grid"):
        beams.influence(ct, target="PTV", dose_grid="5 mm")


def test_on_patient_refuses_a_grid_away_from_the_plan_and_warns_about_structures_outside():
    """plan.on_patient onto a grid that does not overlap the plan's gave zeros silently; one that
    holds a structure only in part warns, naming it; the record keeps the source grid's origin."""
    from objectives import MaxDose

    ct = phantoms.tg119_cshape(spacing_mm=8.0)
    inf = PhotonBeams([0, 180], beamlet_mm=10.0).influence(ct, target="PTV", dose_grid=16.0)
    problem = PlanProblem(ct, inf, fractions=25)
    problem += SquaredDeviationPTV()
    problem += MaxDose("Core", 40.0)
    plan = problem.solve(solver="CLARABEL")
    back = plan.on_patient(ct)
    assert back.solver["dose_grid"]["origin_mm"] == list(inf.grid.origin_mm)
    away = Patient(dataclasses.replace(ct.grid, origin_mm=(0.0, 0.0, 9000.0)), ct.ct_hu, list(ct.structures))
    with pytest.raises(PlanError, match="patient: the grid spans .* does not overlap .* dose would be 0"):
        plan.on_patient(away)
    half = dataclasses.replace(ct.grid, origin_mm=tuple(np.add(ct.grid.origin_mm, (0.0, 0.0, 60.0))))
    with pytest.warns(UserWarning, match="on_patient: structures .*Body.* reach outside the plan's dose"):
        plan.on_patient(Patient(half, ct.ct_hu, list(ct.structures)))


def test_dose_grid_input_errors_name_the_way_out():
    """A CT-grid dose_mask with dose_grid stands for the dose-grid voxels its interpolation reads
    (it was refused with a bare shape error); a term on a structure the dose grid lost points to
    ct_grid_structures (it said 'not found'); ct_grid_structures=b'PTV' is refused (its bytes were
    taken as names)."""
    from objectives import MaxDose

    ct = phantoms.tg119_cshape(spacing_mm=6.0)
    beams = PhotonBeams([0, 180], beamlet_mm=10.0)
    ptv_region = ct.structure("PTV").mask
    inf = beams.influence(ct, target="PTV", dose_grid=12.0, dose_mask=ptv_region)
    coarse = ct.resample(12.0)
    ref = beams.influence(coarse, target="PTV", dose_mask=support_mask(ptv_region, ct.grid, coarse.grid),
                          isocenter_mm=_ct_centroid(ct))
    assert (inf.voxel_index == ref.voxel_index).all()
    # (its beamlets cover the CT target: 162, around the resampled one 98)
    assert inf.matrix.shape[1] == beams.influence(ct, target="PTV").matrix.shape[1] > ref.matrix.shape[1]
    tiny = np.zeros(ct.grid.shape, bool)
    tiny[ct.grid.shape[0] // 2, 20, 20] = True
    ct.add_structure(Structure("Tiny", tiny, "oar"))
    with pytest.warns(UserWarning, match="'Tiny'"):
        inf = beams.influence(ct, target="PTV", dose_grid=12.0)
    with pytest.warns(UserWarning, match="'Tiny'"):
        problem = PlanProblem(ct, inf, fractions=25)
    with pytest.raises(PlanError, match="'Tiny': no voxel of the .* dose grid .* ct_grid_structures"):
        problem += MaxDose("Tiny", 10.0)
    with pytest.raises(PlanError, match="'tiny': no voxel of the .* ct_grid_structures"):
        problem += MaxDose("tiny", 10.0)  # names match as the patient's do (case-insensitive)
    with pytest.raises(GeometryError, match="'Nowhere' not found"):
        problem += MaxDose("Nowhere", 10.0)
    with pytest.raises(PlanError, match="ct_grid_structures: expected structure names .* got b'PTV'"):
        PlanProblem(ct, inf, fractions=25, ct_grid_structures=b"PTV")


def test_influence_with_the_support_rule_plans_on_the_support_target():
    """influence(..., dose_grid=, target_rule="support"): PlanProblem resamples the CT the same
    way, so a dose floor on the PTV holds on every CT voxel of the PTV after interpolation (with
    the centre rule the CT-grid minimum falls below it); the rule needs a dose grid."""
    from objectives import MaxDose, MinDose

    ct = phantoms.tg119_cshape(spacing_mm=6.0)
    beams = PhotonBeams([0, 120, 240], beamlet_mm=10.0)
    mins = {}
    for rule in ("centre", "support"):
        inf = beams.influence(ct, target="PTV", dose_grid=12.0, target_rule=rule)
        problem = PlanProblem(ct, inf, fractions=25, max_voxels_per_structure=None)
        assert (problem.patient.structure("PTV").mask == ct.resample(12.0, rule).structure("PTV").mask).all()
        problem += SquaredDeviationPTV()
        problem += MinDose("PTV", 50.0)
        problem += MaxDose("Core", 45.0, weight=0.1)
        back = problem.solve(solver="CLARABEL").on_patient(ct)
        mins[rule] = back.structure_dose("PTV").min()
    assert mins["support"] >= 50.0 - 0.01 > mins["centre"] + 1.0
    with pytest.raises(Exception, match="target_rule: applies to the resampling onto a dose grid"):
        beams.influence(ct, target="PTV", target_rule="support")
    with pytest.raises(Exception, match="target_rule: expected one of"):
        beams.influence(ct, target="PTV", dose_grid=12.0, target_rule="edge")
    # the rule goes by role: a target of another role would have been resampled by its centres
    relabelled = Patient(ct.grid, ct.ct_hu, [dataclasses.replace(s, role="oar") if s.name == "PTV" else s
                                             for s in ct.structures])
    with pytest.raises(BeamError, match="target_rule: 'support' .* the target 'PTV' has role 'oar'"):
        beams.influence(relabelled, target="PTV", dose_grid=12.0, target_rule="support")


@pytest.mark.parametrize("where", ["whole box", "part of the box", "inside the core"])
def test_support_mask_is_what_the_interpolation_reads(fine, where):
    """support_mask (the support target rule, the default dose region) marks exactly the coarse
    voxels the trilinear interpolation of the mask's voxels reads (interpolation_matrix, equal to
    resample_dose); fine voxels outside a partial grid read none (they used to clamp onto its edge
    voxels: a grid inside the core got 35 'PTV' voxels, 30 of them core)."""
    from optimizer.resample import interpolation_matrix

    if where == "whole box":
        grid = coarse_grid(fine.grid, (6.0, 7.0, 8.0))
    elif where == "part of the box":
        lo = np.asarray(fine.grid.origin_mm) - 1.25
        grid = Grid((12, 16, 18), (6.0, 7.0, 8.0), tuple(lo + 4.0))
    else:
        grid = Grid((5, 3, 3), (5.0, 5.0, 5.0), (-10.0, -5.0, -5.0))  # no PTV voxel centre inside
    for name in ("PTV", "Core"):
        mask = fine.structure(name).mask
        P = interpolation_matrix(grid, fine.grid, np.flatnonzero(mask.ravel()))
        read = np.zeros(grid.shape, bool)
        read.ravel()[np.unique(P.indices)] = True
        np.testing.assert_array_equal(support_mask(mask, fine.grid, grid), read)
    if where == "inside the core":
        assert not support_mask(fine.structure("PTV").mask, fine.grid, grid).any()


def test_a_target_lost_on_the_dose_grid_is_refused_naming_dose_grid():
    from optimizer import BeamError, Grid

    ct = phantoms.tg119_cshape(spacing_mm=5.0)
    beams = PhotonBeams([0], beamlet_mm=10.0)
    inside_core = Grid((5, 3, 3), (5.0, 5.0, 5.0), (-10.0, -5.0, -5.0))
    for kwargs in (dict(target="PTV", dose_grid=inside_core), dict(target="PTV", dose_grid=inside_core,
                                                                  target_rule="support"),
                   dict(dose_grid=1000.0)):
        with pytest.warns(UserWarning, match="PTV"), \
                pytest.raises(BeamError, match=r"dose_grid: the target 'PTV' has no voxel centre on the"):
            beams.influence(ct, **kwargs)


def test_on_patient_carries_the_extra_maps_letd_dose_averaged():
    """on_patient dropped every extra map (a saved plan then lost its LETd). Two 10 mm voxels,
    doses 10 / 30 Gy and LETd 2 / 6 keV/um, onto a 5 mm grid: the voxel between them gets the
    dose-averaged LETd (2 x 10 + 6 x 30) / (10 + 30) = 5.0 (plain interpolation: 4.0); another
    map is interpolated plainly, NaN where it reads a NaN; LETd is NaN where the dose is 0."""
    from optimizer import Grid, Plan

    coarse, fine = Grid((1, 1, 2), (10.0, 10.0, 10.0)), Grid((1, 1, 3), (5.0, 5.0, 5.0))
    body = Structure("Body", np.ones(coarse.shape, bool), "other")
    dose = np.array([[[10.0, 30.0]]])
    extras = {"LETd_keV_um": np.array([[[2.0, 6.0]]]), "RBE": np.array([[[1.1, np.nan]]])}
    plan = Plan(Patient(coarse, np.zeros(coarse.shape), [body]), np.zeros(1), 5, dose,
                {"beam": np.zeros(1, int)}, [], "proton", {}, None, extras)
    there = Patient(fine, np.zeros(fine.shape), [Structure("Body", np.ones(fine.shape, bool), "other")])
    moved = plan.on_patient(there)
    np.testing.assert_allclose(moved.dose.ravel(), [10.0, 20.0, 30.0])
    np.testing.assert_allclose(moved.extras["LETd_keV_um"].ravel(), [2.0, 5.0, 6.0])
    rbe = moved.extras["RBE"].ravel()
    assert rbe[0] == pytest.approx(1.1) and np.isnan(rbe[1:]).all()
    plan.dose[0, 0, 1], plan.extras["LETd_keV_um"][0, 0, 1] = 0.0, np.nan  # no dose, no LETd
    letd = plan.on_patient(there).extras["LETd_keV_um"].ravel()
    assert letd[:2] == pytest.approx([2.0, 2.0]) and np.isnan(letd[2])


@pytest.mark.parametrize("fine_mm, coarse_mm", [(1.2, 3.6), (0.3, 0.9), (0.7, 2.1), (1.1, 3.3)])
def test_support_rule_of_a_voxel_on_a_coarse_centre_is_that_voxel(fine_mm, coarse_mm):
    """A fine target voxel whose centre is a coarse voxel centre reads that coarse voxel alone
    (by hand); float noise gave the lower neighbour a weight of 1e-16 and the target a second
    coarse voxel (1.2 mm CT, 3.6 mm dose grid: [0, 1] instead of [1])."""
    fine = Grid((3, 3, 9), (fine_mm,) * 3, (0.0, 0.0, 0.0))
    coarse = coarse_grid(fine, coarse_mm)
    for i in (1, 4, 7):  # on coarse centres 0, 1, 2
        mask = np.zeros(fine.shape, bool)
        mask[1, 1, i] = True
        got = support_mask(mask, fine, coarse)
        assert np.argwhere(got).tolist() == [[0, 0, i // 3]]
