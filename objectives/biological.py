"""Biologically weighted planning terms (BED, EQD2, GARD) on the total course dose d (Gy).

With n fractions and per-voxel alpha/beta ab_i, voxel BED and EQD2 are convex quadratics of d:

    BED_i  = d_i + c_i d_i^2,              c_i = 1 / (n ab_i) >= 0
    EQD2_i = s_i d_i + q_i d_i^2,          s_i = ab_i / (ab_i + 2), q_i = 1 / (n (ab_i + 2))

Both are increasing for d >= 0, which gives the convex forms offered here:

- upper bounds (voxel, mean, CVaR, gEUD) of BED / EQD2 are convex constraints/penalties;
- lower bounds are *not* convex as written, but each is exactly a linear per-voxel dose floor
  d_i >= d*_i, with d*_i the monotone inverse (:func:`~objectives.radiobiology.dose_for_bed`).

Sweeping without recompiling (DPP). The coefficients c, s, q and the dose floors d* are
non-negative cvxpy Parameter vectors, one set per optimization-voxel set, recomputed by
``refresh(ctx)`` from the user-facing inputs: the :class:`~objectives.radiobiology.LQ` object
(``lq.alpha_beta["PTV"] = 3``, maps), ``ctx.fractions`` and the floor prescriptions
(``term.bed_Gy = 70`` or a 3-D map). Scalar upper limits are Parameters themselves, as in
:mod:`objectives.physical` (``term.bed_Gy.value = 40``).
"""

from __future__ import annotations

import hashlib

import cvxpy as cp
import numpy as np

from . import radiobiology as rb
from .errors import BioplanError, TermError
from .physical import geud_expression
from .terms import Term, TermContext, nonneg_parameter, upper_cvar, volume_fraction

# --------------------------------------------------------------------------------------------
# Shared machinery
# --------------------------------------------------------------------------------------------


def _context_key(ctx: TermContext) -> tuple:
    idx = np.ascontiguousarray(np.asarray(ctx.voxel_index), dtype=np.int64)
    digest = hashlib.blake2b(idx.tobytes(), digest_size=16).hexdigest()
    return (ctx.structure, len(ctx.volumes), tuple(ctx.grid_shape), digest)


def _check_context(term: Term, ctx: TermContext) -> int:
    name = type(term).__name__
    k = int(np.asarray(ctx.volumes).size)
    if k == 0:
        raise TermError(f"{name}('{term.structure}'): the structure has no optimization voxels")
    if np.asarray(ctx.voxel_index).size != k:
        raise TermError(f"{name}('{term.structure}'): ctx.voxel_index has {np.asarray(ctx.voxel_index).size} "
                        f"entries, expected one per voxel ({k})")
    rb._fractions(ctx.fractions, "fractions")
    return k


def _alpha_beta(term: Term, ctx: TermContext) -> np.ndarray:
    # The LQ table is looked up by the resolved structure name, falling back to the term's own
    # spelling when only that one is in the table.
    name = ctx.structure
    if not term.lq.has_structure(name) and term.lq.has_structure(term.structure):
        name = term.structure
    return term.lq.alpha_beta_for(name, ctx.voxel_index, ctx.grid_shape)


