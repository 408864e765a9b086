"""Proton beam-data table: energy spread and in-air spot sigma per nominal energy.

A PBS beam line is commissioned by fitting, per nominal energy, the energy spread to measured
pristine peaks and the in-air spot sigma to measured spot profiles; the dose model then
interpolates between the tabulated energies. :class:`ProtonBeamData` holds such a table.

* Default: ``optimizer/beams/data/proton_generic.csv``, a generic cyclotron beam line (the file's
  header names the basis of its values: energy spread 0.45-0.9 % 1 sigma, larger at low energies,
  within the 0.5-1 % generic beam-data libraries list; spot sigma 6.5 mm at 70 MeV to 3.3 mm at
  230 MeV, within the 3-7 mm of clinical nozzles; REFERENCES.md).
* Your own machine: :meth:`ProtonBeamData.from_file` reads a CSV (header ``energy_MeV,
  energy_spread_pct,spot_sigma_air_mm``; lines starting with ``#`` are comments) or a JSON object
  ``{"energy_MeV": [...], "energy_spread_pct": [...], "spot_sigma_air_mm": [...]}``.
* :meth:`ProtonBeamData.constant`: one spread and one sigma for every energy (the model before
  the table existed).

Units: energies MeV, energy spread % of E (1 sigma), spot sigma mm (1 sigma, at isocentre, in air).
Between rows the values are interpolated linearly in energy; outside the table's energies they are
held at the nearest row (a table must cover at least one energy).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import BeamError

#: The columns of a beam-data table, in file order.
COLUMNS = ("energy_MeV", "energy_spread_pct", "spot_sigma_air_mm")
#: Package file of the default table (a generic cyclotron beam line; sources in its header).
DEFAULT_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "proton_generic.csv")
#: Accepted ranges: energies (MeV) of the proton model, spread (%) as in proton_physics, sigma (mm).
_LIMITS = {"energy_MeV": (70.0, 230.0), "energy_spread_pct": (0.0, 5.0), "spot_sigma_air_mm": (0.1, 50.0)}


@dataclass(frozen=True)
class ProtonBeamData:
    """Energy spread and in-air spot sigma per nominal energy (module docstring).

    Parameters
    ----------
    energy_MeV : nominal energies, MeV, strictly increasing, within 70-230 MeV
    energy_spread_pct : 1-sigma energy spread at each energy, % of E, in [0, 5]
    spot_sigma_air_mm : in-air spot sigma at isocentre at each energy, mm, in (0.1, 50]
    source : a line naming where the values come from (kept in the beam records)
    """

    energy_MeV: tuple
    energy_spread_pct: tuple
    spot_sigma_air_mm: tuple
    source: str = ""

    def __post_init__(self):
        cols = {}
        n = None
        for name in COLUMNS:
            raw = getattr(self, name)
            if isinstance(raw, (str, bytes)) or raw is None:
                raise BeamError(f"beam_data.{name}: expected a sequence of numbers, got {raw!r}")
            try:
                arr = np.asarray(raw, dtype=float).ravel()
            except (TypeError, ValueError):
                raise BeamError(f"beam_data.{name}: expected a sequence of numbers, got {raw!r}") from None
            lo, hi = _LIMITS[name]
            bad = ~np.isfinite(arr) | (arr < lo) | (arr > hi)
            if arr.size == 0:
                raise BeamError(f"beam_data.{name}: expected at least one value")
            if bad.any():
                raise BeamError(f"beam_data.{name}: {arr[bad][0]!r} is outside the accepted range "
                                f"[{lo:g}, {hi:g}]")
            if n is not None and arr.size != n:
                raise BeamError(f"beam_data.{name}: expected {n} values (one per energy), got {arr.size}")
            n = arr.size
            cols[name] = tuple(float(v) for v in arr)
        if np.any(np.diff(cols["energy_MeV"]) <= 0):
            raise BeamError("beam_data.energy_MeV: expected strictly increasing energies (one row each)")
        for name, value in cols.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "source", str(self.source))

    # -- constructors -------------------------------------------------------------------------------
    @classmethod
    def default(cls) -> ProtonBeamData:
        """The package's generic cyclotron beam line (``data/proton_generic.csv``)."""
        return _default_table()

    @classmethod
    def constant(cls, energy_spread_pct: float, spot_sigma_air_mm: float) -> ProtonBeamData:
        """One spread (%) and one in-air sigma (mm) at every energy."""
        return cls((70.0,), (energy_spread_pct,), (spot_sigma_air_mm,), source="constant")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ProtonBeamData:
        """Read a table from a ``.csv`` or ``.json`` file (format in the module docstring)."""
        path = os.fspath(path)
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".csv", ".json"):
            raise BeamError(f"beam_data: expected a .csv or .json file, got {path!r}")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as err:
            raise BeamError(f"beam_data: cannot read {path!r}: {err.strerror or err}") from None
        return cls.from_text(text, "json" if ext == ".json" else "csv", source=os.path.basename(path))

    @classmethod
    def from_text(cls, text: str, fmt: str = "csv", source: str = "") -> ProtonBeamData:
        """Parse a table from CSV or JSON text (``fmt``: "csv" or "json")."""
        if fmt == "json":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                raise BeamError(f"beam_data: not valid JSON ({err.msg}, line {err.lineno})") from None
            if not isinstance(obj, dict):
                raise BeamError(f"beam_data: expected a JSON object with the keys {', '.join(COLUMNS)}")
            missing = [c for c in COLUMNS if c not in obj]
            if missing:
                raise BeamError(f"beam_data: missing key(s) {', '.join(missing)}; "
                                f"expected {', '.join(COLUMNS)}")
            return cls(*(obj[c] for c in COLUMNS), source=str(obj.get("source", source)))
        if fmt != "csv":
            raise BeamError(f"beam_data: format must be 'csv' or 'json', got {fmt!r}")
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        rows = list(csv.reader(io.StringIO("\n".join(lines))))
        if not rows:
            raise BeamError(f"beam_data: empty table; expected a header {','.join(COLUMNS)} and rows")
        header = [h.strip() for h in rows[0]]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise BeamError(f"beam_data: header lacks column(s) {', '.join(missing)}; expected "
                            f"{','.join(COLUMNS)}, got {','.join(header)}")
        idx = [header.index(c) for c in COLUMNS]
        vals = []
        for k, row in enumerate(rows[1:], start=2):
            try:
                vals.append([float(row[i]) for i in idx])
            except (IndexError, ValueError):
                raise BeamError(f"beam_data: data row {k - 1} ({','.join(row)}): expected "
                                f"{len(header)} numbers") from None
        if not vals:
            raise BeamError("beam_data: the table has a header but no rows")
        arr = np.array(vals)
        return cls(*(arr[:, j] for j in range(3)), source=source)

    # -- lookup -------------------------------------------------------------------------------------
    def energy_spread_pct_at(self, energy_MeV):
        """1-sigma energy spread at ``energy_MeV`` (linear in energy, held outside the table), %."""
        return self._at(energy_MeV, self.energy_spread_pct)

    def spot_sigma_air_mm_at(self, energy_MeV):
        """In-air spot sigma at isocentre at ``energy_MeV`` (linear in energy), mm."""
        return self._at(energy_MeV, self.spot_sigma_air_mm)

    def _at(self, energy_MeV, column):
        e = np.asarray(energy_MeV, dtype=float)
        out = np.interp(e, self.energy_MeV, column)
        return float(out) if out.ndim == 0 else out

    def as_dict(self) -> dict:
        """The table as plain lists (JSON-ready)."""
        return {**{c: list(getattr(self, c)) for c in COLUMNS}, "source": self.source}


@lru_cache(maxsize=1)
def _default_table() -> ProtonBeamData:
    return ProtonBeamData.from_file(DEFAULT_TABLE)


def as_beam_data(value) -> ProtonBeamData:
    """``beam_data`` argument: None (the default table), a :class:`ProtonBeamData` or a path."""
    if value is None:
        return ProtonBeamData.default()
    if isinstance(value, ProtonBeamData):
        return value
    if isinstance(value, (str, os.PathLike)):
        return ProtonBeamData.from_file(value)
    raise BeamError(f"beam_data: expected None, a ProtonBeamData or a path to a .csv/.json table, "
                    f"got {type(value).__name__}")
