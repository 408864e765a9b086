"""PBS delivery-time model: when each spot of a plan is delivered, and for how long.

Model (the simple timing model of OpenTPS, ``SimpleBeamDeliveryTimings``, Universite catholique
de Louvain; Wuyckens et al., "OpenTPS - open-source treatment planning system for research in
proton therapy", arXiv:2303.00365, 2023), with the spot time from the beam current instead of a
per-energy MU look-up table:

* spot time t_j = max(N_j e / I, t_min): N_j protons (spot weight x protons per unit weight) at the
  nozzle beam current I, at least the minimum spot time t_min (250 us in OpenTPS);
* between two spots of a layer the beam is off while the magnets move: distance (iso-plane, mm) /
  scanning speed (8000 mm/s in OpenTPS);
* between layers of a beam: the energy switching time, 0.6 s down (to a lower energy) and 6 s up
  (OpenTPS); layers are delivered from the highest energy down;
* between beams: ``beam_switch_s`` (gantry rotation is not in the OpenTPS model; 0 means the beams
  follow each other without a pause, as in dose-rate studies of single fields);
* spot order in a layer: "serpentine" (rows of the beam's spot grid, alternating direction, as
  OpenTPS's plan re-ordering), "raster" (every row in the same direction) or "table" (the order of
  the spot table).

Spots with weight 0 are not delivered. Every time is per fraction, in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PlanError

#: Elementary charge, C (CODATA 2018, exact).
ELEMENTARY_CHARGE_C = 1.602176634e-19
#: Scanning speed of the OpenTPS simple timing model, mm/s.
SCAN_SPEED_MM_S = 8000.0
#: Energy-layer switching times of the OpenTPS simple timing model, s (to a higher / lower energy).
LAYER_SWITCH_UP_S = 6.0
LAYER_SWITCH_DOWN_S = 0.6
#: Minimum irradiation time of a spot in the OpenTPS simple timing model, s.
MIN_SPOT_TIME_S = 250e-6
#: Default nozzle beam current, nA. Our choice for a FLASH-capable cyclotron in transmission mode
#: (hundreds of nA at the nozzle are discussed by van de Water et al., Acta Oncol 2019); set the
#: machine's own value.
DEFAULT_CURRENT_NA = 200.0
#: Protons per unit spot weight of bioplan's proton model (optimizer.beams.proton_physics).
PROTONS_PER_UNIT_WEIGHT = 1e8

ORDERS = ("serpentine", "raster", "table")


def _positive(value, name: str, allow_zero: bool = False) -> float:
    bound = ">= 0" if allow_zero else "> 0"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PlanError(f"Machine.{name}: expected a number {bound}, got {value!r}") from None
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise PlanError(f"Machine.{name}: expected a finite number {bound}, got {value!r}")
    return v


@dataclass(frozen=True)
class Machine:
    """Timing parameters of a PBS machine (defaults: module docstring and constants).

    Attributes
    ----------
    current_nA : beam current at the nozzle, nA
    scan_speed_mm_s : spot-to-spot scanning speed in the isocentre plane, mm/s
    layer_switch_up_s, layer_switch_down_s : energy switching time to a higher / lower energy, s
    min_spot_time_s : shortest spot irradiation, s
    beam_switch_s : pause between beams, s
    order : spot order within a layer, one of ``ORDERS``
    protons_per_weight : protons per unit spot weight (1e8 for bioplan's proton model)
    """

    current_nA: float = DEFAULT_CURRENT_NA
    scan_speed_mm_s: float = SCAN_SPEED_MM_S
    layer_switch_up_s: float = LAYER_SWITCH_UP_S
    layer_switch_down_s: float = LAYER_SWITCH_DOWN_S
    min_spot_time_s: float = MIN_SPOT_TIME_S
    beam_switch_s: float = 0.0
    order: str = "serpentine"
    protons_per_weight: float = PROTONS_PER_UNIT_WEIGHT

    def __post_init__(self):
        for name in ("current_nA", "scan_speed_mm_s", "protons_per_weight"):
            object.__setattr__(self, name, _positive(getattr(self, name), name))
        for name in ("layer_switch_up_s", "layer_switch_down_s", "min_spot_time_s", "beam_switch_s"):
            object.__setattr__(self, name, _positive(getattr(self, name), name, allow_zero=True))
        if self.order not in ORDERS:
            raise PlanError(f"Machine.order: expected one of {ORDERS}, got {self.order!r}")

    @property
    def weight_rate_per_s(self) -> float:
        """Spot weight delivered per second at the beam current, weight units / s (I / (N e))."""
        return self.current_nA * 1e-9 / (ELEMENTARY_CHARGE_C * self.protons_per_weight)

    @property
    def min_weight(self) -> float:
        """The spot weight below which a spot lasts the minimum spot time (weight units)."""
        return self.weight_rate_per_s * self.min_spot_time_s

    def spot_times_s(self, weights) -> np.ndarray:
        """Irradiation time of each spot, s: max(w / M, t_min) for w > 0, 0 for w = 0."""
        w = np.asarray(weights, dtype=float)
        return np.where(w > 0, np.maximum(w / self.weight_rate_per_s, self.min_spot_time_s), 0.0)


@dataclass
class Timeline:
    """The delivery of one fraction.

    Attributes
    ----------
    order : spot indices (columns of the influence matrix) in delivery order (delivered spots only)
    start_s : start time of every spot, s (NaN for spots not delivered)
    duration_s : irradiation time of every spot, s (0 for spots not delivered)
    beam_times_s : delivery time of each beam, first spot start to last spot end, s
    total_s : whole fraction, first spot start to last spot end, s
    irradiation_s, scanning_s, layer_switching_s, beam_switching_s : the parts of ``total_s``
    n_layers : energy layers delivered (all beams)
    """

    order: np.ndarray
    start_s: np.ndarray
    duration_s: np.ndarray
    beam_times_s: list[float]
    total_s: float
    irradiation_s: float
    scanning_s: float
    layer_switching_s: float
    beam_switching_s: float
    n_layers: int

    def summary(self) -> dict:
        """JSON-ready times (s) and counts."""
        r = lambda t: round(float(t), 6)  # noqa: E731
        return {"total_s": r(self.total_s), "irradiation_s": r(self.irradiation_s),
                "scanning_s": r(self.scanning_s),
                "layer_switching_s": r(self.layer_switching_s), "beam_switching_s": r(self.beam_switching_s),
                "beam_times_s": [r(t) for t in self.beam_times_s],
                "spots_delivered": int(len(self.order)), "layers": int(self.n_layers)}


def _column(beamlets: dict, key: str, n: int) -> np.ndarray:
    if key not in beamlets:
        raise PlanError(f"beamlets['{key}']: the delivery model needs this spot-table column "
                        f"(proton spot tables carry beam, layer, energy_MeV, u_mm, v_mm, row, col)")
    col = np.asarray(beamlets[key])
    if col.shape != (n,):
        raise PlanError(f"beamlets['{key}']: expected {n} entries, got shape {col.shape}")
    return col


def _layer_order(idx: np.ndarray, row: np.ndarray, col: np.ndarray, order: str) -> np.ndarray:
    """Spot indices ``idx`` of one layer in delivery order."""
    if order == "table":
        return idx
    r, c = row[idx], col[idx]
    if order == "serpentine":
        rank = np.searchsorted(np.unique(r), r)
        c = np.where(rank % 2 == 1, -c, c)  # odd rows run backwards
    return idx[np.lexsort((c, r))]


def delivery_timeline(beamlets: dict, weights, machine: Machine | None = None) -> Timeline:
    """The delivery of one fraction of spot weights ``weights`` (module docstring).

    Parameters
    ----------
    beamlets : the spot table of the influence matrix or plan (``beam``, ``energy_MeV`` (or
        ``layer``), ``u_mm``, ``v_mm``, ``row``, ``col``)
    weights : spot weights, one per spot, >= 0 (units of the influence matrix's columns)
    machine : timing parameters; default :class:`Machine`
    """
    machine = Machine() if machine is None else machine
    if not isinstance(machine, Machine):
        raise PlanError(f"machine: expected an optimizer.flash.Machine, got {type(machine).__name__}")
    w = np.asarray(weights, dtype=float).ravel()
    n = w.size
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise PlanError("weights: expected finite spot weights >= 0")
    beam = _column(beamlets, "beam", n)
    if "energy_MeV" in beamlets:
        energy = _column(beamlets, "energy_MeV", n).astype(float)
    else:
        energy = -_column(beamlets, "layer", n).astype(float)  # layer 0 first
    u, v = _column(beamlets, "u_mm", n).astype(float), _column(beamlets, "v_mm", n).astype(float)
    row, col = _column(beamlets, "row", n), _column(beamlets, "col", n)
    duration = machine.spot_times_s(w)
    start = np.full(n, np.nan)
    order, beam_times = [], []
    t = 0.0
    scanning = layer_sw = beam_sw = 0.0
    n_layers = 0
    first_beam = True
    for b in np.unique(beam):
        in_beam = np.flatnonzero((beam == b) & (w > 0))
        if len(in_beam) == 0:
            continue
        if not first_beam:
            t += machine.beam_switch_s
            beam_sw += machine.beam_switch_s
        first_beam = False
        beam_start = t
        prev_energy, prev = None, None
        for e in sorted(np.unique(energy[in_beam]), reverse=True):
            layer = _layer_order(in_beam[energy[in_beam] == e], row, col, machine.order)
            if prev_energy is not None:
                switch = machine.layer_switch_up_s if e > prev_energy else machine.layer_switch_down_s
                t += switch
                layer_sw += switch
                prev = None
            n_layers += 1
            for j in layer:
                if prev is not None:
                    move = float(np.hypot(u[j] - u[prev], v[j] - v[prev])) / machine.scan_speed_mm_s
                    t += move
                    scanning += move
                start[j] = t
                t += duration[j]
                order.append(j)
                prev = j
            prev_energy = e
        beam_times.append(t - beam_start)
    order = np.asarray(order, dtype=np.int64)
    return Timeline(order, start, duration, beam_times, t, float(duration.sum()), scanning, layer_sw, beam_sw,
                    n_layers)
