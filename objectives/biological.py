"""Biologically weighted planning terms (BED, EQD2, GARD) on the total course dose d (Gy).

With n fractions and per-voxel alpha/beta ab_i, voxel BED and EQD2 are convex quadratics of d:

    BED_i  = d_i + c_i d_i^2,              c_i = 1 / (n ab_i) >= 0
    EQD2_i = s_i d_i + q_i d_i^2,          s_i = ab_i / (ab_i + 2), q_i = 1 / (n (ab_i + 2))

Both are increasing for d >= 0, which gives the convex forms offered here:

- upper bounds (voxel, mean, CVaR, gEUD) of BED / EQD2 are convex constraints/penalties;
- lower bounds are *not* convex as written, but each is exactly a linear per-voxel dose floor
  d_i >= d*_i, with d*_i the monotone inverse (:func:`~objectives.radiobiology.dose_for_bed`).

Each class is a thin alias of a shape (:mod:`objectives.shapes`) on a quantity
(:class:`~objectives.quantities.BED`, :class:`~objectives.quantities.EQD2`,
:class:`~objectives.quantities.GARD`), kept so user code keeps working. Coefficients and floors
are Parameters recomputed by ``refresh(ctx)`` from the LQ object (``lq.alpha_beta["PTV"] = 3``,
maps), ``ctx.fractions`` and the prescriptions, so sweeps re-solve without recompiling (DPP).
"""

from __future__ import annotations

import numpy as np

from . import radiobiology as rb
from . import shapes
from .errors import TermError
from .quantities import BED, EQD2, GARD
from .terms import TermContext

__all__ = ["BEDMax", "EQD2Max", "MeanBEDMax", "MeanEQD2Max", "SquaredBEDOverdose", "BEDCVaRMax",
           "GEUDEQD2Max", "BEDFloor", "EQD2Floor", "GARDFloor"]


def _checked_lq(term, lq) -> rb.LQ:
    if not isinstance(lq, rb.LQ):
        raise TermError(f"{type(term).__name__}.lq: expected an objectives.radiobiology.LQ, got {lq!r}")
    return lq


def _bed(term, lq) -> BED:
    return BED(_checked_lq(term, lq))


def _eqd2(term, lq) -> EQD2:
    return EQD2(_checked_lq(term, lq))


class _LQAlias:
    """alpha/beta lookup shared by the LQ aliases (the quantity holds the LQ object)."""

    @property
    def lq(self) -> rb.LQ:
        return self.quantity.lq

    def alpha_beta(self, ctx: TermContext) -> np.ndarray:
        """Per-voxel alpha/beta (Gy) this term uses for the voxels of ``ctx``."""
        return self.quantity.alpha_beta(ctx)


class BEDMax(_LQAlias, shapes.Max):
    """Every voxel BED <= ``bed_Gy`` (Gy), BED_i = d_i + c_i d_i^2, c_i = 1/(n ab_i). Hard: the
    element-wise constraint; soft: weight x sum_i v_i max(BED_i - bed_Gy, 0)."""

    _limit_name = "bed_Gy"

    def __init__(self, structure: str, bed_Gy: float, lq: rb.LQ, weight: float | None = None):
        super().__init__(structure, bed_Gy, _bed(self, lq), weight)
        self.bed_Gy = self.limit


class EQD2Max(_LQAlias, shapes.Max):
    """Every voxel EQD2 <= ``eqd2_Gy`` (Gy), EQD2_i = BED_i / (1 + 2/ab_i)."""

    _limit_name = "eqd2_Gy"

    def __init__(self, structure: str, eqd2_Gy: float, lq: rb.LQ, weight: float | None = None):
        super().__init__(structure, eqd2_Gy, _eqd2(self, lq), weight)
        self.eqd2_Gy = self.limit


class MeanBEDMax(_LQAlias, shapes.Mean):
    """Volume-weighted mean voxel BED <= ``bed_Gy`` (Gy); soft with ``bed_Gy = 0`` minimises it."""

    _limit_name = "bed_Gy"

    def __init__(self, structure: str, bed_Gy: float, lq: rb.LQ, weight: float | None = None):
        super().__init__(structure, bed_Gy, _bed(self, lq), weight)
        self.bed_Gy = self.limit


class MeanEQD2Max(_LQAlias, shapes.Mean):
    """Volume-weighted mean voxel EQD2 <= ``eqd2_Gy`` (Gy)."""

    _limit_name = "eqd2_Gy"

    def __init__(self, structure: str, eqd2_Gy: float, lq: rb.LQ, weight: float | None = None):
        super().__init__(structure, eqd2_Gy, _eqd2(self, lq), weight)
        self.eqd2_Gy = self.limit


class SquaredBEDOverdose(_LQAlias, shapes.SquaredOver):
    """Soft only: weight x sum_i v_i max(BED_i - bed_Gy, 0)^2 (square of a non-negative convex
    expression, hence convex)."""

    _limit_name = "bed_Gy"

    def __init__(self, structure: str, bed_Gy: float, lq: rb.LQ, weight: float):
        super().__init__(structure, bed_Gy, _bed(self, lq), weight)
        self.bed_Gy = self.limit


