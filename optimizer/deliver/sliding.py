"""Sliding-window (dynamic MLC) delivery of one beam.

Each leaf-pair profile (quantized to the same intensity levels as step and shoot) is delivered
by the unidirectional trajectories of Spirou & Chui, Med Phys 1994;21:1031 (also Svensson,
Kallman & Brahme, Phys Med Biol 1994;39:37; the dynamic form of the sweep of Bortfeld et al.
1994): both leaves travel left to right at the maximum speed (``Machine.leaf_speed_mm_per_mu``)
and stop only at beamlet edges - the trailing leaf waits where the profile rises, the leading leaf
where it falls - so that within every cell the trailing leaf passes exactly ``I`` MU after the
leading one, with the least MU under the speed limit. The trailing leaf is held at least
``min_gap_mm`` behind the leading leaf (``left = min(left, right - min_gap)``; this extra opening
is part of the delivered fluence, at most ``min_gap / speed`` MU per point); a pair whose row is
done travels on closed, at full speed, to park beyond the X jaw. Control points are every time
any leaf starts or stops, so the leaves move linearly in MU between them and the written plan is
exact.

Interlocking neighbouring leaves are not prevented: sliding window needs a machine with
``interdigitation=True``.
"""

from __future__ import annotations

import numpy as np

from .calibration import MUCalibration
from .machine import DeliveryError, Machine
from .sequence import BeamDelivery, _leaf_profiles, row_leaf_overlap


def _row_trajectories(profile_mu: np.ndarray, edges: np.ndarray, travel_mu: float):
    """Breakpoints (MU, position) of the leading (right) and trailing (left) leaf of one pair."""
    steps = np.diff(np.r_[0.0, profile_mu, 0.0])
    t_lead = t_trail = 0.0
    lead, trail = [], []
    for k, x in enumerate(edges):
        lead.append((t_lead, x))
        trail.append((t_trail, x))
        t_lead += max(-steps[k], 0.0)  # a fall: the leading leaf waits
        t_trail += max(steps[k], 0.0)  # a rise: the trailing leaf waits
        lead.append((t_lead, x))
        trail.append((t_trail, x))
        if k < len(edges) - 1:
            t_lead += travel_mu
            t_trail += travel_mu
    return np.array(lead), np.array(trail)


def _at(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Position at MU ``m`` of a leaf with breakpoints ``points`` (MU ascending, waits allowed)."""
    t, x = points[:, 0], points[:, 1]
    return np.interp(m, t, x)


def sliding_window_beam(b: int, beam: dict, fluence: np.ndarray, machine: Machine, cal: MUCalibration,
                        levels: int, method=None) -> BeamDelivery | None:
    if not machine.interdigitation:
        raise DeliveryError("technique: sliding window moves neighbouring leaves independently and needs a "
                            "machine with interdigitation=True; use step_and_shoot")
    w = float(beam["beamlet_mm"])
    u0, v0 = float(beam["u0_mm"]), float(beam["v0_mm"])
    boundaries = machine.leaf_boundaries_mm
    profiles = _leaf_profiles(fluence, row_leaf_overlap(boundaries, v0, w, fluence.shape[0]), b, w)
    top = float(profiles.max())
    if top <= 0:
        return None
    unit = top / levels
    mu = np.rint(profiles / unit) * unit * cal.mu_per_weight
    pairs = np.flatnonzero(mu.max(axis=1) > 0)
    travel = w / machine.leaf_speed_mm_per_mu
    g = machine.min_gap_mm
    traj = {}
    for p in pairs:
        cols = np.flatnonzero(mu[p] > 0)
        c0, c1 = int(cols[0]), int(cols[-1])
        edges = u0 + (np.arange(c0, c1 + 2) - 0.5) * w
        traj[p] = _row_trajectories(mu[p, c0: c1 + 1], edges, travel)
    # a finished pair closed at its row's end would keep min_gap open over the row's last cell
    # while the other pairs deliver (C-shape, 8 levels: +47 % there); it travels on at full speed,
    # closed, to park beyond the X jaw, until the beam is off (the moving gap gives each cell it
    # crosses min_gap / speed MU)
    t_end = max(max(lead[-1, 0], trail[-1, 0]) for lead, trail in traj.values())
    park = max(lead[-1, 1] for lead, _ in traj.values()) + g
    speed = machine.leaf_speed_mm_per_mu
    for p, (lead, trail) in traj.items():
        t0, x_end = max(lead[-1, 0], trail[-1, 0]), lead[-1, 1]
        if g > 0 and t0 < t_end and x_end < park:
            stop = np.array([[t0, x_end], [t0 + (park - x_end) / speed, park]])
            traj[p] = (np.vstack([lead, stop]), np.vstack([trail, stop]))
    times = np.unique(np.concatenate([np.r_[lead[:, 0], trail[:, 0]] for lead, trail in traj.values()]))
    times = np.unique(np.r_[times[times < t_end], t_end])  # the beam is off at t_end
    # the minimum gap: left = min(trail, lead - g); add the MU where the two cross
    extra = []
    for lead, trail in traj.values():
        d = _at(trail, times) - (_at(lead, times) - g)
        k = np.flatnonzero(d[:-1] * d[1:] < 0)
        extra.append(times[k] + (times[k + 1] - times[k]) * d[k] / (d[k] - d[k + 1]))
    times = np.unique(np.concatenate([times, *extra]))
    jaw_x = np.array([min(t[1][:, 1].min() for t in traj.values()), park - g])
    jaw_y = np.array([boundaries[pairs[0]], boundaries[pairs[-1] + 1]])
    n = machine.n_leaf_pairs
    left = np.full((times.size, n), jaw_x[0] - g)
    right = np.full((times.size, n), jaw_x[0])
    for p, (lead, trail) in traj.items():
        right[:, p] = _at(lead, times)
        left[:, p] = np.minimum(_at(trail, times), right[:, p] - g)
    return BeamDelivery(b, float(beam["gantry_deg"]), float(beam.get("couch_deg", 0.0)),
                        tuple(float(x) for x in beam["isocenter_mm"]), "sliding_window", boundaries, jaw_x,
                        jaw_y, left, right, times, levels, unit)
