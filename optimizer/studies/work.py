"""Work units of a study: pure functions of picklable inputs (a :class:`VirtualPatient`, the
:class:`StudySetup`, :class:`Arm` lists), run by Dask workers or in-process alike.

* :func:`prepare` builds a patient's :class:`Case` (phantom, biology, influence matrix) once;
* :func:`solve_family` plans the arms of one family on that case: the first arm builds and
  compiles the problem, further arms retune its Parameters and re-solve it;
* :func:`plan_patient` does both for every family (the serial path and a one-task-per-patient
  alternative).

Planning and evaluation errors never escape: a failing arm becomes a row with ``status``
"infeasible" (hard terms in conflict) or "failed" and the ``reason``; a patient whose case
cannot be built gets one failed row per arm. Row schema: :data:`ROW_COLUMNS`.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import traceback

import numpy as np

from ..errors import InfeasiblePlanError
from ..evaluate import evaluate_goals, ntcp, statistics, values
from ..problem import PlanProblem
from .arms import Arm, families
from .case import Case, StudySetup, build_case
from .cohort import VirtualPatient

#: Organs with an LKB NTCP in every row: structure -> key of objectives.radiobiology.NTCP_PARAMETERS
#: (Burman 1991 spinal cord; QUANTEC parotid, Deasy et al. 2010).
NTCP_ORGANS = {"Cord": "spinal cord", "Gland": "parotid"}

#: Clinical goals judged in every row (limits in the metric's unit): target coverage at 95 % of
#: the conventional 60 Gy, cord EQD2 max 50 Gy (QUANTEC, Kirkpatrick 2010), gland mean EQD2
#: <= 25 Gy (QUANTEC parotid, Deasy et al., IJROBP 2010;76(3 Suppl):S58).
STUDY_GOALS = [("PTV", "D95", ">=", 57.0), ("Cord", "EQD2 max", "<=", 50.0),
               ("Gland", "EQD2 mean", "<=", 25.0)]

#: Result columns in order (a row may add more: user-defined arms' extra metrics are not kept).
KEY_COLUMNS = ("patient_id", "arm")
ROW_COLUMNS = (
    "patient_id", "arm", "family", "status", "reason",
    # patient (VirtualPatient.covariates)
    "seed", "target_radius_mm", "cord_gap_mm", "gland_gap_mm", "rsi", "alpha_beta_cord_Gy",
    "alpha_beta_gland_Gy", "alpha_beta_tissue_Gy", "hypoxic_radius_mm", "hypoxic_offset_x_mm",
    "hypoxic_offset_y_mm", "hypoxic_offset_z_mm", "po2_min_mmHg", "clonogens_per_cc",
    "hypoxic_voxels", "ptv_voxels",
    # outcome
    "TCP", "log_TCP", "NTCP", "NTCP_Cord", "NTCP_Gland",
    "GARD_min", "GARD_mean", "GARD_D95", "GARD_max",
    "PTV_D95_Gy", "PTV_mean_Gy", "Hypoxic_mean_Gy", "Cord_max_Gy", "Gland_mean_Gy",
    "goals_met", "goals_total", "goals",
    # solve
    "solver", "solver_status", "objective", "iterations", "max_hard_violation", "certificate", "resolved",
    # times, s (not part of the comparison of two runs)
    "phantom_s", "dose_s", "build_s", "compile_s", "solve_s", "eval_s", "wall_s", "worker",
)
#: Columns that depend on the machine / run, not on the inputs.
RUN_COLUMNS = ("phantom_s", "dose_s", "build_s", "compile_s", "solve_s", "eval_s", "wall_s", "worker")
_FLOAT_NAN = float("nan")


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def empty_row(vp: VirtualPatient, arm: Arm, status: str, reason: str) -> dict:
    """A row with every column, outcome columns NaN (the shape of failed rows)."""
    row = {c: _FLOAT_NAN for c in ROW_COLUMNS}
    row.update(vp.covariates())
    row.update(patient_id=vp.patient_id, arm=arm.name, family=arm.family, status=status, reason=reason,
               goals="[]", goals_met=0, goals_total=0, solver="", solver_status="", certificate="",
               resolved=False, iterations=0, hypoxic_voxels=0, ptv_voxels=0, worker=_worker())
    return row


def failed_rows(vp: VirtualPatient, arms: list[Arm], reason: str) -> list[dict]:
    """One "failed" row per arm of a patient whose case could not be prepared."""
    return [empty_row(vp, a, "failed", reason) for a in arms]


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 2000 else text[:1997] + "..."


def prepare(vp: VirtualPatient, setup: StudySetup) -> Case | str:
    """The patient's :class:`Case`, or the reason (str) it could not be built."""
    try:
        return build_case(vp, setup)
    except Exception as exc:  # recorded as the patient's failure; the study goes on
        return "case: " + _reason(exc)


