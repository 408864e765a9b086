"""One contract for every exported term and quantity (the term protocol, issue 8).

For each term: its cvxpy forms are DCP and DPP (and QP-representable where it offers a weighted
objective); its numeric value equals the cvxpy value at random forms; its gradient matches
central finite differences; its projection lands in the set and equals the cvxpy solution of
the projection problem (so the optimality condition holds); its prox equals the cvxpy prox. A
face a term does not offer must say "cvxpy only". Every Term subclass exported by
``objectives`` must have a factory here, so a new export cannot skip the contract.
"""

import inspect

import cvxpy as cp
import numpy as np
import pytest

import objectives
from objectives import radiobiology as rb
from objectives.errors import TermError
from objectives.robust import Robust
from objectives.terms import Term, TermContext

N = 9
FX = 5
GRID = (1, 3, 3)
rng = np.random.default_rng(7)
VOLUMES = rng.uniform(0.5, 1.5, N)
VOLUMES /= VOLUMES.sum()
CTX = TermContext("S", VOLUMES, np.arange(N), FX, GRID,
                  {"beam": np.zeros(N, int), "row": np.arange(N) // 3, "col": np.arange(N) % 3})
LQ = rb.LQ({"S": 3.0}, alpha_beta_map=rng.uniform(2.0, 10.0, GRID))
LQ_TABLE = rb.LQ({"S": 3.0})
RSI = rng.uniform(0.2, 0.6, GRID)
MB_PEAK = np.zeros(GRID, bool)
MB_PEAK[0, :, 0] = True
MB_VALLEY = np.zeros(GRID, bool)
MB_VALLEY[0, :, 2] = True

Q = objectives  # shorthand for quantities and shapes
FACTORIES = {
    "MaxDose": [lambda w: Q.MaxDose("S", 40.0, weight=w)],
    "MinDose": [lambda w: Q.MinDose("S", 30.0, weight=w)],
    "MeanDose": [lambda w: Q.MeanDose("S", 35.0, weight=w)],
    "SquaredUnderdose": [lambda w: Q.SquaredUnderdose("S", 40.0, weight=w or 2.0)],
    "SquaredOverdose": [lambda w: Q.SquaredOverdose("S", 30.0, weight=w or 2.0)],
    "SquaredDeviation": [lambda w: Q.SquaredDeviation("S", 35.0, weight=w or 2.0)],
    "DVHMax": [lambda w: Q.DVHMax("S", 40.0, volume_pct=30, weight=w)],
    "DVHMin": [lambda w: Q.DVHMin("S", 30.0, volume_pct=80, weight=w)],
    "GEUDMax": [lambda w: Q.GEUDMax("S", 38.0, a=4, weight=w),
                lambda w: Q.GEUDMax("S", 50.0, a=3, weight=w, quantity=Q.EQD2(LQ))],
    "BEDMax": [lambda w: Q.BEDMax("S", 60.0, LQ, weight=w)],
    "EQD2Max": [lambda w: Q.EQD2Max("S", 45.0, LQ_TABLE, weight=w)],
    "MeanBEDMax": [lambda w: Q.MeanBEDMax("S", 55.0, LQ, weight=w)],
    "MeanEQD2Max": [lambda w: Q.MeanEQD2Max("S", 40.0, LQ, weight=w)],
    "SquaredBEDOverdose": [lambda w: Q.SquaredBEDOverdose("S", 50.0, LQ, weight=w or 2.0)],
    "BEDCVaRMax": [lambda w: Q.BEDCVaRMax("S", 60.0, 30, LQ, weight=w)],
    "GEUDEQD2Max": [lambda w: Q.GEUDEQD2Max("S", 45.0, 5, LQ, weight=w)],
    "BEDFloor": [lambda w: Q.BEDFloor("S", 50.0, LQ, weight=w),
                 lambda w: Q.BEDFloor("S", rng.uniform(40, 60, GRID), LQ, weight=w or 1.0, squared=True)],
    "EQD2Floor": [lambda w: Q.EQD2Floor("S", 40.0, LQ, weight=w)],
    "GARDFloor": [lambda w: Q.GARDFloor("S", 20.0, rsi=RSI, weight=w)],
    "LETDoseMax": [lambda w: Q.LETDoseMax("S", 60.0, weight=w)],
    "LETdMax": [lambda w: Q.LETdMax("S", 2.5, weight=w)],
    "DirtyDoseMax": [lambda w: Q.DirtyDoseMax("S", 10.0, 4.0, weight=w)],
    "Max": [lambda w: Q.Max("S", 70.0, quantity=Q.BED(LQ), weight=w),
            lambda w: Q.Max("S", 20.0, quantity=Q.Weights(), weight=w)],
    "Min": [lambda w: Q.Min("S", 15.0, quantity=Q.LETxDose(), weight=w)],
    "Mean": [lambda w: Q.Mean("S", 30.0, quantity=Q.LETxDose(), weight=w)],
    "CVaRMax": [lambda w: Q.CVaRMax("S", 42.0, 10, weight=w)],
    "CVaRMin": [lambda w: Q.CVaRMin("S", 28.0, 95, weight=w)],
    "SquaredOver": [lambda w: Q.SquaredOver("S", 40.0, quantity=Q.EQD2(LQ), weight=w or 1.0)],
    "SquaredUnder": [lambda w: Q.SquaredUnder("S", 40.0, quantity=Q.LETxDose(), weight=w or 1.0)],
    "Floor": [lambda w: Q.Floor("S", 60.0, quantity=Q.EQD2(LQ), weight=w),
              lambda w: Q.Floor("S", rng.uniform(20, 40, GRID), weight=w)],
    "FluenceSmoothness": [lambda w: Q.FluenceSmoothness(weight=w or 0.5)],
    "DADRMin": [lambda w: Q.DADRMin("S", 40.0, 500.0, weight=w)],
    "ImmuneMeanDose": [lambda w: Q.ImmuneMeanDose("S", "body", weight=w or 1.0, volume_cc=2000.0)],
    # robust terms over 3 scenario dose forms (dose_s0..dose_s2), each mode on a few shapes
    "ValleyMax": [lambda w: Q.ValleyMax("S", 40.0, MB_VALLEY, weight=w)],
    "ValleyMean": [lambda w: Q.ValleyMean("S", 35.0, MB_VALLEY, weight=w)],
    "PVDRMin": [lambda w: Q.PVDRMin("S", 3.0, MB_PEAK, MB_VALLEY, weight=w)],
    "Robust": [lambda w: Robust(Q.MaxDose("S", 40.0, weight=w), "composite", scenarios=3),
               lambda w: Robust(Q.DVHMin("S", 30.0, volume_pct=80, weight=w), "voxelwise", scenarios=3),
               lambda w: Robust(Q.SquaredUnderdose("S", 40.0, weight=w or 2.0), "voxelwise", scenarios=3),
               lambda w: Robust(Q.BEDMax("S", 60.0, LQ, weight=w), "voxelwise", scenarios=3),
               lambda w: Robust(Q.SquaredOverdose("S", 30.0, weight=w or 2.0), "expected", scenarios=3),
               lambda w: Robust(Q.BEDFloor("S", 50.0, LQ, weight=w or 1.0, squared=True), "expected",
                                scenarios=3)],
}
#: terms checked here before (or without) being exported by ``objectives``
UNEXPORTED: list = []


def exported_terms():
    return [getattr(objectives, n) for n in objectives.__all__
            if inspect.isclass(getattr(objectives, n)) and issubclass(getattr(objectives, n), Term)
            and getattr(objectives, n) is not Term]


def cases():
    for cls in exported_terms() + [c for c in UNEXPORTED if c not in exported_terms()]:
        for k, make in enumerate(FACTORIES.get(cls.__name__, [])):
            for hard in (True, False):
                if (hard and cls.soft_only) or (not hard and cls.hard_only):
                    continue
                if cls is Robust and hard and (make(1.0).term.soft_only or make(1.0).mode == "expected"):
                    continue  # a robust term is hard or soft as the term it wraps
                yield pytest.param(make, hard, id=f"{cls.__name__}{k}-{'hard' if hard else 'soft'}")


def test_every_exported_term_has_a_contract_factory():
    missing = [c.__name__ for c in exported_terms() if c.__name__ not in FACTORIES]
    assert not missing, f"add contract factories for {missing}"


def random_forms(term, scale=1.0, seed=0):
    r = np.random.default_rng(seed)
    names = term.quantity.base_forms
    forms = {}
    if "dose" in names or names == ():
        forms["dose"] = scale * r.uniform(10.0, 60.0, N)
    for name in names:
        if name.startswith("dose_s"):  # scenario doses of a robust term
            forms[name] = scale * r.uniform(10.0, 60.0, N)
    if "let_dose" in names:
        forms["let_dose"] = forms.get("dose", r.uniform(10, 60, N)) * r.uniform(1.0, 4.0, N)
    if "weights" in names:
        forms["weights"] = r.uniform(0.0, 30.0, N)
    if type(term.quantity).__name__ == "DirtyDose":
        forms = {"dirty_dose": r.uniform(0.0, 20.0, N)}
    if type(term.quantity).__name__ == "DADRDeficit":  # d (1 - DADR / R): either sign
        forms = {"dadr_deficit": scale * r.uniform(-20.0, 10.0, N)}
    return forms


def variables(forms):
    return {k: cp.Variable(N, name=k) for k in forms}


def cvx_value(expr):
    """Value of an expression of constants; auxiliary variables (CVaR's t) are minimised out."""
    if not expr.variables():
        return np.asarray(expr.value, dtype=float)
    prob = cp.Problem(cp.Minimize(cp.sum(expr)))
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    assert prob.status == cp.OPTIMAL
    return np.asarray(prob.value, dtype=float)


@pytest.mark.parametrize("make, hard", list(cases()))
def test_cvxpy_forms_are_dcp_and_dpp(make, hard):
    term = make(None if hard else 1.5)
    fv = variables(random_forms(term))
    if hard:
        prob = cp.Problem(cp.Minimize(0), [term.violation(fv, CTX) <= 0])
    else:
        # the cost in an epigraph (how the problem keeps Parameter-holding costs DPP) ...
        epi_t = cp.Variable()
        prob = cp.Problem(cp.Minimize(term.weight * epi_t), [term.cost(fv, CTX) <= epi_t])
        obj = term.objective(fv, CTX)
        if obj is not None:  # ... or the weighted objective a QP solver accepts
            assert prob.is_dcp() and prob.is_dpp()
            prob = cp.Problem(cp.Minimize(obj))
            assert prob.is_qp(), "a weighted objective offered must be QP-representable"
    assert prob.is_dcp() and prob.is_dpp()


@pytest.mark.parametrize("make, hard", list(cases()))
def test_numeric_value_equals_cvxpy_value(make, hard):
    term = make(None if hard else 1.5)
    for seed in range(3):
        forms = random_forms(term, seed=seed)
        consts = {k: cp.Constant(v) for k, v in forms.items()}
        term.refresh(CTX)
        if hard:
            g_cvx = cvx_value(term.violation(consts, CTX))
            try:
                g_num = np.asarray(term.violation_values(forms, CTX), dtype=float)
            except TermError as err:
                assert "cvxpy only" in str(err)
                continue
            rtol = 1e-9 if not term.violation(consts, CTX).variables() else 1e-7
            if g_cvx.size == 1:
                np.testing.assert_allclose(g_num.sum(), g_cvx.sum(), rtol=rtol, atol=1e-9)
            else:
                np.testing.assert_allclose(g_num, g_cvx, rtol=rtol, atol=1e-9)
        else:
            c_cvx = float(cvx_value(term.cost(consts, CTX)))
            try:
                c_num = term.cost_value(forms, CTX)
            except TermError as err:
                assert "cvxpy only" in str(err)
                continue
            rtol = 1e-9 if not term.cost(consts, CTX).variables() else 1e-7
            assert c_num == pytest.approx(c_cvx, rel=rtol, abs=1e-9)
            assert term.value(forms, CTX) == pytest.approx(float(term.weight.value) * c_num, rel=1e-12)
            obj = term.objective(consts, CTX)
            if obj is not None:
                assert float(obj.value) == pytest.approx(float(term.weight.value) * c_num, rel=1e-9)


@pytest.mark.parametrize("make, hard", [c for c in cases() if not c.values[1]])
def test_gradient_matches_finite_differences(make, hard):
    term = make(1.5)
    forms = random_forms(term, seed=3)
    try:
        grad = term.gradient(forms, CTX)
    except TermError as err:
        assert "cvxpy only" in str(err) and not term.smooth
        return
    assert term.smooth
    h = 1e-6
    for name, g in grad.items():
        for i in range(N):
            up = {k: v.copy() for k, v in forms.items()}
            dn = {k: v.copy() for k, v in forms.items()}
            up[name][i] += h
            dn[name][i] -= h
            fd = (term.cost_value(up, CTX) - term.cost_value(dn, CTX)) / (2 * h)
            assert g[i] == pytest.approx(fd, rel=1e-5, abs=1e-7), (name, i)


@pytest.mark.parametrize("make, hard", [c for c in cases() if c.values[1]])
def test_projection_lands_in_the_set_and_is_optimal(make, hard):
    term = make(None)
    for seed in range(2):
        z = random_forms(term, scale=1.6, seed=10 + seed)  # mostly infeasible
        try:
            p = term.project(z, CTX)
        except TermError as err:
            assert "cvxpy only" in str(err)
            return
        full = {**z, **p}
        scale = max(float(np.abs(v).max()) for v in z.values())
        assert float(np.max(term.violation_values(full, CTX))) <= 1e-8 * scale
        # the cvxpy solution of the same projection problem
        fv = variables(z)
        prob = cp.Problem(cp.Minimize(sum(cp.sum_squares(fv[k] - z[k]) for k in p)),
                          [term.violation(fv, CTX) <= 0] + [fv[k] == z[k] for k in z if k not in p])
        prob.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
        assert prob.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)  # the comparison below decides
        # (an interior-point solve with quadratic constraints stops near 1e-4 relative: looser there)
        tol = 1e-6 if prob.status == cp.OPTIMAL else 2e-4
        for k in p:
            np.testing.assert_allclose(p[k], fv[k].value, rtol=tol, atol=tol * scale)
        # optimality condition <z - p, c - p> <= 0 for feasible c
        for s2 in range(3):
            c = term.project(random_forms(term, scale=1.3, seed=50 + s2), CTX)
            inner = sum(float((z[k] - p[k]) @ (c[k] - p[k])) for k in p)
            assert inner <= 1e-6 * scale ** 2


@pytest.mark.parametrize("make, hard", [c for c in cases() if not c.values[1]])
def test_prox_equals_the_cvxpy_prox(make, hard):
    term = make(1.5)
    z = random_forms(term, seed=21)
    tau = 0.7
    try:
        p = term.prox(z, tau, CTX)
    except TermError as err:
        assert "cvxpy only" in str(err)
        return
    fv = variables(z)
    prob = cp.Problem(cp.Minimize(0.5 * sum(cp.sum_squares(fv[k] - z[k]) for k in p)
                                  + tau * term.weight * term.cost(fv, CTX)))
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    for k in p:
        np.testing.assert_allclose(p[k], fv[k].value, rtol=1e-6, atol=1e-6)


QUANTITIES = [objectives.Dose(), objectives.BED(LQ), objectives.EQD2(LQ), objectives.GARD(RSI),
              objectives.GARD(alpha=0.2), objectives.LETxDose(), objectives.LETdExcess(2.0),
              objectives.Weights()]


def test_every_exported_quantity_is_in_the_contract():
    exported = {n for n in objectives.__all__ if inspect.isclass(getattr(objectives, n))
                and issubclass(getattr(objectives, n), objectives.Quantity) and n != "Quantity"}
    # derived linear forms, covered through their terms: DirtyDose via DirtyDoseMax, DADRDeficit via
    # DADRMin, ScenarioDoses via Robust
    covered = {type(q).__name__ for q in QUANTITIES} | {"DirtyDose", "DADRDeficit", "ScenarioDoses"}
    assert exported <= covered


@pytest.mark.parametrize("quantity", QUANTITIES, ids=lambda q: q.describe())
def test_quantity_faces_agree(quantity):
    r = np.random.default_rng(4)
    forms = {"dose": r.uniform(5, 60, N), "let_dose": r.uniform(10, 200, N), "weights": r.uniform(0, 5, N)}
    forms = {k: v for k, v in forms.items() if k in quantity.base_forms}
    quantity.refresh(CTX)
    expr = quantity.expression({k: cp.Constant(v) for k, v in forms.items()}, CTX)
    np.testing.assert_allclose(quantity.value(forms, CTX), expr.value, rtol=1e-12)
    fv = variables(forms)
    e = quantity.expression(fv, CTX)
    assert e.is_dpp() and (e.is_affine() if quantity.affine else e.is_convex())
    grad = quantity.gradient(forms, CTX)
    h = 1e-6
    for k in forms:
        up = {n: v.copy() for n, v in forms.items()}
        dn = {n: v.copy() for n, v in forms.items()}
        up[k] += h
        dn[k] -= h
        np.testing.assert_allclose(grad[k], (quantity.value(up, CTX) - quantity.value(dn, CTX)) / (2 * h),
                                   rtol=1e-6, atol=1e-8)
    if quantity.invertible:
        q = quantity.value(forms, CTX)
        np.testing.assert_allclose(quantity.inverse(q, CTX), forms["dose"], rtol=1e-9)


def test_non_convex_combinations_are_refused_naming_the_term():
    with pytest.raises(TermError, match=r"Min\('S'\).*not convex"):
        objectives.Min("S", 60.0, quantity=objectives.BED(LQ))
    with pytest.raises(TermError, match="SquaredDeviation"):
        objectives.SquaredDeviation("S", 60.0, weight=1.0, quantity=objectives.EQD2(LQ))
    with pytest.raises(TermError, match="Floor.*LETxDose"):
        objectives.Floor("S", 1.0, quantity=objectives.LETxDose())


@pytest.mark.parametrize("upper", [True, False])
def test_cvar_projection_with_equal_volumes_matches_cvxpy(upper):
    """Equal voxel volumes take the prefix-sum fast path of the CVaR projection."""
    n = 200
    ctx = TermContext("S", np.full(n, 1.0 / n), np.arange(n), FX, (1, 1, n))
    z = np.random.default_rng(5).normal(50.0, 6.0, n)
    term = objectives.CVaRMax("S", 52.0, 10) if upper else objectives.CVaRMin("S", 47.0, 95)
    p = term.project(z, ctx)["dose"]
    y = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(y - z)), [term.violation(y, ctx) <= 0])
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    np.testing.assert_allclose(p, y.value, atol=1e-5)
    assert float(term.violation_values(p, ctx)[0]) <= 1e-9


