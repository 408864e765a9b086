"""RBE models (objectives.rbe) against hand-computed values, and the LET planning terms
(objectives.let) on a small proton plan solved with cvxpy / CLARABEL on the beam model's own
matrices, checked voxel by voxel after recomputing the plan's LETd."""

import math

import cvxpy as cp
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import brentq

from objectives.errors import BiologyError, TermError
from objectives.let import DirtyDoseMax, LETdMax, LETDoseMax, dirty_dose_matrix
from objectives.rbe import (
    RBE_CONSTANT,
    mcnamara_rbe,
    mcnamara_rbe_max,
    mcnamara_rbe_min,
    rbe_weighted_dose,
)
from objectives.terms import TermContext
from optimizer import phantoms
from optimizer.beams.proton import ProtonBeams
from optimizer.geometry import Structure

# -- RBE -----------------------------------------------------------------------------------------


def test_mcnamara_hand_values():
    # (a/b)x = 10 Gy, LETd = 2 keV/um, d = 2 Gy; McNamara et al., Phys Med Biol 2015;60:8399:
    # RBEmax = 0.99064 + 0.35605 LETd / (a/b)x (published p0 0.99064, not the 0.999064 typo)
    rmax = 0.99064 + 0.35605 * 2 / 10  # 1.06185
    rmin = 1.1012 - 0.0038703 * math.sqrt(10) * 2
    rbe = (math.sqrt(10**2 + 4 * 2 * 10 * rmax + 4 * 2**2 * rmin**2) - 10) / (2 * 2)
    assert mcnamara_rbe_max(2, 10) == pytest.approx(rmax, rel=1e-12)
    assert mcnamara_rbe_min(2, 10) == pytest.approx(rmin, rel=1e-12)
    assert mcnamara_rbe(2.0, 2.0, 10.0) == pytest.approx(rbe, rel=1e-12)
    assert isinstance(mcnamara_rbe(2.0, 2.0, 10.0), float)
    # low dose limit is RBEmax; low (a/b)x and high LET raise the RBE
    assert mcnamara_rbe(0.0, 5.0, 2.0) == pytest.approx(mcnamara_rbe_max(5.0, 2.0), rel=1e-12)
    assert mcnamara_rbe(1e-9, 5.0, 2.0) == pytest.approx(mcnamara_rbe_max(5.0, 2.0), rel=1e-6)
    assert mcnamara_rbe(2.0, 10.0, 2.0) > mcnamara_rbe(2.0, 2.0, 2.0) > 1.0
    assert mcnamara_rbe(2.0, 5.0, 2.0) > mcnamara_rbe(2.0, 5.0, 10.0)
    out = mcnamara_rbe(np.array([1.0, 2.0]), np.array([[1.0], [3.0]]), 3.0)
    assert out.shape == (2, 2)


def test_variable_rbe_dose_equals_constant_where_the_model_gives_1_1():
    """Consistency: for inputs where McNamara's RBE is 1.1, the variable-RBE weighted dose is 1.1
    x the physical dose, as with the constant model."""
    assert RBE_CONSTANT == 1.1
    total, n = 60.0, 30
    for ab in (2.0, 3.0, 10.0):
        let = brentq(lambda L, ab=ab: mcnamara_rbe(total / n, L, ab) - 1.1, 0.0, 30.0, xtol=1e-12)
        assert rbe_weighted_dose(total, let, ab, fractions=n) == pytest.approx(1.1 * total, rel=1e-9)
        assert rbe_weighted_dose(total, fractions=n, model="constant") == pytest.approx(1.1 * total)
    doses = np.array([0.0, 10.0, 70.0])
    np.testing.assert_allclose(rbe_weighted_dose(doses, fractions=30, model="constant"), 1.1 * doses)


def test_rbe_bad_input():
    with pytest.raises(BiologyError, match="dose_per_fraction"):
        mcnamara_rbe(-1.0, 2.0, 3.0)
    with pytest.raises(BiologyError, match="alpha_beta_x"):
        mcnamara_rbe(2.0, 2.0, 0.0)
    with pytest.raises(BiologyError, match="letd"):
        mcnamara_rbe(2.0, np.nan, 3.0)
    with pytest.raises(BiologyError, match="model"):
        rbe_weighted_dose(60.0, 2.0, 3.0, fractions=30, model="wedenberg")
    with pytest.raises(BiologyError, match="letd"):
        rbe_weighted_dose(60.0, fractions=30)
    with pytest.raises(TypeError, match="fractions"):
        rbe_weighted_dose(60.0, 2.0, 3.0)  # no default number of fractions
    with pytest.raises(BiologyError, match="fractions"):
        rbe_weighted_dose(60.0, 2.0, 3.0, fractions=0)