class _PerVoxelTerm(Term):
    """A term with non-negative per-voxel Parameter vectors derived from its inputs and the
    context. Subclasses list the vectors in ``_param_names`` and compute their values in
    ``_values(ctx)``; one set of Parameters is kept per distinct voxel set, so the same term
    object can serve several problems."""

    _param_names: tuple[str, ...] = ()

    def __init__(self, structure: str, weight: float | None = None):
        super().__init__(structure, weight)
        self._param_sets: dict[tuple, dict[str, cp.Parameter]] = {}

    def _params(self, ctx: TermContext) -> dict[str, cp.Parameter]:
        k = _check_context(self, ctx)
        key = _context_key(ctx)
        params = self._param_sets.get(key)
        if params is None:
            params = {name: cp.Parameter(k, nonneg=True, name=f"{self.structure}.{name}")
                      for name in self._param_names}
            self._param_sets[key] = params
        return params

    def _values(self, ctx: TermContext) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def refresh(self, ctx: TermContext) -> None:
        """Recompute the per-voxel Parameter values from the current inputs, the LQ object and
        ``ctx.fractions``. Called before every solve; cheap (no recompilation)."""
        params = self._params(ctx)
        try:
            values = self._values(ctx)
        except BioplanError as err:
            raise type(err)(f"{self.describe()}: {err}") from None
        for name, value in values.items():
            value = np.asarray(value, dtype=float)
            if not np.all(np.isfinite(value)) or np.any(value < 0):
                raise TermError(f"{self.describe()}: derived {name} is not finite and >= 0")
            params[name].value = value

    def cost(self, dose: cp.Expression, ctx: TermContext) -> cp.Expression:
        """Unweighted convex scalar penalty of the soft form; ``penalty = weight x cost``.

        Default: sum_i v_i max(g_i, 0) of the violation g (max(g, 0) for a scalar g). Unlike
        ``penalty``, ``cost`` is DPP on its own, so a problem may put it in an epigraph
        (``cost <= t``, objective ``weight x t``) to keep a parametrized soft term DPP."""
        g = self.violation(dose, ctx)
        if g.size == 1:
            return cp.sum(cp.pos(g))
        return ctx.volumes @ cp.pos(g)

    def penalty(self, dose: cp.Expression, ctx: TermContext) -> cp.Expression:
        return self.weight * self.cost(dose, ctx)

    def _prepare(self, dose: cp.Expression, ctx: TermContext) -> dict[str, cp.Parameter]:
        k = _check_context(self, ctx)
        if dose.size != k:
            raise TermError(f"{self.describe()}: dose expression has {dose.size} entries, expected {k}")
        self.refresh(ctx)
        return self._params(ctx)


class _LQTerm(_PerVoxelTerm):
    """Terms on voxel BED or EQD2: per-voxel coefficients of the quadratic from an LQ object."""

    _kind = "bed"  # or "eqd2"

    def __init__(self, structure: str, lq: rb.LQ, weight: float | None = None):
        super().__init__(structure, weight)
        if not isinstance(lq, rb.LQ):
            raise TermError(f"{type(self).__name__}.lq: expected an objectives.radiobiology.LQ, got {lq!r}")
        self.lq = lq

    @property
    def _param_names(self) -> tuple[str, ...]:
        return ("quad",) if self._kind == "bed" else ("lin", "quad")

    def alpha_beta(self, ctx: TermContext) -> np.ndarray:
        """Per-voxel alpha/beta (Gy) this term uses for the voxels of ``ctx``."""
        return _alpha_beta(self, ctx)

    def _values(self, ctx):
        ab = self.alpha_beta(ctx)
        n = float(ctx.fractions)
        if self._kind == "bed":
            return {"quad": 1.0 / (n * ab)}
        return {"lin": ab / (ab + 2.0), "quad": 1.0 / (n * (ab + 2.0))}

    def _quantity(self, dose: cp.Expression, ctx: TermContext) -> cp.Expression:
        """Voxel BED or EQD2 (Gy) as a convex DPP expression of the dose."""
        p = self._prepare(dose, ctx)
        quad = cp.multiply(p["quad"], cp.square(dose))
        if self._kind == "bed":
            return dose + quad
        return cp.multiply(p["lin"], dose) + quad

    @property
    def _unit(self) -> str:
        return "BED" if self._kind == "bed" else "EQD2"


class _LQLimit(_LQTerm):
    _limit_name = "bed_Gy"

    def __init__(self, structure: str, limit_Gy: float, lq: rb.LQ, weight: float | None = None):
        super().__init__(structure, lq, weight)
        setattr(self, self._limit_name,
                nonneg_parameter(limit_Gy, f"{type(self).__name__}.{self._limit_name}"))

    @property
    def _limit(self) -> cp.Parameter:
        return getattr(self, self._limit_name)

    def describe(self) -> str:
        return f"{type(self).__name__}('{self.structure}', {self._limit.value:g} Gy {self._unit})"


# --------------------------------------------------------------------------------------------
# Upper limits on BED / EQD2
# --------------------------------------------------------------------------------------------


