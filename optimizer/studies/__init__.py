"""Virtual-patient cohort studies on Dask: personalized versus conventional planning at scale.

- :mod:`.cohort` : a seeded generator of virtual patients (:func:`generate_cohort`)
- :mod:`.case` : a patient's phantom, biology and influence matrix (:class:`StudySetup`, :func:`build_case`)
- :mod:`.arms` : planning arms (:class:`Arm`; conventional, personalized with GARD / BED floors and
  a hypoxia boost, and user-defined functions)
- :mod:`.work` : pure work units (one case per patient, one solve task per arm family) and the row schema
- :mod:`.store` : the results table (Parquet or CSV), rewritten atomically as each row finishes
- :mod:`.runner` : :func:`run_study` on an embedded LocalCluster, any Dask scheduler, or in-process
- :mod:`.stats` : bootstrap confidence intervals and per-arm summaries
- :mod:`.report` : figures and the ``metrics.json`` record

Dask (``dask[distributed]``) and pyarrow are optional dependencies (the ``study`` extra); they
are imported only when a study runs on Dask or writes Parquet.
"""

from .arms import (
    Arm,
    check_arms,
    conventional_terms,
    default_arms,
    organ_terms,
    personalized_retune,
    personalized_terms,
)
from .case import Case, StudySetup, build_case, build_phantom
from .cohort import CohortRanges, VirtualPatient, generate_cohort, virtual_patient
from .runner import StudyResult, run_study
from .stats import bootstrap_ci, summarize, summary_table
from .store import ResultStore
from .work import KEY_COLUMNS, ROW_COLUMNS, RUN_COLUMNS, STUDY_GOALS, plan_patient

__all__ = [
    "Arm", "check_arms", "conventional_terms", "default_arms", "organ_terms", "personalized_retune",
    "personalized_terms", "Case", "StudySetup", "build_case", "build_phantom", "CohortRanges",
    "VirtualPatient", "generate_cohort", "virtual_patient", "StudyResult", "run_study", "bootstrap_ci",
    "summarize", "summary_table", "ResultStore", "KEY_COLUMNS", "ROW_COLUMNS", "RUN_COLUMNS",
    "STUDY_GOALS", "plan_patient",
]
