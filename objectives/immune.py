"""Immune sparing: the effective dose to immune cells (EDIC) and a convex mean-dose term for it.

EDIC model (Jin J-Y et al., "Higher radiation dose to immune cells correlates with worse tumor
control and overall survival in patients with stage III NSCLC", ASTRO 2017 / Int J Radiat Oncol
Biol Phys 2017;99:S151; used by Ladbury C J et al., "Impact of radiation dose to the host immune
system on tumor control and survival for stage III non-small cell lung cancer treated with
definitive radiation therapy", Int J Radiat Oncol Biol Phys 2019;105:346-355), in Gy, total
course doses:

    EDIC = 0.12 MLD + 0.08 MHD + [0.45 + 0.35 x 0.85 x (n / 45)^(1/2)] x ITD / (62 x 10^3 cm^3)

MLD, MHD: mean lung and heart doses (Gy); ITD: integral total (body) dose in Gy cm^3; n: number of
fractions. The coefficients are the fractions of the circulating blood (and lymphocytes) the
model assigns to lung (0.12) and heart (0.08) per pass, to the large vessels and capillaries of the
rest of the body (0.45), and to the lymphocytes that recirculate through the lymphatic organs
(0.35 x 0.85), whose exposure grows with the number of fractions as (n/45)^(1/2); 62 x 10^3 cm^3 is
the model's reference body volume. (Coefficients as quoted by Ladbury et al. 2019; verify against
the papers before relying on them; every one is a field of :class:`EDICModel`.)

EDIC is linear in dose, so sum_s c_s mean_s(d) is a convex (linear) soft term: one
:class:`ImmuneMeanDose` per structure, the body coefficient evaluated at the problem's fractions.
"""

from __future__ import annotations

from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from .errors import TermError
from .terms import Term, positive_number, real_number


def _nonneg(value, name: str) -> float:
    v = real_number(value, name, "a number >= 0")
    if not np.isfinite(v) or v < 0:
        raise TermError(f"{name}: expected a finite number >= 0, got {value!r}")
    return v


@dataclass(frozen=True)
class EDICModel:
    """Coefficients of the EDIC model (module docstring; Jin et al. 2017, Ladbury et al. 2019).

    Attributes
    ----------
    lung, heart : weights of the mean lung and mean heart doses (dimensionless)
    body_vessels : weight of the body's blood in large vessels and capillaries (0.45)
    body_lymphatic : weight of the recirculating lymphocytes (0.35 x 0.85)
    reference_fractions : n at which the lymphatic term has its full weight (45)
    fraction_exponent : exponent of (n / reference_fractions) (1/2)
    reference_body_volume_cc : volume that turns ITD into a dose, cm^3 (62 x 10^3)
    """

    lung: float = 0.12
    heart: float = 0.08
    body_vessels: float = 0.45
    body_lymphatic: float = 0.35 * 0.85
    reference_fractions: float = 45.0
    fraction_exponent: float = 0.5
    reference_body_volume_cc: float = 62.0e3

    def __post_init__(self):
        for name in ("lung", "heart", "body_vessels", "body_lymphatic", "fraction_exponent"):
            _nonneg(getattr(self, name), f"EDICModel.{name}")
        positive_number(self.reference_fractions, "EDICModel.reference_fractions")
        positive_number(self.reference_body_volume_cc, "EDICModel.reference_body_volume_cc")

    def body_factor(self, fractions) -> float:
        """0.45 + 0.35 x 0.85 x (n / 45)^(1/2): the weight of ITD / 62e3 cm^3 at n fractions."""
        n = positive_number(fractions, "fractions")
        growth = (n / self.reference_fractions) ** self.fraction_exponent
        return self.body_vessels + self.body_lymphatic * growth

    def edic_Gy(self, mean_lung_Gy: float, mean_heart_Gy: float, integral_body_Gy_cc: float,
                fractions: int) -> float:
        """EDIC in Gy from the mean lung and heart doses (Gy), the integral body dose (Gy cm^3) and
        the number of fractions."""
        mld = _nonneg(mean_lung_Gy, "mean_lung_Gy")
        mhd = _nonneg(mean_heart_Gy, "mean_heart_Gy")
        itd = _nonneg(integral_body_Gy_cc, "integral_body_Gy_cc")
        return (self.lung * mld + self.heart * mhd
                + self.body_factor(fractions) * itd / self.reference_body_volume_cc)

    def coefficient(self, component: str, fractions, volume_cc: float | None = None) -> float:
        """Weight c of a structure's mean dose in EDIC: "lung" 0.12, "heart" 0.08, "body"
        body_factor(n) x volume_cc / 62e3 (ITD = mean body dose x body volume)."""
        if component == "lung":
            return self.lung
        if component == "heart":
            return self.heart
        if component == "body":
            if volume_cc is None:
                raise TermError("ImmuneMeanDose.volume_cc: the body component needs the body volume in cm^3")
            return self.body_factor(fractions) * positive_number(volume_cc, "volume_cc") \
                / self.reference_body_volume_cc
        raise TermError(f"ImmuneMeanDose.component: expected 'lung', 'heart', 'body' or a number >= 0, "
                        f"got {component!r}")


