"""What a sequenced beam delivers: its fluence on a beamlet grid (MU per cell, with leaf
transmission and leaf-end leakage), the leaf rules checked at every control point, and the dose
of the delivered fluence recomputed with the photon model.

Fluence model (per fraction, MU-weighted open fraction of each cell): between two control points
the leaves move linearly with the delivered MU (step and shoot: not at all). A point inside the
jaws at u in the leaf pair's strip receives, per MU,

* 1 where it lies in the leaf pair's effective opening ``[left - DLG/2, right + DLG/2]`` (the
  rounded leaf ends transmit as if the opening were the dosimetric leaf gap DLG wider), and
* the leaf ``transmission`` elsewhere (beneath a leaf);

outside the jaws nothing (jaw transmission, ~0.1 %, is neglected). A cell's value is the exact
average of this over the cell (the integral over MU of a linearly moving opening is computed in
closed form), and rows take the leaf pairs over them in proportion to the overlap.
"""

from __future__ import annotations

import math

import numpy as np

from ..beams.photon import PhotonBeams
from ..plan import Plan
from .machine import DeliveryError, Machine
from .sequence import BeamDelivery, Delivery, row_leaf_overlap


def _positive_part_integral(g0: np.ndarray, g1: np.ndarray) -> np.ndarray:
    """Integral over s in [0, 1] of max(0, g(s)) for g linear from g0 to g1."""
    both = (g0 >= 0) & (g1 >= 0)
    pos = np.maximum(g0, g1)
    span = np.abs(g1 - g0)
    one = np.divide(pos * pos, 2 * span, out=np.zeros_like(pos), where=span > 0)
    return np.where(both, 0.5 * (g0 + g1), np.where(pos > 0, one, 0.0))


def _open_exposure(l0, l1, r0, r1, e0, e1, lo_lim, hi_lim) -> np.ndarray:
    """Average over s in [0, 1] of the length of [e0, e1] inside the opening [l(s), r(s)] (l, r
    linear in s) and inside [lo_lim, hi_lim]. Arrays broadcast: pairs (P, 1), cells (1, C)."""
    e_lo = np.maximum(e0, lo_lim)
    e_hi = np.minimum(e1, hi_lim)
    dl, dr = l1 - l0, r1 - r0
    shape = np.broadcast_shapes(np.shape(l0), np.shape(e_lo))
    e_lo, e_hi, l0, dl, r0, dr = (np.broadcast_to(a, shape) for a in (e_lo, e_hi, l0, dl, r0, dr))
    # the overlap min(e_hi, r(s)) - max(e_lo, l(s)) is linear in s between its kinks, where
    # l(s) = e_lo and r(s) = e_hi; its positive part is integrated exactly piece by piece
    with np.errstate(divide="ignore", invalid="ignore"):
        s_l = np.where(dl != 0, (e_lo - l0) / dl, 0.0)
        s_r = np.where(dr != 0, (e_hi - r0) / dr, 0.0)
    cand = np.stack([np.zeros(shape), np.ones(shape), np.clip(s_l, 0, 1), np.clip(s_r, 0, 1)], axis=-1)
    cand.sort(axis=-1)
    hi = np.minimum(e_hi[..., None], r0[..., None] + dr[..., None] * cand)
    lo = np.maximum(e_lo[..., None], l0[..., None] + dl[..., None] * cand)
    vals = hi - lo
    h = np.diff(cand, axis=-1)
    return np.sum(h * _positive_part_integral(vals[..., :-1], vals[..., 1:]), axis=-1)