def test_settings_that_shape_the_program_are_fixed_once_the_term_is_made():
    """volume_pct of a DVH / CVaR term, a of gEUD and a dirty dose's LET threshold are not
    Parameters: assigning them was silently ignored by the cached program (the plan kept the old
    D10 while the goal table showed D50 as met); now it is refused, naming the field and the way
    to change it."""
    from objectives import DirtyDoseMax, DVHMax, DVHMin, GEUDMax, TermError

    dirty = DirtyDoseMax("Core", 0.3, 6.0)
    for term, name, value in ((DVHMax("PTV", 51.0, volume_pct=10), "volume_pct", 50),
                              (DVHMin("PTV", 48.0, volume_pct=95), "volume_pct", 98),
                              (GEUDMax("Core", 20.0, a=8), "a", 4),
                              # CLARABEL kept the 6 keV/um rows: 0.948 Gy dirty dose above 3 keV/um
                              # under a 0.3 Gy limit, certified
                              (dirty, "let_threshold_keV_um", 3.0),
                              (dirty.quantity, "let_threshold_keV_um", 3.0)):
        before = getattr(term, name)
        fixed = rf"{type(term).__name__}\.{name}: .* fixed when the term is made"
        with pytest.raises(TermError, match=fixed):
            setattr(term, name, value)
        assert getattr(term, name) == before
    assert DVHMax("PTV", 51.0, volume_pct=10).describe() == "DVHMax('PTV', D10 <= 51 Gy)"


