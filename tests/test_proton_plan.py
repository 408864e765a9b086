"""End to end proton PBS planning on a small water phantom: PlanProblem with the dose and LET x dose
matrices of ProtonBeams, hard LET terms checked voxel by voxel on the recomputed plan, the named
error when the LET x dose matrix is missing, variable-RBE consistency and spot maps."""

import numpy as np
import pytest
from scipy.optimize import brentq

from objectives import (
    RBE_CONSTANT,
    LETdMax,
    LETDoseMax,
    SquaredDeviation,
    SquaredOverdose,
    mcnamara_rbe,
    rbe_weighted_dose,
)
from optimizer import PlanError, PlanProblem, ProtonBeams, Structure, let_d_map, phantoms, plots, spot_maps

FRACTIONS = 5
PRESCRIPTION_GY = 10.0  # total course, 2 Gy per fraction


@pytest.fixture(scope="module")
def case():
    """Water box (4 mm voxels); a 20 mm PTV cube; "Distal": the 8 mm slab just beyond the PTV for
    the anterior beam (gantry 0, which travels along +y), reached by the lateral beam (gantry 90)
    with the low-LET middle of its spots and by the anterior beam with its distal fall-off."""
    p = phantoms.water_box(size_mm=(36, 100, 100), spacing_mm=4.0)
    z, y, x = np.meshgrid(*p.grid.axes_mm(), indexing="ij")
    lateral = (np.abs(x) <= 10) & (np.abs(z) <= 10)
    p.add_structure(Structure("PTV", lateral & (y >= -4) & (y <= 16), "target"))
    p.add_structure(Structure("Distal", lateral & (y > 16) & (y <= 24), "oar"))
    # beam settings pinned (not the beam-data defaults): the LET-limit scenario below depends on
    # the spot width and the range spread, not on the beam line
    influence = ProtonBeams([0, 90], margin_mm=3.0, spot_spacing_mm=6.0, spot_sigma_air_mm=5.0,
                            energy_spread_pct=0.3, halo=False, cutoff_sigma=3.0).influence(p, "PTV")
    return p, influence, influence.forms["let_dose"]


def _problem(p, influence, let, extra_terms=()):
    # the set carries "let_dose": no let_dose= needed
    prob = PlanProblem(p, influence, fractions=FRACTIONS, max_voxels_per_structure=None)
    prob += SquaredDeviation("PTV", PRESCRIPTION_GY, weight=1.0)
    prob += SquaredOverdose("Distal", 0.0, weight=0.01)
    for t in extra_terms:
        prob += t
    return prob


@pytest.fixture(scope="module")
def plans(case):
    """The plan without LET terms, the LET limits derived from it, and the plan with them."""
    p, dose, let = case
    # CLARABEL: the checks below hold the limits to 1e-6 relative, an interior-point precision
    # (the first-order solver certifies 0.01 in the term's unit)
    base = _problem(p, dose, let).solve(solver="CLARABEL")
    distal = p.structure("Distal").mask
    ld0 = let.dose_per_fraction(base.weights)[distal] * FRACTIONS
    d0 = base.dose[distal]
    letd0 = ld0 / np.maximum(d0, 1e-12)
    letd_limit = 0.8 * float(letd0[d0 > 0.01 * d0.max()].max())
    ld_limit = 0.6 * float(ld0.max())
    plan = _problem(p, dose, let, [LETdMax("Distal", letd_limit), LETDoseMax("Distal", ld_limit)]).solve(
        solver="CLARABEL")
    return base, plan, letd_limit, ld_limit


def test_hard_let_limits_hold_voxel_by_voxel_on_the_recomputed_plan(case, plans):
    p, dose, let = case
    base, plan, letd_limit, ld_limit = plans
    assert plan.solver["status"] == "optimal" and plan.modality == "proton"
    distal = p.structure("Distal").mask
    # recomputed from the weights on the full grid, independently of the optimizer's expressions
    d = dose.dose_per_fraction(plan.weights) * FRACTIONS
    np.testing.assert_allclose(plan.dose, d, rtol=1e-6, atol=1e-9)
    ld = let.dose_per_fraction(plan.weights)[distal] * FRACTIONS
    scale = float(ld.max())
    assert np.all(ld <= ld_limit + 1e-6 * max(scale, ld_limit))
    # the baseline broke both limits, and the constrained plan pushes against them
    d_base = base.dose[distal]
    ld_base = let.dose_per_fraction(base.weights)[distal] * FRACTIONS
    assert ld_base.max() > ld_limit * 1.5
    assert (ld_base / np.maximum(d_base, 1e-12))[d_base > 0.01 * d_base.max()].max() > letd_limit * 1.2
    # LETd in every Distal voxel with dose, from the plan's map and from let_d_map
    dd = d[distal]
    has_dose = dd > 1e-6 * float(plan.dose.max())
    # (voxels whose every contribution has LETd above the limit must get no dose at all: the exact
    # constraint l_i <= L d_i allows that; they meet the limit trivially)
    assert has_dose.sum() >= 10
    # the plan's LETd map is the one definition (let_d_map: NaN below 1e-3 Gy per fraction)
    np.testing.assert_array_equal(plan.extras["LETd_keV_um"], let_d_map(dose, let, plan.weights))
    letd_map = let_d_map(dose, let, plan.weights, min_dose_Gy=1e-9)
    assert np.all(letd_map[distal][has_dose] <= letd_limit * (1 + 1e-4) + 1e-6)
    assert np.nanmax(letd_map[distal][has_dose]) > 0.95 * letd_limit or ld.max() > 0.95 * ld_limit
    # the PTV is still treated: LETd in the PTV is plausible for protons (1-10 keV/um)
    ptv = p.structure("PTV").mask
    assert plan.dose[ptv].mean() > 0.8 * PRESCRIPTION_GY
    letd_ptv = plan.extras["LETd_keV_um"][ptv]
    assert 1.0 < letd_ptv.mean() < 10.0


