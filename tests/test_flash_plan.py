"""FLASH plans end to end on a small thorax phantom: the linear DADR constraint holds in every
constrained voxel when the plan's DADR is recomputed from the delivery model (after the two-stage
minimum-spot-weight method, so every spot lasts w / M), and transmission beams shoot through."""

import numpy as np
import pytest

from objectives import SquaredDeviation, SquaredOverdose
from objectives.quantities import Weights
from objectives.shapes import Min
from optimizer import PlanProblem, ProtonBeams
from optimizer.flash import (
    Machine,
    dadr_constraint,
    dadr_map,
    dadr_reachable,
    delivery_timeline,
    dose_rate_region,
    rate_volume_pct,
    subset_spots,
    transmission_influence,
    two_stage_minimum_weight,
)
from optimizer.flash.phantom import thorax

RATE = 40.0  # Gy/s
FRACTIONS = 5
MACHINE = Machine(current_nA=15.0)  # a degraded (Bragg-peak) beam: the DADR limit binds


@pytest.fixture(scope="module")
def case():
    patient = thorax(spacing_mm=8.0, length_mm=48.0)
    with pytest.warns(UserWarning, match="70 MeV"):
        influence = ProtonBeams([0, 315], spot_spacing_mm=8.0, layer_spacing_mm=8.0).influence(
            patient, "PTV", with_let=False)
    return patient, influence


def _build(patient, extra=(), sample=2000):
    def build(influence):
        problem = PlanProblem(patient, influence, fractions=FRACTIONS, max_voxels_per_structure=sample)
        problem += SquaredDeviation("PTV", 40.0, weight=1.0)
        problem += SquaredOverdose("Lungs", 0.0, weight=0.05)
        problem += SquaredOverdose("Body", 0.0, weight=0.02)
        for term in extra:
            problem += term
        return problem
    return build


def test_dadr_constraint_holds_when_recomputed(case):
    patient, influence = case
    reference = _build(patient)(influence).solve()
    lungs = patient.structure("Lungs").mask
    # lung voxels above 5 Gy (course) where some spot alone reaches 1.5 x 40 Gy/s
    region = dose_rate_region(reference.dose, lungs, 5.0) & dadr_reachable(influence, MACHINE, RATE, 1.5)
    before = dadr_map(influence, reference.weights, MACHINE)
    assert region.sum() > 100
    assert rate_volume_pct(before, region, RATE) < 95  # the limit is violated without the term
    out = two_stage_minimum_weight(_build(patient, [dadr_constraint("Lungs", MACHINE, RATE, region)]),
                                   influence, MACHINE.min_weight)
    plan = out["stage2"]
    rep = out["report"]
    assert rep["min_weight_stage2"] >= MACHINE.min_weight * (1 - 1e-6)
    assert rep["spots_kept"] + rep["spots_dropped"] == influence.n_beamlets
    # every delivered spot lasts w / M (no minimum-time stretch), so the linear form is exact
    w = plan.weights
    tl = delivery_timeline(plan.beamlets, w, MACHINE)
    on = w > 0
    assert tl.duration_s[on] == pytest.approx(w[on] / MACHINE.weight_rate_per_s, rel=1e-6)
    sub = subset_spots(influence, out["keep"])
    dadr = dadr_map(sub, w, MACHINE)
    dose_fx = plan.dose / FRACTIONS
    tol = plan.solver["hard_tolerance"]  # Gy (course) on q_i = d_i (1 - DADR_i / R)
    vox = region & (dose_fx > 0)
    # DADR_i >= R (1 - tol / d_i) in every constrained voxel, d_i the course dose
    assert np.all(dadr[vox] >= RATE * (1 - tol / plan.dose[vox]) - 1e-6)
    assert rate_volume_pct(dadr, region, RATE * (1 - 1e-3)) == pytest.approx(100.0)
    # the price: the objective cannot drop
    assert rep["objective_stage2"] >= reference.solver["objective"] - 1e-6


def test_weights_lower_bound_term(case):
    patient, influence = case
    problem = _build(patient)(influence)
    problem += Min(None, 1.5, quantity=Weights())
    plan = problem.solve()
    assert plan.weights.min() >= 1.5 - 1e-6


def test_transmission_beam_shoots_through():
    patient = thorax(spacing_mm=10.0, length_mm=40.0)
    inf = transmission_influence(patient, "PTV", [0, 270], spot_spacing_mm=10.0)
    assert len(inf.beams) == 2
    for beam in inf.beams:
        assert len(beam["energies"]) == 1 and beam["transmission"]
    # one energy per beam, and the dose of a central spot still rises to the exit (plateau, no peak)
    energies = inf.beamlets["energy_MeV"]
    assert len(np.unique(energies[inf.beamlets["beam"] == 0])) == 1
    dose = inf.dose_per_fraction(np.ones(inf.n_beamlets))
    body = patient.structure("Body").mask
    assert np.all(dose[~body] == 0)
    # beam 0 (gantry 0) travels +y: the dose on the far side (posterior) is still > 0
    ptv_x = np.flatnonzero(patient.structure("PTV").mask.any(axis=(0, 1)))
    column = dose[dose.shape[0] // 2, :, ptv_x[len(ptv_x) // 2]]
    inside = np.flatnonzero(body[dose.shape[0] // 2, :, ptv_x[len(ptv_x) // 2]])
    assert column[inside[-1]] > 0.2 * column[inside].max()


def test_transmission_rejects_oblique_and_short_energy():
    from optimizer.errors import BeamError

    patient = thorax(spacing_mm=10.0, length_mm=40.0)
    with pytest.raises(BeamError, match="gantry_deg"):
        transmission_influence(patient, "PTV", 45)
    with pytest.raises(BeamError, match="stops inside"):
        transmission_influence(patient, "PTV", 0, energy_MeV=80.0)


def test_first_order_solver_matches_clarabel():
    """The DADR term's numeric face (projection in its own linear form) and the immune term's
    gradient drive the matrix-free solver to CLARABEL's optimum; the DADR limit then holds by its
    nonlinear definition (computed here by hand, not through the library)."""
    from conftest import make_toy

    from objectives.dose_rate import DADRMin
    from objectives.immune import ImmuneMeanDose

    patient, inf, A = make_toy(n_target=6, n_oar=8, n_beamlets=6, seed=2)
    M, R = 100.0, 40.0  # weight / s and Gy/s: a spot reaches R in an OAR voxel where D_ij >= 0.4

    def build():
        problem = PlanProblem(patient, inf, fractions=5)
        problem += SquaredDeviation("T", 10.0, weight=1.0)
        problem += DADRMin("O", R, M)
        problem += ImmuneMeanDose("O", "lung", weight=2.0)
        return problem

    exact = build().solve()
    fo = build().solve(solver="FIRST_ORDER")
    assert fo.solver["objective"] == pytest.approx(exact.solver["objective"], rel=1e-4)
    D = A[np.flatnonzero(patient.structure("O").mask.ravel())]
    for plan, tol in ((exact, 1e-3), (fo, 1e-2)):
        w = plan.weights
        d = D @ w  # dose per fraction
        dadr = (D * D) @ w * M / d
        assert np.all(dadr >= R * (1 - tol / (5 * d)) - 1e-9)
    # without the limit the OAR would be below R somewhere (the test can fail)
    free = PlanProblem(patient, inf, fractions=5)
    free += SquaredDeviation("T", 10.0, weight=1.0)
    w = free.solve().weights
    assert np.any((D * D) @ w * M / (D @ w) < R)
