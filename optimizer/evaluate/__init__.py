"""Plan evaluation on the full grid: DVHs, Dx / Vx, statistics and indices, biological quantities
(BED, EQD2, GARD), TCP / NTCP, voxel-by-voxel checks, goals and plan comparison.

One job per module; everything public is importable from here:

- :mod:`.dose_volume` : volume metrics of voxel values (DVH, Dx, Vx, statistics, HI, Paddick CI, metric
  strings such as "D95", "V20Gy", "mean")
- :mod:`.biology` : a plan's voxel values of dose / BED / EQD2 / GARD per structure, and 3-D maps
- :mod:`.outcome` : BED / EQD2 DVHs and Dx, Poisson TCP, LKB NTCP
- :mod:`.voxel_checks` : floors and ceilings checked in every voxel
- :mod:`.goals` : the one goal evaluator (physical and biological goals, one schema, one tolerance)
- :mod:`.pvdr` : minibeam peak/valley regions, PVDR by depth and structure, profiles, plots
- :mod:`.robust` : per-scenario doses, DVH bands, nominal and worst-case metrics (robust plans)
- :mod:`.compare` : plan summaries and side-by-side comparison tables

Goal results share one schema, ``{"structure", "metric", "op", "limit", "value", "unit", "met"}``
(see :mod:`optimizer.evaluate.goals`). Errors are :class:`optimizer.errors.EvaluationError`
(bad goals, metrics, doses) or :class:`objectives.errors.BiologyError` (bad LQ / RSI input), both
:class:`objectives.errors.BioplanError`.
"""

from .biology import (
    QUANTITIES,
    UNITS,
    alpha_beta_values,
    alpha_values,
    bed_map,
    bed_values,
    beta_values,
    dose_values,
    eqd2_map,
    eqd2_values,
    gard_map,
    gard_values,
    quantity_name,
    structure_map,
    values,
)
from .compare import compare_plans, comparison, plan_summary
from .dose_volume import (
    dose_at_volume,
    dose_statistics,
    dvh,
    homogeneity_index,
    is_volume_metric,
    metric_value,
    paddick_conformity_index,
    volume_at_dose,
)
from .goals import (
    GOAL_RELATIVE_TOLERANCE,
    BioGoalResult,
    GoalResult,
    evaluate_bio_goals,
    evaluate_goals,
    goal_table,
    goal_tolerance,
    metric,
    metric_unit,
    structure_metrics,
)
from .outcome import (
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
from .pvdr import add_peak_valley_structures, lateral_profile, peak_valley_masks, pvdr
from .robust import dvh_band, robust_block, robust_metrics, scenario_doses
from .voxel_checks import VoxelCheck, check_bio_limit, check_voxels

__all__ = [
    # volume metrics of voxel values
    "dose_at_volume", "volume_at_dose", "dvh", "dose_statistics", "homogeneity_index",
    "paddick_conformity_index", "metric_value", "is_volume_metric",
    # quantities of a plan
    "QUANTITIES", "UNITS", "quantity_name", "values", "dose_values", "bed_values", "eqd2_values",
    "gard_values", "alpha_beta_values", "alpha_values", "beta_values", "structure_map", "bed_map",
    "eqd2_map", "gard_map",
    # biological metrics and outcome
    "DEFAULT_CLONOGEN_DENSITY_PER_CC", "bed_dvh", "eqd2_dvh", "bed_at_volume", "eqd2_at_volume",
    "statistics", "tcp", "log_tcp", "ntcp",
    # voxel checks
    "VoxelCheck", "check_voxels", "check_bio_limit",
    # goals
    "GOAL_RELATIVE_TOLERANCE", "GoalResult", "BioGoalResult", "metric", "metric_unit", "goal_tolerance",
    "evaluate_goals", "evaluate_bio_goals", "goal_table", "structure_metrics",
    # minibeams
    "pvdr", "peak_valley_masks", "add_peak_valley_structures", "lateral_profile",
    # robust scenarios
    "scenario_doses", "robust_metrics", "dvh_band", "robust_block",
    # comparison
    "plan_summary", "comparison", "compare_plans",
]
