"""Cohort studies (optimizer.studies): seeded generator, bootstrap CIs against brute force,
failing patients recorded, resume computes only missing rows, LocalCluster == serial row for row,
a worker killed mid-study loses nothing. Phantoms on an 8 mm grid with 5 beams keep each plan to
a fraction of a second."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import signal

import numpy as np
import pytest

from objectives import MinDose
from optimizer.errors import EvaluationError, PlanError
from optimizer.studies import (
    RUN_COLUMNS,
    Arm,
    CohortRanges,
    ResultStore,
    StudySetup,
    bootstrap_ci,
    check_arms,
    conventional_terms,
    default_arms,
    generate_cohort,
    run_study,
    summarize,
)
from optimizer.studies import work as study_work

SETUP = StudySetup(spacing_mm=8.0, beamlet_mm=12.0, n_beams=5, max_voxels=200)


# -- generator ---------------------------------------------------------------------------------

def test_cohort_is_reproducible_prefix_stable_and_in_range():
    a, b = generate_cohort(6, seed=7), generate_cohort(6, seed=7)
    assert a == b  # frozen dataclasses compare field by field
    assert generate_cohort(3, seed=7) == a[:3]  # patient i does not depend on the cohort size
    c = generate_cohort(6, seed=8)
    assert all(x.rsi != y.rsi for x, y in zip(a, c))
    r = CohortRanges()
    for vp in a:
        assert r.rsi[0] <= vp.rsi <= r.rsi[1]
        assert r.target_radius_mm[0] <= vp.target_radius_mm <= r.target_radius_mm[1]
        lo, hi = r.hypoxic_radius_fraction
        assert lo * vp.target_radius_mm <= vp.hypoxic_radius_mm <= hi * vp.target_radius_mm
        assert 10 ** r.log10_clonogens_per_cc[0] <= vp.clonogens_per_cc <= 10 ** r.log10_clonogens_per_cc[1]
    assert len({vp.patient_id for vp in a}) == 6
    # a narrowed range is honoured exactly
    fixed = generate_cohort(2, seed=1, ranges=CohortRanges(rsi=(0.4, 0.4)))
    assert [vp.rsi for vp in fixed] == [0.4, 0.4]


@pytest.mark.parametrize("call, field", [
    (lambda: generate_cohort(0), "n_patients"),
    (lambda: generate_cohort(2, seed=-1), "seed"),
    (lambda: CohortRanges(rsi=(0.5, 1.2)), "rsi"),
    (lambda: CohortRanges(cord_gap_mm=(5.0, 2.0)), "cord_gap_mm"),
    (lambda: dataclasses.replace(generate_cohort(1)[0], rsi=1.5), "rsi"),
    (lambda: dataclasses.replace(generate_cohort(1)[0], target_radius_mm=float("nan")), "target_radius_mm"),
    (lambda: StudySetup(spacing_mm=0), "spacing_mm"),
    (lambda: Arm("a,b", conventional_terms), "Arm.name"),
    (lambda: check_arms([Arm("x", conventional_terms), Arm("x", conventional_terms)]), "repeated: x"),
    (lambda: check_arms([Arm("x", conventional_terms, family="f"), Arm("y", conventional_terms, family="f")]),
     "retune"),
    (lambda: ResultStore("/tmp/results.xlsx"), "parquet or .csv"),
])
def test_bad_input_names_the_field(call, field):
    with pytest.raises(PlanError, match=field.replace("(", r"\(")):
        call()


# -- bootstrap ---------------------------------------------------------------------------------

def _exact_bootstrap_quantile_atoms(x, level):
    """Brute force: every one of the n^n equally likely resamples, the exact distribution of
    their mean, and the atoms holding the lower / upper quantiles with the CDF margins around them."""
    means = np.array([np.mean(t) for t in itertools.product(x, repeat=len(x))])
    atoms, counts = np.unique(np.round(means, 12), return_counts=True)
    cdf = np.cumsum(counts) / counts.sum()
    out = []
    for q in ((1 - level) / 2, (1 + level) / 2):
        k = int(np.searchsorted(cdf, q))  # first atom with CDF >= q
        below = cdf[k - 1] if k else 0.0
        out.append((atoms[k], q - below, cdf[k] - q))
    return out


def test_bootstrap_ci_matches_brute_force_enumeration():
    x = [0.0, 1.0, 3.0, 10.0]
    (lo_atom, lo_m1, lo_m2), (hi_atom, hi_m1, hi_m2) = _exact_bootstrap_quantile_atoms(x, 0.8)
    # by hand (sums of 4 draws): P(sum <= 3) = 19/256 = 0.074 < 0.1 <= P(sum <= 4) = 32/256, so the
    # 10 % quantile of the mean is 4/4 = 1; P(sum >= 24) = 31/256 = 0.121 > 0.1 >= P(sum >= 26) =
    # 19/256, so the 90 % quantile is 24/4 = 6
    assert (lo_atom, hi_atom) == (pytest.approx(1.0), pytest.approx(6.0))
    # both quantiles sit well inside an atom of the exact distribution (> 8 sigma of the Monte
    # Carlo CDF at 40000 resamples), so the Monte Carlo quantile must equal that atom exactly
    sigma = math.sqrt(0.1 * 0.9 / 40000)
    assert min(lo_m1, lo_m2, hi_m1, hi_m2) > 8 * sigma
    est, lo, hi = bootstrap_ci(x, n_boot=40000, level=0.8, seed=3)
    assert est == pytest.approx(3.5)
    assert lo == pytest.approx(lo_atom, abs=1e-12) and hi == pytest.approx(hi_atom, abs=1e-12)


def test_bootstrap_ci_hand_cases_and_errors():
    assert bootstrap_ci([2.5] * 7) == (2.5, 2.5, 2.5)  # no spread, no interval
    assert bootstrap_ci([4.0]) == (4.0, 4.0, 4.0)
    # a statistic without an axis argument takes the per-resample loop: same resamples, same CI
    assert bootstrap_ci([1, 5, 2, 8, 3], np.median, seed=1) == \
        bootstrap_ci([1, 5, 2, 8, 3], lambda s: float(np.median(s)), seed=1)
    with pytest.raises(EvaluationError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(EvaluationError, match="level"):
        bootstrap_ci([1.0, 2.0], level=1.5)


# -- studies (serial) ------------------------------------------------------------------------

def impossible_for_p0001(case, dose_Gy=60.0):
    """Conventional terms; patient P0001 also gets a cord dose floor of 70 Gy, in conflict with
    the hard cord EQD2 max of 50 Gy."""
    terms = conventional_terms(case, dose_Gy)
    if case.vp.patient_id == "P0001":
        terms.append(MinDose("Cord", 70.0))
    return terms


def crashing_arm(case):
    """A user arm with a bug (not a bioplan error)."""
    return [1 / 0]


def test_failing_patients_are_recorded_and_the_rest_complete(tmp_path):
    cohort = generate_cohort(2, seed=0)
    # a target of 80 mm radius pushes the cord out of the grid: the case cannot be built
    broken = dataclasses.replace(cohort[0], patient_id="P9999", target_radius_mm=80.0)
    arms = [Arm("conventional", conventional_terms), Arm("tricky", impossible_for_p0001),
            Arm("buggy", crashing_arm)]
    res = run_study(cohort + [broken], tmp_path / "results.parquet", arms, SETUP, serial=True)
    by = {(r["patient_id"], r["arm"]): r for r in res.rows}
    assert len(res.rows) == 9 and res.computed == 9 and res.failed == 6
    for key in [("P0000", "conventional"), ("P0000", "tricky"), ("P0001", "conventional")]:
        r = by[key]
        assert r["status"] == "optimal" and r["reason"] == ""
        assert 0.0 <= r["TCP"] <= 1.0 and 0.0 <= r["NTCP"] <= 1.0 and r["goals_total"] == 3
        assert r["max_hard_violation"] <= 1e-3 and "duality gap" in r["certificate"]
    bad = by[("P0001", "tricky")]
    assert bad["status"] == "infeasible" and "MinDose" in bad["reason"] and math.isnan(bad["TCP"])
    for arm in ("conventional", "tricky", "buggy"):
        r = by[("P9999", arm)]
        assert r["status"] == "failed" and "Cord" in r["reason"] and "empty" in r["reason"]
    for pid in ("P0000", "P0001"):
        r = by[(pid, "buggy")]
        assert r["status"] == "failed" and "ZeroDivisionError" in r["reason"]
        assert "test_studies.py" in r["reason"]  # where a bug (not a bioplan error) came from
    # the Parquet table on disk holds the same rows, value for value
    on_disk = ResultStore(res.path).rows
    assert len(on_disk) == 9 and all(_same(a, b, ignore=()) for a, b in zip(on_disk, res.rows))
    s = summarize(res.rows, ["conventional", "tricky"], n_boot=200)
    assert s["conventional"]["patients"] == 2 and s["conventional"]["failed"] == 1
    assert s["tricky"]["infeasible"] == 1 and s["tricky"]["paired_patients"] == 1


def test_resume_retries_failed_rows_only_when_asked(tmp_path, monkeypatch):
    """Resume never computed a stored "failed" row again (a lost worker, a fixed bug):
    retry_failed=True does, replacing it; without it, and for "infeasible" rows, nothing runs."""
    cohort, path = generate_cohort(2, seed=0), tmp_path / "results.csv"
    arms = [Arm("conventional", conventional_terms), Arm("tricky", impossible_for_p0001)]
    real = study_work.solve_family
    run_study(cohort[1:], path, arms, SETUP, serial=True)
    store = ResultStore(path)  # mark the optimal row as lost by a worker
    failed = [dict(r, status="failed", reason="worker lost") for r in store.rows[:1]]
    assert failed[0]["patient_id"] == "P0001" and failed[0]["arm"] == "conventional"
    store.append(failed)
    calls = []

    def counting(case, vp, fam):
        calls.append((vp.patient_id, tuple(a.name for a in fam)))
        return real(case, vp, fam)

    monkeypatch.setattr(study_work, "solve_family", counting)
    run_study(cohort[1:], path, arms, SETUP, serial=True, resume=True)
    assert calls == []
    with pytest.raises(PlanError, match="retry_failed: applies to a resumed study"):
        run_study(cohort[1:], tmp_path / "other.csv", arms, SETUP, serial=True, retry_failed=True)
    res = run_study(cohort[1:], path, arms, SETUP, serial=True, resume=True, retry_failed=True)
    assert calls == [("P0001", ("conventional",))]  # not the infeasible "tricky" row
    by = {(r["patient_id"], r["arm"]): r for r in res.rows}
    assert by[("P0001", "conventional")]["status"] == "optimal"
    assert by[("P0001", "tricky")]["status"] == "infeasible" and len(ResultStore(path).rows) == 2


class _Interrupt(Exception):
    pass


def test_resume_computes_only_the_missing_rows(tmp_path, monkeypatch):
    cohort = generate_cohort(2, seed=1)
    arms = default_arms()[:2]  # conventional, personalized
    path = tmp_path / "results.csv"

    def crash(rows):
        raise _Interrupt  # the process dies after the first finished row is written

    with pytest.raises(_Interrupt):
        run_study(cohort, path, arms, SETUP, serial=True, on_rows=crash)
    first = ResultStore(path).rows
    assert [(r["patient_id"], r["arm"]) for r in first] == [("P0000", "conventional")]
    with pytest.raises(PlanError, match="resume"):
        run_study(cohort, path, arms, SETUP, serial=True)
    with pytest.raises(PlanError, match="setup differs"):
        run_study(cohort, path, arms, StudySetup(spacing_mm=5.0), serial=True, resume=True)

    calls = []
    real = study_work.solve_family

    def counting(case, vp, fam):
        calls.append((vp.patient_id, tuple(a.name for a in fam)))
        return real(case, vp, fam)

    monkeypatch.setattr(study_work, "solve_family", counting)
    res = run_study(cohort, path, arms, SETUP, serial=True, resume=True)
    assert sorted(calls) == [("P0000", ("personalized",)), ("P0001", ("conventional",)),
                             ("P0001", ("personalized",))]
    assert res.computed == 3 and len(res.rows) == 4 and res.failed == 0
    on_disk = ResultStore(path).rows  # CSV: floats written with repr read back bit for bit
    assert all(_same(a, b, ignore=()) for a, b in zip(on_disk, res.rows))
    kept = next(r for r in res.rows if (r["patient_id"], r["arm"]) == ("P0000", "conventional"))
    assert _same(kept, first[0], ignore=())  # the finished row is kept as written (times included)
    # nothing left: a second resume computes nothing
    calls.clear()
    assert run_study(cohort, path, arms, SETUP, serial=True, resume=True).computed == 0 and not calls
    # resumed with fewer patients (or arms) the result holds that study's rows only (it returned
    # every row of the table: the report summarised P0001 in a study of one patient)
    one = run_study(cohort[:1], path, arms[:1], SETUP, serial=True, resume=True)
    assert [(r["patient_id"], r["arm"]) for r in one.rows] == [("P0000", "conventional")]
    assert len(ResultStore(path).rows) == 4  # the table keeps them all


def test_resume_refuses_stored_rows_without_their_study_description(tmp_path):
    """With the .study.json gone, a resume accepted any setup (rows of 30 fractions mixed with
    rows of 5, the new description claiming 5 for all); now it is refused and writes nothing."""
    cohort, arms, path = generate_cohort(1, seed=0), default_arms()[:1], tmp_path / "results.csv"
    run_study(cohort, path, arms, SETUP, serial=True)
    os.unlink(f"{path}.study.json")
    before = path.read_bytes()
    with pytest.raises(PlanError, match=r"holds 1 row\(s\) but its study description .*study.json "
                                        r"is missing"):
        run_study(generate_cohort(2, seed=0), path, arms, dataclasses.replace(SETUP, fractions=5),
                  serial=True, resume=True)
    assert path.read_bytes() == before and not os.path.exists(f"{path}.study.json")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_the_table_keeps_columns_it_does_not_write_and_refuses_fractional_counts(tmp_path, suffix):
    """A column the study does not write (a reviewer's note) was dropped from the file by the
    next append; an int column given 2.9 stored 2."""
    path = tmp_path / f"results{suffix}"
    row = {c: None for c in ResultStore(path).columns}
    row.update(patient_id="P1", arm="conventional", status="optimal", seed=1, hypoxic_voxels=0, ptv_voxels=9,
               goals_met=2, goals_total=3, iterations=7)
    ResultStore(path).append([row])
    if suffix == ".csv":
        lines = path.read_text().splitlines()
        path.write_text("\n".join([lines[0] + ",reviewer_note", lines[1] + ",checked by Dr X"]) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        pq.write_table(table.append_column("reviewer_note", pa.array(["checked by Dr X"])), path)
    store = ResultStore(path)
    assert store.extra_columns == ("reviewer_note",)
    store.append([{**row, "patient_id": "P2"}])
    again = ResultStore(path)
    assert [(r["patient_id"], r["reviewer_note"]) for r in again.rows] == [
        ("P1", "checked by Dr X"), ("P2", "" if suffix == ".csv" else None)]
    assert [r["goals_met"] for r in again.rows] == [2, 2]
    with pytest.raises(PlanError, match="column 'goals_met': cannot read 2.9 as a whole number"):
        again.append([{**row, "patient_id": "P3", "goals_met": 2.9}])
    assert len(ResultStore(path).rows) == 2


def test_a_refused_run_writes_nothing(tmp_path):
    """n_workers=0 used to be refused only after the study description was written, so a later
    resume of the same folder was refused as a different study."""
    path = tmp_path / "results.csv"
    with pytest.raises(PlanError, match="n_workers: expected an integer >= 1, got 0"):
        run_study(generate_cohort(1, seed=1), path, default_arms()[:1], SETUP, n_workers=0)
    assert list(tmp_path.iterdir()) == []


def _same(a, b, ignore=RUN_COLUMNS):
    for k in a:
        if k in ignore:
            continue
        x, y = a[k], b[k]
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        if x != y:
            return False
    return True


# -- Dask ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as lc:
        yield lc


def test_local_cluster_equals_serial_row_for_row(tmp_path, cluster):
    cohort = generate_cohort(4, seed=2)
    arms = default_arms()
    serial = run_study(cohort, tmp_path / "serial.parquet", arms, SETUP, serial=True)
    dist = run_study(cohort, tmp_path / "dask.parquet", arms, SETUP, scheduler=cluster.scheduler_address)
    assert dist.workers == 2 and dist.computed == serial.computed == 12
    a = {(r["patient_id"], r["arm"]): r for r in serial.rows}
    b = {(r["patient_id"], r["arm"]): r for r in ResultStore(dist.path).rows}
    assert a.keys() == b.keys()
    assert all(_same(a[k], b[k]) for k in a)
    assert {r["worker"] for r in b.values()} != {r["worker"] for r in a.values()}  # really elsewhere
    # arms of one family share the compiled problem: the second re-solves it
    assert all(r["resolved"] == (r["arm"] == "personalized_noboost") for r in b.values())


def test_worker_killed_mid_study_loses_nothing(tmp_path, cluster):
    distributed = pytest.importorskip("dask.distributed")
    cohort = generate_cohort(3, seed=3)
    killed = []
    with distributed.Client(cluster) as client:
        def kill_a_busy_worker(rows):
            if killed:
                return
            busy = [w for w, keys in client.processing().items() if keys]
            if busy:
                pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                killed.append((pid, list(client.processing()[busy[0]])))
                os.kill(pid, signal.SIGKILL)  # a worker process this test's cluster started

        res = run_study(cohort, tmp_path / "results.parquet", default_arms()[:1], SETUP, client=client,
                        on_rows=kill_a_busy_worker)
    assert killed, "no worker was busy when the first row arrived"
    assert len(res.rows) == 3 and res.failed == 0
    assert {r["patient_id"] for r in ResultStore(res.path).rows} == {vp.patient_id for vp in cohort}
