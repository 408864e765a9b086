"""Per-voxel quantities that planning terms limit or penalise: *what* is measured.

A quantity maps the linear forms of a structure's voxels (total course values: dose ``d = n A x``
in Gy, LET x dose ``l = n L x``, the weights ``x`` themselves) to one value per voxel. Terms
(:mod:`objectives.shapes`) decide *how* it is penalised. Each quantity offers two faces of one
function:

- ``expression(forms, ctx)``: a cvxpy expression, DPP (derived coefficients are Parameters set by
  ``refresh``), with declared curvature (``affine`` or convex) and monotonicity in dose;
- ``value(forms, ctx)`` and ``gradient(forms, ctx)`` on arrays (NumPy, or CuPy with the same
  code): the per-voxel value and its per-voxel partial derivative with respect to each form;
  ``inverse(q, ctx)`` gives the dose that reaches ``q`` where the quantity is a monotone
  function of dose alone (BED, EQD2, GARD floors).

``forms`` is a mapping from a form name to a vector over the voxels of ``ctx``. The base forms a
problem can provide are "dose", "let_dose" and "weights"; ``linear_forms`` may derive others
from their per-fraction rows (the dirty dose).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import cvxpy as cp
import numpy as np

from . import radiobiology as rb
from .errors import BioplanError, TermError
from .terms import TermContext, fixed_setting, nonneg_parameter, positive_number


def array_module(*arrays):
    """NumPy, or CuPy when any argument is a CuPy array (array-API style dispatch)."""
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            import cupy

            return cupy
    return np


def context_key(ctx: TermContext) -> tuple:
    """Identifies a voxel set, so derived Parameters are kept per problem voxel set."""
    idx = np.ascontiguousarray(np.asarray(ctx.voxel_index), dtype=np.int64)
    digest = hashlib.blake2b(idx.tobytes(), digest_size=16).hexdigest()
    return (ctx.structure, len(ctx.volumes), tuple(ctx.grid_shape), digest)


def check_context(owner: str, ctx: TermContext) -> int:
    """Number of voxels of ``ctx``, after checking it is usable."""
    k = int(np.asarray(ctx.volumes).size)
    if k == 0:
        raise TermError(f"{owner}: the structure has no optimization voxels")
    if np.asarray(ctx.voxel_index).size != k:
        raise TermError(f"{owner}: ctx.voxel_index has {np.asarray(ctx.voxel_index).size} entries, "
                        f"expected one per voxel ({k})")
    rb._fractions(ctx.fractions, "fractions")
    return k


class ParameterSets:
    """Non-negative (or free) per-voxel cvxpy Parameters, one set per voxel set."""

    def __init__(self, owner: str, names: tuple[str, ...], nonneg: tuple[bool, ...] | None = None):
        self.owner, self.names = owner, names
        self.nonneg = nonneg or (True,) * len(names)
        self._sets: dict[tuple, dict[str, cp.Parameter]] = {}

    def get(self, ctx: TermContext) -> dict[str, cp.Parameter]:
        k = check_context(self.owner, ctx)
        key = context_key(ctx)
        if key not in self._sets:
            self._sets[key] = {n: cp.Parameter(k, nonneg=nn, name=f"{self.owner}.{n}")
                               for n, nn in zip(self.names, self.nonneg)}
        return self._sets[key]

    def set(self, ctx: TermContext, values: Mapping[str, np.ndarray]) -> dict[str, cp.Parameter]:
        params = self.get(ctx)
        for name, value in values.items():
            value = np.asarray(value, dtype=float)
            if not np.all(np.isfinite(value)) or (params[name].is_nonneg() and np.any(value < 0)):
                raise TermError(f"{self.owner}: derived {name} is not finite" +
                                (" and >= 0" if params[name].is_nonneg() else ""))
            params[name].value = value
        return params


def _form(forms: Mapping, name: str, owner: str):
    if name not in forms:
        raise TermError(f"{owner}: needs the '{name}' form of its voxels; got {sorted(forms)}")
    return forms[name]


def at_voxels(value, ctx: TermContext, name: str) -> np.ndarray:
    """A scalar or a 3-D grid map, taken at the voxels of ``ctx``."""
    arr = np.asarray(value, dtype=float)
    k = len(ctx.volumes)
    if arr.ndim == 0:
        return np.full(k, float(arr))
    shape = tuple(int(s) for s in ctx.grid_shape)
    if arr.shape != shape:
        raise TermError(f"{name}: expected a map of the planning grid shape {shape} [z, y, x], "
                        f"got {arr.shape}")
    return arr.ravel()[rb._voxel_index(ctx.voxel_index, arr.size)]


class Quantity:
    """Base class: the physical dose itself (Gy, total course), affine and increasing."""

    #: base linear forms the quantity needs ("dose", "let_dose", "weights")
    base_forms: tuple[str, ...] = ("dose",)
    #: unit of the quantity's values, used in term descriptions
    unit = "Gy"
    #: short symbol used in descriptions such as "D95", "BED10"
    symbol = "D"
    #: True when the quantity is affine in its forms (then every shape is convex on it)
    affine = True
    #: True when it is a non-decreasing function of dose alone (monotone inverse may exist)
    increasing = True
    #: True when :meth:`inverse` gives the dose that reaches a value (per voxel)
    invertible = True
    #: the linear form the quantity *is* (its values are that form's values), or None when it is
    #: a function of its forms; shapes then project and prox in that form directly
    form: str | None = "dose"

    def refresh(self, ctx: TermContext) -> None:
        """Recompute derived Parameter values for the voxels of ``ctx`` (before every solve)."""

    def linear_forms(self, rows: Mapping, ctx: TermContext) -> dict:
        """Per-fraction rows of the forms :meth:`expression` reads, from the base-form rows."""
        return {k: rows[k] for k in self.base_forms}

    def expression(self, forms: Mapping, ctx: TermContext) -> cp.Expression:
        return _form(forms, "dose", self.describe())

    def value(self, forms: Mapping, ctx: TermContext):
        return _form(forms, "dose", self.describe())

    def gradient(self, forms: Mapping, ctx: TermContext) -> dict:
        d = _form(forms, "dose", self.describe())
        return {"dose": array_module(d).ones_like(d)}

    def inverse(self, q, ctx: TermContext):
        return q

    def describe(self) -> str:
        return f"{type(self).__name__}()"

    def __repr__(self) -> str:
        return self.describe()


class Dose(Quantity):
    """Physical dose, total course, Gy."""


class _QuadraticInDose(Quantity):
    """A per-voxel quadratic of the total dose, ``lin_i d_i + quad_i d_i^2`` (lin = 1 when a
    subclass has no "lin" coefficient), convex (quad >= 0). Subclasses give the coefficients."""

    affine = False
    form = None
    _names: tuple[str, ...] = ("quad",)
    _nonneg: tuple[bool, ...] | None = None

    def __init__(self):
        self._params = ParameterSets(type(self).__name__, self._names, self._nonneg)

    def coefficients(self, ctx: TermContext) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def refresh(self, ctx):
        try:
            values = self.coefficients(ctx)
        except BioplanError as err:
            raise type(err)(f"{self.describe()}: {err}") from None
        self._params.set(ctx, values)

    def expression(self, forms, ctx):
        d = _form(forms, "dose", self.describe())
        k = check_context(type(self).__name__, ctx)
        if d.size != k:
            raise TermError(f"{self.describe()}: dose expression has {d.size} entries, expected {k}")
        self.refresh(ctx)
        p = self._params.get(ctx)
        linear = cp.multiply(p["lin"], d) if "lin" in p else d
        return linear + cp.multiply(p["quad"], cp.square(d))

    def _numeric(self, forms, ctx):
        d = _form(forms, "dose", self.describe())
        xp = array_module(d)
        c = {k: xp.asarray(v) for k, v in self.coefficients(ctx).items()}
        return d, c.get("lin", 1.0), c["quad"]

    def value(self, forms, ctx):
        d, lin, quad = self._numeric(forms, ctx)
        return lin * d + quad * d * d

    def gradient(self, forms, ctx):
        d, lin, quad = self._numeric(forms, ctx)
        return {"dose": lin + 2.0 * quad * d}


class _LQQuantity(_QuadraticInDose):
    """Voxel BED or EQD2 of the total dose d: ``lin_i d_i + quad_i d_i^2``, convex and increasing
    for d >= 0 (lin, quad >= 0 from the LQ object's alpha/beta and the fractions)."""

    def __init__(self, lq: rb.LQ):
        if not isinstance(lq, rb.LQ):
            raise TermError(f"{type(self).__name__}.lq: expected an objectives.radiobiology.LQ, got {lq!r}")
        super().__init__()
        self.lq = lq

    def alpha_beta(self, ctx: TermContext) -> np.ndarray:
        """Per-voxel alpha/beta (Gy) of the voxels of ``ctx``: the LQ entry of its structure (the
        LQ table matches names as the patient does, ignoring case and whitespace), else the LQ
        default. From the context only, so a quantity shared by terms on several structures gives
        each its own (it used to give every structure without an entry the first term's)."""
        return self.lq.alpha_beta_for(ctx.structure, ctx.voxel_index, ctx.grid_shape)


class BED(_LQQuantity):
    """Voxel BED (Gy) of the total dose: d_i + d_i^2 / (n ab_i)."""

    unit = "Gy BED"
    symbol = "BED"

    def coefficients(self, ctx):
        return {"quad": 1.0 / (float(ctx.fractions) * self.alpha_beta(ctx))}

    def inverse(self, q, ctx):
        return rb.dose_for_bed(q, ctx.fractions, self.alpha_beta(ctx))

    def describe(self):
        return "BED(lq)"


class EQD2(_LQQuantity):
    """Voxel EQD2 (Gy) of the total dose: BED_i / (1 + 2/ab_i)."""

    unit = "Gy EQD2"
    symbol = "EQD2"
    _names = ("lin", "quad")

    def coefficients(self, ctx):
        ab = self.alpha_beta(ctx)
        return {"lin": ab / (ab + 2.0), "quad": 1.0 / (float(ctx.fractions) * (ab + 2.0))}

    def inverse(self, q, ctx):
        return rb.dose_for_eqd2(q, ctx.fractions, self.alpha_beta(ctx))

    def describe(self):
        return "EQD2(lq)"


class GARD(_QuadraticInDose):
    """Genomic-adjusted radiation dose of the total dose (Scott et al., Lancet Oncol
    2017;18:202-211): GARD_i = alpha_i d_i + beta d_i^2 / n, alpha_i from the radiosensitivity
    index ``rsi`` (scalar or 3-D map in (0, 1)) or given as ``alpha`` (Gy^-1, scalar or map).

    Convex (beta > 0); increasing for d >= 0 when alpha >= 0. GARD(0) = 0 and convexity make
    {d >= 0 : GARD >= G} = {d >= d*} for G > 0, so the inverse (the larger root,
    :func:`~objectives.radiobiology.dose_for_gard`) gives exact floors even for alpha < 0.
    """

    unit = ""
    symbol = "GARD"
    increasing = False  # only where alpha >= 0; floors still use the exact inverse
    _names = ("lin", "quad")  # lin: alpha_i (either sign), quad: beta / n
    _nonneg = (False, True)

    def __init__(self, rsi=None, *, alpha=None, beta_Gy2: float = rb.GARD_BETA_GY2):
        if (rsi is None) == (alpha is None):
            raise TermError("GARD.rsi/alpha: give exactly one of rsi (in (0, 1)) or alpha (Gy^-1)")
        super().__init__()
        self._rsi = self._alpha = None
        if rsi is not None:
            self.rsi = rsi
        else:
            self.alpha = alpha
        self.beta_Gy2 = float(rb._scalar_positive(beta_Gy2, "GARD.beta_Gy2", "Gy^-2"))

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
            raise TermError(f"GARDFloor.alpha: expected a number or a 3-D [z, y, x] map, "
                            f"got shape {arr.shape}")
        self._alpha, self._rsi = (float(arr) if arr.ndim == 0 else arr), None

    def alpha_at(self, ctx: TermContext) -> np.ndarray:
        if self._rsi is not None:
            return rb.alpha_from_rsi(at_voxels(self._rsi, ctx, "GARDFloor.rsi"), self.beta_Gy2)
        return at_voxels(self._alpha, ctx, "GARDFloor.alpha")

    def coefficients(self, ctx):
        return {"lin": self.alpha_at(ctx),
                "quad": np.full(len(ctx.volumes), self.beta_Gy2 / float(ctx.fractions))}

    def inverse(self, q, ctx):
        return rb.dose_for_gard(q, ctx.fractions, alpha=self.alpha_at(ctx), beta_Gy2=self.beta_Gy2)

    def describe(self):
        return "GARD(rsi)" if self._rsi is not None else "GARD(alpha)"


class _LinearForm(Quantity):
    """A quantity that is one linear form itself (LET x dose, dirty dose, weights)."""

    form = "let_dose"
    increasing = False
    invertible = False

    def expression(self, forms, ctx):
        return _form(forms, self.form, self.describe())

    def value(self, forms, ctx):
        return _form(forms, self.form, self.describe())

    def gradient(self, forms, ctx):
        f = _form(forms, self.form, self.describe())
        return {self.form: array_module(f).ones_like(f)}

    def inverse(self, q, ctx):
        raise TermError(f"{self.describe()}: not a function of dose alone; no dose inverse")


class LETxDose(_LinearForm):
    """LET x dose l_i = n sum_j L_ij D_ij x_j (keV/um x Gy, total course): linear in the weights."""

    base_forms = ("let_dose",)
    unit = "keV/um Gy"


class DirtyDose(_LinearForm):
    """Dose delivered by spot-voxel contributions with LET above ``let_threshold_keV_um`` (Gy,
    total course): a linear form of its own, derived from the dose and LET x dose rows
    (:func:`objectives.let.dirty_dose_matrix`)."""

    base_forms = ("dose", "let_dose")
    form = "dirty_dose"

    # its rows are derived from it when the program is built (a Parameter could not enter them)
    let_threshold_keV_um = fixed_setting("let_threshold_keV_um", "_let_threshold", "the LET threshold")

    def __init__(self, let_threshold_keV_um: float):
        self._let_threshold = positive_number(let_threshold_keV_um, "DirtyDoseMax.let_threshold_keV_um")

    def linear_forms(self, rows, ctx):
        from .let import dirty_dose_matrix

        return {"dirty_dose": dirty_dose_matrix(rows["dose"], rows["let_dose"], self.let_threshold_keV_um)}

    def describe(self):
        return f"DirtyDose({self.let_threshold_keV_um:g} keV/um)"


class LETdExcess(Quantity):
    """l_i - L d_i (keV/um x Gy): at most 0 exactly when LETd_i = l_i / d_i <= L (d_i >= 0), so a
    LETd limit is the linear constraint ``Max(LETdExcess(L), 0)``. ``let_keV_um`` is a Parameter."""

    base_forms = ("dose", "let_dose")
    unit = "keV/um Gy"
    increasing = False
    invertible = False
    form = None

    def __init__(self, let_keV_um: float):
        self.let_keV_um = nonneg_parameter(let_keV_um, "LETdMax.let_keV_um")

    def expression(self, forms, ctx):
        let_dose, dose = _form(forms, "let_dose", self.describe()), _form(forms, "dose", self.describe())
        return let_dose - self.let_keV_um * dose

    def value(self, forms, ctx):
        return forms["let_dose"] - float(self.let_keV_um.value) * forms["dose"]

    def gradient(self, forms, ctx):
        d = forms["dose"]
        xp = array_module(d)
        return {"let_dose": xp.ones_like(d), "dose": xp.full_like(d, -float(self.let_keV_um.value))}

    def inverse(self, q, ctx):
        raise TermError(f"{self.describe()}: not a function of dose alone; no dose inverse")

    def describe(self):
        return f"LETdExcess({float(self.let_keV_um.value):g} keV/um)"


class Weights(_LinearForm):
    """The beamlet / spot weights themselves (for fluence terms such as smoothness)."""

    base_forms = ("weights",)
    form = "weights"
    unit = ""