def test_missing_let_dose_raises_a_plan_error_naming_the_term(case):
    p, influence, let = case
    dose = influence.dose_form()  # the dose matrix alone, without the "let_dose" form
    prob = PlanProblem(p, dose, fractions=FRACTIONS)
    prob += SquaredDeviation("PTV", PRESCRIPTION_GY, weight=1.0)
    prob += LETDoseMax("Distal", 5.0)
    with pytest.raises(PlanError, match=r"LETDoseMax\('Distal'.*let_dose"):
        prob.solve()
    prob = PlanProblem(p, dose, fractions=FRACTIONS)
    prob += LETdMax("Distal", 4.0)
    with pytest.raises(PlanError, match=r"LETdMax\('Distal'"):
        prob.build()
    with pytest.raises(PlanError, match="let_dose"):
        PlanProblem(p, dose, fractions=FRACTIONS, let_dose=dose.__class__(
            let.matrix[:, :-1], let.voxel_index, let.grid,
            {k: v[:-1] for k, v in let.beamlets.items()}, let.beams, "proton"))


def test_variable_rbe_dose_is_1_1_times_physical_where_the_model_gives_1_1(case, plans):
    p, _, _ = case
    _, plan, _, _ = plans
    ptv = p.structure("PTV").mask
    total = plan.dose[ptv][::7]  # a sample of PTV voxels, Gy total
    per_fx = total / plan.fractions
    assert np.all(per_fx > 0.5)
    for ab in (2.0, 10.0):
        # the LETd at which McNamara's RBE is 1.1 for this dose per fraction and (a/b)x
        let_11 = np.array([brentq(lambda L, d=d, ab=ab: mcnamara_rbe(d, L, ab) - RBE_CONSTANT, 0.0, 40.0,
                                  xtol=1e-13) for d in per_fx])
        np.testing.assert_allclose(rbe_weighted_dose(total, let_11, ab, fractions=plan.fractions),
                                   RBE_CONSTANT * total, rtol=1e-9)
        np.testing.assert_allclose(rbe_weighted_dose(total, fractions=plan.fractions, model="constant"),
                                   RBE_CONSTANT * total)
    # on the plan's own LETd: RBE-weighted dose = physical x RBE(d, LETd); above 1.1 x physical
    # exactly where the LETd exceeds the 1.1 crossing (a/b = 2 Gy, late-responding tissue)
    letd = plan.extras["LETd_keV_um"][ptv][::7]
    rbe_dose = rbe_weighted_dose(total, letd, 2.0, fractions=plan.fractions)
    np.testing.assert_allclose(rbe_dose, total * mcnamara_rbe(per_fx, letd, 2.0), rtol=1e-12)
    let_11 = np.array([brentq(lambda L, d=d: mcnamara_rbe(d, L, 2.0) - RBE_CONSTANT, 0.0, 40.0)
                       for d in per_fx])
    np.testing.assert_array_equal(rbe_dose > RBE_CONSTANT * total, letd > let_11)


def test_spot_maps_sum_to_the_weight_of_each_beam(case, plans):
    _, dose, _ = case
    _, plan, _, _ = plans
    maps = spot_maps(dose, plan.weights)
    assert len(maps) == len(plan.beams) == 2
    for b, layers in enumerate(maps):
        in_beam = plan.beamlets["beam"] == b
        assert sorted(layers) == sorted(set(plan.beamlets["layer"][in_beam].tolist()))
        total = sum(float(m.sum()) for m in layers.values())
        assert total == pytest.approx(float(plan.weights[in_beam].sum()), rel=1e-12, abs=1e-12)
        for layer, m in layers.items():
            assert m.shape == tuple(plan.beams[b]["map_shape"])
            sel = in_beam & (plan.beamlets["layer"] == layer)
            assert float(m.sum()) == pytest.approx(float(plan.weights[sel].sum()), rel=1e-12, abs=1e-12)
    # the figures: overview from the plan or from the maps, and one beam layer by layer
    figs = (plots.spot_maps(plan), plots.spot_maps(maps, beams=plan.beams), plots.spot_maps(plan, beam=1))
    for fig in figs:
        assert len(fig.axes) >= 3
    with pytest.raises(ValueError, match="beam"):
        plots.spot_maps(plan, beam=5)