class BEDMax(_LQLimit):
    """Every voxel BED <= ``bed_Gy`` (Gy), BED_i = d_i + c_i d_i^2, c_i = 1/(n ab_i).

    Hard: the element-wise constraint; soft: weight x sum_i v_i max(BED_i - bed_Gy, 0).
    Convex: c_i >= 0, so BED_i is a convex quadratic of d (and d is linear in the beamlet
    weights); pos() of a convex function is convex. ``bed_Gy`` is a Parameter
    (``term.bed_Gy.value = ...``); alpha/beta comes from ``lq`` at each ``refresh``.
    """

    def __init__(self, structure: str, bed_Gy: float, lq: rb.LQ, weight: float | None = None):
        super().__init__(structure, bed_Gy, lq, weight)

    def violation(self, dose, ctx):
        return self._quantity(dose, ctx) - self.bed_Gy


class EQD2Max(_LQLimit):
    """Every voxel EQD2 <= ``eqd2_Gy`` (Gy), EQD2_i = BED_i / (1 + 2/ab_i)
    = s_i d_i + q_i d_i^2 with s_i, q_i >= 0.

    Convex for the same reason as :class:`BEDMax` (a positive per-voxel scaling of a convex
    quadratic). Soft form: weight x sum_i v_i max(EQD2_i - eqd2_Gy, 0).
    """

    _kind = "eqd2"
    _limit_name = "eqd2_Gy"

    def __init__(self, structure: str, eqd2_Gy: float, lq: rb.LQ, weight: float | None = None):
        super().__init__(structure, eqd2_Gy, lq, weight)

    def violation(self, dose, ctx):
        return self._quantity(dose, ctx) - self.eqd2_Gy


class MeanBEDMax(_LQLimit):
    """Volume-weighted mean voxel BED, sum_i v_i BED_i <= ``bed_Gy`` (Gy).

    Convex: a non-negative combination of convex quadratics. Soft form:
    weight x max(mean BED - bed_Gy, 0); with ``bed_Gy = 0`` it minimises the mean BED.
    """

    def __init__(self, structure: str, bed_Gy: float, lq: rb.LQ, weight: float | None = None):
        super().__init__(structure, bed_Gy, lq, weight)

    def violation(self, dose, ctx):
        return ctx.volumes @ self._quantity(dose, ctx) - self.bed_Gy


class MeanEQD2Max(_LQLimit):
    """Volume-weighted mean voxel EQD2 <= ``eqd2_Gy`` (Gy). Convex as :class:`MeanBEDMax`."""

    _kind = "eqd2"
    _limit_name = "eqd2_Gy"

    def __init__(self, structure: str, eqd2_Gy: float, lq: rb.LQ, weight: float | None = None):
        super().__init__(structure, eqd2_Gy, lq, weight)

    def violation(self, dose, ctx):
        return ctx.volumes @ self._quantity(dose, ctx) - self.eqd2_Gy


class SquaredBEDOverdose(_LQLimit):
    """Soft only: weight x sum_i v_i max(BED_i - bed_Gy, 0)^2.

    Convex: max(BED_i - L, 0) is convex and non-negative, and t -> t^2 is convex and
    non-decreasing on t >= 0, so the composition is convex (DCP: square of a non-negative
    convex expression).
    """

    soft_only = True

    def __init__(self, structure: str, bed_Gy: float, lq: rb.LQ, weight: float):
        super().__init__(structure, bed_Gy, lq, weight)

    def cost(self, dose, ctx):
        excess = cp.pos(self._quantity(dose, ctx) - self.bed_Gy)
        return ctx.volumes @ cp.square(excess)


