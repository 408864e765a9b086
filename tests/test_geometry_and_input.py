"""Bad input gets a clear error naming the field; margins and rings are right in mm."""

import numpy as np
import pytest

from objectives import LQ, DVHMax, MaxDose, SquaredDeviation, TermError
from objectives.errors import BioplanError
from optimizer import GeometryError, Grid, Patient, PlanError, PlanProblem, SolverError, Structure, phantoms


def test_ct_shape_mismatch():
    with pytest.raises(GeometryError, match="ct_hu: shape"):
        Patient(Grid((2, 3, 4), (1, 1, 1)), np.zeros((2, 3, 5)))


def test_nan_in_ct():
    ct = np.zeros((2, 3, 4))
    ct[0, 1, 2] = np.nan
    with pytest.raises(GeometryError, match="ct_hu: contains 1 NaN"):
        Patient(Grid((2, 3, 4), (1, 1, 1)), ct)


def test_empty_structure():
    with pytest.raises(GeometryError, match="'PTV': mask is empty"):
        Patient(Grid((2, 3, 4), (1, 1, 1)), np.zeros((2, 3, 4)), [Structure("PTV", np.zeros((2, 3, 4)))])


def test_mask_shape_mismatch_and_bad_role():
    with pytest.raises(GeometryError, match="'PTV'.mask: shape"):
        Patient(Grid((2, 3, 4), (1, 1, 1)), np.zeros((2, 3, 4)), [Structure("PTV", np.ones((2, 3, 3)))])
    with pytest.raises(GeometryError, match="role"):
        Structure("PTV", np.ones((1, 1, 1)), role="tumour")


def test_bad_grid():
    with pytest.raises(GeometryError, match="spacing_mm"):
        Grid((2, 3, 4), (1, 0, 1))
    with pytest.raises(GeometryError, match="shape"):
        Grid((2, 3), (1, 1, 1))


def test_unknown_structure_lists_known_names():
    p = phantoms.tg119_cshape(spacing_mm=8.0)
    with pytest.raises(GeometryError, match="'Rectum' not found; known structures: PTV, Core, Body"):
        p.structure("Rectum")
    assert p.structure(" ptv ").name == "PTV"  # case and whitespace tolerant


@pytest.mark.parametrize("make, field", [
    (lambda: MaxDose("PTV", -1.0), "dose_Gy"),
    (lambda: MaxDose("PTV", float("nan")), "dose_Gy"),
    (lambda: DVHMax("PTV", 20.0, volume_pct=0), "volume_pct"),
    (lambda: DVHMax("PTV", 20.0, volume_pct=100), "volume_pct"),
    (lambda: SquaredDeviation("PTV", 50.0), "needs a weight"),
    (lambda: MaxDose("PTV", 50.0, weight=-2), "weight"),
    (lambda: MaxDose("", 50.0), "structure"),
])
def test_bad_term_input(make, field):
    with pytest.raises(TermError, match=field):
        make()


def test_bad_problem_input(toy):
    patient, inf, _ = toy
    with pytest.raises(PlanError, match="fractions"):
        PlanProblem(patient, inf, fractions=0)
    with pytest.raises(PlanError, match="fractions"):
        PlanProblem(patient, inf, fractions=2.5)
    with pytest.raises(PlanError, match="no terms"):
        PlanProblem(patient, inf, fractions=1).solve()
    other = phantoms.water_box((10, 10, 10), spacing_mm=5)
    with pytest.raises(PlanError, match="grid"):
        PlanProblem(other, inf, fractions=1)


def test_margin_and_ring_in_mm():
    grid = Grid((41, 41, 41), (1.0, 2.0, 1.0), (-20.0, -40.0, -20.0))
    z, y, x = np.meshgrid(*grid.axes_mm(), indexing="ij")
    ball = x**2 + y**2 + z**2 <= 8.0**2
    p = Patient(grid, np.zeros(grid.shape), [Structure("B", ball, "target")])
    grown = p.expand("B", 6.0)
    r = np.sqrt(x**2 + y**2 + z**2)
    # distances are between voxel centres; the voxelized ball surface lies up to the half voxel
    # diagonal (1.23 mm here) inside the 8 mm sphere, which bounds both sides of each check
    assert grown[r <= 14.0 - 1.23].all() and not grown[r > 14.0 + 1e-9].any()
    shrunk = p.expand("B", -4.0)
    assert shrunk[r < 4.0].all() and not shrunk[r > 4.0 + 1.23].any()
    ring = p.ring("B", 2.0, 5.0)
    assert not ring[ball].any() and ring[(r > 10.0 + 1e-9) & (r <= 13.0 - 1.23)].all()
    assert not ring[r > 13.0 + 1e-9].any()
    with pytest.raises(GeometryError, match="inner_mm"):
        p.ring("B", 5.0, 2.0)