def evaluate_row(plan, case: Case, row: dict) -> None:
    """Fill the outcome columns of ``row`` from a solved plan (full-grid dose)."""
    lq_t, lq_eval = case.lq_tumour, case.lq_eval()
    row["log_TCP"] = float(_log_tcp(plan, case))
    row["TCP"] = float(math.exp(row["log_TCP"]))
    p_ok = 1.0
    for organ, key in NTCP_ORGANS.items():
        p = float(ntcp(plan, organ, case.lq_oar, key))
        row[f"NTCP_{organ}"] = p
        p_ok *= 1.0 - p
    row["NTCP"] = 1.0 - p_ok  # any complication, organs independent
    g = statistics(values(plan, "PTV", "GARD", lq=lq_t))
    row.update(GARD_min=g["min_Gy"], GARD_mean=g["mean_Gy"], GARD_D95=g["D95_Gy"], GARD_max=g["max_Gy"])
    ptv = statistics(plan.structure_dose("PTV"))
    row.update(PTV_D95_Gy=ptv["D95_Gy"], PTV_mean_Gy=ptv["mean_Gy"],
               Hypoxic_mean_Gy=float(np.mean(plan.structure_dose("Hypoxic"))),
               Cord_max_Gy=float(np.max(plan.structure_dose("Cord"))),
               Gland_mean_Gy=float(np.mean(plan.structure_dose("Gland"))))
    goals = [r.as_dict() for r in evaluate_goals(plan, STUDY_GOALS, lq=lq_eval)]
    row.update(goals=json.dumps(goals), goals_met=sum(bool(r["met"]) for r in goals), goals_total=len(goals))


def _log_tcp(plan, case: Case) -> float:
    from ..evaluate import log_tcp

    return log_tcp(plan, "PTV", case.lq_tumour, case.vp.clonogens_per_cc)


def _solver_columns(plan, row: dict, resolved: bool) -> None:
    s = plan.solver
    hard = s.get("hard_terms") or []
    row.update(solver=str(s.get("name", "")), solver_status=str(s.get("status", "")),
               objective=float(s.get("objective", _FLOAT_NAN)), iterations=int(s.get("iterations") or 0),
               max_hard_violation=float(max((h["max_violation"] for h in hard), default=0.0)),
               certificate=str(s.get("certificate", "")), resolved=bool(resolved),
               build_s=float(s.get("build_s", 0.0)), compile_s=float(s.get("compile_s", 0.0)),
               solve_s=float(s.get("solve_s", 0.0)))


def solve_family(case: Case | str, vp: VirtualPatient, arms: list[Arm]) -> list[dict]:
    """Rows of the arms of one family on one patient's case (see the module docstring).

    ``case`` may be the reason string of a failed :func:`prepare`: every arm then gets a failed
    row with that reason."""
    if isinstance(case, str):
        return failed_rows(vp, arms, case)
    setup = case.setup
    options = dict(setup.solver_options)
    rows, problem, terms = [], None, None
    for arm in arms:
        t0 = time.perf_counter()
        row = empty_row(vp, arm, "optimal", "")
        row.update(phantom_s=case.times_s["phantom"], dose_s=case.times_s["dose"],
                   hypoxic_voxels=case.patient.structure("Hypoxic").n_voxels,
                   ptv_voxels=case.patient.structure("PTV").n_voxels)
        resolved = problem is not None
        try:
            if problem is None:
                terms = arm.terms(case)
                problem = PlanProblem(case.patient, case.influence, fractions=setup.fractions,
                                      max_voxels_per_structure=setup.max_voxels, seed=0)
                for term in terms:
                    problem += term
            else:
                arm.retune(terms, case, **arm.kwargs)
            plan = problem.solve(solver=setup.solver, **options)
            _solver_columns(plan, row, resolved)
            t1 = time.perf_counter()
            evaluate_row(plan, case, row)
            row["eval_s"] = time.perf_counter() - t1
        except InfeasiblePlanError as exc:
            row.update(status="infeasible", reason=_reason(exc))
        except Exception as exc:  # a failing arm is recorded; the study goes on
            row.update(status="failed", reason=_reason(exc))
            if not isinstance(exc, ValueError):  # not a bioplan error: keep where it came from
                frames = traceback.extract_tb(exc.__traceback__)
                if frames:
                    row["reason"] += f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})"
            if problem is not None and not resolved:
                problem, terms = None, None  # a build that failed is not reused
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
    return rows


def plan_patient(vp: VirtualPatient, setup: StudySetup, arms: list[Arm]) -> list[dict]:
    """Every arm of one patient: one case, then :func:`solve_family` per family."""
    case = prepare(vp, setup)
    rows = []
    for fam in families(arms):
        rows.extend(solve_family(case, vp, fam))
    return rows