class BEDCVaRMax(_LQLimit):
    """BED-volume limit "at most ``volume_pct`` % of the structure above ``bed_Gy``" through its
    conservative convex surrogate: the volume-weighted mean BED of the hottest ``volume_pct`` %
    (CVaR; Rockafellar & Uryasev 2000; Romeijn et al., Oper Res 2006;54:201) <= ``bed_Gy``.

    Convex: CVaR_f(y) = min_t t + (1/f) sum_i v_i (y_i - t)_+ is convex and non-decreasing in
    each y_i, and y_i = BED_i(d) is convex. Conservative: the hot-tail mean is >= the BED at
    that volume, so meeting the bound guarantees the BED-volume limit. Soft form:
    weight x max(CVaR - bed_Gy, 0).
    """

    def __init__(self, structure: str, bed_Gy: float, volume_pct: float, lq: rb.LQ,
                 weight: float | None = None):
        super().__init__(structure, bed_Gy, lq, weight)
        self.volume_pct = float(volume_pct)
        self._fraction = volume_fraction(volume_pct, "BEDCVaRMax.volume_pct")

    def violation(self, dose, ctx):
        cvar, _ = upper_cvar(self._quantity(dose, ctx), ctx.volumes, self._fraction)
        return cvar - self.bed_Gy

    def describe(self) -> str:
        return (f"BEDCVaRMax('{self.structure}', BED{self.volume_pct:g} <= "
                f"{self.bed_Gy.value:g} Gy)")


class GEUDEQD2Max(_LQLimit):
    """gEUD of voxel EQD2 for organs at risk: (sum_i v_i EQD2_i^a)^(1/a) <= ``eqd2_Gy``, a >= 1.

    Convex: for a >= 1 the weighted a-norm is convex and non-decreasing in non-negative
    arguments, and EQD2_i is convex and non-negative for d >= 0 (written as pos(EQD2_i), which
    is the same there, so cvxpy can verify the composition). a = 1 gives the mean EQD2; large
    a approaches the maximum (serial organs). Soft form: weight x max(gEUD - eqd2_Gy, 0).
    """

    _kind = "eqd2"
    _limit_name = "eqd2_Gy"

    def __init__(self, structure: str, eqd2_Gy: float, a: float, lq: rb.LQ, weight: float | None = None):
        super().__init__(structure, eqd2_Gy, lq, weight)
        try:
            self.a = float(a)
        except (TypeError, ValueError):
            raise TermError(f"GEUDEQD2Max.a: expected a number >= 1, got {a!r}") from None
        if not (np.isfinite(self.a) and self.a >= 1):
            raise TermError(f"GEUDEQD2Max.a: expected a finite a >= 1 (gEUD is convex only there), got {a!r}")

    def violation(self, dose, ctx):
        eqd2 = cp.pos(self._quantity(dose, ctx))
        return geud_expression(eqd2, ctx.volumes, self.a) - self.eqd2_Gy

    def describe(self) -> str:
        return f"GEUDEQD2Max('{self.structure}', a={self.a:g}, <= {self.eqd2_Gy.value:g} Gy EQD2)"


# --------------------------------------------------------------------------------------------
# Lower limits: exact per-voxel dose floors
# --------------------------------------------------------------------------------------------