class ImmuneMeanDose(Term):
    """Soft, linear: weight x c x (mean dose of the structure), Gy; with one such term per EDIC
    structure (lung, heart, body; same weight) the terms add up to weight x EDIC.

    Parameters
    ----------
    structure : structure name
    component : "lung", "heart", "body" (coefficients of ``model``, the body one at the problem's
        number of fractions) or a fixed coefficient >= 0 (e.g. a share of the lung coefficient
        for one of two lung structures)
    weight : >= 0 (soft only)
    model : :class:`EDICModel` (default the published coefficients)
    volume_cc : the structure's volume in cm^3 (needed for "body": ITD / 62e3 cm^3 = mean body
        dose x volume_cc / 62e3)

    Convex (linear in dose) and smooth: the gradient is c v (v: relative voxel volumes).
    """

    soft_only = True
    smooth = True

    def __init__(self, structure: str, component="body", weight: float = 1.0, model: EDICModel | None = None,
                 volume_cc: float | None = None):
        super().__init__(structure, weight)
        self.model = EDICModel() if model is None else model
        if not isinstance(self.model, EDICModel):
            raise TermError(f"ImmuneMeanDose.model: expected an EDICModel, got {model!r}")
        if isinstance(component, str):
            self.component = component
            self.model.coefficient(component, 1, volume_cc)  # checks the name and volume now
        else:
            self.component = _nonneg(component, "ImmuneMeanDose.component")
        self.volume_cc = None if volume_cc is None else positive_number(volume_cc, "volume_cc")
        self._coef = cp.Parameter(nonneg=True, name="ImmuneMeanDose.coefficient")
        self._scale = cp.Parameter(nonneg=True, name="ImmuneMeanDose.weight_x_coefficient")

    def coefficient(self, fractions) -> float:
        """c at ``fractions`` (dimensionless)."""
        if isinstance(self.component, str):
            return self.model.coefficient(self.component, fractions, self.volume_cc)
        return float(self.component)

    def refresh(self, ctx):
        super().refresh(ctx)
        c = self.coefficient(ctx.fractions)
        self._coef.value = c
        self._scale.value = float(self.weight.value) * c

    def _cost(self, q, ctx):
        self.refresh(ctx)
        return self._coef * (ctx.volumes @ q)

    def _objective(self, q, ctx):
        self.refresh(ctx)
        return self._scale * (ctx.volumes @ q)

    def _cost_value(self, q, ctx):
        from .quantities import array_module

        xp = array_module(q)
        return self.coefficient(ctx.fractions) * float(xp.asarray(ctx.volumes, dtype=float) @ q)

    def _gradient(self, q, ctx):
        from .quantities import array_module

        xp = array_module(q)
        return self.coefficient(ctx.fractions) * xp.asarray(ctx.volumes, dtype=float)

    def describe(self):
        comp = self.component if isinstance(self.component, str) else f"c={self.component:g}"
        return f"ImmuneMeanDose({self._where}, {comp})"
