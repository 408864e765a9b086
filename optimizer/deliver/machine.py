"""The treatment machine a photon plan is delivered on: MLC geometry and limits, leaf
transmission and leaf-end leakage, and the absolute-dose (MU) calibration condition.

Defaults describe a generic 6 MV linac with a 5 mm MLC. The numbers are typical published values,
to be replaced by a machine's commissioning data:

* MLC leaf transmission 1.5 % (6 MV, inter- and intra-leaf averaged; LoSasso et al., Med Phys
  1998;25:1919 report about 1.7 % for a Varian MLC at 6 MV (verify)).
* Leaf-end leakage through the rounded leaf tips: a dosimetric leaf gap (DLG) of 1.6 mm, i.e. each
  aperture behaves as if it were 0.8 mm wider at each leaf tip (LoSasso 1998; DLG of 1-2 mm is
  typical at 6 MV (verify)).
* Maximum leaf speed 25 mm/s and minimum gap 0.5 mm between opposing leaves (typical of
  Varian Millennium MLC specifications (verify)); dose rate 600 MU/min.
* Calibration: 1 MU = 1 cGy at d_max, SSD 100 cm, 10 x 10 cm2 field (the usual reference of a
  6 MV linac, as in AAPM TG-51 practice where the machine output is stated at d_max).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from ..errors import PlanError


class DeliveryError(PlanError):
    """A plan cannot be made deliverable: bad machine or calibration parameters, a fluence the
    MLC cannot cover, or a sequence that breaks a leaf rule."""


def _positive(value, name: str, expected: str, ok=lambda v: v > 0) -> float:
    if isinstance(value, bool):
        raise DeliveryError(f"{name}: expected {expected}, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DeliveryError(f"{name}: expected {expected}, got {value!r}") from None
    if not math.isfinite(v) or not ok(v):
        raise DeliveryError(f"{name}: expected {expected}, got {value!r}")
    return v


@dataclass(frozen=True)
class Machine:
    """MLC and beam-delivery parameters of a photon linac (IEC 61217 beam-limiting-device
    coordinates, positions in the isocentre plane, mm).

    Attributes
    ----------
    name : TreatmentMachineName written to the RT Plan (at most 16 characters)
    leaf_width_mm : width of every leaf at the isocentre, mm (> 0)
    n_leaf_pairs : number of leaf pairs; the leaves are stacked symmetrically about the central
        axis, so with an odd number (default 61) a leaf pair is centred on the axis, as
        bioplan's beamlet grid centres a beamlet row there
    min_gap_mm : smallest distance between the two leaves of a pair, mm (>= 0); closed pairs
        keep this gap
    max_leaf_speed_mm_s : maximum leaf speed, mm/s (> 0; sliding window)
    dose_rate_mu_min : maximum dose rate, MU/min (> 0; sliding window timing)
    interdigitation : whether a leaf may pass the opposing leaf of a neighbouring pair; without
        it, opposing leaves of neighbouring pairs keep at least ``min_gap_mm`` apart
    transmission : fraction of the open-field fluence that passes through a closed leaf, [0, 1)
    leaf_end_leakage_mm : dosimetric leaf gap, mm (>= 0): the rounded leaf ends transmit as if
        every leaf-pair opening were this much wider (half at each leaf tip)
    """

    name: str = "bioplan 6MV"
    leaf_width_mm: float = 5.0
    n_leaf_pairs: int = 61
    min_gap_mm: float = 0.5
    max_leaf_speed_mm_s: float = 25.0
    dose_rate_mu_min: float = 600.0
    interdigitation: bool = True
    transmission: float = 0.015
    leaf_end_leakage_mm: float = 1.6

    def __post_init__(self):
        checks = {
            "leaf_width_mm": ("a leaf width > 0 mm", lambda v: v > 0),
            "min_gap_mm": ("a gap >= 0 mm", lambda v: v >= 0),
            "max_leaf_speed_mm_s": ("a speed > 0 mm/s", lambda v: v > 0),
            "dose_rate_mu_min": ("a dose rate > 0 MU/min", lambda v: v > 0),
            "transmission": ("a fraction in [0, 1)", lambda v: 0 <= v < 1),
            "leaf_end_leakage_mm": ("a dosimetric leaf gap >= 0 mm", lambda v: v >= 0),
        }
        for f in fields(self):
            if f.name in checks:
                expected, ok = checks[f.name]
                object.__setattr__(self, f.name, _positive(getattr(self, f.name), f"machine.{f.name}",
                                                           expected, ok))
        n = self.n_leaf_pairs
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise DeliveryError(f"machine.n_leaf_pairs: expected a positive integer, got {n!r}")
        object.__setattr__(self, "n_leaf_pairs", int(n))
        if not isinstance(self.interdigitation, (bool, np.bool_)):
            raise DeliveryError(f"machine.interdigitation: expected True or False, got "
                                f"{self.interdigitation!r}")
        if not isinstance(self.name, str) or not self.name or len(self.name) > 16:
            raise DeliveryError(f"machine.name: expected a name of 1-16 characters, got {self.name!r}")

    @property
    def leaf_boundaries_mm(self) -> np.ndarray:
        """The ``n_leaf_pairs + 1`` leaf boundaries along IEC Y (v), mm, ascending, symmetric
        about the central axis."""
        return (np.arange(self.n_leaf_pairs + 1) - self.n_leaf_pairs / 2) * self.leaf_width_mm

    @property
    def leaf_speed_mm_per_mu(self) -> float:
        """The farthest a leaf can travel per MU at the maximum dose rate, mm/MU."""
        return self.max_leaf_speed_mm_s * 60.0 / self.dose_rate_mu_min


@dataclass(frozen=True)
class Calibration:
    """The reference condition that defines a monitor unit.

    Default: 1 MU gives 1 cGy at d_max (the depth of the central-axis maximum) in water at
    SSD 100 cm for a 10 x 10 cm2 field (field size at the surface).

    Attributes
    ----------
    cGy_per_MU : dose at the reference point per MU, cGy (> 0)
    ssd_mm : source-surface distance, mm (> 0)
    field_size_mm : side of the square reference field at the surface, mm (> 0)
    depth_mm : reference depth in water, mm; None means d_max (found on the model's
        central-axis depth dose)
    """

    cGy_per_MU: float = 1.0
    ssd_mm: float = 1000.0
    field_size_mm: float = 100.0
    depth_mm: float | None = None

    def __post_init__(self):
        for name, expected in (("cGy_per_MU", "a dose > 0 cGy per MU"), ("ssd_mm", "a distance > 0 mm"),
                               ("field_size_mm", "a field side > 0 mm")):
            object.__setattr__(self, name, _positive(getattr(self, name), f"calibration.{name}", expected))
        if self.depth_mm is not None:
            object.__setattr__(self, "depth_mm", _positive(self.depth_mm, "calibration.depth_mm",
                                                           "a depth > 0 mm or None (d_max)"))

    def describe(self) -> str:
        depth = "d_max" if self.depth_mm is None else f"{self.depth_mm:g} mm depth"
        return (f"{self.cGy_per_MU:g} cGy per MU at {depth}, SSD {self.ssd_mm / 10:g} cm, "
                f"{self.field_size_mm / 10:g} x {self.field_size_mm / 10:g} cm2")
