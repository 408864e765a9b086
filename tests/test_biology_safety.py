"""Nothing silently wrong in the radiobiology (issue "Nothing silently wrong", item 10).

1. No silent default number of fractions where a total course dose is taken.
2. The McNamara RBEmax intercept p0 is the published 0.99064 (not the 0.999064 typo).
3. One alpha/beta source per voxel in an LQ, whatever voxel maps are given.
4. A total course dose that looks like a per-fraction dose raises a PerFractionDoseWarning.
5. The raw LKB function states which dose it takes (EQD2 or physical with its fractionation).
"""

import inspect
import math
import warnings

import numpy as np
import pytest
from scipy.stats import norm

import objectives
from objectives import radiobiology as rb
from objectives import rbe
from objectives.errors import BiologyError, BioplanError
from optimizer import Grid, Patient, Plan, Structure, bio_evaluate
from optimizer.evaluate import biology as ev_biology
from optimizer.evaluate import compare as ev_compare
from optimizer.evaluate import goals as ev_goals
from optimizer.evaluate import outcome as ev_outcome
from optimizer.evaluate import voxel_checks as ev_checks


def no_warnings():
    """Context in which any warning is an error."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("error")
    return ctx


# -- 1. fractions are required --------------------------------------------------------------------


def test_rbe_weighted_dose_requires_fractions():
    # 60 Gy used to be treated as one 60 Gy fraction (65.5 Gy(RBE)) without a word
    with pytest.raises(TypeError, match="fractions"):
        rbe.rbe_weighted_dose(60, 3, 2)
    with pytest.raises(TypeError, match="fractions"):
        rbe.rbe_weighted_dose(60, model="constant")
    # 60 Gy in 30 x 2 Gy, LETd 3 keV/um, (a/b)x 2 Gy, McNamara 2015 with the published constants
    ab, let, d = 2.0, 3.0, 2.0
    rmax = 0.99064 + 0.35605 * let / ab
    rmin = 1.1012 - 0.0038703 * math.sqrt(ab) * let
    rbe_value = (math.sqrt(ab**2 + 4 * d * ab * rmax + 4 * d**2 * rmin**2) - ab) / (2 * d)
    assert rbe.rbe_weighted_dose(60, 3, 2, fractions=30) == pytest.approx(60 * rbe_value, rel=1e-12)
    assert rbe.rbe_weighted_dose(60, 3, 2, fractions=30) == pytest.approx(73.1, abs=0.05)
    assert rbe.rbe_weighted_dose(60, fractions=30, model="constant") == pytest.approx(66.0)


@pytest.mark.parametrize("module", [rb, rbe, ev_biology, ev_outcome, ev_goals, ev_compare, ev_checks],
                         ids=lambda m: m.__name__)
def test_no_public_function_has_a_default_number_of_fractions(module):
    offenders = []
    for name, fn in inspect.getmembers(module, inspect.isfunction):
        if name.startswith("_") or fn.__module__ != module.__name__:
            continue
        for p in inspect.signature(fn).parameters.values():
            if p.name in ("fractions", "n_fractions", "n_fx") and p.default is not inspect.Parameter.empty \
                    and p.default is not None:
                offenders.append(f"{name}({p.name}={p.default!r})")
    assert not offenders, f"silent default number of fractions: {offenders}"


# -- 2. McNamara p0 -------------------------------------------------------------------------------


def test_mcnamara_constants_are_the_published_ones():
    # McNamara, Schuemann & Paganetti, Phys Med Biol 2015;60:8399:
    # RBEmax = 0.99064 + 0.35605 LETd / (a/b)x, RBEmin = 1.1012 - 0.0038703 sqrt((a/b)x) LETd
    assert rbe.MCNAMARA_P0 == 0.99064
    assert (rbe.MCNAMARA_P1, rbe.MCNAMARA_P2, rbe.MCNAMARA_P3) == (0.35605, 1.1012, -0.0038703)
    ab, let, d = 3.0, 4.0, 1.8
    rmax = 0.99064 + 0.35605 * let / ab  # 1.465373...
    rmin = 1.1012 - 0.0038703 * math.sqrt(ab) * let
    # RBE from the LQ iso-effect: alpha_p = RBEmax alpha_x, beta_p = RBEmin^2 beta_x
    rbe_value = (math.sqrt(ab**2 + 4 * d * ab * rmax + 4 * d**2 * rmin**2) - ab) / (2 * d)
    assert rbe.mcnamara_rbe_max(let, ab) == pytest.approx(rmax, rel=1e-12)
    assert rbe.mcnamara_rbe_min(let, ab) == pytest.approx(rmin, rel=1e-12)
    assert rbe.mcnamara_rbe(d, let, ab) == pytest.approx(rbe_value, rel=1e-12)
    assert rbe.mcnamara_rbe(0.0, let, ab) == pytest.approx(rmax, rel=1e-12)


# -- 3. one alpha/beta source per voxel -----------------------------------------------------------

SHAPE = (1, 2, 3)
IDX = np.arange(6)


def test_lq_beta_map_without_alpha_map_is_refused():
    beta = np.full(SHAPE, 0.05)
    # the table alpha/beta (10) would drive BED and the map beta (alpha/beta 0.3/0.05 = 6) TCP/GARD
    with pytest.raises(BiologyError, match=r"beta_map.*alpha_map"):
        rb.LQ({"PTV": 10.0}, alpha={"PTV": 0.3}, beta_map=beta)
    with pytest.raises(BiologyError, match=r"beta_map.*alpha_map"):
        rb.LQ(default=10.0, beta_map=beta, grid_shape=SHAPE)
    # all three maps: two alpha/beta values per voxel
    with pytest.raises(BiologyError, match=r"alpha_beta_map.*beta_map"):
        rb.LQ(alpha_beta_map=np.full(SHAPE, 10.0), alpha_map=np.full(SHAPE, 0.3), beta_map=beta)
    # a beta map alone with an alpha/beta map would be silently ignored before
    with pytest.raises(BiologyError, match=r"beta_map.*alpha_map"):
        rb.LQ(alpha_beta_map=np.full(SHAPE, 10.0), alpha={"PTV": 0.3}, beta_map=beta)
    # set after construction: refused at the next lookup, for BED as for TCP/GARD
    lq = rb.LQ({"PTV": 10.0}, alpha={"PTV": 0.3})
    lq.beta_map = beta
    for lookup in (lq.alpha_beta_for, lq.alpha_for, lq.beta_for):
        with pytest.raises(BiologyError, match=r"beta_map.*alpha_map"):
            lookup("PTV", IDX, SHAPE)


def _lq_variants():
    a = np.linspace(0.1, 0.6, 6).reshape(SHAPE)
    b = np.linspace(0.02, 0.07, 6).reshape(SHAPE)
    ab = np.linspace(2.0, 12.0, 6).reshape(SHAPE)
    return {
        "tables": rb.LQ({"PTV": 10.0}, alpha={"PTV": 0.3}),
        "alpha_beta_map + alpha table": rb.LQ(alpha_beta_map=ab, alpha={"PTV": 0.3}),
        "alpha_map + alpha_beta table": rb.LQ({"PTV": 10.0}, alpha_map=a),
        "alpha_map + beta_map": rb.LQ({"PTV": 10.0}, alpha={"PTV": 0.3}, alpha_map=a, beta_map=b),
        "alpha_map + alpha_beta_map": rb.LQ(alpha_beta_map=ab, alpha_map=a),
    }


@pytest.mark.parametrize("label", list(_lq_variants()))
def test_lq_alpha_beta_is_consistent_for_every_accepted_combination(label):
    lq = _lq_variants()[label]
    ab = lq.alpha_beta_for("PTV", IDX, SHAPE)
    alpha = lq.alpha_for("PTV", IDX, SHAPE)
    beta = lq.beta_for("PTV", IDX, SHAPE)
    np.testing.assert_allclose(alpha / beta, ab, rtol=1e-12)
    # so BED and TCP / GARD see the same biology: GARD = alpha x BED voxel by voxel
    dose = np.linspace(50.0, 70.0, 6)
    np.testing.assert_allclose(alpha * dose + beta * dose**2 / 30, alpha * rb.bed(dose, 30, ab), rtol=1e-12)


# -- 4. per-fraction dose passed as a course dose -------------------------------------------------

KW = {"clonogen_density_per_cc": 1e7, "voxel_volumes_cc": 1.0}

PER_FRACTION_CALLS = {
    "bed": lambda: rb.bed(2, 30, 10),
    "eqd2": lambda: rb.eqd2(2, 30, 10),
    "bed_with_repopulation": lambda: rb.bed_with_repopulation(2, 30, 10, 0.3, 40, 21, 3),
    "bed_protracted": lambda: rb.bed_protracted(2, 30, 10, 5, 30),
    "gard": lambda: rb.gard(2, 30, rsi=0.3),
    "log_tcp": lambda: rb.log_tcp([2.0, 1.8], 30, 0.3, 0.03, **KW),
    "tcp_poisson": lambda: rb.tcp_poisson([2.0, 1.8], 30, 0.3, alpha_beta=10.0, **KW),
    "ntcp_lkb physical": lambda: rb.ntcp_lkb([2.0], [1.0], 66.5, 0.175, 0.05, dose_kind="physical",
                                             fractions=30, alpha_beta_Gy=2.0),
    "rbe_weighted_dose": lambda: rbe.rbe_weighted_dose(2, 3, 2, fractions=30),
    "rbe_weighted_dose constant": lambda: rbe.rbe_weighted_dose([0.0, 2.0], fractions=30, model="constant"),
}


def test_per_fraction_dose_warning_is_exported():
    assert issubclass(objectives.PerFractionDoseWarning, UserWarning)
    assert "PerFractionDoseWarning" in objectives.__all__


@pytest.mark.parametrize("name", list(PER_FRACTION_CALLS))
def test_per_fraction_dose_warns(name):
    with pytest.warns(objectives.PerFractionDoseWarning, match="per-fraction") as record:
        PER_FRACTION_CALLS[name]()
    ours = [w for w in record if issubclass(w.category, objectives.PerFractionDoseWarning)]
    assert len(ours) == 1  # one warning per call, even where one function calls another
    assert ours[0].filename == __file__  # it points at the caller's line, not inside the library


def test_plausible_and_zero_doses_do_not_warn():
    ctx = no_warnings()
    try:
        assert rb.bed(60, 30, 10) == pytest.approx(72.0)
        assert rb.bed(0, 30, 10) == 0.0
        np.testing.assert_array_equal(rb.bed(np.zeros(1000), 30, 10), 0.0)
        sparse = np.zeros(1000)
        sparse[:3] = [60.0, 0.1, 2.0]  # a dose map: many zeros, a few low voxels, one hot voxel
        rb.eqd2(sparse, 30, 3.0)
        rb.gard(sparse, 30, rsi=0.3)
        rb.log_tcp(sparse[:3], 30, 0.3, 0.03, **KW)
        rbe.rbe_weighted_dose(np.zeros(10), 3.0, 2.0, fractions=30)
        rbe.rbe_weighted_dose(sparse, 3.0, 2.0, fractions=30)
        rb.bed(15.0, 30, 10)  # exactly 0.5 Gy per fraction: the limit itself does not warn
        rb.ntcp_lkb([2.0], [1.0], 66.5, 0.175, 0.05, dose_kind="EQD2")  # EQD2: no fractions to compare
        # the planning terms' inverses take BED / EQD2 / GARD prescriptions, not doses
        rb.dose_for_bed(72.0, 30, 10)
    finally:
        ctx.__exit__(None, None, None)
    with pytest.warns(objectives.PerFractionDoseWarning):
        rb.bed(14.9, 30, 10)


def tiny_plan(t_dose, o_dose, fractions):
    """Grid 1 x 2 x k of 1 cm^3 voxels: row 0 target "T", row 1 organ "O"."""
    k = max(len(t_dose), len(o_dose))
    grid = Grid((1, 2, k), (10.0, 10.0, 10.0))
    t = np.zeros(grid.shape, bool)
    t[0, 0, : len(t_dose)] = True
    o = np.zeros(grid.shape, bool)
    o[0, 1, : len(o_dose)] = True
    dose = np.zeros(grid.shape)
    dose[0, 0, : len(t_dose)] = t_dose
    dose[0, 1, : len(o_dose)] = o_dose
    patient = Patient(grid, np.zeros(grid.shape), [Structure("T", t, "target"), Structure("O", o, "oar")])
    return Plan(patient, np.zeros(1), fractions, dose, {"beam": np.zeros(1, int)}, [], "photon")


def test_bio_evaluate_checks_the_plan_dose_not_each_structure():
    lq = rb.LQ({"T": 10.0, "O": 3.0}, alpha={"T": 0.3, "O": 0.1})
    # a per-fraction dose array stored as a plan's course dose
    wrong = tiny_plan([2.0, 2.0], [0.5], fractions=30)
    for call in (lambda: bio_evaluate.bed_values(wrong, "T", lq),
                 lambda: bio_evaluate.eqd2_values(wrong, "O", lq),
                 lambda: bio_evaluate.gard_values(wrong, "T", rsi=0.3),
                 lambda: bio_evaluate.tcp(wrong, "T", lq)):
        with pytest.warns(objectives.PerFractionDoseWarning, match="plan.dose") as record:
            call()
        assert record[0].filename == __file__
    # a real plan: a low-dose organ far from a 60 Gy target is plausible and does not warn
    ok = tiny_plan([60.0, 60.0], [1.0, 0.0], fractions=30)
    ctx = no_warnings()
    try:
        np.testing.assert_allclose(bio_evaluate.bed_values(ok, "O", lq), [1.0 * (1 + 1.0 / 90), 0.0])
        bio_evaluate.plan_summary(ok, lq, tcp_structures=["T"])
    finally:
        ctx.__exit__(None, None, None)


# -- 5. LKB NTCP says which dose it takes --------------------------------------------------------


def test_ntcp_lkb_requires_dose_kind():
    with pytest.raises(TypeError, match="dose_kind"):
        rb.ntcp_lkb([60, 40], [1, 1], 50, 0.2, 0.5)
    assert "dose_kind" in rb.ntcp_lkb.__doc__ and "EQD2" in rb.ntcp_lkb.__doc__
    # EQD2 doses: gEUD (a = 1/n = 2) of [60, 40] = sqrt(2600), NTCP = Phi((gEUD - 50) / (0.2 * 50))
    expected = norm.cdf((math.sqrt(2600.0) - 50) / 10)
    assert rb.ntcp_lkb([60, 40], [1, 1], 50, 0.2, 0.5, dose_kind="EQD2") == pytest.approx(expected, rel=1e-12)
    # physical dose of a 5-fraction course: converted to EQD2 with the organ's alpha/beta first
    cord = rb.NTCP_PARAMETERS["spinal cord"]
    d = np.array([25.0, 20.0])  # 5 x 5 Gy and 5 x 4 Gy, a/b 2: EQD2 = D (d + 2) / 4
    e = d * (d / 5 + 2) / 4
    geud = np.mean(e ** (1 / cord.n)) ** cord.n
    expected = norm.cdf((geud - cord.td50_Gy) / (cord.m * cord.td50_Gy))
    got = rb.ntcp_lkb(d, [1, 1], cord.td50_Gy, cord.m, cord.n, dose_kind="physical", fractions=5,
                      alpha_beta_Gy=2.0)
    assert got == pytest.approx(expected, rel=1e-9)
    assert got != pytest.approx(rb.ntcp_lkb(d, [1, 1], cord.td50_Gy, cord.m, cord.n, dose_kind="EQD2"))
    assert rb.ntcp_lkb(e, [1, 1], cord.td50_Gy, cord.m, cord.n, dose_kind="eqd2") == pytest.approx(got)


@pytest.mark.parametrize("kwargs, field", [
    ({"dose_kind": "physical", "alpha_beta_Gy": 2.0}, "fractions"),
    ({"dose_kind": "physical", "fractions": 30}, "alpha_beta_Gy"),
    ({"dose_kind": "EQD2", "fractions": 30}, "fractions"),
    ({"dose_kind": "EQD2", "alpha_beta_Gy": 3.0}, "alpha_beta_Gy"),
    ({"dose_kind": "BED"}, "dose_kind"),
    ({"dose_kind": None}, "dose_kind"),
])
def test_ntcp_lkb_bad_dose_kind(kwargs, field):
    with pytest.raises(BiologyError, match=field) as info:
        rb.ntcp_lkb([60, 40], [1, 1], 50, 0.2, 0.5, **kwargs)
    assert isinstance(info.value, BioplanError)
    assert "expected" in str(info.value)