# -- dirty dose matrix -------------------------------------------------------------------------


def test_dirty_dose_matrix_by_hand():
    d = sp.csr_matrix(np.array([[1.0, 2.0, 0.0], [0.5, 0.0, 4.0]]))
    let = np.array([[1.0, 6.0, 0.0], [8.0, 0.0, 2.0]])  # keV/um per entry
    ld = sp.csr_matrix(d.multiply(let))
    q = dirty_dose_matrix(d, ld, 5.0).toarray()
    np.testing.assert_allclose(q, [[0.0, 2.0, 0.0], [0.5, 0.0, 0.0]])
    # a LET x dose matrix with another sparsity: its entry without dose ([0, 2]) is ignored and
    # [1, 2] now has LET 24 / 4 = 6 keV/um > 5
    ld2 = sp.hstack([ld[:, :2], sp.csr_matrix(np.array([[7.0], [24.0]]))]).tocsr()
    np.testing.assert_allclose(dirty_dose_matrix(d, ld2, 5.0).toarray(), [[0.0, 2.0, 0.0], [0.5, 0.0, 4.0]])
    with pytest.raises(TermError, match="let_threshold_keV_um"):
        dirty_dose_matrix(d, ld, 0.0)
    with pytest.raises(TermError, match="shape"):
        dirty_dose_matrix(d, ld[:, :2], 5.0)


# -- LET terms on a small plan -----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_plan():
    p = phantoms.water_box(size_mm=(45, 120, 120), spacing_mm=3.0)
    z, y, x = np.meshgrid(*p.grid.axes_mm(), indexing="ij")
    lateral = (np.abs(x) <= 7.5) & (np.abs(z) <= 7.5)
    p.add_structure(Structure("PTV", lateral & (y >= 0) & (y <= 15), "target"))
    # the voxel layer just distal of the PTV for the anterior beam (centres at y = 16.5 mm), in
    # the fall-off of its deepest spots; the lateral beam (gantry 90) reaches it with low LET.
    # LETd limits are meant for voxels that receive dose: where every spot's LET is high (far
    # distal tail of a single beam) the exact constraint forbids any dose
    p.add_structure(Structure("Distal", lateral & (y > 15) & (y <= 18), "oar"))
    # beam settings pinned (not the beam-data defaults): the scenario depends on the spot width
    influence = ProtonBeams([0, 90], margin_mm=3.0, spot_sigma_air_mm=5.0, energy_spread_pct=0.3,
                            halo=False, cutoff_sigma=3.0).influence(p, "PTV")
    dose, let = influence, influence.forms["let_dose"]
    return p, dose, let


def _ctx(p, name):
    idx = p.flat_indices(name)
    return TermContext(name, np.full(len(idx), 1.0 / len(idx)), idx, 1, p.grid.shape)


def _solve(p, dose, let, terms):
    """min mean squared PTV deviation from 2 Gy (one fraction) subject to hard LET terms on
    'Distal', assembled exactly as optimizer.problem does: each term's quantity names the base
    forms it reads and derives its linear forms from their rows; the term gets their expressions."""
    x = cp.Variable(dose.n_beamlets, nonneg=True)
    a_ptv = dose.rows_of(p.flat_indices("PTV"))
    objective = cp.sum_squares(a_ptv @ x - 2.0) / a_ptv.shape[0]
    cons = []
    ctx = _ctx(p, "Distal")
    idx = ctx.voxel_index
    available = {"dose": dose.rows_of(idx), "let_dose": let.rows_of(idx)}
    for term in terms:
        base = {k: available[k] for k in term.quantity.base_forms}
        rows = term.quantity.linear_forms(base, ctx)
        forms = {k: ctx.fractions * (R @ x) for k, R in rows.items()}
        cons.append(term.violation(forms, ctx) <= 0)
    prob = cp.Problem(cp.Minimize(objective), cons)
    assert prob.is_dcp() and prob.is_dpp()
    prob.solve(solver="CLARABEL")
    assert prob.status == cp.OPTIMAL
    return np.maximum(x.value, 0.0)


