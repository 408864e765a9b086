"""FLASH planning helpers: transmission (shoot-through) beams, spot subsets, the DADR constraint
from a machine model, and the two-stage minimum-spot-weight method.

Transmission beams
------------------
A shoot-through beam has one energy whose Bragg peak lies beyond the patient, so every spot
crosses the target and the patient on its plateau (the usual FLASH set-up: no energy switching,
the highest transmission through the beam line). :class:`~optimizer.ProtonBeams` places spots
whose Bragg peaks fall in a target, so :func:`transmission_influence` gives it one: a virtual
water beam stop behind the patient (the air downstream of the body along the beam, plus a
padding slab), whose part behind the target (+ margin) is the "target". The stop lies downstream
of every patient voxel along the beam, and the dose model depends only on the material a ray has
crossed before a voxel (water-equivalent depth; no backscatter), so the dose in the patient is
that of the same spots without the stop. Only the patient's voxels get rows. Axis-aligned gantry
angles (0, 90, 180, 270 deg) only.

Minimum spot weight (two stages)
--------------------------------
A machine cannot deliver spots below a minimum (here: the weight delivered in the minimum spot
time, :attr:`Machine.min_weight`, or a given minimum MU). "Each spot 0 or >= m" is disjunctive,
not convex. :func:`two_stage_minimum_weight` (1) solves the convex plan; (2) drops the spots below
m / 2 and keeps the others; (3) re-solves on the kept spots with the hard lower bound w_j >= m
(convex: ``Min`` on the ``Weights`` quantity) and reports the loss (objective, spots, goals). The
result is feasible for the machine but not necessarily the best plan with that rule.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from objectives.dose_rate import DADRMin
from objectives.quantities import Weights
from objectives.shapes import Min

from ..errors import BeamError, PlanError
from ..geometry import Patient, Structure
from ..influence import InfluenceMatrix, InfluenceSet
from ..stopping_power import hu_to_rsp
from .delivery import Machine

#: Extra water-equivalent depth beyond the deepest exit of a transmission beam, mm (our choice):
#: the Bragg peak lies at least this far behind the patient.
EXIT_MARGIN_MM = 20.0


# -- constraints ------------------------------------------------------------------------------------
def dadr_constraint(structure: str, machine: Machine | None = None, rate_Gy_s: float = 40.0, region=None,
                    weight: float | None = None) -> DADRMin:
    """:class:`~objectives.dose_rate.DADRMin` at the beam current of ``machine`` (default
    :class:`Machine`): DADR >= ``rate_Gy_s`` (Gy/s) in the voxels of ``structure`` inside
    ``region`` (3-D bool, e.g. :func:`~optimizer.flash.dose_rate_region`)."""
    machine = Machine() if machine is None else machine
    return DADRMin(structure, rate_Gy_s, machine.weight_rate_per_s, region=region, weight=weight)


# -- spot subsets ------------------------------------------------------------------------------------
def _columns(m: InfluenceMatrix, keep: np.ndarray) -> InfluenceMatrix:
    return InfluenceMatrix(sp.csr_matrix(m.matrix[:, keep]), m.voxel_index.copy(), m.grid,
                           {k: np.asarray(v)[keep] for k, v in m.beamlets.items()}, list(m.beams), m.modality)


def subset_spots(influence: InfluenceMatrix, keep) -> InfluenceSet:
    """The influence set of the spots ``keep`` (indices or a boolean mask over the columns), every
    form included; rows, grid and beams unchanged."""
    n = influence.n_beamlets
    keep = np.asarray(keep)
    if keep.dtype == bool:
        if keep.shape != (n,):
            raise PlanError(f"keep: expected a boolean mask of {n} spots, got shape {keep.shape}")
        keep = np.flatnonzero(keep)
    keep = keep.astype(np.int64)
    if keep.size == 0 or keep.min() < 0 or keep.max() >= n:
        raise PlanError(f"keep: expected at least one spot index in 0..{n - 1}")
    s = InfluenceSet.of(influence)
    out = InfluenceSet(_columns(s, keep))
    for name, form in s.forms.items():
        if name != "dose":
            out.add_form(name, _columns(form, keep))
    return out


# -- two-stage minimum weight ------------------------------------------------------------------------
def two_stage_minimum_weight(build, influence: InfluenceMatrix, min_weight: float, *, goals=None,
                             solver: str | None = None, **solve_options) -> dict:
    """Plans whose spots are 0 or at least ``min_weight`` (module docstring).

    Parameters
    ----------
    build : ``build(influence) -> PlanProblem``, the problem with all its terms on the given
        spots (called twice: all spots, then the kept ones)
    influence : the influence set of all spots
    min_weight : the smallest deliverable spot weight (weight units, > 0), e.g.
        ``machine.min_weight``
    goals : optional goals ``(structure, metric, op, limit)`` evaluated on both plans
    solver, solve_options : passed to ``PlanProblem.solve``

    Returns ``{"stage1": Plan, "stage2": Plan, "keep": spot indices, "report": dict}``; the report
    holds the spots (delivered in stage 1, below the minimum, dropped, kept), both objectives and
    their relative increase, and the goals met before and after.

    Raises PlanError when stage 2 is infeasible (the minimum cannot be met with the other hard terms).
    """
    from ..errors import SolverError
    from ..evaluate import evaluate_goals

    try:
        m = float(min_weight)
    except (TypeError, ValueError):
        raise PlanError(f"min_weight: expected a spot weight > 0, got {min_weight!r}") from None
    if not math.isfinite(m) or m <= 0:
        raise PlanError(f"min_weight: expected a finite spot weight > 0, got {min_weight!r}")
    plan1 = build(influence).solve(solver=solver, **solve_options)
    w = plan1.weights
    keep = np.flatnonzero(w >= 0.5 * m)
    if keep.size == 0:
        raise PlanError(f"min_weight: no spot of the first-stage plan reaches half the minimum ({m:g})")
    sub = subset_spots(influence, keep)
    problem2 = build(sub)
    problem2 += Min(None, m, quantity=Weights())
    try:
        plan2 = problem2.solve(solver=solver, **solve_options)
    except SolverError as err:
        raise PlanError(f"two_stage_minimum_weight: the second stage (w >= {m:g} on {keep.size} kept spots) "
                        f"failed: {err}") from None
    delivered = int(np.sum(w > 1e-9 * max(float(w.max()), 1e-300)))
    o1, o2 = float(plan1.solver.get("objective", np.nan)), float(plan2.solver.get("objective", np.nan))
    report = {
        "min_weight": m,
        "spots_total": int(len(w)),
        "spots_delivered_stage1": delivered,
        "spots_below_min_stage1": int(np.sum((w > 0) & (w < m) & (w > 1e-9 * max(float(w.max()), 1e-300)))),
        "spots_dropped": int(len(w) - keep.size),
        "spots_kept": int(keep.size),
        "objective_stage1": o1,
        "objective_stage2": o2,
        "objective_increase_pct": 100.0 * (o2 - o1) / abs(o1) if o1 else float("nan"),
        "min_weight_stage2": float(plan2.weights.min()),
    }
    if goals:
        report["goals_met_stage1"] = sum(g.met for g in evaluate_goals(plan1, goals))
        report["goals_met_stage2"] = sum(g.met for g in evaluate_goals(plan2, goals))
        report["goals"] = len(list(goals))
    return {"stage1": plan1, "stage2": plan2, "keep": keep, "report": report}


# -- transmission beams --------------------------------------------------------------------------------
_AXES = {0: (1, +1), 90: (2, -1), 180: (1, -1), 270: (2, +1)}  # gantry -> (grid axis, direction)


def _axis(gantry_deg) -> tuple[int, int]:
    g = float(gantry_deg) % 360.0
    key = int(round(g))
    if abs(g - key) > 1e-6 or key % 360 not in _AXES:
        raise BeamError(f"gantry_deg: transmission beams support 0, 90, 180 and 270 deg (axis-aligned), "
                        f"got {gantry_deg!r}")
    return _AXES[key % 360]


def _downstream(mask: np.ndarray, axis: int, sign: int) -> np.ndarray:
    """Voxels at or behind a voxel of ``mask`` along the beam (cumulative any along the axis)."""
    m = np.flip(mask, axis) if sign < 0 else mask
    out = np.maximum.accumulate(m, axis=axis)
    return np.flip(out, axis) if sign < 0 else out


def transmission_influence(patient: Patient, target: str, gantry_deg, *, energy_MeV: float | None = None,
                           margin_mm: float = 5.0, exit_margin_mm: float = EXIT_MARGIN_MM,
                           with_let: bool = False, **beam_options) -> InfluenceSet:
    """Single-energy shoot-through beams covering ``target`` (module docstring).

    Parameters
    ----------
    patient, target : the geometry and the target structure name
    gantry_deg : one angle or several, each 0, 90, 180 or 270 deg (IEC 61217)
    energy_MeV : the energy of every beam (its CSDA range must exceed the deepest exit WEPL);
        default per beam the lowest energy whose range exceeds that by ``exit_margin_mm``
    margin_mm : lateral margin around the target covered by spots, mm
    with_let : also the "let_dose" form
    beam_options : further :class:`~optimizer.ProtonBeams` arguments (spot_spacing_mm,
        spot_sigma_air_mm, ...; not energies_MeV / margin_mm)

    Returns an InfluenceSet on ``patient.grid`` (rows: voxels with RSP > 0.05) whose spot table
    and beams are those of ProtonBeams (one layer per beam).
    """
    from ..beams import proton_physics as pp
    from ..beams.proton import ProtonBeams

    angles = [gantry_deg] if np.ndim(gantry_deg) == 0 else list(gantry_deg)
    for bad in ("energies_MeV", "margin_mm", "gantry_deg"):
        if bad in beam_options:
            raise BeamError(f"{bad}: set by transmission_influence; pass energy_MeV / margin_mm instead")
    grid = patient.grid
    rsp = hu_to_rsp(patient.ct_hu, beam_options.get("rsp_table"))
    inside = rsp > 0.05
    tmask = patient.structure(target).mask
    grown = patient.expand(target, margin_mm) if margin_mm > 0 else tmask
    iso = tuple(grid.positions_mm(np.flatnonzero(tmask.ravel())).mean(axis=0))
    sets = []
    for g in angles:
        axis, sign = _axis(g)
        h = grid.spacing_mm[axis]
        wepl = (rsp * inside).sum(axis=axis) * h  # per ray (parallel-beam approximation), mm
        rays = grown.any(axis=axis)
        t_max, t_min = float(wepl[rays].max()), float(wepl[rays].min())
        if energy_MeV is None:
            r = t_max + float(exit_margin_mm)
            if r > pp.csda_range_mm(pp.E_MAX_MEV):
                raise BeamError(f"energy_MeV: beam at {g} deg needs a range of {r:.0f} mm to shoot through, "
                                f"more than the {pp.E_MAX_MEV:g} MeV maximum")
            energy = float(pp.energy_from_range_mm(r))
        else:
            energy = float(energy_MeV)
            r = float(pp.csda_range_mm(energy))
            if r <= t_max:
                raise BeamError(f"energy_MeV: {energy:g} MeV (range {r:.0f} mm) stops inside the patient "
                                f"(deepest exit {t_max:.0f} mm WEPL at {g} deg); not a transmission beam")
        pad = int(math.ceil((r - t_min) / h)) + 3
        shape = list(grid.shape)
        shape[axis] += pad
        origin = list(grid.origin_mm)
        if sign < 0:
            origin[axis] -= pad * h
        big = type(grid)(tuple(shape), grid.spacing_mm, tuple(origin))
        sl = [slice(None)] * 3
        sl[axis] = slice(pad, None) if sign < 0 else slice(0, grid.shape[axis])
        sl = tuple(sl)

        def embed(a, fill, big=big, sl=sl):
            out = np.full(big.shape, fill, dtype=a.dtype)
            out[sl] = a
            return out

        behind_body = _downstream(embed(inside, False), axis, sign)
        stop = behind_body & ~embed(inside, False)
        ct = np.where(stop, 0.0, embed(patient.ct_hu.astype(np.float32), np.float32(-1000.0)))
        stop_target = stop & _downstream(embed(grown, False), axis, sign)
        aug = Patient(big, ct, [Structure("TransmissionStop", stop_target, "target")],
                      name=f"{patient.name}_stop")
        beams = ProtonBeams([g], energies_MeV=[energy], margin_mm=0.0, **beam_options)
        part = beams.influence(aug, "TransmissionStop", isocenter_mm=iso, dose_mask=embed(inside, False),
                               with_let=with_let)
        sets.append(_back_to(part, big, grid, axis, pad if sign < 0 else 0))
    if len(sets) == 1:
        return sets[0]
    out = InfluenceSet(InfluenceMatrix.concatenate([s.dose_form() for s in sets]))
    if with_let:
        out.add_form("let_dose", InfluenceMatrix.concatenate([s.forms["let_dose"] for s in sets]))
    return out


def _back_to(part: InfluenceSet, big, grid, axis: int, offset: int) -> InfluenceSet:
    """Rows of an influence set on the padded grid, re-indexed onto the patient grid."""
    idx = np.array(np.unravel_index(part.voxel_index, big.shape))
    idx[axis] -= offset
    flat = np.ravel_multi_index(tuple(idx), grid.shape)

    def move(m: InfluenceMatrix) -> InfluenceMatrix:
        return InfluenceMatrix(m.matrix, flat.copy(), grid, dict(m.beamlets),
                               [dict(b, transmission=True) for b in m.beams], m.modality)

    out = InfluenceSet(move(part))
    for name, form in part.forms.items():
        if name != "dose":
            out.add_form(name, move(form))
    return out
