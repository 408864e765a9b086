"""Biological evaluation of plans: voxel BED / EQD2 / GARD, their DVHs and Dx, Poisson TCP,
LKB NTCP, voxel-by-voxel checks of biological floors and ceilings, and plan comparison tables.

Conventions (DESIGN.md): ``plan.dose`` is the total physical dose of the course (Gy) on the
full grid, delivered in ``plan.fractions`` equal fractions. For a voxel with alpha/beta ab
(Gy), alpha (Gy^-1) and beta (Gy^-2):

    BED  = D (1 + D / (n ab))                  (Gy)
    EQD2 = BED / (1 + 2 / ab)                  (Gy)
    GARD = alpha D + beta D^2 / n = alpha BED  (dimensionless log cell kill; Scott et al.,
                                                Lancet Oncol 2017;18:202-211)

LQ parameters come from an :class:`objectives.radiobiology.LQ` (per-structure table, default
and/or voxel maps on the planning grid, the same object the planning terms use), or from a
mapping ``{structure name: LQ}`` when structures need different LQ objects (e.g. a tumour LQ
with hypoxia maps and an organ-at-risk LQ table); names are matched ignoring case and
whitespace. Voxel values of a structure are in ascending flat-index order, the order of
``plan.structure_dose(name)``.

Plausibility: the whole plan dose (not each structure's) is checked once per call with
:func:`objectives.radiobiology.check_course_dose`; a plan whose largest dose is below
0.5 Gy x ``plan.fractions`` raises an :class:`objectives.PerFractionDoseWarning` (a per-fraction
dose stored as the course dose), while a low-dose organ far from a hot target does not.

Volume metrics reuse :mod:`optimizer.evaluate` on the BED / EQD2 values (``dose_at_volume``,
``dvh``, ``dose_statistics``), so "BED D95" is the BED that the hottest 95 % of the volume
receives at least, with the same interpolation convention as physical Dx.

Metric strings (:func:`metric`, :func:`evaluate_bio_goals`) are a quantity followed by a
physical-style metric: ``"BED D95"``, ``"EQD2 mean"``, ``"BED max"``, ``"GARD min"``,
``"BED V60Gy"``; a bare metric (``"D95"``) is the physical dose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from objectives import radiobiology as rb
from objectives.errors import BiologyError, BioplanError

from . import evaluate

#: Quantities this module evaluates per voxel; "dose" is the physical total dose.
QUANTITIES = ("dose", "BED", "EQD2", "GARD")

#: Default clonogen density for Poisson TCP, per cm^3: the common modelling value 1e7 /cc
#: (e.g. Webb & Nahum, Phys Med Biol 1993;38:653; verify for the tumour type).
DEFAULT_CLONOGEN_DENSITY_PER_CC = 1e7


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

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
            raise BioplanError(f"plan: expected an optimizer.Plan (with .{attr}), got {type(plan).__name__}")
    dose = np.asarray(plan.dose)
    if dose.shape != plan.patient.grid.shape:
        raise BioplanError(f"plan.dose: expected the grid shape {plan.patient.grid.shape}, got {dose.shape}")


def _structure_dose(plan, structure: str) -> np.ndarray:
    """Total dose (Gy) of a structure's voxels; round-off below zero is clipped, real negative
    doses are an error. Warns once per call if the whole plan dose looks like a per-fraction dose
    (the radiobiology functions are then called under ``rb._course_dose_checked()``, so that a
    structure's own low doses do not warn)."""
    _check_plan(plan)
    rb.check_course_dose(np.asarray(plan.dose, dtype=float), plan.fractions, "plan.dose")
    d = np.asarray(plan.structure_dose(structure), dtype=float)
    if d.size == 0:
        raise BioplanError(f"structure '{structure}': has no voxels")
    if not np.all(np.isfinite(d)):
        raise BioplanError(f"plan.dose: NaN or infinite values in structure '{structure}'")
    scale = max(float(np.max(np.abs(d))), 1.0)
    if np.min(d) < -1e-9 * scale:
        raise BioplanError(f"plan.dose: negative dose {np.min(d):g} Gy in structure '{structure}'")
    return np.maximum(d, 0.0)


def _index(plan, structure: str) -> np.ndarray:
    return plan.patient.flat_indices(structure)


def _resolved(plan, structure: str) -> str:
    return plan.patient.structure(structure).name


def _lq_lookup_name(lq: rb.LQ, plan, structure: str) -> str:
    # the LQ table may be keyed by the user's spelling or by the patient's structure name
    name = _resolved(plan, structure)
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


# --------------------------------------------------------------------------------------------
# Voxel values
# --------------------------------------------------------------------------------------------

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
      :func:`objectives.radiobiology.alpha_map_from_hypoxia`); GARD = alpha D + beta D^2 / n.
    """
    given = [v is not None for v in (rsi, alpha, lq)]
    if sum(given) != 1:
        raise BiologyError("rsi/alpha/lq: give exactly one of rsi, alpha (Gy^-1) or lq")
    D = _structure_dose(plan, structure)
    n = plan.fractions
    if lq is not None:
        a = alpha_values(plan, structure, lq)
        b = beta_values(plan, structure, lq)
        return a * D + b * D * D / n
    with rb._course_dose_checked():
        if rsi is not None:
            return np.asarray(rb.gard(D, n, rsi=_at(rsi, plan, structure, "rsi"), beta_Gy2=beta_Gy2),
                              dtype=float)
        return np.asarray(rb.gard(D, n, alpha=_at(alpha, plan, structure, "alpha"), beta_Gy2=beta_Gy2),
                          dtype=float)


def values(plan, structure: str, quantity: str = "dose", lq=None, rsi=None) -> np.ndarray:
    """Voxel values of ``quantity`` ("dose", "BED", "EQD2" or "GARD") in ``structure``.

    BED and EQD2 need ``lq``; GARD needs ``rsi`` or ``lq`` (with alpha and beta).
    """
    q = _quantity(quantity)
    if q == "dose":
        return _structure_dose(plan, structure)
    if q == "GARD":
        if rsi is not None:
            return gard_values(plan, structure, rsi=rsi)
        if lq is None:
            raise BiologyError("GARD: needs rsi or an lq with alpha")
        return gard_values(plan, structure, lq=lq)
    if lq is None:
        raise BiologyError(f"{q}: needs an lq (objectives.LQ) for alpha/beta")
    return bed_values(plan, structure, lq) if q == "BED" else eqd2_values(plan, structure, lq)


def _quantity(quantity: str) -> str:
    for q in QUANTITIES:
        if str(quantity).strip().lower() == q.lower():
            return q
    raise BiologyError(f"quantity: expected one of {QUANTITIES}, got {quantity!r}")


def structure_map(plan, structure: str, voxel_values: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """A 3-D [z, y, x] map with ``voxel_values`` (flat-index order) inside ``structure`` and
    ``fill`` elsewhere, e.g. for ``plots.dose_slices(plan, values=...)``."""
    idx = _index(plan, structure)
    v = np.asarray(voxel_values, dtype=float).ravel()
    if v.shape != idx.shape:
        raise BioplanError(f"voxel_values: expected {idx.size} values for '{structure}', got {v.size}")
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


# --------------------------------------------------------------------------------------------
# DVHs, Dx, statistics
# --------------------------------------------------------------------------------------------

def bed_dvh(plan, structure: str, lq, bins=None):
    """Cumulative BED-volume histogram: (BED bins in Gy, volume % with BED >= each bin)."""
    return evaluate.dvh(bed_values(plan, structure, lq), bins=bins)


def eqd2_dvh(plan, structure: str, lq, bins=None):
    """Cumulative EQD2-volume histogram: (EQD2 bins in Gy, volume %)."""
    return evaluate.dvh(eqd2_values(plan, structure, lq), bins=bins)


def bed_at_volume(plan, structure: str, lq, volume_pct: float) -> float:
    """BED_x (Gy): the BED that the hottest ``volume_pct`` % of the structure receives at least."""
    return evaluate.dose_at_volume(bed_values(plan, structure, lq), volume_pct)


def eqd2_at_volume(plan, structure: str, lq, volume_pct: float) -> float:
    """EQD2_x (Gy), as :func:`bed_at_volume`."""
    return evaluate.dose_at_volume(eqd2_values(plan, structure, lq), volume_pct)


def statistics(voxel_values: np.ndarray) -> dict[str, float]:
    """min, mean, max and D98/D95/D50/D10/D5/D2 of voxel values (equal voxel volumes), with
    the keys of :func:`optimizer.evaluate.dose_statistics` (``*_Gy``; for GARD the unit is none)."""
    return evaluate.dose_statistics(voxel_values)


# --------------------------------------------------------------------------------------------
# TCP / NTCP
# --------------------------------------------------------------------------------------------

def tcp(plan, structure: str, lq, clonogen_density_per_cc=DEFAULT_CLONOGEN_DENSITY_PER_CC) -> float:
    """Poisson LQ tumour control probability of a target,
    TCP = exp(-sum_i rho_i V_i exp(-(alpha_i D_i + beta_i D_i^2 / n))),
    with per-voxel alpha and beta from ``lq`` (alpha table/map needed), voxel volumes V_i in cm^3
    from the grid, and ``clonogen_density_per_cc`` (scalar or 3-D map, per cm^3). No
    repopulation. See :func:`objectives.radiobiology.tcp_poisson`."""
    return math.exp(log_tcp(plan, structure, lq, clonogen_density_per_cc))


def log_tcp(plan, structure: str, lq, clonogen_density_per_cc=DEFAULT_CLONOGEN_DENSITY_PER_CC) -> float:
    """Natural log of :func:`tcp` (useful when TCP underflows): -expected surviving clonogens."""
    D = _structure_dose(plan, structure)
    rho = _at(clonogen_density_per_cc, plan, structure, "clonogen_density_per_cc")
    with rb._course_dose_checked():
        return rb.log_tcp(D, plan.fractions, alpha_values(plan, structure, lq),
                          beta_values(plan, structure, lq), clonogen_density_per_cc=rho,
                          voxel_volumes_cc=plan.patient.grid.voxel_volume_cc)


def _lkb(parameters) -> rb.LKBParameters:
    if isinstance(parameters, rb.LKBParameters):
        return parameters
    if isinstance(parameters, str):
        key = " ".join(parameters.lower().split())
        if key in rb.NTCP_PARAMETERS:
            return rb.NTCP_PARAMETERS[key]
        raise BiologyError(f"parameters: no LKB parameters for organ {parameters!r} "
                           f"(known: {sorted(rb.NTCP_PARAMETERS)})")
    raise BiologyError(f"parameters: expected an organ name in NTCP_PARAMETERS or an LKBParameters, "
                       f"got {parameters!r}")


def ntcp(plan, structure: str, lq, parameters=None) -> float:
    """LKB NTCP of an organ at risk on voxel **EQD2** (the published parameters were fitted to
    conventionally fractionated doses): NTCP = Phi((gEUD_{1/n}(EQD2) - TD50) / (m TD50)).

    Parameters
    ----------
    plan, structure, lq : as elsewhere (alpha/beta of the organ from ``lq``)
    parameters : an organ key of :data:`objectives.radiobiology.NTCP_PARAMETERS` (e.g.
        "spinal cord"), or an :class:`~objectives.radiobiology.LKBParameters`; default the
        structure's own name looked up in that table
    """
    p = _lkb(structure if parameters is None else parameters)
    e = eqd2_values(plan, structure, lq)
    return rb.ntcp_lkb(e, np.ones_like(e), p.td50_Gy, p.m, p.n, dose_kind="EQD2")


# --------------------------------------------------------------------------------------------
# Voxel-by-voxel checks of floors and ceilings
# --------------------------------------------------------------------------------------------

@dataclass
class VoxelCheck:
    """Result of a voxel-by-voxel check ``value_i op limit_i``.

    ``margin`` is the signed margin of the worst voxel (the one with the smallest relative
    margin), value - limit for a floor (">=") and limit - value for a ceiling ("<="), in
    ``unit`` (Gy, or "" for GARD): negative means beyond the limit. ``relative_margin`` is that
    margin divided by the voxel's limit. ``met`` allows ``rel_tol`` of relative shortfall
    (solver tolerance).
    """

    label: str
    op: str
    n_voxels: int
    n_violated: int
    margin: float
    relative_margin: float
    worst_voxel: int  # flat grid index of the worst voxel (-1 if no index was given)
    rel_tol: float
    unit: str = "Gy"

    @property
    def met(self) -> bool:
        return self.relative_margin >= -self.rel_tol

    def as_dict(self) -> dict:
        return {"label": self.label, "op": self.op, "n_voxels": self.n_voxels,
                "n_violated": self.n_violated, "worst_margin": self.margin, "unit": self.unit,
                "worst_relative_margin": self.relative_margin, "worst_voxel": self.worst_voxel,
                "rel_tol": self.rel_tol, "met": self.met}

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return (f"{self.label}: {'met' if self.met else 'NOT met'}, worst margin {self.margin:+.4g}{unit} "
                f"({self.relative_margin:+.2e} relative), {self.n_violated}/{self.n_voxels} voxels beyond "
                f"the limit by more than {self.rel_tol:g} relative")


def check_voxels(voxel_values, limit, op: str, label: str = "", rel_tol: float = 1e-4,
                 voxel_index=None, unit: str = "Gy") -> VoxelCheck:
    """Check ``voxel_values op limit`` in every voxel (``limit`` scalar or one per voxel).

    ``op`` is ">=" (floor) or "<=" (ceiling); ``rel_tol`` is the relative tolerance for "met"
    and for counting violated voxels.
    """
    if op not in (">=", "<="):
        raise BioplanError(f"op: expected '>=' or '<=', got {op!r}")
    v = np.asarray(voxel_values, dtype=float).ravel()
    lim = np.broadcast_to(np.asarray(limit, dtype=float), v.shape) if np.ndim(limit) == 0 else \
        np.asarray(limit, dtype=float).ravel()
    if lim.shape != v.shape:
        raise BioplanError(f"limit: expected a scalar or {v.size} values, got {lim.size}")
    if v.size == 0:
        raise BioplanError("voxel_values: nothing to check")
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(lim))):
        raise BioplanError("voxel_values/limit: NaN or infinite values")
    margin = v - lim if op == ">=" else lim - v
    rel = margin / np.maximum(np.abs(lim), 1e-12)
    worst = int(np.argmin(rel))
    idx = -1 if voxel_index is None else int(np.asarray(voxel_index).ravel()[worst])
    return VoxelCheck(label, op, int(v.size), int(np.count_nonzero(rel < -rel_tol)),
                      float(margin[worst]), float(rel[worst]), idx, float(rel_tol), unit)


def check_bio_limit(plan, structure: str, quantity: str, op: str, limit, lq=None, rsi=None,
                    rel_tol: float = 1e-4, label: str | None = None) -> VoxelCheck:
    """Voxel-by-voxel check of a biological floor or ceiling on a plan's full-grid dose.

    ``limit`` is a scalar or a 3-D grid map (e.g. a dose-painting BED prescription); the
    values are recomputed from ``plan.dose`` (not taken from solver variables).
    """
    q = _quantity(quantity)
    v = values(plan, structure, q, lq=lq, rsi=rsi)
    lim = _at(limit, plan, structure, "limit")
    if label is None:
        text = "map" if np.ndim(limit) else f"{float(limit):g}"
        label = f"{structure} {q} {op} {text}"
    return check_voxels(v, lim, op, label, rel_tol, _index(plan, structure), "" if q == "GARD" else "Gy")


# --------------------------------------------------------------------------------------------
# Metrics, goals and plan comparison
# --------------------------------------------------------------------------------------------

def metric(plan, structure: str, spec: str, lq=None, rsi=None) -> float:
    """Value of a metric string: "D95" (physical, Gy), "BED D95", "EQD2 mean", "BED max",
    "GARD min", "BED V60Gy" (%), ... (quantity, then an :func:`optimizer.evaluate.metric_value`
    metric)."""
    parts = str(spec).split()
    if len(parts) == 1:
        q, m = "dose", parts[0]
    elif len(parts) == 2:
        q, m = parts
    else:
        raise BiologyError(f"metric: expected e.g. 'D95', 'BED D95' or 'EQD2 mean', got {spec!r}")
    return evaluate.metric_value(values(plan, structure, q, lq=lq, rsi=rsi), m)


@dataclass
class BioGoalResult(evaluate.GoalResult):
    """A goal result whose value may be BED / EQD2 (Gy) or GARD (unitless): plain keys."""

    def as_dict(self) -> dict:
        return {"structure": self.structure, "metric": self.metric, "op": self.op,
                "limit": self.limit, "value": self.value, "met": self.met}


def evaluate_bio_goals(plan, goals, lq=None, rsi=None, tolerance: float = 0.0,
                       rel_tol: float = 0.0) -> list[BioGoalResult]:
    """Check goals ``(structure, metric, op, limit)`` where metric is a :func:`metric` string
    (physical or biological). Each goal is loosened by ``tolerance`` (metric units) plus
    ``rel_tol`` x |limit| (e.g. 1e-4 for the solver's tolerance on hard floors)."""
    out = []
    for structure, spec, op, limit in goals:
        if op not in (">=", "<="):
            raise BioplanError(f"goal op: expected '>=' or '<=', got {op!r}")
        v = metric(plan, structure, spec, lq=lq, rsi=rsi)
        slack = tolerance + rel_tol * abs(limit)
        ok = v >= limit - slack if op == ">=" else v <= limit + slack
        out.append(BioGoalResult(structure, spec, op, float(limit), float(v), bool(ok)))
    return out


def plan_summary(plan, lq, names=None, tcp_structures=(), ntcp_parameters=None, rsi=None,
                 clonogen_density_per_cc=DEFAULT_CLONOGEN_DENSITY_PER_CC, goals=(),
                 goal_rel_tol: float = 0.0) -> dict:
    """Key physical and biological metrics of one plan as a JSON-ready dict.

    Parameters
    ----------
    plan : a solved Plan
    lq : LQ (or mapping name -> LQ) for BED / EQD2 / TCP (and GARD when ``rsi`` is None)
    names : structures to summarize (default all)
    tcp_structures : targets whose Poisson TCP and GARD statistics are reported (their LQ
        needs alpha)
    ntcp_parameters : mapping structure -> organ key of NTCP_PARAMETERS or LKBParameters
    rsi : radiosensitivity index (scalar or map): GARD from the RSI (Scott 2017) instead of
        from the LQ's alpha and beta
    goals : (structure, metric, op, limit) goals, physical or biological metric strings
    goal_rel_tol : relative tolerance of the goals (see :func:`evaluate_bio_goals`)

    Returns
    -------
    ``{"structures": {name: {"dose": stats, "BED": stats, "EQD2": stats}}, "TCP": {name: p},
    "NTCP": {name: p}, "GARD": {name: stats}, "goals": [...]}`` (stats as
    :func:`optimizer.evaluate.dose_statistics`, Gy; GARD stats are dimensionless).
    """
    names = list(names or plan.patient.structure_names)
    out: dict = {"structures": {}, "TCP": {}, "NTCP": {}, "GARD": {}, "goals": []}
    for n in names:
        out["structures"][n] = {"dose": statistics(_structure_dose(plan, n)),
                                "BED": statistics(bed_values(plan, n, lq)),
                                "EQD2": statistics(eqd2_values(plan, n, lq))}
    for n in tcp_structures:
        out["TCP"][n] = tcp(plan, n, lq, clonogen_density_per_cc)
        out["GARD"][n] = statistics(values(plan, n, "GARD", lq=lq, rsi=rsi))
    for n, p in (ntcp_parameters or {}).items():
        out["NTCP"][n] = ntcp(plan, n, lq, p)
    out["goals"] = [g.as_dict()
                    for g in evaluate_bio_goals(plan, goals, lq=lq, rsi=rsi, rel_tol=goal_rel_tol)]
    return out


def comparison(plans: Mapping[str, object], lq, names=None, tcp_structures=(), ntcp_parameters=None,
               rsi=None, clonogen_density_per_cc=DEFAULT_CLONOGEN_DENSITY_PER_CC, goals=(),
               metrics=("D95", "D50", "D2", "mean", "BED D95", "BED D50", "BED D2", "BED mean",
                        "EQD2 mean", "EQD2 max"), goal_rel_tol: float = 0.0) -> dict:
    """Side-by-side metrics of two or more plans (the dict form of :func:`compare_plans`).

    Parameters
    ----------
    plans : mapping label -> Plan (all on the same patient)
    lq : one LQ / mapping structure -> LQ used for every plan, or a mapping plan label ->
        (LQ or mapping) when the plans are to be evaluated with different biology
    names : structures of the metric rows (default all); ``metrics`` : metric strings of those
        rows (see :func:`metric`)
    tcp_structures : targets with TCP, "GARD min" and "GARD mean" rows (GARD from ``rsi`` if
        given, else from the LQ's alpha and beta)
    ntcp_parameters : mapping structure -> LKB parameters (organ key or LKBParameters)
    goals, goal_rel_tol : goal rows, as :func:`evaluate_bio_goals`

    Returns
    -------
    ``{"labels": [...], "rows": [{"structure", "metric", "values": {label: value}}, ...]}``;
    goal rows add ``"op"``, ``"limit"`` and ``"met": {label: bool}``.
    """
    if not isinstance(plans, Mapping) or len(plans) < 1:
        raise BioplanError("plans: expected a mapping of label to Plan")
    labels = list(plans)
    first = next(iter(plans.values()))
    names = list(names or first.patient.structure_names)
    lq_of = _per_plan_lq(lq, labels)
    rows = []
    for n in names:
        for spec in metrics:
            rows.append({"structure": n, "metric": spec,
                         "values": {k: metric(p, n, spec, lq=lq_of[k]) for k, p in plans.items()}})
    for n in tcp_structures:
        rows.append({"structure": n, "metric": "TCP",
                     "values": {k: tcp(p, n, lq_of[k], clonogen_density_per_cc) for k, p in plans.items()}})
        for spec in ("GARD min", "GARD mean"):
            rows.append({"structure": n, "metric": spec,
                         "values": {k: metric(p, n, spec, lq=lq_of[k], rsi=rsi) for k, p in plans.items()}})
    for n, par in (ntcp_parameters or {}).items():
        rows.append({"structure": n, "metric": "NTCP",
                     "values": {k: ntcp(p, n, lq_of[k], par) for k, p in plans.items()}})
    for structure, spec, op, limit in goals:
        res = {k: evaluate_bio_goals(p, [(structure, spec, op, limit)], lq=lq_of[k], rsi=rsi,
                                     rel_tol=goal_rel_tol)[0] for k, p in plans.items()}
        rows.append({"structure": structure, "metric": spec, "op": op, "limit": float(limit),
                     "values": {k: r.value for k, r in res.items()},
                     "met": {k: r.met for k, r in res.items()}})
    return {"labels": labels, "rows": rows}


def _per_plan_lq(lq, labels):
    if isinstance(lq, Mapping) and set(lq) == set(labels) and len(labels) > 0 \
            and all(isinstance(v, (rb.LQ, Mapping)) for v in lq.values()):
        # a mapping keyed by plan label (only when its keys are exactly the labels)
        return dict(lq)
    return {k: lq for k in labels}


def compare_plans(plans: Mapping[str, object], lq, **kwargs) -> str:
    """Plain-text side-by-side table of :func:`comparison` (same arguments): one row per
    structure and metric, one column per plan; goal rows add the goal and "yes"/"NO"."""
    table = comparison(plans, lq, **kwargs)
    labels = table["labels"]
    width = max(12, *(len(k) + 2 for k in labels))
    head = f"{'structure':<12}{'metric':<14}{'goal':>12}" + "".join(f"{k:>{width}}" for k in labels)
    lines = [head, "-" * len(head)]
    for row in table["rows"]:
        goal = f"{row['op']} {row['limit']:g}" if "op" in row else ""
        cells = []
        for k in labels:
            v = row["values"][k]
            text = _fmt(v, row["metric"])
            if "met" in row:
                text += " " + ("yes" if row["met"][k] else "NO")
            cells.append(f"{text:>{width}}")
        lines.append(f"{row['structure']:<12}{row['metric']:<14}{goal:>12}" + "".join(cells))
    return "\n".join(lines)


def _fmt(v: float, spec: str) -> str:
    if spec in ("TCP", "NTCP"):
        return f"{v:.3g}" if v >= 1e-3 or v == 0 else f"{v:.1e}"
    return f"{v:.2f}"