def _distal_quantities(p, dose, let, w, threshold=None):
    idx = p.flat_indices("Distal")
    d = dose.rows_of(idx) @ w
    ld = let.rows_of(idx) @ w
    q = None
    if threshold is not None:
        q = dirty_dose_matrix(dose.rows_of(idx), let.rows_of(idx), threshold) @ w
    return d, ld, q


def test_letd_and_let_dose_limits_hold_voxel_by_voxel(small_plan):
    p, dose, let = small_plan
    w0 = _solve(p, dose, let, [])
    d0, ld0, _ = _distal_quantities(p, dose, let, w0)
    letd0 = ld0 / np.maximum(d0, 1e-12)
    hot = d0 > 0.01 * d0.max()
    assert hot.all()
    assert letd0.max() > 5.0  # the distal fall-off carries high LET

    L = 0.8 * letd0[hot].max()
    limit = 0.5 * ld0.max()
    w = _solve(p, dose, let, [LETdMax("Distal", L), LETDoseMax("Distal", limit)])
    d, ld, _ = _distal_quantities(p, dose, let, w)
    scale = max(ld0.max(), 1e-9)
    # exact linear form: l_i - L d_i <= 0 and l_i <= limit in every voxel (solver tolerance)
    assert np.all(ld - L * d <= 1e-6 * scale)
    assert np.all(ld <= limit + 1e-6 * scale)
    # recomputed LETd of the plan respects the limit wherever there is dose
    has_dose = d > 1e-6 * max(d0.max(), 1e-9)
    assert np.all(ld[has_dose] / d[has_dose] <= L * (1 + 1e-4) + 1e-6)
    # and the limits bind (the plan changed because of them)
    assert (ld / np.maximum(d, 1e-12))[has_dose].max() > 0.95 * L or ld.max() > 0.95 * limit
    # the PTV is still treated
    ptv = dose.rows_of(p.flat_indices("PTV")) @ w
    assert ptv.mean() > 1.0


def test_dirty_dose_limit_holds(small_plan):
    p, dose, let = small_plan
    w0 = _solve(p, dose, let, [])
    _, _, q0 = _distal_quantities(p, dose, let, w0, threshold=4.0)
    cap = 0.4 * q0.max()
    w = _solve(p, dose, let, [DirtyDoseMax("Distal", cap, 4.0)])
    _, _, q = _distal_quantities(p, dose, let, w, threshold=4.0)
    assert np.all(q <= cap + 1e-6 * q0.max())
    assert q.max() > 0.95 * cap


def test_let_terms_protocol_and_errors():
    t = LETdMax("OAR", 4.0)
    assert t.quantity.base_forms == ("dose", "let_dose") and t.hard
    assert DirtyDoseMax("OAR", 1.0, 5.0).quantity.base_forms == ("dose", "let_dose")
    assert LETDoseMax("OAR", 1.0).quantity.base_forms == ("let_dose",)
    ctx = TermContext("OAR", np.full(3, 1 / 3), np.arange(3), 5, (1, 1, 3))
    dose = cp.Variable(3)
    with pytest.raises(TermError, match="let_dose"):
        t.violation(dose, ctx)
    g = t.violation(dose, ctx, let_dose=cp.Variable(3))
    assert g.shape == (3,) and g.is_affine()
    soft = LETDoseMax("OAR", 10.0, weight=2.0)
    pen = soft.penalty(dose, ctx, let_dose=cp.Variable(3))
    assert pen.is_convex() and pen.size == 1
    rows = DirtyDoseMax("OAR", 1.0, 5.0).quantity.linear_forms(
        {"dose": sp.csr_matrix(np.ones((3, 4))), "let_dose": sp.csr_matrix(np.full((3, 4), 6.0))}, ctx)
    assert set(rows) == {"dirty_dose"} and rows["dirty_dose"].nnz == 12
    with pytest.raises(TermError):
        LETdMax("OAR", -1.0)
    with pytest.raises(TermError):
        DirtyDoseMax("OAR", 1.0, 0.0)
    assert "keV/um" in repr(t)
