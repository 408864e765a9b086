"""Leaf sequencing of a photon plan: fluence maps -> MLC control points with MU.

:func:`sequence` turns each beam's optimized fluence map into a :class:`BeamDelivery` on a
:class:`~optimizer.deliver.machine.Machine`: the map's beamlet rows are mapped onto the leaf
pairs (leaf boundaries along IEC Y, v), each leaf pair's profile is quantized to ``levels``
intensity levels (the level unit is the beam's largest leaf-pair weight / ``levels``) and the
integer matrix is decomposed into apertures (:mod:`optimizer.deliver.decompose`). Leaf positions
lie on the beamlet edges along IEC X (u). Closed leaf pairs keep the machine's minimum gap; without
interdigitation, apertures whose neighbouring rows would interlock are split (same MU each) and
closed pairs are placed where no opposing leaves of neighbouring pairs come closer than the
minimum gap.

Positions are in the isocentre plane, mm, IEC 61217 beam-limiting-device coordinates with
collimator angle 0 (u = IEC X, v = IEC Y, see :class:`~optimizer.beams.raytrace.BeamGeometry`).
MU are per fraction.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass, field, replace

import numpy as np

from ..plan import Plan
from .calibration import MUCalibration
from .decompose import reducing_levels, sweep
from .machine import DeliveryError, Machine

TECHNIQUES = ("step_and_shoot", "sliding_window")
METHODS = {"reducing_levels": reducing_levels, "sweep": sweep}


@dataclass
class BeamDelivery:
    """The MLC control points of one beam.

    Attributes
    ----------
    beam : index of the beam in the plan
    gantry_deg, couch_deg, collimator_deg : IEC 61217 angles, degrees
    isocenter_mm : (x, y, z) LPS, mm
    technique : "step_and_shoot" (pairs of control points with equal leaf positions, one pair per
        segment) or "sliding_window" (leaves move linearly in MU between control points)
    leaf_boundaries_mm : (n_pairs + 1,) leaf boundaries along IEC Y, mm
    jaw_x_mm, jaw_y_mm : (2,) jaw positions (X1, X2) and (Y1, Y2), mm, fixed for the beam
    left_mm, right_mm : (n_control_points, n_pairs) leaf positions of bank A (left, X1 side) and
        bank B (right), mm
    cumulative_mu : (n_control_points,) MU delivered before each control point, ascending; the
        last is the beam's MU
    levels : the number of intensity levels of the quantization (step and shoot), or None
    level_weight : the beamlet weight of one level unit (per fraction)
    """

    beam: int
    gantry_deg: float
    couch_deg: float
    isocenter_mm: tuple[float, float, float]
    technique: str
    leaf_boundaries_mm: np.ndarray
    jaw_x_mm: np.ndarray
    jaw_y_mm: np.ndarray
    left_mm: np.ndarray
    right_mm: np.ndarray
    cumulative_mu: np.ndarray
    levels: int | None = None
    level_weight: float | None = None
    collimator_deg: float = 0.0

    @property
    def mu(self) -> float:
        """MU of the beam per fraction."""
        return float(self.cumulative_mu[-1])

    @property
    def n_control_points(self) -> int:
        return int(self.cumulative_mu.size)

    @property
    def n_segments(self) -> int:
        """Apertures with beam on: step and shoot, one per pair of control points; sliding
        window, the control-point intervals with MU > 0."""
        return int(np.count_nonzero(np.diff(self.cumulative_mu) > 0))

    def segments(self) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """(MU, left_mm, right_mm) of every control-point interval with MU > 0 (step and shoot:
        the static segments)."""
        d = np.diff(self.cumulative_mu)
        return [(float(d[k]), self.left_mm[k], self.right_mm[k]) for k in np.flatnonzero(d > 0)]


@dataclass
class Delivery:
    """A sequenced photon plan: one :class:`BeamDelivery` per beam with fluence, the machine and
    the MU calibration."""

    beams: list[BeamDelivery]
    machine: Machine
    calibration: MUCalibration
    fractions: int
    technique: str
    method: str | None = None
    skipped_beams: list[int] = field(default_factory=list)

    def __post_init__(self):
        # checked here, not only at export: MU per fraction and the delivered dose read it
        f = self.fractions
        if isinstance(f, (bool, np.bool_)) or not isinstance(f, numbers.Real) or not (
                np.isfinite(f) and float(f).is_integer() and f >= 1):
            raise DeliveryError(f"fractions: expected a whole number of fractions >= 1, got {f!r}")
        self.fractions = int(f)
        if self.technique not in TECHNIQUES:
            raise DeliveryError(f"technique: expected one of {TECHNIQUES}, got {self.technique!r}")

    def scaled(self, factor: float) -> Delivery:
        """The same segments with every MU multiplied by ``factor`` (> 0): plan normalization.
        The delivered dose, transmission and leakage included, scales by the same factor."""
        if isinstance(factor, bool) or not (np.isfinite(factor) and factor > 0):
            raise DeliveryError(f"factor: expected a positive finite MU scale factor, got {factor!r}")
        beams = [replace(b, cumulative_mu=b.cumulative_mu * float(factor),
                         level_weight=None if b.level_weight is None else b.level_weight * float(factor))
                 for b in self.beams]
        return replace(self, beams=beams)

    @property
    def mu_per_beam(self) -> list[float]:
        return [b.mu for b in self.beams]

    @property
    def total_mu(self) -> float:
        """Total MU per fraction."""
        return float(sum(self.mu_per_beam))

    @property
    def n_segments(self) -> int:
        return int(sum(b.n_segments for b in self.beams))

    def summary(self) -> dict:
        """``{"segments", "total_MU", "mu_per_beam", ...}`` (MU per fraction)."""
        return {"segments": self.n_segments, "total_MU": self.total_mu, "mu_per_beam": self.mu_per_beam,
                "segments_per_beam": [b.n_segments for b in self.beams],
                "control_points": int(sum(b.n_control_points for b in self.beams)),
                "technique": self.technique, "method": self.method,
                "levels": self.beams[0].levels if self.beams else None,
                "calibration": self.calibration.as_dict(), "machine": self.machine.name}


# -- rows of the fluence map <-> leaf pairs --------------------------------------------------------


def row_leaf_overlap(leaf_boundaries_mm: np.ndarray, v0_mm: float, beamlet_mm: float, n_rows: int,
                     y_limits=(-np.inf, np.inf)) -> np.ndarray:
    """(n_pairs, n_rows) overlap length (mm) of each leaf pair with each beamlet row (row r spans
    ``v0 + (r -+ 1/2) beamlet``), clipped to the ``y_limits`` (the Y jaws)."""
    b = np.asarray(leaf_boundaries_mm, float)
    lo = np.maximum(b[:-1, None], v0_mm + (np.arange(n_rows) - 0.5) * beamlet_mm)
    hi = np.minimum(b[1:, None], v0_mm + (np.arange(n_rows) + 0.5) * beamlet_mm)
    lo, hi = np.maximum(lo, y_limits[0]), np.minimum(hi, y_limits[1])
    return np.maximum(hi - lo, 0.0)


def _leaf_profiles(fluence: np.ndarray, overlap: np.ndarray, beam: int, beamlet_mm: float) -> np.ndarray:
    covered = overlap.sum(axis=0)
    bad = np.flatnonzero((fluence.max(axis=1) > 0) & (covered < beamlet_mm * (1 - 1e-9)))
    if bad.size:
        raise DeliveryError(f"machine: beam {beam}'s fluence rows {bad.tolist()} lie (partly) outside the "
                            "MLC (n_leaf_pairs x leaf_width_mm); use a machine with more or wider leaves")
    width = overlap.sum(axis=1)
    profiles = np.divide(overlap @ fluence, width[:, None], where=width[:, None] > 0,
                         out=np.zeros((overlap.shape[0], fluence.shape[1])))
    # a leaf pair spanning parts of two beamlet rows delivers their average to both: the fluence
    # the leaves can give back, row by row, against the optimized one
    back = np.divide(overlap.T @ profiles, covered[:, None], out=np.zeros_like(fluence, dtype=float),
                     where=covered[:, None] > 0)
    peak = float(fluence.max(initial=0.0))
    err = float(np.abs(back - fluence).max(initial=0.0)) / peak if peak > 0 else 0.0
    if err > MISALIGNED_TOLERANCE:
        warnings.warn(f"machine: beam {beam}'s leaf boundaries do not fall on the edges of its "
                      f"{beamlet_mm:g} mm beamlet rows: the leaves average neighbouring rows, up to "
                      f"{100 * err:.0f} % of the peak fluence off the optimized map; use leaves whose "
                      f"boundaries are the rows' edges (leaf_width_mm equal to the beamlet size and an "
                      f"odd n_leaf_pairs when a row is centred on the axis)", stacklevel=3)
    return profiles


#: relative fluence error (to the beam's peak) from misaligned leaves above which sequence() warns
MISALIGNED_TOLERANCE = 1e-3


# -- apertures -> leaf positions ---------------------------------------------------------------------


def _overlap_ok(a: tuple[float, float], b: tuple[float, float], gap: float) -> bool:
    """Opposing leaves of two pairs with openings a and b (left, right) stay >= gap apart."""
    return min(a[1], b[1]) - max(a[0], b[0]) >= gap - 1e-9


def _split_interlocked(open_rows: np.ndarray, left: np.ndarray, right: np.ndarray,
                       gap: float) -> list[list[int]]:
    """Groups of open rows that can share one aperture without interdigitation: consecutive open
    rows of a group (closed rows between them allowed) overlap by at least ``gap``. Chains of
    rows are assigned first-fit."""
    chains: list[list[int]] = []
    for r in open_rows.tolist():
        if chains and _overlap_ok((left[chains[-1][-1]], right[chains[-1][-1]]), (left[r], right[r]), gap):
            chains[-1].append(r)
        else:
            chains.append([r])
    groups: list[list[int]] = []
    for chain in chains:
        for g in groups:
            last, first = g[-1], chain[0]
            if _overlap_ok((left[last], right[last]), (left[first], right[first]), gap):
                g.extend(chain)
                break
        else:
            groups.append(list(chain))
    return groups


def _close_rows(left: np.ndarray, right: np.ndarray, rows_open: list[int], machine: Machine,
                jaw_x1: float) -> tuple[np.ndarray, np.ndarray]:
    """Leaf positions with every pair not in ``rows_open`` closed to the minimum gap: at the X1
    jaw with interdigitation, else at a position that keeps the neighbours' opposing leaves
    ``min_gap`` apart (closed runs share one position between the open rows around them)."""
    n = left.size
    g = machine.min_gap_mm
    out_l, out_r = np.full(n, jaw_x1 - g), np.full(n, jaw_x1)
    rows_open = sorted(rows_open)
    out_l[rows_open], out_r[rows_open] = left[rows_open], right[rows_open]
    if machine.interdigitation or not rows_open:
        return out_l, out_r
    bounds = [-1] + rows_open + [n]
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - a <= 1:
            continue
        around = [r for r in (a, b) if 0 <= r < n]
        p = max(left[r] for r in around)
        out_l[a + 1: b], out_r[a + 1: b] = p, p + g
    return out_l, out_r


def _beam_delivery(b: int, beam: dict, fluence: np.ndarray, machine: Machine, cal: MUCalibration,
                   levels: int, method: str) -> BeamDelivery | None:
    w = float(beam["beamlet_mm"])
    u0, v0 = float(beam["u0_mm"]), float(beam["v0_mm"])
    if machine.min_gap_mm > w:
        raise DeliveryError(f"machine.min_gap_mm: {machine.min_gap_mm:g} mm exceeds the {w:g} mm beamlet "
                            "width; the narrowest opening would be closed")
    boundaries = machine.leaf_boundaries_mm
    overlap = row_leaf_overlap(boundaries, v0, w, fluence.shape[0])
    profiles = _leaf_profiles(fluence, overlap, b, w)
    top = float(profiles.max())
    if top <= 0:
        return None
    unit = top / levels
    intensity = np.rint(profiles / unit).astype(np.int64)
    pairs = np.flatnonzero(intensity.max(axis=1) > 0)
    apertures = METHODS[method](intensity[pairs])
    n_pairs = machine.n_leaf_pairs
    segments: list[tuple[float, list[int], np.ndarray, np.ndarray]] = []  # (units, open rows, left, right)
    for units, lo, hi in apertures:
        left, right = np.zeros(n_pairs), np.zeros(n_pairs)
        rows = pairs[lo >= 0]
        left[rows] = u0 + (lo[lo >= 0] - 0.5) * w
        right[rows] = u0 + (hi[lo >= 0] + 0.5) * w
        groups = [rows.tolist()] if machine.interdigitation else _split_interlocked(
            rows, left, right, machine.min_gap_mm)
        segments += [(units, g, left, right) for g in groups]
    open_l = min(float(s[2][s[1]].min()) for s in segments)
    open_r = max(float(s[3][s[1]].max()) for s in segments)
    rows_any = sorted({r for s in segments for r in s[1]})
    jaw_x = np.array([open_l, open_r])
    jaw_y = np.array([boundaries[rows_any[0]], boundaries[rows_any[-1] + 1]])
    lefts, rights, cum = [], [], [0.0]
    for units, rows, left, right in segments:
        cl, cr = _close_rows(left, right, rows, machine, open_l)
        lefts += [cl, cl]
        rights += [cr, cr]
        mu = units * unit * cal.mu_per_weight
        cum += [cum[-1] + mu, cum[-1] + mu]
    cumulative = np.array(cum[:-1])
    return BeamDelivery(b, float(beam["gantry_deg"]), float(beam.get("couch_deg", 0.0)),
                        tuple(float(x) for x in beam["isocenter_mm"]), "step_and_shoot", boundaries, jaw_x,
                        jaw_y, np.array(lefts), np.array(rights), cumulative, levels, unit)


def sequence(plan: Plan, machine: Machine, calibration: MUCalibration, levels: int = 10, *,
             technique: str = "step_and_shoot", method: str = "reducing_levels") -> Delivery:
    """Sequence every beam of a photon plan (see module).

    Parameters
    ----------
    plan : a solved photon plan (beamlet grid per beam: ``u0_mm``, ``v0_mm``, ``beamlet_mm``)
    machine : MLC geometry and limits
    calibration : MU per unit weight (:func:`~optimizer.deliver.calibrate`)
    levels : number of intensity levels per beam (step and shoot), an integer >= 1
    technique : "step_and_shoot" or "sliding_window"
    method : step-and-shoot decomposition: "reducing_levels" (Xia & Verhey 1998) or "sweep"
        (Bortfeld et al. 1994)

    Returns
    -------
    Delivery : beams with fluence (beams without any are listed in ``skipped_beams``).
    """
    if not isinstance(plan, Plan) or plan.modality != "photon":
        raise DeliveryError("plan: expected a photon Plan (modality 'photon'), got "
                            f"{getattr(plan, 'modality', type(plan).__name__)!r}")
    if not isinstance(machine, Machine):
        raise DeliveryError(f"machine: expected an optimizer.deliver.Machine, got {type(machine).__name__}")
    if not isinstance(calibration, MUCalibration):
        raise DeliveryError("calibration: expected the MUCalibration of optimizer.deliver.calibrate(beams)")
    if technique not in TECHNIQUES:
        raise DeliveryError(f"technique: expected one of {TECHNIQUES}, got {technique!r}")
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise DeliveryError(f"levels: expected an integer number of intensity levels >= 1, got {levels!r}")
    if technique == "sliding_window":
        from .sliding import sliding_window_beam
        builder = sliding_window_beam
        method = None
    else:
        if method not in METHODS:
            raise DeliveryError(f"method: expected one of {tuple(METHODS)}, got {method!r}")
        builder = _beam_delivery
    for b, beam in enumerate(plan.beams):
        if abs(float(beam.get("beamlet_mm", np.nan)) - calibration.beamlet_mm) > 1e-9:
            raise DeliveryError(f"calibration: made for {calibration.beamlet_mm:g} mm beamlets, beam {b} has "
                                f"{beam.get('beamlet_mm')!r} mm")
    maps = plan.fluence_maps()
    out, skipped = [], []
    for b, beam in enumerate(plan.beams):
        bd = builder(b, beam, maps[b], machine, calibration, int(levels), method)
        if bd is None:
            skipped.append(b)
        else:
            out.append(bd)
    if not out:
        raise DeliveryError("plan: no beam has a positive fluence; nothing to deliver")
    return Delivery(out, machine, calibration, plan.fractions, technique, method, skipped)
