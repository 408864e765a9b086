"""Deliverable photon plans: MU calibration against the recomputed reference condition and a
hand calculation, leaf sequencing (exact integer decompositions, leaf rules in every segment),
delivered fluence against brute-force sampling, delivered dose."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optimizer import Grid, Patient, PhotonBeams, Plan, Structure, deliver, phantoms
from optimizer.deliver import Calibration, DeliveryError, Machine, MUCalibration
from optimizer.deliver.sliding import sliding_window_beam

W = 5.0  # beamlet size, mm


def _cal(mu_per_weight=100.0) -> MUCalibration:
    """A calibration of known MU per weight (no beam model needed for sequencing)."""
    return MUCalibration(mu_per_weight, mu_per_weight / 100, 15.0, Calibration(), W, 1000.0)


def _plan_of_maps(maps, gantries=None, origins=None, fractions=5) -> Plan:
    """A photon Plan that holds given fluence maps (rows = v, cols = u) on a tiny patient: enough
    for sequencing, which reads only the beamlet table, the beams and the weights."""
    grid = Grid((2, 2, 2), (3.0, 3.0, 3.0))
    patient = Patient(grid, np.zeros(grid.shape), [Structure("T", np.ones(grid.shape, bool), "target")])
    table = {k: [] for k in ("beam", "row", "col", "u_mm", "v_mm")}
    beams, weights = [], []
    for b, m in enumerate(maps):
        m = np.asarray(m, float)
        u0, v0 = (origins[b] if origins else (-(m.shape[1] // 2) * W, -(m.shape[0] // 2) * W))
        r, c = np.nonzero(np.ones_like(m, bool))
        for k, v in (("beam", np.full(r.size, b)), ("row", r), ("col", c), ("u_mm", u0 + c * W),
                     ("v_mm", v0 + r * W)):
            table[k].append(v)
        weights.append(m[r, c])
        beams.append({"gantry_deg": float(gantries[b] if gantries else 40.0 * b), "couch_deg": 0.0,
                      "isocenter_mm": [0.0, 0.0, 0.0], "sad_mm": 1000.0, "map_shape": list(m.shape),
                      "beamlet_mm": W, "u0_mm": u0, "v0_mm": v0, "energy": "6MV"})
    table = {k: np.concatenate(v) for k, v in table.items()}
    return Plan(patient, np.concatenate(weights), fractions, np.zeros(grid.shape), table, beams, "photon")


def _random_maps(seed, n=3, shape=(6, 9), top=8):
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(n):
        m = rng.integers(0, top + 1, size=shape).astype(float)
        m[0, 0] = top  # every beam's maximum is ``top`` levels
        m[rng.random(shape) < 0.2] = 0
        maps.append(m)
    return maps


# -- decomposition of integer matrices ------------------------------------------------------------


def test_reducing_levels_hand_examples():
    # [[7]]: L=7 -> d=2 (m = floor(log2 7) = 2), 5 -> 2, 3 -> 1, 2 -> 1, 1 -> 1 (Xia & Verhey eqs. 5-7)
    units = [u for u, _, _ in deliver.reducing_levels([[7]])]
    assert units == [2, 2, 1, 1, 1]
    # [[1, 3, 2]]: d = 1 each time; the run with the row's maximum: [0..2], then [1..2], then [1..1]
    segs = deliver.reducing_levels([[1, 3, 2]])
    assert [(u, int(lo[0]), int(hi[0])) for u, lo, hi in segs] == [(1, 0, 2), (1, 1, 2), (1, 1, 1)]


def test_sweep_hand_example_and_least_total_units():
    segs = deliver.sweep([[1, 3, 2]])
    # rises: +1 at 0, +2 at 1; falls: -1 after 1, -2 after 2 -> [0..1] once, [1..2] twice
    assert [(u, int(lo[0]), int(hi[0])) for u, lo, hi in segs] == [(1, 0, 1), (2, 1, 2)]
    rng = np.random.default_rng(3)
    for _ in range(30):
        a = rng.integers(0, 9, size=(4, 7))
        # Bortfeld 1994: the sweep's total units are the largest row sum of positive steps
        tnmu = int(np.max(np.sum(np.maximum(np.diff(np.c_[np.zeros(4, int), a], axis=1), 0), axis=1)))
        assert sum(u for u, _, _ in deliver.sweep(a)) == tnmu


@pytest.mark.parametrize("method", [deliver.reducing_levels, deliver.sweep])
def test_decompositions_reproduce_integer_matrices_exactly(method):
    rng = np.random.default_rng(7)
    for _ in range(40):
        a = rng.integers(0, 12, size=(rng.integers(1, 7), rng.integers(1, 10)))
        segs = method(a)
        assert np.array_equal(deliver.apertures_sum(segs, a.shape), a)
        for _, lo, hi in segs:  # one contiguous run per leaf pair, or closed
            assert np.all((lo == -1) == (hi == -1)) and np.all(hi >= lo)
    assert method(np.zeros((3, 4), int)) == []


def test_decomposition_refuses_non_integers():
    with pytest.raises(ValueError, match="intensity"):
        deliver.reducing_levels([[1.5, 2]])
    with pytest.raises(ValueError, match="intensity"):
        deliver.sweep([[-1, 2]])


# -- sequencing a plan --------------------------------------------------------------------------


def _brute_force_fluence(bd, machine, u0, v0, shape, ideal, n_sub=40, n_time=1):
    """MU per cell by sampling points in each cell (and times within each control-point interval
    for moving leaves), independent of the closed-form integration."""
    t = 0.0 if ideal else machine.transmission
    half = 0.0 if ideal else machine.leaf_end_leakage_mm / 2
    rows, cols = shape
    sub = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    out = np.zeros(shape)
    bnd = bd.leaf_boundaries_mm
    for r in range(rows):
        vs = v0 + (r + sub) * W
        pair = np.searchsorted(bnd, vs) - 1
        in_y = (vs > bd.jaw_y_mm[0]) & (vs < bd.jaw_y_mm[1])
        for c in range(cols):
            us = u0 + (c + sub) * W
            in_x = (us > bd.jaw_x_mm[0]) & (us < bd.jaw_x_mm[1])
            total = 0.0
            for k in range(bd.n_control_points - 1):
                d_mu = bd.cumulative_mu[k + 1] - bd.cumulative_mu[k]
                if d_mu <= 0:
                    continue
                for s in (np.arange(n_time) + 0.5) / n_time:
                    left = (1 - s) * bd.left_mm[k, pair] + s * bd.left_mm[k + 1, pair] - half
                    right = (1 - s) * bd.right_mm[k, pair] + s * bd.right_mm[k + 1, pair] + half
                    inside = (us[None, :] > left[:, None]) & (us[None, :] < right[:, None])
                    f = np.where(inside, 1.0, t) * in_x[None, :] * in_y[:, None]
                    total += d_mu / n_time * f.mean()
            out[r, c] = total
    return out


@pytest.mark.parametrize("method", ["reducing_levels", "sweep"])
@pytest.mark.parametrize("interdigitation", [True, False])
def test_step_and_shoot_reproduces_integer_fluence_and_keeps_leaf_rules(method, interdigitation):
    maps = _random_maps(1)
    plan = _plan_of_maps(maps)
    machine = Machine(interdigitation=interdigitation, min_gap_mm=0.0 if not interdigitation else 0.5)
    delivery = deliver.sequence(plan, machine, _cal(), levels=8, method=method)
    assert len(delivery.beams) == 3 and delivery.n_segments == sum(len(b.segments()) for b in delivery.beams)
    for bd, m, beam in zip(delivery.beams, maps, plan.beams):
        # leaf rules, checked here independently of leaf_rule_violations
        gap = bd.right_mm - bd.left_mm
        assert gap.min() >= machine.min_gap_mm - 1e-9
        if not interdigitation:
            assert np.min(bd.right_mm[:, 1:] - bd.left_mm[:, :-1]) >= machine.min_gap_mm - 1e-9
            assert np.min(bd.right_mm[:, :-1] - bd.left_mm[:, 1:]) >= machine.min_gap_mm - 1e-9
        assert deliver.leaf_rule_violations(bd, machine) == []
        # step and shoot: pairs of control points with equal leaves, MU in whole level units
        assert np.array_equal(bd.left_mm[0::2], bd.left_mm[1::2])
        units = np.diff(bd.cumulative_mu)[0::2] / (bd.level_weight * 100.0)
        assert np.allclose(units, np.round(units)) and np.all(units >= 1 - 1e-9)
        # the fluence: sum of apertures x MU equals the integer map, cell by cell
        ideal = deliver.delivered_fluence(bd, machine, beam["u0_mm"], beam["v0_mm"], W, m.shape, ideal=True)
        np.testing.assert_allclose(ideal / 100.0, m, atol=1e-9)


@pytest.mark.parametrize("method", ["reducing_levels", "sweep"])
def test_no_interdigitation_with_a_minimum_gap_keeps_every_rule(method):
    machine = Machine(interdigitation=False, min_gap_mm=0.5)
    for seed in range(3):
        delivery = deliver.sequence(_plan_of_maps(_random_maps(10 + seed)), machine, _cal(), levels=8,
                                    method=method)
        for bd in delivery.beams:
            assert np.min(bd.right_mm - bd.left_mm) >= 0.5 - 1e-9
            assert np.min(bd.right_mm[:, 1:] - bd.left_mm[:, :-1]) >= 0.5 - 1e-9
            assert np.min(bd.right_mm[:, :-1] - bd.left_mm[:, 1:]) >= 0.5 - 1e-9
            assert deliver.leaf_rule_violations(bd, machine) == []


def test_leaf_rules_are_detected():
    plan = _plan_of_maps(_random_maps(2, n=1))
    machine = Machine(interdigitation=False, min_gap_mm=0.0)
    bd = deliver.sequence(plan, machine, _cal()).beams[0]
    bd.left_mm[0, 30] = bd.right_mm[0, 30] + 1.0
    assert any("gap" in v for v in deliver.leaf_rule_violations(bd, machine))
    strict = Machine(interdigitation=False, min_gap_mm=0.5)
    bd.left_mm[:] = 0.0
    bd.right_mm[:] = 1.0
    bd.left_mm[:, 31], bd.right_mm[:, 31] = 10.0, 20.0
    assert any("interdigitate" in v for v in deliver.leaf_rule_violations(bd, strict))


def test_no_interdigitation_splits_interlocking_rows():
    # two rows open on opposite sides: one aperture would interlock, so it is split in two
    m = np.array([[4, 4, 0, 0, 0], [0, 0, 0, 4, 4]], float)
    plan = _plan_of_maps([m], origins=[(-10.0, 0.0)])
    cal = _cal()
    free = deliver.sequence(plan, Machine(interdigitation=True), cal, levels=1)
    strict = deliver.sequence(plan, Machine(interdigitation=False, min_gap_mm=0.5), cal, levels=1)
    assert free.n_segments == 1 and strict.n_segments == 2
    assert free.total_mu == pytest.approx(400.0) and strict.total_mu == pytest.approx(800.0)


def test_delivered_fluence_with_transmission_and_leakage_against_sampling():
    plan = _plan_of_maps(_random_maps(4, n=1, shape=(4, 6)))
    machine = Machine(transmission=0.02, leaf_end_leakage_mm=1.6, min_gap_mm=0.5)
    bd = deliver.sequence(plan, machine, _cal(), levels=4).beams[0]
    beam = plan.beams[0]
    shape = (6, 8)  # one cell more around the map: transmission and leakage stop at the jaws
    u0, v0 = beam["u0_mm"] - W, beam["v0_mm"] - W
    exact = deliver.delivered_fluence(bd, machine, u0, v0, W, shape)
    # 0.1 mm samples: every leaf edge, leakage strip (0.8 mm) and gap (0.5 mm) falls between samples
    sampled = _brute_force_fluence(bd, machine, u0, v0, shape, ideal=False, n_sub=50)
    np.testing.assert_allclose(exact, sampled, rtol=1e-9, atol=1e-9 * bd.mu)
    ideal = deliver.delivered_fluence(bd, machine, u0, v0, W, shape, ideal=True)
    assert np.all(exact >= ideal - 1e-9) and exact.sum() > ideal.sum()
    # outside the jaws nothing
    assert exact[0].sum() == 0 and exact[:, 0].sum() == 0


@pytest.mark.parametrize("gap", [0.0, 0.5])
def test_sliding_window_reproduces_the_profile_and_respects_leaf_speed(gap):
    m = _random_maps(5, n=1, shape=(3, 5), top=4)[0]
    beam = {"gantry_deg": 0.0, "couch_deg": 0.0, "isocenter_mm": [0, 0, 0], "beamlet_mm": W,
            "u0_mm": -15.0, "v0_mm": -10.0, "map_shape": [3, 5]}
    machine = Machine(min_gap_mm=gap, transmission=0.0, leaf_end_leakage_mm=0.0)
    cal = _cal(1.0)
    bd = sliding_window_beam(0, beam, m, machine, cal, 4)
    assert deliver.leaf_rule_violations(bd, machine) == []
    fl = deliver.delivered_fluence(bd, machine, -15.0, -10.0, W, m.shape)
    n_time = 10
    sampled = _brute_force_fluence(bd, machine, -15.0, -10.0, m.shape, ideal=True, n_sub=10, n_time=n_time)
    # midpoint sampling in MU misses at most one sample interval per leaf crossing a point
    np.testing.assert_allclose(fl, sampled, atol=2 * np.diff(bd.cumulative_mu).max() / n_time)
    travel = W / machine.leaf_speed_mm_per_mu  # MU to cross one cell at full speed
    rows = [r for r in range(3) if m[r].any()]
    # Spirou & Chui: the least MU is the cells crossed at full speed plus the positive steps
    expected = max((np.flatnonzero(m[r])[-1] - np.flatnonzero(m[r])[0] + 1) * travel
                   + np.maximum(np.diff(np.r_[0, m[r]]), 0).sum() for r in rows)
    assert bd.mu == pytest.approx(expected)
    if gap == 0:
        np.testing.assert_allclose(fl, m, atol=1e-9)
    else:  # the trailing leaf held back by the gap only adds fluence
        assert np.all(fl >= m - 1e-9) and fl.sum() > m.sum()
        # at most what the gap gives crossing a point at full speed, gap / speed MU: a finished
        # pair parks beyond the jaw (it used to stay at its row's end with the gap open over the
        # last cell while the other pairs delivered: up to 2.7 levels there)
        assert (fl - m).max() <= gap / machine.leaf_speed_mm_per_mu + 1e-9


def test_sequence_input_errors():
    plan = _plan_of_maps(_random_maps(6, n=1))
    with pytest.raises(DeliveryError, match="levels"):
        deliver.sequence(plan, Machine(), _cal(), levels=0)
    with pytest.raises(DeliveryError, match="technique"):
        deliver.sequence(plan, Machine(), _cal(), technique="vmat")
    with pytest.raises(DeliveryError, match="method"):
        deliver.sequence(plan, Machine(), _cal(), method="best")
    with pytest.raises(DeliveryError, match="interdigitation"):
        deliver.sequence(plan, Machine(interdigitation=False), _cal(), technique="sliding_window")
    with pytest.raises(DeliveryError, match="n_leaf_pairs"):
        deliver.sequence(plan, Machine(n_leaf_pairs=3), _cal())
    with pytest.raises(DeliveryError, match="min_gap_mm"):
        deliver.sequence(plan, Machine(min_gap_mm=6.0), _cal())
    for kwargs, field in [({"transmission": 1.5}, "machine.transmission"),
                          ({"leaf_width_mm": 0}, "leaf_width"), ({"n_leaf_pairs": 2.5}, "n_leaf_pairs"),
                          ({"interdigitation": "no"}, "interdigitation")]:
        with pytest.raises(DeliveryError, match=field):
            Machine(**kwargs)
    with pytest.raises(DeliveryError, match="calibration.ssd_mm"):
        Calibration(ssd_mm=-1)


# -- MU calibration --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated():
    beams = PhotonBeams([0.0], beamlet_mm=W)
    return beams, deliver.calibrate(beams)


def test_calibration_recomputes_the_reference_condition(calibrated):
    """100 MU of a 10 x 10 cm2 field at SSD 100 cm give 1 Gy at the depth of maximum, recomputed
    on another phantom (2 mm voxels along the beam, water box of phantoms) with the same model."""
    beams, cal = calibrated
    box = phantoms.water_box(size_mm=(155.0, 200.0, 155.0), spacing_mm=(5.0, 2.0, 5.0), air_margin_mm=20.0)
    surface_y = -100.0  # the box's anterior surface; SSD = SAD puts the isocentre on it
    grid = box.grid
    zs, ys, xs = grid.axes_mm()
    mask = np.zeros(grid.shape, bool)
    iz, ix = int(np.argmin(np.abs(zs))), int(np.argmin(np.abs(xs)))
    assert zs[iz] == 0 and xs[ix] == 0
    mask[iz, (ys > surface_y) & (ys < surface_y + 60), ix] = True
    inf = beams.influence(box, isocenter_mm=(0.0, surface_y, 0.0), dose_mask=mask,
                          fields={0: np.ones((20, 20), bool)}, max_memory_mb=math.inf)
    weight = 100.0 / cal.mu_per_weight  # every beamlet at the weight of 100 MU
    dose = np.zeros(grid.n_voxels)
    dose[inf.voxel_index] = inf.matrix @ np.full(inf.n_beamlets, weight)
    cax = dose.reshape(grid.shape)[iz, :, ix]
    assert cax.max() == pytest.approx(1.0, rel=3e-3)  # 1 Gy per 100 MU (2 mm sampling of the peak)
    # a reference depth: 100 MU give 1 Gy there
    cal10 = deliver.calibrate(beams, Calibration(depth_mm=100.0))
    depth = ys - surface_y
    k = int(np.argmin(np.abs(depth - 100.0)))
    mask[:] = False
    mask[iz, k - 1: k + 2, ix] = True
    inf = beams.influence(box, isocenter_mm=(0.0, surface_y, 0.0), dose_mask=mask,
                          fields={0: np.ones((20, 20), bool)}, max_memory_mb=math.inf)
    d = np.zeros(grid.n_voxels)
    d[inf.voxel_index] = inf.matrix @ np.full(inf.n_beamlets, 100.0 / cal10.mu_per_weight)
    profile = d.reshape(grid.shape)[iz, k - 1: k + 2, ix]
    assert np.interp(100.0, depth[k - 1: k + 2], profile) == pytest.approx(1.0, rel=2e-3)
    assert cal10.mu_per_weight < cal.mu_per_weight  # less dose per weight at 10 cm than at d_max


def test_calibration_hand_calculation():
    """The analytic single-Gaussian pencil beam (PhotonKernel) at SSD = SAD:
    D(d) = (SAD / (SAD + d))^2 P(d) L(d), with the lateral factor of a 100 mm field on the axis
    L = [erf(50 / (sqrt2 sigma_iso))]^2; MU per weight is 100 times its maximum over depth
    (1 MU = 1 cGy)."""
    from scipy.special import erf

    from optimizer import PhotonKernel

    k = PhotonKernel()
    beams = PhotonBeams([0.0], beamlet_mm=W, kernel=k)
    cal = deliver.calibrate(beams)
    d = np.linspace(0.0, 60.0, 60001)
    sad = beams.sad_mm
    sigma_iso = k.sigma_mm(d) * sad / (sad + d)
    lateral = erf(50.0 / (np.sqrt(2) * sigma_iso)) ** 2
    dose = (sad / (sad + d)) ** 2 * k.depth_dose(d) * lateral
    assert cal.mu_per_weight == pytest.approx(100 * dose.max(), rel=1e-3)
    assert cal.reference_depth_mm == pytest.approx(d[np.argmax(dose)], abs=0.3)


def test_calibration_input_errors():
    with pytest.raises(DeliveryError, match="field_size_mm"):
        deliver.calibrate(PhotonBeams([0.0], beamlet_mm=3.0))
    with pytest.raises(DeliveryError, match="beams"):
        deliver.calibrate("not a beam model")
    with pytest.raises(DeliveryError, match="calibration"):
        deliver.calibrate(PhotonBeams([0.0], beamlet_mm=W), {"ssd_mm": 1000})


# -- dose of the delivered fluence -----------------------------------------------------------------


def test_delivered_dose_of_an_exact_sequence_is_the_plan_dose(calibrated):
    _, cal = calibrated
    box = phantoms.water_box(size_mm=(60.0, 80.0, 80.0), spacing_mm=5.0)
    target = np.zeros(box.grid.shape, bool)
    target[4:8, 6:10, 6:10] = True
    box.add_structure(Structure("PTV", target, "target"))
    beams = PhotonBeams([0.0, 90.0], beamlet_mm=W)
    inf = beams.influence(box, target="PTV")
    rng = np.random.default_rng(0)
    levels = 5
    w = rng.integers(0, levels + 1, inf.n_beamlets).astype(float) * 0.01
    for b in range(2):  # each beam's largest weight is ``levels`` units
        w[np.flatnonzero(inf.beamlets["beam"] == b)[0]] = levels * 0.01
    plan = Plan.from_weights(box, inf, w, fractions=2)
    delivery = deliver.sequence(plan, Machine(), cal, levels=levels)
    optimized, ideal = deliver.delivered_dose(plan, beams, delivery, ideal=True)
    np.testing.assert_allclose(optimized.dose, plan.dose, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ideal.dose, plan.dose, rtol=1e-5, atol=1e-6)
    _, real = deliver.delivered_dose(plan, beams, delivery)
    assert np.all(real.dose >= ideal.dose - 1e-6) and real.dose.sum() > ideal.dose.sum()
    assert real.solver["delivery"]["segments"] == delivery.n_segments
    assert delivery.total_mu == pytest.approx(sum(delivery.mu_per_beam))


def test_scaled_delivery_scales_mu_and_fluence():
    plan = _plan_of_maps(_random_maps(8, n=1))
    machine = Machine()
    delivery = deliver.sequence(plan, machine, _cal(), levels=6)
    double = delivery.scaled(2.0)
    assert double.total_mu == pytest.approx(2 * delivery.total_mu)
    assert double.n_segments == delivery.n_segments
    beam = plan.beams[0]
    args = (machine, beam["u0_mm"], beam["v0_mm"], W, tuple(beam["map_shape"]))
    np.testing.assert_allclose(deliver.delivered_fluence(double.beams[0], *args),
                               2 * deliver.delivered_fluence(delivery.beams[0], *args))
    with pytest.raises(DeliveryError, match="factor"):
        delivery.scaled(0.0)


def test_a_delivery_checks_its_fractions_and_technique_when_made():
    """Delivery(fractions=0 / 2.5 / True) was accepted and failed only at DICOM export, if
    ever; the MU per fraction read it meanwhile."""
    import dataclasses

    delivery = deliver.sequence(_plan_of_maps(_random_maps(8, n=1)), Machine(), _cal(), levels=6)
    for bad in (0, 2.5, True, float("nan"), "25"):
        with pytest.raises(DeliveryError, match="fractions: expected a whole number of fractions >= 1"):
            dataclasses.replace(delivery, fractions=bad)
    with pytest.raises(DeliveryError, match="technique"):
        dataclasses.replace(delivery, technique="vmat")
    assert dataclasses.replace(delivery, fractions=25.0).fractions == 25


def test_leaves_off_the_beamlet_rows_warn_with_the_fluence_error():
    """Leaf pairs that straddle beamlet rows (60 pairs of 5 mm: boundaries on the row centres here)
    deliver each pair the average of two rows, silently (C-shape: PTV D95 50.5 -> 44.1 Gy before
    transmission). Now a warning gives the error; by hand for two rows 8 and 0 under one pair the
    leaves give 4 to both: 4 / 8 = 50 % of the peak. The aligned default machine stays silent."""
    import warnings

    m = np.zeros((6, 9))
    m[2, 3:6] = 8.0  # one lit row; its neighbours 0
    plan = _plan_of_maps([m])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        deliver.sequence(plan, Machine(), _cal(), levels=8)
    with pytest.warns(UserWarning, match=r"beam 0's leaf boundaries do not fall on the edges of its 5 mm "
                                         r"beamlet rows: .* up to 50 % of the peak fluence"):
        deliver.sequence(plan, Machine(n_leaf_pairs=60), _cal(), levels=8)
