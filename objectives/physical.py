"""Physical-dose terms (total course dose, Gy): today's names as shapes on the dose.

Each class is a thin alias of a shape in :mod:`objectives.shapes` with the dose quantity, kept
so user code keeps working; the limit Parameter is available under its historical name
(``term.dose_Gy.value = ...``) and as ``term.limit``.
"""

from __future__ import annotations

from . import shapes
from .shapes import geud_expression

__all__ = ["MaxDose", "MinDose", "MeanDose", "SquaredUnderdose", "SquaredOverdose", "SquaredDeviation",
           "DVHMax", "DVHMin", "GEUDMax", "geud_expression"]


class MaxDose(shapes.Max):
    """Every voxel dose <= ``dose_Gy`` (hard), or a volume-weighted linear penalty on the excess
    (soft). Convex: affine in d."""

    _limit_name = "dose_Gy"

    def __init__(self, structure: str, dose_Gy: float, weight: float | None = None):
        super().__init__(structure, dose_Gy, weight=weight)
        self.dose_Gy = self.limit


class MinDose(shapes.Min):
    """Every voxel dose >= ``dose_Gy`` (hard), or a volume-weighted linear penalty on the
    shortfall (soft). Convex: affine in d."""

    _limit_name = "dose_Gy"

    def __init__(self, structure: str, dose_Gy: float, weight: float | None = None):
        super().__init__(structure, dose_Gy, weight=weight)
        self.dose_Gy = self.limit


class MeanDose(shapes.Mean):
    """Volume-weighted mean dose <= ``dose_Gy``. Soft form: weight x max(mean - dose_Gy, 0);
    with ``dose_Gy=0`` it simply minimises the mean dose. Convex: affine mean."""

    _limit_name = "dose_Gy"

    def __init__(self, structure: str, dose_Gy: float, weight: float | None = None):
        super().__init__(structure, dose_Gy, weight=weight)
        self.dose_Gy = self.limit


class SquaredUnderdose(shapes.SquaredUnder):
    """Soft: weight x sum_i v_i max(dose_Gy - d_i, 0)^2 (v: relative voxel volumes, sum 1)."""

    _limit_name = "dose_Gy"

    def __init__(self, structure: str, dose_Gy: float, weight: float | None = None):
        super().__init__(structure, dose_Gy, weight=weight)
        self.dose_Gy = self.limit


class SquaredOverdose(shapes.SquaredOver):
    """Soft: weight x sum_i v_i max(d_i - dose_Gy, 0)^2."""

    _limit_name = "dose_Gy"

    def __init__(self, structure: str, dose_Gy: float, weight: float | None = None):
        super().__init__(structure, dose_Gy, weight=weight)
        self.dose_Gy = self.limit


class SquaredDeviation(shapes.SquaredDeviation):
    """Soft: weight x sum_i v_i (q_i - dose_Gy)^2, a least-squares prescription of the dose
    (default) or of another affine ``quantity``."""

    _limit_name = "dose_Gy"

    def __init__(self, structure: str, dose_Gy: float, weight: float | None = None, quantity=None):
        super().__init__(structure, dose_Gy, quantity=quantity, weight=weight)
        self.dose_Gy = self.limit


class DVHMax(shapes.CVaRMax):
    """DVH upper limit "at most ``volume_pct`` % of the structure above ``dose_Gy``" through its
    conservative CVaR surrogate (the mean dose of the hottest ``volume_pct`` % <= ``dose_Gy``)."""

    _limit_name = "dose_Gy"

    def __init__(self, structure: str, dose_Gy: float, volume_pct: float, weight: float | None = None):
        super().__init__(structure, dose_Gy, volume_pct, weight=weight)
        self.dose_Gy = self.limit


class DVHMin(shapes.CVaRMin):
    """DVH lower limit "at least ``volume_pct`` % of the structure receives >= ``dose_Gy``" (e.g.
    D95 >= 50 Gy) through its conservative CVaR surrogate (mean of the coldest
    ``100 - volume_pct`` % >= ``dose_Gy``)."""

    _limit_name = "dose_Gy"

    def __init__(self, structure: str, dose_Gy: float, volume_pct: float, weight: float | None = None):
        super().__init__(structure, dose_Gy, volume_pct, weight=weight)
        self.dose_Gy = self.limit


class GEUDMax(shapes.GEUDMax):
    """Generalized EUD upper limit (sum_i v_i q_i^a)^(1/a) <= ``dose_Gy``, a >= 1, of the dose
    (default) or of another convex ``quantity``."""

    _limit_name = "dose_Gy"

    def __init__(self, structure: str, dose_Gy: float, a: float, weight: float | None = None, quantity=None):
        super().__init__(structure, dose_Gy, a, quantity=quantity, weight=weight)
        self.dose_Gy = self.limit
