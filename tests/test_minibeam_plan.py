"""Minibeam planning terms: numeric faces against cvxpy, and valley-dose planning end to end."""

import cvxpy as cp
import numpy as np
import pytest

from objectives import MaxDose, SquaredDeviation
from objectives.minibeam import PVDRMin, ValleyMax, ValleyMean
from objectives.terms import TermContext
from optimizer.beams.minibeam import ProtonMinibeams
from optimizer.beams.minibeam_pattern import MinibeamPattern
from optimizer.evaluate.pvdr import peak_valley_masks
from optimizer.geometry import Grid, Patient, Structure
from optimizer.problem import PlanProblem

GRID = (1, 4, 5)
N = 20
rng = np.random.default_rng(3)
VOL = rng.uniform(0.5, 1.5, N)
VOL /= VOL.sum()
CTX = TermContext("S", VOL, np.arange(N), 1, GRID)
PEAK = np.zeros(GRID, bool)
PEAK[0, :, 0::4] = True
VALLEY = np.zeros(GRID, bool)
VALLEY[0, :, 2] = True


def terms():
    return [ValleyMax("S", 5.0, VALLEY), ValleyMean("S", 4.0, VALLEY), PVDRMin("S", 3.0, PEAK, VALLEY)]


@pytest.mark.parametrize("i", range(3))
def test_numeric_faces_equal_cvxpy(i):
    term = terms()[i]
    q = rng.uniform(0, 10, N)
    x = cp.Variable(N)
    g = term.violation(x, CTX)
    x.value = q
    assert np.allclose(term.violation_values(q, CTX), g.value, atol=1e-10)
    # projection = the cvxpy solution of min ||y - q||^2 s.t. violation(y) <= 0
    y = cp.Variable(N)
    cp.Problem(cp.Minimize(cp.sum_squares(y - q)), [term.violation(y, CTX) <= 0]).solve(solver="CLARABEL")
    proj = term.project(q, CTX)["dose"]
    assert np.allclose(proj, y.value, atol=1e-5)
    assert term.violation_values(proj, CTX).max() <= 1e-9
    assert cp.Problem(cp.Minimize(0), [term.violation(y, CTX) <= 0]).is_dpp()


def test_pvdr_min_by_hand():
    q = np.zeros(N)
    q[PEAK.ravel()] = 6.0
    q[VALLEY.ravel()] = 2.0
    assert PVDRMin("S", 3.0, PEAK, VALLEY).violation_values(q, CTX)[0] == pytest.approx(0.0)
    assert PVDRMin("S", 2.0, PEAK, VALLEY).violation_values(q, CTX)[0] == pytest.approx(-2.0)


def _entrance_case(n_depth, n_lateral, target_from_mm, half_width_mm, field_mm):
    """Fine slab (2 x 1 x 0.25 mm, y from -10 mm along the beam, x centred): an OAR at y = 0-10 mm
    in front of a target at y = ``target_from_mm`` to + 10 mm, both ``half_width_mm`` either side;
    0.6 mm focused proton minibeams at 3 mm. Returns the patient, the two masks, the influence."""
    g = Grid((1, n_depth, n_lateral), (2.0, 1.0, 0.25), (0.0, -10.0, -0.125 * (n_lateral - 1)))
    _, y, x = np.meshgrid(*g.axes_mm(), indexing="ij")
    tgt = (y >= target_from_mm) & (y <= target_from_mm + 10.0) & (np.abs(x) <= half_width_mm)
    oar = (y >= 0) & (y <= 10) & (np.abs(x) <= half_width_mm)
    p = Patient(g, np.zeros(g.shape, np.float32), [Structure("Body", np.ones(g.shape, bool)),
                                                   Structure("T", tgt, "target"),
                                                   Structure("OAR", oar, "oar")])
    inf = ProtonMinibeams(0, MinibeamPattern(0.6, 3.0), layer_spacing_mm=3.0, field_mm=field_mm,
                          length_mm=20).influence(p)
    return p, tgt, oar, inf


