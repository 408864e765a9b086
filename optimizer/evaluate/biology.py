"""Biological quantities of a plan, voxel by voxel: physical dose, BED, EQD2 and GARD of a
structure's voxels, and 3-D maps of them.

Conventions (DESIGN.md): ``plan.dose`` is the total physical dose of the course (Gy) on the
full grid, delivered in ``plan.fractions`` equal fractions. For a voxel with alpha/beta ab
(Gy), alpha (Gy^-1) and beta (Gy^-2), with the formulas of :mod:`objectives.radiobiology`:

    BED  = D (1 + D / (n ab))                  (Gy)             objectives.radiobiology.bed
    EQD2 = BED / (1 + 2 / ab)                  (Gy)             objectives.radiobiology.eqd2
    GARD = alpha D + beta D^2 / n = alpha BED  (dimensionless)  objectives.radiobiology.gard
                                               (Scott et al., Lancet Oncol 2017;18:202-211)

LQ parameters come from an :class:`objectives.radiobiology.LQ` (per-structure table, default
and/or voxel maps on the planning grid, the same object the planning terms use), or from a
mapping ``{structure name: LQ}`` when structures need different LQ objects (e.g. a tumour LQ
with hypoxia maps and an organ-at-risk LQ table); names are matched ignoring case and
whitespace. Voxel values of a structure are in ascending flat-index order, the order of
``plan.structure_dose(name)``.

Plausibility: for BED, EQD2, GARD and TCP the whole plan dose (not each structure's) is checked
once per call with :func:`objectives.radiobiology.check_course_dose`; a plan whose largest dose
is below 0.5 Gy x ``plan.fractions`` raises an :class:`objectives.PerFractionDoseWarning` (a
per-fraction dose stored as the course dose), while a low-dose organ far from a hot target does
not. The physical dose itself never warns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from objectives import radiobiology as rb
from objectives.errors import BiologyError

from ..errors import EvaluationError

#: Unit of each quantity's values, as the goal schema writes it ("" = dimensionless).
UNITS = {"dose": "Gy", "BED": "Gy BED", "EQD2": "Gy EQD2", "GARD": ""}

#: Quantities evaluated per voxel; "dose" is the physical total dose.
QUANTITIES = tuple(UNITS)


# -- reading a plan ----------------------------------------------------------------------------

def _norm(name: str) -> str:
    return "".join(str(name).split()).lower()


def _lq_for(lq, structure: str) -> rb.LQ:
    """The LQ object of ``structure``: ``lq`` itself, or its entry in a mapping."""
    if isinstance(lq, rb.LQ):
        return lq
    if isinstance(lq, Mapping):
        for key, value in lq.items():
            if _norm(key) == _norm(structure):
                if not isinstance(value, rb.LQ):
                    raise BiologyError(f"lq[{key!r}]: expected an objectives.radiobiology.LQ, got {value!r}")
                return value
        raise BiologyError(f"lq: no LQ object for structure '{structure}' (known: {sorted(lq)})")
    raise BiologyError(f"lq: expected an objectives.radiobiology.LQ or a mapping of structure name "
                       f"to LQ, got {type(lq).__name__}")


def _check_plan(plan) -> None:
    for attr in ("dose", "patient", "fractions"):
        if not hasattr(plan, attr):
            raise EvaluationError(f"plan: expected an optimizer.Plan (with .{attr}), "
                                  f"got {type(plan).__name__}")
    dose = np.asarray(plan.dose)
    if dose.shape != plan.patient.grid.shape:
        raise EvaluationError(f"plan.dose: expected the grid shape {plan.patient.grid.shape}, "
                              f"got {dose.shape}")


def _structure_dose(plan, structure: str, course_dose: bool = True) -> np.ndarray:
    """Total dose (Gy) of a structure's voxels; round-off below zero is clipped, real negative
    doses are an error. With ``course_dose``, warns once per call if the whole plan dose looks
    like a per-fraction dose (the radiobiology functions are then called under
    ``rb._course_dose_checked()``, so that a structure's own low doses do not warn)."""
    _check_plan(plan)
    if course_dose:
        rb.check_course_dose(np.asarray(plan.dose, dtype=float), plan.fractions, "plan.dose")
    d = np.asarray(plan.structure_dose(structure), dtype=float)
    if d.size == 0:
        raise EvaluationError(f"structure '{structure}': has no voxels")
    if not np.all(np.isfinite(d)):
        raise EvaluationError(f"plan.dose: NaN or infinite values in structure '{structure}'")
    scale = max(float(np.max(np.abs(d))), 1.0)
    if np.min(d) < -1e-9 * scale:
        raise EvaluationError(f"plan.dose: negative dose {np.min(d):g} Gy in structure '{structure}'")
    return np.maximum(d, 0.0)


def _index(plan, structure: str) -> np.ndarray:
    return plan.patient.flat_indices(structure)


def _lq_lookup_name(lq: rb.LQ, plan, structure: str) -> str:
    # the LQ table may be keyed by the user's spelling or by the patient's structure name
    name = plan.patient.structure(structure).name
    return name if lq.has_structure(name) or not lq.has_structure(structure) else structure


def _at(value, plan, structure: str, name: str) -> np.ndarray | float:
    """A scalar, or a 3-D grid map taken at a structure's voxels."""
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        return float(arr)
    if arr.shape != plan.patient.grid.shape:
        raise BiologyError(f"{name}: expected a number or a map of the grid shape {plan.patient.grid.shape} "
                           f"[z, y, x], got shape {arr.shape}")
    return arr.ravel()[_index(plan, structure)]


# -- LQ parameters per voxel -------------------------------------------------------------------

def alpha_beta_values(plan, structure: str, lq) -> np.ndarray:
    """Per-voxel alpha/beta (Gy) of ``structure`` from ``lq`` (an LQ or a mapping name -> LQ)."""
    q = _lq_for(lq, structure)
    return np.asarray(q.alpha_beta_for(_lq_lookup_name(q, plan, structure), _index(plan, structure),
                                       plan.patient.grid.shape), dtype=float)


def alpha_values(plan, structure: str, lq) -> np.ndarray:
    """Per-voxel alpha (Gy^-1) of ``structure`` (needs ``alpha``/``alpha_map`` in the LQ)."""
    q = _lq_for(lq, structure)
    return np.asarray(q.alpha_for(_lq_lookup_name(q, plan, structure), _index(plan, structure),
                                  plan.patient.grid.shape), dtype=float)


def beta_values(plan, structure: str, lq) -> np.ndarray:
    """Per-voxel beta (Gy^-2) of ``structure``: ``beta_map`` or alpha / (alpha/beta)."""
    q = _lq_for(lq, structure)
    return np.asarray(q.beta_for(_lq_lookup_name(q, plan, structure), _index(plan, structure),
                                 plan.patient.grid.shape), dtype=float)


# -- quantities per voxel ----------------------------------------------------------------------

def dose_values(plan, structure: str) -> np.ndarray:
    """Voxel total physical dose (Gy) of ``structure`` in flat-index order (checked: finite and
    not negative beyond round-off)."""
    return _structure_dose(plan, structure, course_dose=False)


def bed_values(plan, structure: str, lq) -> np.ndarray:
    """Voxel BED (Gy) of ``structure``, BED = D (1 + D / (n ab)), in flat-index order."""
    D = _structure_dose(plan, structure)
    with rb._course_dose_checked():
        return np.asarray(rb.bed(D, plan.fractions, alpha_beta_values(plan, structure, lq)), dtype=float)


def eqd2_values(plan, structure: str, lq) -> np.ndarray:
    """Voxel EQD2 (Gy) of ``structure``, EQD2 = BED / (1 + 2 / ab)."""
    D = _structure_dose(plan, structure)
    with rb._course_dose_checked():
        return np.asarray(rb.eqd2(D, plan.fractions, alpha_beta_values(plan, structure, lq)), dtype=float)


def gard_values(plan, structure: str, rsi=None, alpha=None, lq=None,
                beta_Gy2: float = rb.GARD_BETA_GY2) -> np.ndarray:
    """Voxel GARD of ``structure`` (dimensionless).

    Give exactly one of

    * ``rsi`` : radiosensitivity index in (0, 1), scalar or 3-D grid map; alpha from
      :func:`objectives.radiobiology.alpha_from_rsi`, beta = ``beta_Gy2`` (0.05 Gy^-2, Scott 2017);
    * ``alpha`` : alpha in Gy^-1, scalar or 3-D grid map, beta = ``beta_Gy2``;
    * ``lq`` : an LQ (or mapping) with alpha and beta per voxel (e.g. hypoxia-modified maps from
      :func:`objectives.radiobiology.alpha_map_from_hypoxia`); GARD = alpha D + beta D^2 / n with
      the per-voxel beta of the LQ (``beta_Gy2`` is not used).
    """
    if sum(v is not None for v in (rsi, alpha, lq)) != 1:
        raise BiologyError("rsi/alpha/lq: give exactly one of rsi, alpha (Gy^-1) or lq")
    D = _structure_dose(plan, structure)
    n = plan.fractions
    if lq is not None:
        # per-voxel beta: the one LQ log-cell-kill formula of objectives.radiobiology.gard
        a, b = alpha_values(plan, structure, lq), beta_values(plan, structure, lq)
        return np.asarray(rb._log_cell_kill(D, n, a, b), dtype=float)
    with rb._course_dose_checked():
        if rsi is not None:
            return np.asarray(rb.gard(D, n, rsi=_at(rsi, plan, structure, "rsi"), beta_Gy2=beta_Gy2),
                              dtype=float)
        return np.asarray(rb.gard(D, n, alpha=_at(alpha, plan, structure, "alpha"), beta_Gy2=beta_Gy2),
                          dtype=float)


def _gard_of(plan, structure, lq, rsi):
    if rsi is None and lq is None:
        raise BiologyError("GARD: needs rsi or an lq with alpha")
    return gard_values(plan, structure, rsi=rsi) if rsi is not None else gard_values(plan, structure, lq=lq)


def _needs_lq(fn: Callable, quantity: str) -> Callable:
    def read(plan, structure, lq, rsi):
        if lq is None:
            raise BiologyError(f"{quantity}: needs an lq (objectives.LQ) for alpha/beta")
        return fn(plan, structure, lq)
    return read


# quantity -> f(plan, structure, lq, rsi): voxel values (one table, no dispatch over names)
_READERS: dict[str, Callable] = {
    "dose": lambda plan, structure, lq, rsi: dose_values(plan, structure),
    "BED": _needs_lq(bed_values, "BED"),
    "EQD2": _needs_lq(eqd2_values, "EQD2"),
    "GARD": _gard_of,
}


def quantity_name(quantity: str) -> str:
    """The canonical spelling of a quantity ("bed" -> "BED"), or a BiologyError listing them."""
    for q in QUANTITIES:
        if str(quantity).strip().lower() == q.lower():
            return q
    raise BiologyError(f"quantity: expected one of {QUANTITIES}, got {quantity!r}")


def values(plan, structure: str, quantity: str = "dose", lq=None, rsi=None) -> np.ndarray:
    """Voxel values of ``quantity`` ("dose", "BED", "EQD2" or "GARD") in ``structure``, in the
    unit ``UNITS[quantity]``.

    BED and EQD2 need ``lq``; GARD needs ``rsi`` (preferred when both are given) or ``lq`` (with
    alpha and beta).
    """
    return _READERS[quantity_name(quantity)](plan, structure, lq, rsi)


# -- 3-D maps ----------------------------------------------------------------------------------

def structure_map(plan, structure: str, voxel_values: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """A 3-D [z, y, x] map with ``voxel_values`` (flat-index order) inside ``structure`` and
    ``fill`` elsewhere, e.g. for ``plots.dose_slices(plan, values=...)``."""
    idx = _index(plan, structure)
    v = np.asarray(voxel_values, dtype=float).ravel()
    if v.shape != idx.shape:
        raise EvaluationError(f"voxel_values: expected {idx.size} values for '{structure}', got {v.size}")
    out = np.full(plan.patient.grid.n_voxels, float(fill))
    out[idx] = v
    return out.reshape(plan.patient.grid.shape)


def bed_map(plan, lq, names=None, fill: float = 0.0) -> np.ndarray:
    """3-D BED map (Gy): each listed structure's voxel BED (default: every structure, painted in
    patient order with targets last, so they win where structures overlap); ``fill`` elsewhere."""
    return _painted(plan, lq, names, fill, bed_values)


def eqd2_map(plan, lq, names=None, fill: float = 0.0) -> np.ndarray:
    """3-D EQD2 map (Gy), painted as :func:`bed_map`."""
    return _painted(plan, lq, names, fill, eqd2_values)


def gard_map(plan, structure: str, rsi=None, alpha=None, lq=None,
             beta_Gy2: float = rb.GARD_BETA_GY2, fill: float = 0.0) -> np.ndarray:
    """3-D map of voxel GARD inside ``structure`` (``fill`` elsewhere); arguments as
    :func:`gard_values`."""
    return structure_map(plan, structure, gard_values(plan, structure, rsi, alpha, lq, beta_Gy2), fill)


def _painted(plan, lq, names, fill, fn) -> np.ndarray:
    if names is None:
        order = {"other": 0, "oar": 1, "target": 2}
        names = [s.name for s in sorted(plan.patient.structures, key=lambda s: order.get(s.role, 0))]
    out = np.full(plan.patient.grid.n_voxels, float(fill))
    for name in names:
        out[_index(plan, name)] = fn(plan, name, lq)
    return out.reshape(plan.patient.grid.shape)