def delivered_fluence(beam: BeamDelivery, machine: Machine, u0_mm: float, v0_mm: float, beamlet_mm: float,
                      shape: tuple[int, int], *, ideal: bool = False) -> np.ndarray:
    """MU per cell delivered by ``beam`` on a beamlet grid (cell [r, c] centred at
    ``(u0 + c w, v0 + r w)``, w = ``beamlet_mm``; ``shape`` = (rows, cols)), per fraction.

    With ``ideal=True`` leaf transmission and leaf-end leakage are left out: the result is then
    the sum over segments of MU x the open fraction of each cell (for apertures on the cell edges:
    MU x aperture).
    """
    w = float(beamlet_mm)
    n_rows, n_cols = shape
    t = 0.0 if ideal else machine.transmission
    half_dlg = 0.0 if ideal else machine.leaf_end_leakage_mm / 2
    overlap = row_leaf_overlap(beam.leaf_boundaries_mm, v0_mm, w, n_rows, tuple(beam.jaw_y_mm))  # (P, R)
    pairs = np.flatnonzero(overlap.sum(axis=1) > 0)
    edges = u0_mm + (np.arange(n_cols + 1) - 0.5) * w
    e0, e1 = edges[None, :-1], edges[None, 1:]
    jx1, jx2 = float(beam.jaw_x_mm[0]), float(beam.jaw_x_mm[1])
    in_jaw = np.maximum(np.minimum(e1, jx2) - np.maximum(e0, jx1), 0.0)  # (1, C), mm
    per_pair = np.zeros((pairs.size, n_cols))
    d_mu = np.diff(beam.cumulative_mu)
    for k in np.flatnonzero(d_mu > 0):
        l0 = beam.left_mm[k, pairs][:, None] - half_dlg
        l1 = beam.left_mm[k + 1, pairs][:, None] - half_dlg
        r0 = beam.right_mm[k, pairs][:, None] + half_dlg
        r1 = beam.right_mm[k + 1, pairs][:, None] + half_dlg
        opened = _open_exposure(l0, l1, r0, r1, e0, e1, jx1, jx2)
        per_pair += d_mu[k] * (t * in_jaw + (1 - t) * opened)
    return (overlap[pairs].T @ per_pair) / w / w


def leaf_rule_violations(beam: BeamDelivery, machine: Machine, tol_mm: float = 1e-6) -> list[str]:
    """Every broken leaf rule of a beam, as messages (empty: deliverable).

    Checked at every control point: each pair's gap >= ``min_gap_mm``; without interdigitation,
    opposing leaves of neighbouring pairs >= ``min_gap_mm`` apart; cumulative MU non-decreasing;
    and between control points with MU no leaf faster than ``max_leaf_speed_mm_s`` at
    ``dose_rate_mu_min``."""
    out = []
    g = machine.min_gap_mm
    gap = beam.right_mm - beam.left_mm
    for k, p in zip(*np.nonzero(gap < g - tol_mm)):
        out.append(f"control point {k}, leaf pair {p}: gap {gap[k, p]:.4g} mm < min_gap_mm {g:g}")
    if not machine.interdigitation:
        a = beam.right_mm[:, 1:] - beam.left_mm[:, :-1]
        b = beam.right_mm[:, :-1] - beam.left_mm[:, 1:]
        for k, p in zip(*np.nonzero(np.minimum(a, b) < g - tol_mm)):
            out.append(f"control point {k}, leaf pairs {p}/{p + 1}: opposing leaves interdigitate")
    d_mu = np.diff(beam.cumulative_mu)
    if np.any(d_mu < 0):
        out.append("cumulative MU decreases")
    move = np.maximum(np.abs(np.diff(beam.left_mm, axis=0)),
                      np.abs(np.diff(beam.right_mm, axis=0))).max(axis=1)
    limit = d_mu * machine.leaf_speed_mm_per_mu
    for k in np.flatnonzero((d_mu > 0) & (move > limit + tol_mm)):
        out.append(f"control points {k}-{k + 1}: a leaf moves {move[k]:.4g} mm in {d_mu[k]:.4g} MU "
                   f"(at most {limit[k]:.4g} mm)")
    return out


def _centred_field(beam_dict: dict, delivery_beam: BeamDelivery) -> tuple[int, int]:
    """Half sizes (K_v, K_u), in beamlets, of a beamlet grid centred on the central axis that
    holds both the plan's map and the jaw opening."""
    w = float(beam_dict["beamlet_mm"])
    nv, nu = beam_dict["map_shape"]
    u0, v0 = float(beam_dict["u0_mm"]), float(beam_dict["v0_mm"])
    for x in (u0, v0):
        if abs(x / w - round(x / w)) > 1e-6:
            raise DeliveryError("plan: the beamlet grid is not on whole beamlets from the central axis")
    ku = max(abs(u0), abs(u0 + (nu - 1) * w), *np.abs(delivery_beam.jaw_x_mm)) / w
    kv = max(abs(v0), abs(v0 + (nv - 1) * w), *np.abs(delivery_beam.jaw_y_mm)) / w
    return int(math.ceil(kv - 1e-9)), int(math.ceil(ku - 1e-9))


