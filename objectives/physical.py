"""Physical-dose terms (total course dose, Gy).

Every term is convex in the voxel doses d, and d = n A x is linear in the beamlet weights, so
each is convex in x. Limits are cvxpy Parameters (``term.dose_Gy.value = ...``) so a sweep
re-solves without recompiling.
"""

from __future__ import annotations

import cvxpy as cp

from .errors import TermError
from .terms import (
    Term,
    TermContext,
    lower_cvar,
    nonneg_parameter,
    upper_cvar,
    volume_fraction,
)


class _DoseLimitTerm(Term):
    def __init__(self, structure: str, dose_Gy: float, weight: float | None = None):
        super().__init__(structure, weight)
        self.dose_Gy = nonneg_parameter(dose_Gy, f"{type(self).__name__}.dose_Gy")

    def describe(self) -> str:
        return f"{type(self).__name__}('{self.structure}', {self.dose_Gy.value:g} Gy)"


class MaxDose(_DoseLimitTerm):
    """Every voxel dose <= ``dose_Gy`` (hard), or a volume-weighted linear penalty on the excess
    (soft). Convex: affine in d."""

    def violation(self, dose, ctx):
        return dose - self.dose_Gy


class MinDose(_DoseLimitTerm):
    """Every voxel dose >= ``dose_Gy`` (hard), or a volume-weighted linear penalty on the
    shortfall (soft). Convex: affine in d."""

    def violation(self, dose, ctx):
        return self.dose_Gy - dose


class MeanDose(_DoseLimitTerm):
    """Volume-weighted mean dose <= ``dose_Gy``. Soft form: weight x max(mean - dose_Gy, 0);
    with ``dose_Gy=0`` it simply minimises the mean dose. Convex: affine mean."""

    def violation(self, dose, ctx):
        return ctx.volumes @ dose - self.dose_Gy


class SquaredUnderdose(_DoseLimitTerm):
    """Soft: weight x sum_i v_i max(dose_Gy - d_i, 0)^2 (v: relative voxel volumes, sum 1).
    Convex: square of a convex non-negative function."""

    soft_only = True

    def cost(self, dose, ctx):
        return ctx.volumes @ cp.square(cp.pos(self.dose_Gy - dose))


class SquaredOverdose(_DoseLimitTerm):
    """Soft: weight x sum_i v_i max(d_i - dose_Gy, 0)^2. Convex as SquaredUnderdose."""

    soft_only = True

    def cost(self, dose, ctx):
        return ctx.volumes @ cp.square(cp.pos(dose - self.dose_Gy))


class SquaredDeviation(_DoseLimitTerm):
    """Soft: weight x sum_i v_i (d_i - dose_Gy)^2, a least-squares prescription."""

    soft_only = True

    def cost(self, dose, ctx):
        return ctx.volumes @ cp.square(dose - self.dose_Gy)


class DVHMax(Term):
    """DVH upper limit "at most ``volume_pct`` % of the structure above ``dose_Gy``".

    The limit itself is not convex. This term bounds the conditional value-at-risk instead
    (Rockafellar & Uryasev 2000; Romeijn et al., Oper Res 2006;54:201): the volume-weighted mean
    dose of the hottest ``volume_pct`` % is <= ``dose_Gy``. Because that mean is >= the dose at
    that volume (D_volume_pct), meeting it guarantees the DVH limit: the surrogate is
    **conservative**. Soft form: weight x max(CVaR - dose_Gy, 0).
    """

    def __init__(self, structure: str, dose_Gy: float, volume_pct: float,
                 weight: float | None = None):
        super().__init__(structure, weight)
        self.dose_Gy = nonneg_parameter(dose_Gy, "DVHMax.dose_Gy")
        self.volume_pct = float(volume_pct)
        self._fraction = volume_fraction(volume_pct, "DVHMax.volume_pct")

    def violation(self, dose, ctx):
        cvar, _ = upper_cvar(dose, ctx.volumes, self._fraction)
        return cvar - self.dose_Gy

    def describe(self):
        return f"DVHMax('{self.structure}', D{self.volume_pct:g} <= {self.dose_Gy.value:g} Gy)"


class DVHMin(Term):
    """DVH lower limit "at least ``volume_pct`` % of the structure receives >= ``dose_Gy``"
    (e.g. D95 >= 50 Gy).

    Conservative CVaR surrogate: the volume-weighted mean dose of the coldest
    ``100 - volume_pct`` % is >= ``dose_Gy``; that mean is <= D_volume_pct, so meeting it
    guarantees the DVH goal. The cold-tail mean is concave in d, so the bound is convex.
    """

    def __init__(self, structure: str, dose_Gy: float, volume_pct: float,
                 weight: float | None = None):
        super().__init__(structure, weight)
        self.dose_Gy = nonneg_parameter(dose_Gy, "DVHMin.dose_Gy")
        self.volume_pct = float(volume_pct)
        self._fraction = 1.0 - volume_fraction(volume_pct, "DVHMin.volume_pct")

    def violation(self, dose, ctx):
        cvar, _ = lower_cvar(dose, ctx.volumes, self._fraction)
        return self.dose_Gy - cvar

    def describe(self):
        return f"DVHMin('{self.structure}', D{self.volume_pct:g} >= {self.dose_Gy.value:g} Gy)"


class GEUDMax(Term):
    """Generalized EUD upper limit: gEUD_a(d) = (sum_i v_i d_i^a)^(1/a) <= ``dose_Gy``.

    Only the convex side is offered: for a >= 1 gEUD is a weighted a-norm (a=1: mean dose,
    a -> inf: max dose), written as ``pnorm(v^(1/a) * d, a)``. Use a >= 1 for OARs (serial
    organs: large a). Soft form: weight x max(gEUD - dose_Gy, 0).
    """

    def __init__(self, structure: str, dose_Gy: float, a: float, weight: float | None = None):
        super().__init__(structure, weight)
        self.dose_Gy = nonneg_parameter(dose_Gy, "GEUDMax.dose_Gy")
        try:
            self.a = float(a)
        except (TypeError, ValueError):
            raise TermError(f"GEUDMax.a: expected a number >= 1, got {a!r}") from None
        if not self.a >= 1:
            raise TermError(
                f"GEUDMax.a: expected a >= 1 (gEUD is convex only there), got {a!r}")

    def violation(self, dose, ctx: TermContext):
        return geud_expression(dose, ctx.volumes, self.a) - self.dose_Gy

    def describe(self):
        return f"GEUDMax('{self.structure}', a={self.a:g}, <= {self.dose_Gy.value:g} Gy)"


def geud_expression(dose: cp.Expression, volumes, a: float) -> cp.Expression:
    """cvxpy gEUD of non-negative doses with relative volumes ``volumes`` (sum 1), a >= 1."""
    if a == 1:
        return volumes @ dose
    return cp.pnorm(cp.multiply(volumes ** (1.0 / a), dose), a)
