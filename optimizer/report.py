"""The ``metrics.json`` record that every example writes (one schema for all cases).

Schema::

    {"case", "fractions",
     "structures": {NAME: {"D95_Gy", "D10_Gy", "D50_Gy", "mean_Gy", "max_Gy", ...}},
     "goals": [{"structure", "metric", "op", "limit", "value", "unit", "met"}, ...],
     "sizes": {"grid_voxels", "opt_voxels", "beamlets", "nnz"},
     "timings_s": {"dose", "build", "solve", "total"},
     "solver": {"name", "status", "objective", "iterations", "versions"}}

Goal rows are the one goal schema of :mod:`optimizer.evaluate.goals` (``unit`` "Gy", "%",
"Gy BED", "Gy EQD2" or "" for GARD). Rows of physical-dose goals (no quantity prefix: "D95",
"mean", "V20Gy") also keep the historical keys ``limit_Gy`` and ``value_Gy`` (equal to ``limit``
and ``value``; for a Vx goal they hold the volume in %, as they always did) so that readers of
older records keep working. Examples may add keys.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from . import evaluate
from ._files import write_bytes


def goal_row(result: evaluate.GoalResult) -> dict:
    """A goal's ``metrics.json`` row: :meth:`~optimizer.evaluate.GoalResult.as_dict`, plus
    ``limit_Gy`` / ``value_Gy`` for physical-dose goals."""
    row = result.as_dict()
    if result.quantity == "dose":
        row["limit_Gy"], row["value_Gy"] = result.limit, result.value
    return row


def metrics(plan, case: str, goals, timings_s: dict[str, float], nnz: int | None = None, *,
            lq=None, rsi=None) -> dict:
    """Build the metrics record of a solved plan.

    ``goals`` may mix physical and biological metric strings ("D95", "BED D95", ...); biological
    ones need ``lq`` (and ``rsi`` for GARD from the RSI), as :func:`optimizer.evaluate.evaluate_goals`.
    """
    s = plan.solver
    return {
        "case": case,
        "fractions": plan.fractions,
        "structures": evaluate.structure_metrics(plan),
        "goals": [goal_row(g) for g in evaluate.evaluate_goals(plan, goals, lq=lq, rsi=rsi)],
        "sizes": {
            "grid_voxels": plan.patient.grid.n_voxels,
            "opt_voxels": s.get("opt_voxels"),
            "beamlets": int(len(plan.weights)),
            "nnz": nnz if nnz is not None else (plan.influence.nnz if plan.influence is not None else None),
        },
        "timings_s": {k: round(float(v), 3) for k, v in timings_s.items()},
        "solver": {"name": s.get("name"), "status": s.get("status"), "objective": s.get("objective"),
                   "iterations": s.get("iterations"), "versions": s.get("versions")},
    }


def write_metrics(record: dict, out_dir: str, name: str = "metrics.json") -> str:
    """Write a metrics record as indented JSON into ``out_dir`` (created if missing).

    The record replaces an earlier one atomically (examples rewrite it on every run); a symlink
    at the path is replaced, never written through."""
    path = os.path.join(out_dir, name)
    text = json.dumps(_json_ready(record), indent=2, allow_nan=False)
    return write_bytes(path, text.encode(), overwrite=True)


def _json_ready(value):
    """``value`` with every NaN / infinite float as None: strict JSON (``null``), which other
    readers (jq, JavaScript, json.loads with a strict parse_constant) accept; Python's default
    writes ``NaN`` and ``Infinity``, which they refuse."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    return value


def output_folder(path: str | os.PathLike, overwrite: bool = False) -> str:
    """Check an example's output folder before any work: a file there, or a folder that already
    holds files (an earlier run's), is refused unless ``overwrite`` (its files are then replaced
    as they are written). Returns the folder, created.

    Raises FileExistsError with a message naming ``--out`` / ``--overwrite``."""
    path = os.fspath(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise FileExistsError(f"--out {path}: is a file, not a folder; choose another --out")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise FileExistsError(f"--out {path}: holds {len(os.listdir(path))} entries of an earlier run; pass "
                              f"--overwrite to replace them, or choose another --out")
    os.makedirs(path, exist_ok=True)
    return path