def test_assigning_a_number_to_a_limit_parameter_is_refused_and_its_value_is_what_changes():
    """term.dose_Gy = 20 replaced the Parameter alias with a number the program never read (the
    plan kept 30 Gy, describe() still said 30); now refused, pointing to .value, which works."""
    import pickle

    from objectives import LQ, BEDMax, MaxDose

    for term, name in ((MaxDose("Core", 30.0), "dose_Gy"),
                       (BEDMax("Core", 40.0, LQ({"Core": 2.0})), "bed_Gy"),
                       (MaxDose("Core", 30.0), "limit")):
        with pytest.raises(TermError, match=rf"\.{name}: is a cvxpy Parameter; set {name}\.value = 20"):
            setattr(term, name, 20.0)
        getattr(term, name).value = 20.0
        assert term.limit.value == 20.0 and "20" in term.describe()
        back = pickle.loads(pickle.dumps(term))  # restored through __dict__, not assignment
        assert getattr(back, name) is back.limit


def test_assigning_a_weight_is_refused_and_weight_value_is_what_changes():
    """term.weight = 5 replaced the Parameter CLARABEL's built program reads (it kept the old weight)
    or made a hard term soft behind the program's back; now refused, pointing to weight.value."""
    from objectives import MaxDose, Robust, SquaredDeviation

    soft = SquaredDeviation("PTV", 50.0, weight=1.0)
    with pytest.raises(TermError, match=r"SquaredDeviation\.weight: .* set weight\.value = \.\.\."):
        soft.weight = 5.0
    soft.weight.value = 5.0
    assert "weight=5" in repr(soft)
    with pytest.raises(TermError, match=r"MaxDose\.weight: .* a hard term takes no weight"):
        MaxDose("Core", 20.0).weight = 1.0
    robust = Robust(soft, "expected", 3)
    assert robust.weight is soft.weight  # one Parameter to sweep
