"""FLASH and immune-sparing planning for proton PBS.

- :mod:`.delivery` : PBS delivery-time model (:class:`Machine`, :func:`delivery_timeline`)
- :mod:`.dose_rate` : DADR and PBS dose-rate maps, dose-rate-volume histograms, V40 fractions
- :mod:`.planning` : transmission beams, the DADR constraint of a machine, spot subsets, the
  two-stage minimum-spot-weight method
- :mod:`.immune` : EDIC of a plan and the immune-sparing terms

The terms themselves live in :mod:`objectives.dose_rate` (``DADRMin``, ``DADRDeficit``) and
:mod:`objectives.immune` (``EDICModel``, ``ImmuneMeanDose``).
"""

from objectives.dose_rate import DADRDeficit, DADRMin
from objectives.immune import EDICModel, ImmuneMeanDose

from .delivery import Machine, Timeline, delivery_timeline
from .dose_rate import (
    FLASH_RATE_GY_S,
    dadr_map,
    dadr_reachable,
    dose_rate_region,
    pbs_dose_rate_map,
    rate_volume_histogram,
    rate_volume_pct,
)
from .immune import edic, immune_terms
from .planning import dadr_constraint, subset_spots, transmission_influence, two_stage_minimum_weight

__all__ = [
    "Machine", "Timeline", "delivery_timeline",
    "FLASH_RATE_GY_S", "dadr_map", "dadr_reachable", "pbs_dose_rate_map", "dose_rate_region",
    "rate_volume_pct", "rate_volume_histogram",
    "DADRDeficit", "DADRMin", "EDICModel", "ImmuneMeanDose", "edic", "immune_terms",
    "dadr_constraint", "subset_spots", "transmission_influence", "two_stage_minimum_weight",
]
