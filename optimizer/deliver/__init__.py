"""Deliverable photon plans: MU calibration, leaf sequencing and the dose of what is delivered.

- :mod:`.machine` - :class:`Machine` (MLC leaf width and count, minimum gap, leaf speed, dose rate,
  interdigitation, leaf transmission, leaf-end leakage) and :class:`Calibration` (the reference
  condition of a monitor unit, default 1 MU = 1 cGy at d_max, SSD 100 cm, 10 x 10 cm2);
- :mod:`.calibration` - :func:`calibrate`: MU per unit beamlet weight, recomputed with the beam
  model in use;
- :mod:`.decompose` - integer intensity matrices into apertures (Xia & Verhey 1998 reducing
  levels; Bortfeld et al. 1994 sweep);
- :mod:`.sequence` - :func:`sequence`: a photon plan into MLC control points with MU
  (:class:`Delivery`, :class:`BeamDelivery`), step and shoot or sliding window;
- :mod:`.fluence` - :func:`delivered_fluence` (with transmission and leaf-end leakage),
  :func:`leaf_rule_violations` and :func:`delivered_dose` (the delivered fluence recomputed with
  the photon model, beside the optimized one).

Typical use::

    cal = deliver.calibrate(beams)                       # MU per unit weight of this model
    delivery = deliver.sequence(plan, deliver.Machine(), cal, levels=10)
    optimized, delivered = deliver.delivered_dose(plan, beams, delivery)
"""

from .calibration import MUCalibration, calibrate
from .decompose import apertures_sum, reducing_levels, sweep
from .fluence import delivered_dose, delivered_fluence, leaf_rule_violations
from .machine import Calibration, DeliveryError, Machine
from .sequence import BeamDelivery, Delivery, sequence

__all__ = [
    "Machine", "Calibration", "DeliveryError", "MUCalibration", "calibrate",
    "reducing_levels", "sweep", "apertures_sum",
    "BeamDelivery", "Delivery", "sequence",
    "delivered_fluence", "leaf_rule_violations", "delivered_dose",
]
