"""Running a study: every missing patient x arm row, on Dask or in-process, into a
:class:`ResultStore`.

Execution (``run_study``):

* default: an embedded ``dask.distributed.LocalCluster`` of ``n_workers`` processes with one
  thread each, closed at the end;
* ``scheduler="tcp://host:8786"``: any running Dask cluster (dask-jobqueue, Kubernetes, ...);
  its workers need bioplan installed;
* ``client=``: a ``dask.distributed.Client`` the caller owns (left open);
* ``serial=True``: the same work units called in this process, one after the other.

Per patient one task builds the :class:`~optimizer.studies.case.Case` (phantom, influence matrix)
and one task per arm family depends on it: Dask keeps the case in worker memory, moves it where
the family runs, and frees it when the patient's families are done. Rows are appended to the
table as each family task finishes; a task that dies with its worker is retried by Dask
(``retries`` for other errors); a task that still fails gives "failed" rows with the reason.

Resuming: the table's rows are kept and only the missing (patient, arm) rows are computed. The
study description (setup, arms, patients) is kept beside the table in ``<table>.study.json``; a
resumed run must agree with it on the setup, on every arm and patient they share (new patients
and arms may be added).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from .._files import write_bytes
from ..errors import PlanError
from . import work
from .arms import Arm, check_arms, default_arms, families
from .case import StudySetup
from .cohort import VirtualPatient
from .store import ResultStore


@dataclass
class StudyResult:
    """What :func:`run_study` did: ``rows`` (the table's rows of this cohort and these arms,
    resumed ones included; a table resumed with fewer patients keeps the others' rows, which are
    not this study's), ``computed`` (rows computed by this run), ``failed`` (of ``rows``, those
    not "optimal"),
    ``timings_s`` ({"start", "compute", "total"}), ``workers`` (Dask workers, 1 in serial),
    ``executor`` ("serial", "local-cluster" or the scheduler address) and ``path``."""

    rows: list[dict]
    computed: int
    failed: int
    timings_s: dict
    workers: int
    executor: str
    path: str


def _callable_name(fn) -> str | None:
    if fn is None:
        return None
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _arm_record(arm: Arm) -> dict:
    return {"name": arm.name, "family": arm.family, "build": _callable_name(arm.build),
            "retune": _callable_name(arm.retune),
            "params": json.loads(json.dumps(dict(arm.params), default=repr))}


def _manifest(setup: StudySetup, arms: list[Arm], cohort: list[VirtualPatient]) -> dict:
    return {"setup": setup.as_dict(), "arms": [_arm_record(a) for a in arms],
            "patients": {vp.patient_id: json.loads(json.dumps(asdict(vp))) for vp in cohort}}


def _merge_manifest(path: str, new: dict, stored_rows: int = 0) -> dict:
    """The stored study description merged with this run's, or a PlanError naming what differs.
    Rows stored without a description are refused: their setup cannot be checked."""
    if not os.path.exists(path):
        if stored_rows:
            raise PlanError(f"resume: the results table holds {stored_rows} row(s) but its study description "
                            f"{path} is missing, so the setup, arms and patients they were computed with "
                            f"cannot be checked against this run's; restore that file, or start a new table")
        return new
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError) as exc:
        raise PlanError(f"{path}: unreadable study description ({exc})") from None
    if old.get("setup") != new["setup"]:
        raise PlanError(f"resume: setup differs from the stored study ({path}): stored {old.get('setup')}, "
                        f"now {new['setup']}")
    old_arms = {a["name"]: a for a in old.get("arms", [])}
    for a in new["arms"]:
        if a["name"] in old_arms and old_arms[a["name"]] != a:
            raise PlanError(f"resume: arm '{a['name']}' differs from the stored study ({path}): stored "
                            f"{old_arms[a['name']]}, now {a}")
    old_patients = old.get("patients", {})
    for pid, p in new["patients"].items():
        if pid in old_patients and old_patients[pid] != p:
            raise PlanError(f"resume: patient '{pid}' differs from the stored study ({path}); use the same "
                            f"seed and cohort ranges")
    arms = list(old.get("arms", [])) + [a for a in new["arms"] if a["name"] not in old_arms]
    return {"setup": new["setup"], "arms": arms, "patients": {**old_patients, **new["patients"]}}


def _work_list(cohort, arms, done: set) -> list[tuple[VirtualPatient, list[list[Arm]]]]:
    """Per patient, the families with their missing arms (patients with nothing missing left out)."""
    todo = []
    for vp in cohort:
        fams = [[a for a in fam if (vp.patient_id, a.name) not in done] for fam in families(arms)]
        fams = [f for f in fams if f]
        if fams:
            todo.append((vp, fams))
    return todo


def run_study(cohort: list[VirtualPatient], results_path: str | os.PathLike, arms: list[Arm] | None = None,
              setup: StudySetup | None = None, *, client=None, scheduler: str | None = None,
              n_workers: int = 2, serial: bool = False, resume: bool = False, progress: bool = False,
              retries: int = 1, on_rows: Callable[[list[dict]], None] | None = None,
              retry_failed: bool = False) -> StudyResult:
    """Compute every missing (patient, arm) row of a study into ``results_path``.

    Parameters
    ----------
    cohort : virtual patients (:func:`~optimizer.studies.generate_cohort`), unique ids
    results_path : ``.parquet`` or ``.csv`` table; must not exist unless ``resume``
    arms : planning arms (default :func:`~optimizer.studies.default_arms`)
    setup : planning settings (default :class:`~optimizer.studies.StudySetup`)
    client, scheduler, n_workers, serial : where to run (see the module docstring)
    resume : keep the rows already in the table and compute only the missing ones
    progress : show a tqdm progress bar (rows)
    retries : Dask retries of a task that raised (planning errors never raise: they are rows)
    on_rows : called with each batch of rows after it is written (e.g. for monitoring)
    retry_failed : with ``resume``, also compute again the stored rows whose status is "failed"
        (an error, e.g. a lost worker or a fixed bug), replacing them; "infeasible" rows are
        planning results and stay

    Returns
    -------
    StudyResult
    """
    t_start = time.perf_counter()
    cohort = list(cohort)
    if not cohort or not all(isinstance(vp, VirtualPatient) for vp in cohort):
        raise PlanError("cohort: expected a non-empty list of VirtualPatient (generate_cohort)")
    ids = [vp.patient_id for vp in cohort]
    if len(set(ids)) != len(ids):
        raise PlanError("cohort: patient ids must be unique")
    arms = check_arms(default_arms() if arms is None else arms)
    setup = StudySetup() if setup is None else setup
    if not isinstance(setup, StudySetup):
        raise PlanError(f"setup: expected a StudySetup, got {type(setup).__name__}")
    if sum(x is not None for x in (client, scheduler)) + bool(serial) > 1:
        raise PlanError("client / scheduler / serial: give at most one")
    if client is None and scheduler is None and not serial and (
            isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1):
        # before anything is written (a refused run left a study description that a later
        # --resume then refused as a different study)
        raise PlanError(f"n_workers: expected an integer >= 1, got {n_workers!r}")
    if not isinstance(retry_failed, bool):
        raise PlanError(f"retry_failed: expected True or False, got {retry_failed!r}")
    if retry_failed and not resume:
        raise PlanError("retry_failed: applies to a resumed study; pass resume=True too")
    path = os.fspath(results_path)
    if os.path.exists(path) and not resume:
        raise PlanError(f"results_path: {path} exists; pass resume=True (--resume) to complete it, or choose "
                        f"another path")
    store = ResultStore(path)
    manifest_path = path + ".study.json"
    manifest = _merge_manifest(manifest_path, _manifest(setup, arms, cohort), len(store)) if resume else \
        _manifest(setup, arms, cohort)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_bytes(manifest_path, json.dumps(manifest, indent=1).encode(), overwrite=True)
    done = {(r["patient_id"], r["arm"]) for r in store.rows if not (retry_failed and r["status"] == "failed")}
    todo = _work_list(cohort, arms, done)
    n_rows = sum(len(f) for _, fams in todo for f in fams)

    from tqdm.auto import tqdm

    bar = tqdm(total=n_rows, desc="rows", unit="row", disable=not progress)
    computed = 0

    def record(rows):
        nonlocal computed
        store.append(rows)
        computed += len(rows)
        bar.update(len(rows))
        if on_rows is not None:
            on_rows(rows)

    t_ready = time.perf_counter()
    try:
        if serial:
            executor, workers = "serial", 1
            t_ready = time.perf_counter()
            for vp, fams in todo:
                case = work.prepare(vp, setup)
                for fam in fams:
                    record(work.solve_family(case, vp, fam))
        else:
            executor, workers, t_ready = _run_dask(todo, setup, client, scheduler, n_workers, retries, record)
    finally:
        bar.close()
    t_end = time.perf_counter()
    wanted = {(pid, a.name) for pid in ids for a in arms}
    rows = [r for r in store.rows if (r["patient_id"], r["arm"]) in wanted]
    return StudyResult(rows=rows, computed=computed, failed=sum(r["status"] != "optimal" for r in rows),
                       timings_s={"start": t_ready - t_start, "compute": t_end - t_ready,
                                  "total": t_end - t_start},
                       workers=workers, executor=executor, path=path)


def _run_dask(todo, setup, client, scheduler, n_workers, retries, record):
    from dask.distributed import Client, LocalCluster, as_completed

    own_client = own_cluster = None
    if client is None:
        if scheduler is not None:
            client = own_client = Client(scheduler)
            executor = str(scheduler)
        else:  # n_workers was checked by run_study, before anything was written
            own_cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
            client = own_client = Client(own_cluster)
            executor = "local-cluster"
    else:
        executor = "client:" + str(getattr(client.scheduler, "address", "?"))
    futures = {}
    try:
        workers = len(client.scheduler_info().get("workers", {}))
        t_ready = time.perf_counter()
        for i, (vp, fams) in enumerate(todo):
            case = client.submit(work.prepare, vp, setup, pure=False, retries=retries, priority=-i,
                                 key=f"prepare-{vp.patient_id}-{os.urandom(4).hex()}")
            for fam in fams:
                f = client.submit(work.solve_family, case, vp, fam, pure=False, retries=retries, priority=-i,
                                  key=f"solve-{vp.patient_id}-{fam[0].family}-{os.urandom(4).hex()}")
                futures[f] = (vp, fam)
        for f in as_completed(list(futures)):
            vp, fam = futures.pop(f)
            try:
                rows = f.result()
            except Exception as exc:  # the task itself failed (e.g. its workers kept dying)
                rows = work.failed_rows(vp, fam, f"dask: {type(exc).__name__}: {exc}")
            record(rows)
            f.release()
        return executor, workers, t_ready
    finally:
        for f in futures:
            f.cancel()
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()