def test_optimizer_meets_valley_limit_a_uniform_array_misses():
    # OAR (entrance, depth 10-20 mm) in front of a target at 40-50 mm, 0.6 mm beams at 3 mm
    p, tgt, oar, inf = _entrance_case(70, 80, 40.0, 4.0, field_mm=9)
    g = p.grid
    _, valley = peak_valley_masks(g, inf)
    # uniform weights scaled to a 10 Gy target mean
    d = np.zeros(g.n_voxels)
    d[inf.voxel_index] = inf.matrix @ np.ones(inf.matrix.shape[1])
    d = d.reshape(g.shape)
    d *= 10.0 / d[tgt].mean()
    limit = 0.7 * d[oar & valley].max()
    prob = PlanProblem(p, inf, fractions=1, max_voxels_per_structure=None)
    prob += SquaredDeviation("T", 10.0, weight=1.0)
    prob += MaxDose("T", 12.0)
    prob += ValleyMax("OAR", limit, valley)
    plan = prob.solve(solver="CLARABEL")
    valley_dose = plan.dose[oar & valley]
    assert valley_dose.max() <= limit + 1e-3  # hard: every valley voxel of the fine grid
    assert d[oar & valley].max() > limit + 0.1  # the uniform array misses it
    assert abs(plan.dose[tgt].mean() - 10.0) < 1.0


def test_bed_limit_on_valley_structure(tmp_path):
    # BED of valley doses through derived structures: add_peak_valley_structures + BEDMax; the
    # BED of every valley voxel, D (1 + D / (n a/b)) by hand, stays under the limit
    from objectives import BEDMax
    from objectives.radiobiology import LQ
    from optimizer.evaluate.pvdr import add_peak_valley_structures

    p, tgt, oar, inf = _entrance_case(60, 60, 30.0, 3.0, field_mm=6)
    g = p.grid
    assert inf.beams[0]["delivery"] == "focused" and inf.modality == "minibeam"
    peak_name, valley_name = add_peak_valley_structures(p, "OAR", inf)
    _, valley = peak_valley_masks(g, inf)
    assert np.array_equal(p.structure(valley_name).mask, valley & oar)
    lq = LQ({valley_name: 3.0}, default=10.0)
    prob = PlanProblem(p, inf, fractions=5, max_voxels_per_structure=None)
    prob += SquaredDeviation("T", 30.0, weight=1.0)
    prob += BEDMax(valley_name, 6.0, lq)
    plan = prob.solve(solver="CLARABEL")
    d = plan.dose[valley & oar]
    bed = d * (1 + d / (5 * 3.0))
    assert bed.max() <= 6.0 + 1e-3
    assert abs(plan.dose[tgt].mean() - 30.0) < 3.0
    # the minibeam beam table survives the plan archive
    from optimizer.plan import Plan

    back = Plan.load(plan.save(tmp_path / "mb.plan"))
    assert np.array_equal(back.dose, plan.dose) and back.beams[0]["ctc_mm"] == 3.0


def test_example_writes_minibeam_metrics(tmp_path):
    import importlib.util
    import json
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "examples", "minibeam.py")
    spec = importlib.util.spec_from_file_location("minibeam_example", path)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    ex.main(["--out", str(tmp_path)])
    rec = json.load(open(tmp_path / "metrics.json"))
    for key in ("minibeam", "minibeam_photon"):
        mb = rec[key]
        assert {"modality", "beam_width_mm", "ctc_mm", "pvdr_by_depth", "structures", "goals"} <= set(mb)
        assert {"depth_mm", "peak_Gy", "valley_Gy", "pvdr"} == set(mb["pvdr_by_depth"][0])
        assert {"peak_mean_Gy", "valley_mean_Gy", "valley_max_Gy", "pvdr"} == set(mb["structures"]["OAR"])
        assert all(g["met"] for g in mb["goals"])  # the hard valley ceiling (and PVDR floor) hold
    # the proton array merges in the target (PVDR -> 1) while the OAR stays fractionated
    by_depth = rec["minibeam"]["pvdr_by_depth"]
    assert by_depth[0]["pvdr"] > 10 and min(r["pvdr"] for r in by_depth) < 1.05
    assert rec["minibeam"]["target_max_over_min"] < 1.3  # 1.25 with the binding 1 Gy valley ceiling
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".png")]) == 8