class BEDCVaRMax(_LQAlias, shapes.CVaRMax):
    """BED-volume limit "at most ``volume_pct`` % above ``bed_Gy``" through its conservative
    CVaR surrogate: the mean BED of the hottest ``volume_pct`` % <= ``bed_Gy``."""

    _limit_name = "bed_Gy"

    def __init__(self, structure: str, bed_Gy: float, volume_pct: float, lq: rb.LQ,
                 weight: float | None = None):
        super().__init__(structure, bed_Gy, volume_pct, _bed(self, lq), weight)
        self.bed_Gy = self.limit


class GEUDEQD2Max(_LQAlias, shapes.GEUDMax):
    """gEUD of voxel EQD2 for organs at risk: (sum_i v_i EQD2_i^a)^(1/a) <= ``eqd2_Gy``, a >= 1."""

    _limit_name = "eqd2_Gy"

    def __init__(self, structure: str, eqd2_Gy: float, a: float, lq: rb.LQ, weight: float | None = None):
        super().__init__(structure, eqd2_Gy, a, _eqd2(self, lq), weight)
        self.eqd2_Gy = self.limit

    def describe(self) -> str:
        return f"GEUDEQD2Max({self._where}, a={self.a:g}, <= {self.limit.value:g} Gy EQD2)"


class BEDFloor(_LQAlias, shapes.Floor):
    """Every voxel BED >= ``bed_Gy`` (a scalar in Gy or a 3-D [z, y, x] map): exactly the linear
    dose floor d_i >= :func:`~objectives.radiobiology.dose_for_bed` (B_i, n, ab_i). Soft form:
    weight x sum_i v_i max(d*_i - d_i, 0), or its square with ``squared=True``."""

    _limit_name = "bed_Gy"

    def __init__(self, structure: str, bed_Gy, lq: rb.LQ, weight: float | None = None,
                 squared: bool = False):
        super().__init__(structure, bed_Gy, _bed(self, lq), weight, squared)

    @property
    def bed_Gy(self):
        """BED prescription, Gy: a float or a 3-D map (settable; validated)."""
        return self._limit

    @bed_Gy.setter
    def bed_Gy(self, value) -> None:
        self._set_limit(value)


class EQD2Floor(_LQAlias, shapes.Floor):
    """Every voxel EQD2 >= ``eqd2_Gy`` (scalar or 3-D map, Gy): the exact linear dose floor
    d_i >= :func:`~objectives.radiobiology.dose_for_eqd2` (E_i, n, ab_i)."""

    _limit_name = "eqd2_Gy"

    def __init__(self, structure: str, eqd2_Gy, lq: rb.LQ, weight: float | None = None,
                 squared: bool = False):
        super().__init__(structure, eqd2_Gy, _eqd2(self, lq), weight, squared)

    @property
    def eqd2_Gy(self):
        """EQD2 prescription, Gy: a float or a 3-D map (settable; validated)."""
        return self._limit

    @eqd2_Gy.setter
    def eqd2_Gy(self, value) -> None:
        self._set_limit(value)


class GARDFloor(shapes.Floor):
    """Every voxel GARD >= ``gard`` (scalar or 3-D map), GARD_i = alpha_i d_i + beta d_i^2 / n
    (Scott et al., Lancet Oncol 2017;18:202-211), alpha_i from ``rsi`` (in (0, 1)) or given as
    ``alpha`` (Gy^-1): exactly the dose floor d_i >= :func:`~objectives.radiobiology.dose_for_gard`
    (the larger root; valid even for alpha < 0). A voxel whose ``gard`` is 0 has no floor (a
    dose-painting map is 0 outside its boost); with alpha < 0, GARD is negative below
    -n alpha / beta, so such a voxel's GARD may come out below 0."""

    _limit_name = "gard"

    def __init__(self, structure: str, gard, rsi=None, *, alpha=None,
                 beta_Gy2: float = rb.GARD_BETA_GY2, weight: float | None = None, squared: bool = False):
        if (rsi is None) == (alpha is None):
            raise TermError("GARDFloor.rsi/alpha: give exactly one of rsi (in (0, 1)) or alpha (Gy^-1)")
        quantity = GARD(rsi, alpha=alpha, beta_Gy2=beta_Gy2)
        super().__init__(structure, gard, quantity, weight, squared)

    @property
    def gard(self):
        """GARD prescription (dimensionless): a float or a 3-D map (settable; validated)."""
        return self._limit

    @gard.setter
    def gard(self, value) -> None:
        self._set_limit(value)

    rsi = property(lambda self: self.quantity.rsi, lambda self, v: setattr(self.quantity, "rsi", v),
                   doc="Radiosensitivity index in (0, 1) (float or 3-D map); setting it clears alpha.")
    alpha = property(lambda self: self.quantity.alpha, lambda self, v: setattr(self.quantity, "alpha", v),
                     doc="alpha in Gy^-1 (float or 3-D map) if given directly; setting it clears rsi.")

    @property
    def beta_Gy2(self) -> float:
        return self.quantity.beta_Gy2