def _scalar_or_map(value, name: str) -> float | np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TermError(f"{name}: expected a number or a 3-D [z, y, x] map, got {value!r}") from None
    if arr.ndim not in (0, 3):
        raise TermError(f"{name}: expected a number or a 3-D [z, y, x] map, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise TermError(f"{name}: expected finite values >= 0")
    return float(arr) if arr.ndim == 0 else arr


def _at_voxels(value, ctx: TermContext, name: str) -> np.ndarray:
    """A scalar or a 3-D grid map, taken at the optimization voxels of ``ctx``."""
    arr = np.asarray(value, dtype=float)
    k = len(ctx.volumes)
    if arr.ndim == 0:
        return np.full(k, float(arr))
    shape = tuple(int(s) for s in ctx.grid_shape)
    if arr.shape != shape:
        raise TermError(
            f"{name}: expected a map of the planning grid shape {shape} [z, y, x], got {arr.shape}")
    return arr.ravel()[rb._voxel_index(ctx.voxel_index, arr.size)]


class _DoseFloor(_PerVoxelTerm):
    """d_i >= d*_i with a per-voxel floor Parameter d* derived in ``_floor``."""

    _param_names = ("floor",)
    _prescription_name = "bed_Gy"
    _unit = "BED"

    def __init__(self, structure: str, prescription, weight: float | None = None, squared: bool = False):
        super().__init__(structure, weight)
        self.squared = bool(squared)
        if self.squared and weight is None:
            raise TermError(f"{type(self).__name__}.squared: only a soft term (with a weight) can be squared")
        self._set_prescription(prescription)

    def _set_prescription(self, value) -> None:
        self._prescription = _scalar_or_map(value, f"{type(self).__name__}.{self._prescription_name}")

    def _floor(self, prescription: np.ndarray, ctx: TermContext) -> np.ndarray:
        raise NotImplementedError

    def _values(self, ctx):
        presc = _at_voxels(self._prescription, ctx, f"{type(self).__name__}.{self._prescription_name}")
        return {"floor": self._floor(presc, ctx)}

    def dose_floor_Gy(self, ctx: TermContext) -> np.ndarray:
        """The per-voxel total-dose floor d* (Gy) for the voxels of ``ctx`` (numpy, current inputs)."""
        _check_context(self, ctx)
        return np.asarray(self._values(ctx)["floor"], dtype=float)

    def violation(self, dose, ctx):
        return self._prepare(dose, ctx)["floor"] - dose

    def cost(self, dose, ctx):
        """Soft form (unweighted): sum_i v_i max(d*_i - d_i, 0) (linear; convex), or with
        ``squared=True`` sum_i v_i max(d*_i - d_i, 0)^2 (convex quadratic)."""
        shortfall = cp.pos(self.violation(dose, ctx))
        if self.squared:
            shortfall = cp.square(shortfall)
        return ctx.volumes @ shortfall

    def describe(self) -> str:
        p = self._prescription
        text = f"{p:g}" if isinstance(p, float) else f"map {p.shape}"
        unit = "" if self._unit == "GARD" else f" Gy {self._unit}"
        return f"{type(self).__name__}('{self.structure}', >= {text}{unit})"


class _LQFloor(_DoseFloor):
    def __init__(self, structure: str, prescription, lq: rb.LQ, weight: float | None = None,
                 squared: bool = False):
        if not isinstance(lq, rb.LQ):
            raise TermError(f"{type(self).__name__}.lq: expected an objectives.radiobiology.LQ, got {lq!r}")
        self.lq = lq
        super().__init__(structure, prescription, weight, squared)

    def alpha_beta(self, ctx: TermContext) -> np.ndarray:
        """Per-voxel alpha/beta (Gy) this term uses for the voxels of ``ctx``."""
        return _alpha_beta(self, ctx)


class BEDFloor(_LQFloor):
    """Every voxel BED >= ``bed_Gy``: a scalar (Gy) or a 3-D [z, y, x] map on the planning grid
    ("dose painting by numbers").

    A lower bound on the convex BED is not convex as written, but BED is strictly increasing
    in d >= 0, so BED_i(d_i) >= B_i holds exactly when d_i >= d*_i =
    :func:`~objectives.radiobiology.dose_for_bed` (B_i, n, ab_i). The term is this linear
    floor; d* is a non-negative Parameter recomputed by ``refresh`` (change ``term.bed_Gy``,
    the LQ object or the fractions and re-solve without recompiling).

    Soft form: weight x sum_i v_i max(d*_i - d_i, 0) (linear in the shortfall of *dose*), or
    its square with ``squared=True``.
    """

    def __init__(self, structure: str, bed_Gy, lq: rb.LQ, weight: float | None = None,
                 squared: bool = False):
        super().__init__(structure, bed_Gy, lq, weight, squared)

    @property
    def bed_Gy(self):
        """BED prescription, Gy: a float or a 3-D map (settable; validated)."""
        return self._prescription

    @bed_Gy.setter
    def bed_Gy(self, value) -> None:
        self._set_prescription(value)

    def _floor(self, prescription, ctx):
        return rb.dose_for_bed(prescription, ctx.fractions, self.alpha_beta(ctx))


class EQD2Floor(_LQFloor):
    """Every voxel EQD2 >= ``eqd2_Gy`` (scalar or 3-D map, Gy): the exact linear dose floor
    d_i >= :func:`~objectives.radiobiology.dose_for_eqd2` (E_i, n, ab_i), by the same
    monotonicity argument as :class:`BEDFloor`. Soft form as :class:`BEDFloor`.
    """

    _prescription_name = "eqd2_Gy"
    _unit = "EQD2"

    def __init__(self, structure: str, eqd2_Gy, lq: rb.LQ, weight: float | None = None,
                 squared: bool = False):
        super().__init__(structure, eqd2_Gy, lq, weight, squared)

    @property
    def eqd2_Gy(self):
        """EQD2 prescription, Gy: a float or a 3-D map (settable; validated)."""
        return self._prescription

    @eqd2_Gy.setter
    def eqd2_Gy(self, value) -> None:
        self._set_prescription(value)

    def _floor(self, prescription, ctx):
        return rb.dose_for_eqd2(prescription, ctx.fractions, self.alpha_beta(ctx))


class GARDFloor(_DoseFloor):
    """Every voxel GARD >= ``gard`` (scalar or 3-D map), GARD_i = alpha_i d_i + beta d_i^2 / n
    (Scott et al., Lancet Oncol 2017;18:202-211), alpha_i from the radiosensitivity index
    ``rsi`` (scalar or 3-D map, in (0, 1)) or given directly as ``alpha`` (Gy^-1, scalar or map).

    GARD_i is convex in d_i with GARD_i(0) = 0, so for a target G_i > 0 the set
    {d_i >= 0 : GARD_i >= G_i} is exactly {d_i >= d*_i}, d*_i =
    :func:`~objectives.radiobiology.dose_for_gard` (the larger root; valid even for alpha < 0).
    The term is that linear floor, a Parameter refreshed from ``term.gard``, ``term.rsi`` /
    ``term.alpha`` and the fractions. Soft form as :class:`BEDFloor`.
    """

    _prescription_name = "gard"
    _unit = "GARD"

    def __init__(self, structure: str, gard, rsi=None, *, alpha=None,
                 beta_Gy2: float = rb.GARD_BETA_GY2, weight: float | None = None, squared: bool = False):
        super().__init__(structure, gard, weight, squared)
        if (rsi is None) == (alpha is None):
            raise TermError("GARDFloor.rsi/alpha: give exactly one of rsi (in (0, 1)) or alpha (Gy^-1)")
        self._rsi = self._alpha = None
        if rsi is not None:
            self.rsi = rsi
        else:
            self.alpha = alpha
        self.beta_Gy2 = float(rb._scalar_positive(beta_Gy2, "GARDFloor.beta_Gy2", "Gy^-2"))

    @property
    def gard(self):
        """GARD prescription (dimensionless): a float or a 3-D map (settable; validated)."""
        return self._prescription

    @gard.setter
    def gard(self, value) -> None:
        self._set_prescription(value)

    @property
    def rsi(self):
        """Radiosensitivity index in (0, 1): a float or a 3-D map; setting it clears ``alpha``."""
        return self._rsi

    @rsi.setter
    def rsi(self, value) -> None:
        arr = np.asarray(rb._rsi(value, "GARDFloor.rsi"))
        if arr.ndim not in (0, 3):
            raise TermError(f"GARDFloor.rsi: expected a number or a 3-D [z, y, x] map, got shape {arr.shape}")
        self._rsi, self._alpha = (float(arr) if arr.ndim == 0 else arr), None

    @property
    def alpha(self):
        """alpha in Gy^-1 (a float or a 3-D map) if given directly; setting it clears ``rsi``."""
        return self._alpha

    @alpha.setter
    def alpha(self, value) -> None:
        arr = np.asarray(rb._finite(value, "GARDFloor.alpha"))
        if arr.ndim not in (0, 3):
            raise TermError(
                f"GARDFloor.alpha: expected a number or a 3-D [z, y, x] map, got shape {arr.shape}")
        self._alpha, self._rsi = (float(arr) if arr.ndim == 0 else arr), None

    def _floor(self, prescription, ctx):
        if self._rsi is not None:
            alpha = rb.alpha_from_rsi(_at_voxels(self._rsi, ctx, "GARDFloor.rsi"), self.beta_Gy2)
        else:
            alpha = _at_voxels(self._alpha, ctx, "GARDFloor.alpha")
        return rb.dose_for_gard(prescription, ctx.fractions, alpha=alpha, beta_Gy2=self.beta_Gy2)

