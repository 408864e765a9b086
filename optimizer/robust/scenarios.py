"""Uncertainty scenarios: rigid setup shifts and proton range errors.

A :class:`Scenario` moves the patient by ``shift_mm`` (x, y, z, LPS, mm) relative to the
isocentre and, for protons, changes every water-equivalent depth (WEPL) inside the patient to
``w (1 + range_pct / 100) + range_mm``: a positive range error means more stopping than planned
(the Bragg peaks fall short, "undershoot"), a negative one overshoot.

Standard sets (defaults as in the robust-optimization literature and matRad / OpenTPS: 3 mm
setup, 3.5 % + 1 mm range; Paganetti, Phys Med Biol 2012;57:R99 for the 3.5 % + 1 mm range
margin recipe; Fredriksson et al., Med Phys 2011;38:1672 for the worst-case scenario set):

- :func:`nominal9`: the nominal scenario, +-setup along x, y and z (6), +-range (2) = 9;
- :func:`set21`: the 7 setup positions (nominal and the 6 shifts) x 3 range states = 21;
- :func:`scenario_list`: user lists of dicts / tuples / Scenarios.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PlanError

#: Default setup error along each axis, mm (a common 3 mm setup margin; Fredriksson 2011)
DEFAULT_SETUP_MM = 3.0
#: Default relative range error, % of the WEPL (Paganetti 2012: 3.5 % + 1 mm)
DEFAULT_RANGE_PCT = 3.5
#: Default absolute range error, mm of WEPL (Paganetti 2012)
DEFAULT_RANGE_MM = 1.0


def _finite(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PlanError(f"{name}: expected a number, got {value!r}") from None
    if not np.isfinite(v):
        raise PlanError(f"{name}: expected a finite number, got {value!r}")
    return v


@dataclass(frozen=True)
class Scenario:
    """One uncertainty scenario.

    Attributes
    ----------
    name : label (e.g. "nominal", "x+3mm", "range+")
    shift_mm : (x, y, z) patient shift relative to the isocentre, LPS, mm
    range_pct : relative range error, % of WEPL (> 0: undershoot), protons only
    range_mm : absolute range error, mm of WEPL (> 0: undershoot), protons only
    """

    name: str
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    range_pct: float = 0.0
    range_mm: float = 0.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise PlanError(f"Scenario.name: expected a non-empty string, got {self.name!r}")
        shift = self.shift_mm
        if isinstance(shift, (str, bytes)) or np.ndim(shift) != 1 or len(shift) != 3:
            raise PlanError(f"Scenario.shift_mm: expected (x, y, z) in mm, got {shift!r}")
        object.__setattr__(self, "shift_mm", tuple(_finite(v, "Scenario.shift_mm") for v in shift))
        pct = _finite(self.range_pct, "Scenario.range_pct")
        if pct <= -100:
            raise PlanError(f"Scenario.range_pct: expected a percentage > -100, got {self.range_pct!r}")
        object.__setattr__(self, "range_pct", pct)
        object.__setattr__(self, "range_mm", _finite(self.range_mm, "Scenario.range_mm"))

    @property
    def has_range_error(self) -> bool:
        return self.range_pct != 0.0 or self.range_mm != 0.0

    @property
    def wepl_scale(self) -> float:
        """Factor on the WEPL (stopping power scaled)."""
        return 1.0 + self.range_pct / 100.0

    def record(self) -> dict:
        """The scenario as the ``robust`` block of ``metrics.json`` writes it."""
        return {"name": self.name, "shift_mm": list(self.shift_mm), "range_pct": self.range_pct,
                "range_mm": self.range_mm}


def _setup_positions(setup_mm: float) -> list[Scenario]:
    out = []
    for axis, label in enumerate("xyz"):
        for sign, s in ((1, "+"), (-1, "-")):
            shift = [0.0, 0.0, 0.0]
            shift[axis] = sign * setup_mm
            out.append(Scenario(f"{label}{s}{setup_mm:g}mm", tuple(shift)))
    return out


def _check_defaults(setup_mm, range_pct, range_mm) -> tuple[float, float, float]:
    setup_mm = _finite(setup_mm, "setup_mm")
    range_pct = _finite(range_pct, "range_pct")
    range_mm = _finite(range_mm, "range_mm")
    if setup_mm < 0 or range_pct < 0 or range_mm < 0 or range_pct >= 100:
        raise PlanError(f"setup_mm / range_pct / range_mm: expected magnitudes >= 0 (range_pct < 100), got "
                        f"{setup_mm:g} mm, {range_pct:g} %, {range_mm:g} mm")
    return setup_mm, range_pct, range_mm


def nominal9(setup_mm: float = DEFAULT_SETUP_MM, range_pct: float = DEFAULT_RANGE_PCT,
             range_mm: float = DEFAULT_RANGE_MM, *, with_range: bool = True) -> list[Scenario]:
    """Nominal, +-``setup_mm`` along x, y, z and (``with_range``, protons) +-(``range_pct`` % +
    ``range_mm`` mm) range: 9 scenarios (7 without range)."""
    setup_mm, range_pct, range_mm = _check_defaults(setup_mm, range_pct, range_mm)
    out = [Scenario("nominal"), *_setup_positions(setup_mm)]
    if with_range:
        out += [Scenario("range+", range_pct=range_pct, range_mm=range_mm),
                Scenario("range-", range_pct=-range_pct, range_mm=-range_mm)]
    return out


def set21(setup_mm: float = DEFAULT_SETUP_MM, range_pct: float = DEFAULT_RANGE_PCT,
          range_mm: float = DEFAULT_RANGE_MM) -> list[Scenario]:
    """The 7 setup positions (nominal, +-x, +-y, +-z) combined with the 3 range states (none,
    undershoot, overshoot): 21 scenarios."""
    setup_mm, range_pct, range_mm = _check_defaults(setup_mm, range_pct, range_mm)
    out = []
    for pos in [Scenario("nominal"), *_setup_positions(setup_mm)]:
        for tag, sign in (("", 0), (" range+", 1), (" range-", -1)):
            out.append(Scenario(pos.name + tag if pos.name != "nominal" or not tag else tag.strip(),
                                pos.shift_mm, sign * range_pct, sign * range_mm))
    return out


def scenario_list(scenarios) -> list[Scenario]:
    """Scenarios from a user list: each a :class:`Scenario`, a dict with ``name`` and any of
    ``shift_mm``, ``range_pct``, ``range_mm``, or a tuple ``(name, shift_mm[, range_pct[,
    range_mm]])``. Names must be unique; at least one scenario."""
    if isinstance(scenarios, (str, bytes, dict)) or not hasattr(scenarios, "__iter__"):
        raise PlanError(f"scenarios: expected a list of Scenario / dict / tuple, got {scenarios!r}")
    out = []
    for k, s in enumerate(scenarios):
        if isinstance(s, Scenario):
            out.append(s)
        elif isinstance(s, dict):
            unknown = set(s) - {"name", "shift_mm", "range_pct", "range_mm"}
            if unknown or "name" not in s:
                raise PlanError(f"scenarios[{k}]: expected keys name, shift_mm, range_pct, range_mm "
                                f"(name required), got {sorted(s)}")
            out.append(Scenario(**s))
        elif isinstance(s, (tuple, list)) and 2 <= len(s) <= 4:
            out.append(Scenario(*s))
        else:
            raise PlanError(f"scenarios[{k}]: expected a Scenario, a dict or (name, shift_mm[, range_pct"
                            f"[, range_mm]]), got {s!r}")
    if not out:
        raise PlanError("scenarios: expected at least one scenario")
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise PlanError(f"scenarios: names must be unique, got {names}")
    return out