def test_clarabel_almost_solved_is_retried_once_then_refused(toy, monkeypatch):
    """CLARABEL's 'optimal_inaccurate' (AlmostSolved) is solved once more with a larger static
    regularization (the CT-size proton C-shape needed it); the plan records the retry and equals the
    plain solve; inaccurate again, it is a SolverError that says so."""
    import cvxpy as cp

    from optimizer.solvers.cvxpy_backend import CLARABEL_RETRY

    patient, inf, _ = toy

    def problem():
        p = PlanProblem(patient, inf, fractions=1)
        p += SquaredDeviation("T", 2.0, weight=1.0)
        p += MaxDose("O", 1.5)
        return p

    reference = problem().solve(solver="CLARABEL")
    original = cp.Problem.solve
    calls = []

    def almost(always):
        def solve(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            calls.append(sorted(k for k in kwargs if k in CLARABEL_RETRY))
            if always or not calls[-1]:
                self._status = cp.OPTIMAL_INACCURATE
            return out
        return solve

    monkeypatch.setattr(cp.Problem, "solve", almost(False))
    plan = problem().solve(solver="CLARABEL")
    assert calls == [[], sorted(CLARABEL_RETRY)]
    assert "optimal_inaccurate" in plan.solver["rounds"][0]["retried"]
    np.testing.assert_allclose(plan.weights, reference.weights, atol=1e-6)
    monkeypatch.setattr(cp.Problem, "solve", almost(True))
    with pytest.raises(SolverError, match="'optimal_inaccurate', not a certified optimum after a retry"):
        problem().solve(solver="CLARABEL")


@pytest.mark.parametrize("make, field", [
    (lambda: Grid((2, 2, 2), (True, 1.0, 1.0)), "spacing_mm"),
    (lambda: Grid((2, 2, 2), ("3", "3", "3")), "spacing_mm"),
    (lambda: Grid((2, 2, 2), (1.0, 1.0, 1.0), (True, 0.0, 0.0)), "origin_mm"),
    (lambda: phantoms.water_box(size_mm=(10, 10, 10), spacing_mm=True), "spacing_mm"),
    (lambda: phantoms.tg119_cshape(spacing_mm="3"), "spacing_mm"),
    (lambda: phantoms.tg119_cshape(spacing_mm=float("nan")), "spacing_mm"),
    (lambda: LQ({"T": True}), "alpha_beta"),
    (lambda: LQ(default="3"), "default"),
])
def test_booleans_and_strings_are_not_lengths_or_ratios(make, field):
    """A voxel size of True was 1 mm, an alpha/beta of True 1 Gy and of '3' 3 Gy: refused now,
    naming the field."""
    with pytest.raises(BioplanError, match=field):
        make()


def _line_patient(spacing: float, n: int = 9, full: bool = False):
    g = Grid((1, 1, n), (spacing, spacing, spacing))
    mask = np.ones(g.shape, bool) if full else np.zeros(g.shape, bool)
    mask[0, 0, n // 2] = True
    return Patient(g, np.zeros(g.shape), [Structure("S", mask)])


@pytest.mark.parametrize("spacing", [1.1, 1.3, 0.1, 2.2, 1.2])
def test_a_margin_of_whole_voxels_reaches_the_voxel_at_it(spacing):
    """A 3-voxel margin grows a one-voxel structure to 7 voxels in a line, by hand; 3 x 1.1 mm is
    3.3000000000000003 in floats, and a 3.3 mm margin kept 5. Shrinking the 7 by 1 voxel keeps 5."""
    p = _line_patient(spacing)
    grown = p.expand("S", 3 * spacing)
    assert grown.sum() == 7
    p.add_structure(Structure("G", grown))
    assert p.expand("G", -spacing).sum() == 5


def test_shrinking_a_structure_that_fills_the_grid_keeps_it_whole():
    """No voxel lies outside a structure that fills the grid, and the grid's edge is not a
    boundary (as for any structure that touches it): shrinking keeps all 27 voxels (SciPy's
    transform of an all-True mask dropped 5 voxels near [0, 0, 0])."""
    g = Grid((3, 3, 3), (1.0, 1.0, 1.0))
    p = Patient(g, np.zeros(g.shape), [Structure("Body", np.ones(g.shape, bool))])
    assert p.expand("Body", -2.1).all() and p.expand("Body", 2.0).all()


def test_a_patients_grid_cannot_change_shape_under_its_ct():
    p = _line_patient(1.0)
    with pytest.raises(GeometryError, match=r"grid: shape \(1, 1, 10\) does not match the CT's"):
        p.grid = Grid((1, 1, 10), (1.0, 1.0, 1.0))
    p.grid = Grid((1, 1, 9), (2.0, 2.0, 2.0))  # the same shape, other voxels: allowed
    assert p.grid.spacing_mm == (2.0, 2.0, 2.0)
