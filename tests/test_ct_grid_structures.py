"""Structures optimized on the CT grid while the dose is computed on a coarser dose grid
(``PlanProblem(..., ct_grid_structures=...)``): the interpolation operator against
``resample_dose``, hard limits that hold on the CT grid as ``plan.on_patient`` reports them
(and do not without the option), both solvers on the same problem, and bad input."""

import numpy as np
import pytest

from objectives import MaxDose, SquaredDeviation, SquaredOverdose
from optimizer import GeometryError, PhotonBeams, PlanError, PlanProblem, Structure, phantoms
from optimizer.resample import coarse_grid, interpolation_matrix, resample_dose

CORE_MAX_GY = 15.0  # below the CT-grid core maximum of the plan on the dose grid (21.8 Gy)


def test_interpolation_matrix_equals_resample_dose():
    """P @ dose == resample_dose(dose)[voxels] on a random dose, CT voxels inside, at the edge
    (the edge value held half a voxel beyond) and outside the dose grid (an empty row)."""
    ct = phantoms.tg119_cshape(spacing_mm=(2.5, 3.0, 3.0))
    coarse = coarse_grid(ct.grid, 5.0)
    dose = np.random.default_rng(3).random(coarse.shape)
    full = resample_dose(dose, coarse, ct.grid).ravel()
    voxels = np.random.default_rng(4).choice(full.size, 20_000, replace=False)
    voxels = np.union1d(voxels, [0, full.size - 1])  # the grid's corners
    P = interpolation_matrix(coarse, ct.grid, voxels)
    assert P.shape == (len(voxels), dose.size) and np.diff(P.indptr).max() <= 8
    np.testing.assert_allclose(P @ dose.ravel(), full[voxels], atol=1e-12)
    np.testing.assert_allclose(np.asarray(P.sum(axis=1)).ravel()[full[voxels] > 0], 1.0)
    # a finer grid reaching past the coarse one: rows outside read nothing, as resample_dose gives 0
    from optimizer.geometry import Grid

    wide = Grid((4, 6, 6), (5.0, 5.0, 5.0), tuple(np.asarray(coarse.origin_mm) - 10.0))
    Pw = interpolation_matrix(coarse, wide, np.arange(144))
    np.testing.assert_allclose(Pw @ dose.ravel(), resample_dose(dose, coarse, wide).ravel(), atol=1e-12)
    assert Pw[0].nnz == 0
    with pytest.raises(GeometryError, match="flat_index"):
        interpolation_matrix(coarse, ct.grid, [-1, 3])
    with pytest.raises(GeometryError, match="flat_index"):
        interpolation_matrix(coarse, ct.grid, np.array([0.5]))


@pytest.fixture(scope="module")
def case():
    ct = phantoms.tg119_cshape(spacing_mm=5.0)
    inf = PhotonBeams([0, 120, 240], beamlet_mm=10.0).influence(ct, target="PTV", dose_grid=10.0)
    return ct, inf


def _problem(ct, inf, **kw):
    problem = PlanProblem(ct, inf, fractions=25, max_voxels_per_structure=None, **kw)
    problem += SquaredDeviation("PTV", 50.0, weight=1.0)
    problem += SquaredOverdose("Core", 0.0, weight=0.1)
    problem += MaxDose("Core", CORE_MAX_GY)
    return problem


def test_a_hard_limit_on_the_ct_grid_holds_there(case):
    """With the core on the CT grid its max-dose limit holds in every CT voxel of the
    interpolated dose (plan.on_patient); planned on the 10 mm dose grid it does not (the
    interpolation reaches past the core's coarse voxels). CLARABEL and the first-order solver
    reach the same objective (the first-order one by default here); the certificate counts CT
    voxels."""
    ct, inf = case
    core = ct.structure("Core").mask
    plain = _problem(ct, inf).solve(solver="CLARABEL")
    assert plain.on_patient(ct).dose[core].max() > CORE_MAX_GY + 1.0

    problem = _problem(ct, inf, ct_grid_structures=["core"])  # names as the patient's, any case
    ref = problem.solve(solver="CLARABEL")
    fo = problem.solve()  # the default with structures on the CT grid
    assert fo.solver["name"] == "FIRST_ORDER" and "fallback" not in fo.solver
    for plan in (ref, fo):
        assert plan.dose.shape == inf.grid.shape  # the plan stays on the dose grid
        assert plan.on_patient(ct).dose[core].max() <= CORE_MAX_GY + 0.011
        (check,) = plan.solver["hard_terms"]
        assert check["voxels_checked"] == int(core.sum())
    assert fo.solver["objective"] == pytest.approx(ref.solver["objective"], rel=1e-3)
    # the price of the tighter limit: a costlier plan than on the dose grid
    assert ref.solver["objective"] > plain.solver["objective"]


def test_a_structure_too_small_for_the_dose_grid_can_be_planned_on_the_ct_grid(case):
    ct, inf = case
    patient = phantoms.tg119_cshape(spacing_mm=5.0)
    dot = np.zeros(patient.grid.shape, bool)
    k = np.argwhere(patient.structure("PTV").mask)[0]
    dot[tuple(k)] = True
    patient.add_structure(Structure("Dot", dot, "oar"))
    with pytest.warns(UserWarning, match="Dot"):
        problem = PlanProblem(patient, inf, fractions=25, ct_grid_structures="Dot")
    problem += SquaredDeviation("PTV", 50.0, weight=1.0)
    problem += MaxDose("Dot", 40.0)
    plan = problem.solve(solver="CLARABEL")
    assert plan.on_patient(patient).dose[dot].max() <= 40.0 + 1e-3


def test_bad_ct_grid_structures(case):
    ct, inf = case
    with pytest.raises(PlanError, match="ct_grid_structures.*Nowhere"):
        PlanProblem(ct, inf, fractions=25, ct_grid_structures=["Nowhere"])
    with pytest.raises(PlanError, match="ct_grid_structures: expected structure names"):
        PlanProblem(ct, inf, fractions=25, ct_grid_structures=[3])
    with pytest.raises(PlanError, match="ct_grid_structures: expected structure names"):
        PlanProblem(ct, inf, fractions=25, ct_grid_structures=5)
    same_grid = PhotonBeams([0], beamlet_mm=10.0).influence(ct, target="PTV")
    with pytest.raises(PlanError, match="ct_grid_structures: the influence is on the patient's own grid"):
        PlanProblem(ct, same_grid, fractions=25, ct_grid_structures=["Core"])
