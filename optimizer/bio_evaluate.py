"""Biological evaluation of plans (historical module): voxel BED / EQD2 / GARD, their DVHs and
Dx, Poisson TCP, LKB NTCP, voxel-by-voxel checks and plan comparison tables.

The code lives in :mod:`optimizer.evaluate` (one job per module: ``biology``, ``outcome``,
``voxel_checks``, ``goals``, ``compare``); this module re-exports the names it always had so that
``from optimizer import bio_evaluate`` keeps working. Goals are judged by the one evaluator,
:func:`optimizer.evaluate.evaluate_goals`, in the one goal schema.
"""

from .evaluate.biology import (  # noqa: F401
    QUANTITIES,
    alpha_beta_values,
    alpha_values,
    bed_map,
    bed_values,
    beta_values,
    eqd2_map,
    eqd2_values,
    gard_map,
    gard_values,
    structure_map,
    values,
)
from .evaluate.compare import compare_plans, comparison, plan_summary  # noqa: F401
from .evaluate.goals import BioGoalResult, evaluate_bio_goals, metric  # noqa: F401
from .evaluate.outcome import (  # noqa: F401
    DEFAULT_CLONOGEN_DENSITY_PER_CC,
    bed_at_volume,
    bed_dvh,
    eqd2_at_volume,
    eqd2_dvh,
    log_tcp,
    ntcp,
    statistics,
    tcp,
)
from .evaluate.voxel_checks import VoxelCheck, check_bio_limit, check_voxels  # noqa: F401

__all__ = [
    "QUANTITIES", "DEFAULT_CLONOGEN_DENSITY_PER_CC",
    "alpha_beta_values", "alpha_values", "beta_values", "bed_values", "eqd2_values", "gard_values",
    "values", "structure_map", "bed_map", "eqd2_map", "gard_map",
    "bed_dvh", "eqd2_dvh", "bed_at_volume", "eqd2_at_volume", "statistics", "tcp", "log_tcp", "ntcp",
    "VoxelCheck", "check_voxels", "check_bio_limit",
    "metric", "BioGoalResult", "evaluate_bio_goals", "plan_summary", "comparison", "compare_plans",
]
