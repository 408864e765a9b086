"""Proton beam-data table: energy spread and in-air spot sigma per nominal energy.

A PBS beam line is commissioned by fitting, per nominal energy, the energy spread to measured
pristine peaks and the in-air spot sigma to measured spot profiles; the dose model then
interpolates between the tabulated energies. :class:`ProtonBeamData` holds such a table.

* Default: ``optimizer/beams/data/proton_generic.csv``, the generic IBA dedicated-nozzle beam
  line that OpenTPS ships as its default MCsquare beam model (OpenTPS consortium, UCLouvain / IBA,
  Apache-2.0: ``BDL_default_DN_RangeShifter.txt``, "UPenn beam model (double gaussian)"; read from
  github.com/jinkoo2/opentps2 at commit 6ee285d01205ef9fd848c5795c1779b9a5805e4a; converted with
  ``tools/bdl_to_beamdata.py``, the file's header has the details). 100-225 MeV in 5 MeV steps:
  energy spread 0.67 % (100 MeV) falling to 0.44 % (200 MeV) and 0.27 % (225 MeV); in-air spot
  sigma at isocentre 5.2 mm (100 MeV) to 2.7 mm (200 MeV). Held at 100 MeV below.
* An MCsquare / OpenTPS beam model: :meth:`ProtonBeamData.from_bdl`.
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
#: Package file of the default table (OpenTPS's generic IBA beam model; source in its header).
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
        """The package's generic beam line (``data/proton_generic.csv``: OpenTPS's default IBA
        dedicated-nozzle beam model, see the module docstring)."""
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

    @classmethod
    def from_bdl(cls, path: str | os.PathLike) -> ProtonBeamData:
        """Read the optics of an MCsquare / OpenTPS beam-data library (BDL, "Lookup table BDL
        format" / UPenn double-Gaussian model) and reduce them to this table.

        Per nominal energy: ``EnergySpread`` (% of the nominal energy, 1 sigma) as is; the in-air
        spot sigma at isocentre of the main Gaussian (``Weight1``), propagated in vacuum from the
        nozzle exit over ``Nozzle exit to Isocenter distance`` D (mm) with its divergence theta
        (rad) and correlation r: ``sigma_iso^2 = sigma^2 + 2 r sigma theta D + (theta D)^2`` (the
        phase-space ellipse that MCsquare samples at the nozzle exit), the root mean square of x
        and y. The second, wide Gaussian (``Weight2``, a few %) and ``MeanEnergy`` (the machine's
        range calibration) are not carried over; rows outside 70-230 MeV are left out."""
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                lines = [ln.strip() for ln in f]
        except OSError as err:
            raise BeamError(f"beam_data: cannot read {path!r}: {err.strerror or err}") from None
        try:
            k = lines.index("Nozzle exit to Isocenter distance")
            distance = float(next(ln for ln in lines[k + 1:] if ln))
            h = next(i for i, ln in enumerate(lines) if ln.startswith("NominalEnergy"))
        except (ValueError, StopIteration):
            raise BeamError(f"beam_data: {path!r} is not a BDL lookup table (expected the lines "
                            "'Nozzle exit to Isocenter distance' and a 'NominalEnergy ...' header)") from None
        header = lines[h].split()
        need = ("NominalEnergy", "EnergySpread", "SpotSize1x", "Divergence1x", "Correlation1x",
                "SpotSize1y", "Divergence1y", "Correlation1y")
        missing = [c for c in need if c not in header]
        if missing:
            raise BeamError(f"beam_data: BDL {path!r} lacks column(s) {', '.join(missing)}")
        rows = []
        for ln in lines[h + 1:]:
            if not ln or ln.startswith("#"):
                continue
            try:
                values = [float(v) for v in ln.split()]
                rows.append([values[header.index(c)] for c in need])
            except (ValueError, IndexError):
                raise BeamError(f"beam_data: BDL {path!r}: row {ln[:40]!r}... expected "
                                f"{len(header)} numbers") from None
        table = np.array(rows, dtype=float).reshape(-1, len(need))
        energy, spread = table[:, 0], table[:, 1]

        def at_iso(sigma, theta, corr):
            return sigma**2 + 2 * corr * sigma * theta * distance + (theta * distance) ** 2

        sigma = np.sqrt((at_iso(*table[:, 2:5].T) + at_iso(*table[:, 5:8].T)) / 2)
        keep = (energy >= _LIMITS["energy_MeV"][0]) & (energy <= _LIMITS["energy_MeV"][1])
        if not keep.any():
            raise BeamError(f"beam_data: BDL {path!r} has no energy within 70-230 MeV")
        return cls(energy[keep], spread[keep], sigma[keep], source=os.path.basename(path))

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