def delivered_dose(plan: Plan, beams: PhotonBeams, delivery: Delivery, *,
                   ideal: bool = False) -> tuple[Plan, Plan]:
    """The plan's optimized fluence and its delivered fluence, both recomputed with ``beams``'
    model on one beamlet grid that covers every jaw opening (transmission reaches cells the
    optimizer never opened).

    Returns ``(optimized, delivered)`` Plans on ``plan.patient``: the first holds the plan's own
    weights (its dose equals ``plan.dose`` up to float32 rounding), the second the delivered
    fluence divided by ``delivery.calibration.mu_per_weight``. ``delivered.solver["delivery"]``
    holds :meth:`Delivery.summary`.
    """
    if not isinstance(beams, PhotonBeams):
        raise DeliveryError(f"beams: expected the PhotonBeams the plan was computed with, got "
                            f"{type(beams).__name__}")
    angles = [round(float(b["gantry_deg"]), 9) for b in plan.beams]
    if [round(float(g), 9) for g in beams.gantry_deg] != angles:
        raise DeliveryError(f"beams: gantry angles {list(beams.gantry_deg)} differ from the plan's "
                            f"{[b['gantry_deg'] for b in plan.beams]}")
    by_beam = {bd.beam: bd for bd in delivery.beams}
    maps_opt = plan.fluence_maps()
    fields, wanted_opt, wanted_del = {}, {}, {}
    for b, beam in enumerate(plan.beams):
        w = float(beam["beamlet_mm"])
        nv, nu = beam["map_shape"]
        if b in by_beam:
            kv, ku = _centred_field(beam, by_beam[b])
        else:
            kv = int(round(max(abs(beam["v0_mm"]), abs(beam["v0_mm"] + (nv - 1) * w)) / w))
            ku = int(round(max(abs(beam["u0_mm"]), abs(beam["u0_mm"] + (nu - 1) * w)) / w))
        shape = (2 * kv + 1, 2 * ku + 1)
        opt = np.zeros(shape)
        r0, c0 = int(round(beam["v0_mm"] / w)) + kv, int(round(beam["u0_mm"] / w)) + ku
        opt[r0: r0 + nv, c0: c0 + nu] = maps_opt[b]
        mu = (delivered_fluence(by_beam[b], delivery.machine, -ku * w, -kv * w, w, shape, ideal=ideal)
              if b in by_beam else np.zeros(shape))
        dlv = mu / delivery.calibration.mu_per_weight
        open_map = (opt > 0) | (dlv > 0)
        if not open_map.any():
            open_map[kv, ku] = True
        fields[b], wanted_opt[b], wanted_del[b] = open_map, opt, dlv
    iso = tuple(float(x) for x in plan.beams[0]["isocenter_mm"])
    influence = beams.influence(plan.patient, isocenter_mm=iso, fields=fields, max_memory_mb=math.inf)
    # beamlets by their centre (u, v) in the isocentre plane: whole beamlets from the axis
    t = influence.beamlets
    w_opt, w_del = np.zeros(len(t["beam"])), np.zeros(len(t["beam"]))
    for j, (b, u, v) in enumerate(zip(t["beam"], t["u_mm"], t["v_mm"])):
        kv, ku = (np.asarray(wanted_opt[b].shape) - 1) // 2
        w = float(plan.beams[b]["beamlet_mm"])
        r, c = int(round(v / w)) + kv, int(round(u / w)) + ku
        w_opt[j], w_del[j] = wanted_opt[b][r, c], wanted_del[b][r, c]
    solver = {"name": "recomputed", "status": "optimized fluence"}
    optimized = Plan.from_weights(plan.patient, influence, w_opt, plan.fractions, dict(solver))
    solver = {"name": "recomputed", "status": "delivered fluence", "delivery": delivery.summary()}
    delivered = Plan.from_weights(plan.patient, influence, w_del, plan.fractions, solver)
    return optimized, delivered
