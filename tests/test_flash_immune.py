"""EDIC (effective dose to immune cells) against a hand calculation, the immune mean-dose terms
(numeric face = cvxpy face, gradient, sum = EDIC), and immune sparing in a plan."""

import cvxpy as cp
import numpy as np
import pytest

from objectives import SquaredDeviation
from objectives.errors import TermError
from objectives.immune import EDICModel, ImmuneMeanDose
from objectives.terms import TermContext
from optimizer import PlanProblem
from optimizer.errors import PlanError
from optimizer.flash import edic, immune_terms, transmission_influence
from optimizer.flash.phantom import thorax
from optimizer.geometry import Grid, Patient, Structure
from optimizer.plan import Plan


def _patient():
    grid = Grid((1, 2, 5), (10.0, 10.0, 10.0))  # 1 cm^3 voxels
    lung = np.zeros(grid.shape, bool)
    lung[0, 0, :2] = True
    heart = np.zeros(grid.shape, bool)
    heart[0, 1, :2] = True
    body = np.ones(grid.shape, bool)
    structures = [Structure("Lung", lung, "oar"), Structure("Heart", heart, "oar"),
                  Structure("Body", body, "other")]
    return Patient(grid, np.zeros(grid.shape), structures)


DOSE = np.array([[[10.0, 14.0, 2.0, 0.0, 4.0], [6.0, 2.0, 1.0, 1.0, 0.0]]])  # Gy, total course


def test_edic_by_hand():
    p = _patient()
    plan = Plan(p, np.zeros(1), 5, DOSE, {"beam": np.zeros(1)}, [], "proton")
    out = edic(plan, "Lung", "Heart", "Body")
    mld, mhd, itd = 12.0, 4.0, 40.0  # Gy, Gy, Gy cm^3 (10 voxels of 1 cm^3)
    # Jin et al. / Ladbury et al. 2019: 0.12 MLD + 0.08 MHD + [0.45 + 0.35 x 0.85 sqrt(n/45)] ITD / 62e3
    expected = 0.12 * mld + 0.08 * mhd + (0.45 + 0.35 * 0.85 * np.sqrt(5 / 45)) * itd / 62e3
    assert out["mean_lung_Gy"] == pytest.approx(mld)
    assert out["mean_heart_Gy"] == pytest.approx(mhd)
    assert out["integral_body_Gy_cc"] == pytest.approx(itd)
    assert out["edic_Gy"] == pytest.approx(expected, rel=1e-12)
    assert out["edic_Gy"] == pytest.approx(1.44 + 0.32 + (0.45 + 0.2975 / 3) * 40 / 62e3)
    # the fraction dependence: the lymphatic part grows as sqrt(n / 45)
    m = EDICModel()
    assert m.body_factor(45) == pytest.approx(0.45 + 0.2975)
    assert m.body_factor(5) == pytest.approx(0.45 + 0.2975 / 3)


def _ctx(p, name, n=5):
    idx = p.flat_indices(name)
    return TermContext(name, np.full(len(idx), 1.0 / len(idx)), idx, n, p.grid.shape)


def test_terms_add_up_to_edic_and_faces_agree():
    p = _patient()
    plan = Plan(p, np.zeros(1), 5, DOSE, {"beam": np.zeros(1)}, [], "proton")
    terms = immune_terms(p, "Lung", "Heart", "Body", weight=2.0)
    total = 0.0
    for t in terms:
        ctx = _ctx(p, t.structure)
        d = DOSE.ravel()[ctx.voxel_index]
        v = t.value(d, ctx)
        total += v
        x = cp.Variable(len(d))
        x.value = d
        t.refresh(ctx)
        assert float(t.weight.value * t.cost(x, ctx).value) == pytest.approx(v, rel=1e-12)
        assert float(t.objective(x, ctx).value) == pytest.approx(v, rel=1e-12)
        g = t.gradient(d, ctx)["dose"]
        e = np.eye(len(d))[0] * 1e-3
        assert g[0] == pytest.approx((t.cost_value(d + e, ctx) - t.cost_value(d, ctx)) / 1e-3, rel=1e-9)
    assert total == pytest.approx(2.0 * edic(plan, "Lung", "Heart", "Body")["edic_Gy"], rel=1e-12)


def test_two_lung_structures_add_up_to_edic_and_overlapping_ones_are_refused():
    """Several lung structures share the lung coefficient by voxel count: right when they are
    disjoint (the terms add up to EDIC over their union); overlapping ones counted the shared
    voxels twice (1.857 Gy of terms against EDIC 1.641): refused, naming both."""
    base = _patient()
    for overlap in (False, True):
        left, right = np.zeros(base.grid.shape, bool), np.zeros(base.grid.shape, bool)
        left[0, 0, :3], right[0, 0, (2 if overlap else 3):4] = True, True
        p = Patient(base.grid, base.ct_hu, [Structure("LungL", left, "oar"), Structure("LungR", right, "oar"),
                                             base.structure("Heart"), base.structure("Body")])
        if overlap:
            with pytest.raises(PlanError, match="lung: structures 'LungL' and 'LungR' share 1 voxel"):
                immune_terms(p, ["LungL", "LungR"], "Heart", "Body")
            continue
        plan = Plan(p, np.zeros(1), 5, DOSE, {"beam": np.zeros(1)}, [], "proton")
        total = sum(t.value(DOSE.ravel()[_ctx(p, t.structure).voxel_index], _ctx(p, t.structure))
                    for t in immune_terms(p, ["LungL", "LungR"], "Heart", "Body"))
        assert total == pytest.approx(edic(plan, ["LungL", "LungR"], "Heart", "Body")["edic_Gy"], rel=1e-12)


def test_bad_input_named():
    with pytest.raises(TermError, match="volume_cc"):
        ImmuneMeanDose("Body", "body")
    with pytest.raises(TermError, match="component"):
        ImmuneMeanDose("Lung", "spleen")
    with pytest.raises(TermError, match="lung"):
        EDICModel(lung=-0.1)
    with pytest.raises(TermError, match="weight"):
        ImmuneMeanDose("Lung", "lung", weight=None)


def test_immune_term_lowers_edic():
    p = thorax(spacing_mm=10.0, length_mm=40.0)
    inf = transmission_influence(p, "PTV", [0, 270], spot_spacing_mm=10.0)

    def plan(weight):
        problem = PlanProblem(p, inf, fractions=5)
        problem += SquaredDeviation("PTV", 40.0, weight=1.0)
        if weight:
            for t in immune_terms(p, "Lungs", "Heart", "Body", weight=weight, influence=inf):
                problem += t
        return problem.solve()

    base, spared = plan(0.0), plan(5.0)
    e0 = edic(base, "Lungs", "Heart", "Body")["edic_Gy"]
    e1 = edic(spared, "Lungs", "Heart", "Body")["edic_Gy"]
    assert e1 < e0
