"""The results table of a study: one row per patient x arm, kept on disk as each row finishes.

Every :meth:`ResultStore.append` rewrites the whole table through
:func:`optimizer._files.atomic_write` (a unique temporary file in the same folder, then an
atomic rename), so the file on disk always holds every row completed so far and never a partial
write: a crash loses at most the rows in flight. Tables are small (hundreds to thousands of
rows), so a rewrite costs milliseconds.

Formats by suffix: ``.parquet`` (pyarrow, typed columns) or ``.csv`` (the standard library;
floats written with ``repr`` so they read back bit for bit). Columns and types are
:data:`optimizer.studies.work.ROW_COLUMNS` with :data:`COLUMN_TYPES`.
"""

from __future__ import annotations

import csv
import io
import math
import os

from .._files import atomic_write
from ..errors import PlanError
from .work import KEY_COLUMNS, ROW_COLUMNS

#: Column types: "str", "int", "bool"; every other column is a float.
COLUMN_TYPES = {
    "patient_id": "str", "arm": "str", "family": "str", "status": "str", "reason": "str", "goals": "str",
    "solver": "str", "solver_status": "str", "certificate": "str", "worker": "str",
    "seed": "int", "hypoxic_voxels": "int", "ptv_voxels": "int", "goals_met": "int", "goals_total": "int",
    "iterations": "int", "resolved": "bool",
}
FORMATS = (".parquet", ".csv")
_KIND_NAMES = {"int": "a whole number", "bool": "True or False", "float": "a number"}


def _convert(value, kind: str, column: str, path: str):
    try:
        if kind == "str":
            return "" if value is None else str(value)
        if kind == "int":
            number = float(value)  # int(2.9) would store 2
            if isinstance(value, bool) or not number.is_integer():
                raise ValueError(value)
            return int(number)
        if kind == "bool":
            if isinstance(value, str):
                if value not in ("True", "False"):
                    raise ValueError(value)
                return value == "True"
            return bool(value)
        return float("nan") if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        raise PlanError(f"{path}: column '{column}': cannot read {value!r} as "
                        f"{_KIND_NAMES.get(kind, kind)}") from None


class ResultStore:
    """Rows of a study in ``path`` (``.parquet`` or ``.csv``).

    Parameters
    ----------
    path : the table file; its folder is created on the first write
    columns : column names in order (default :data:`~optimizer.studies.work.ROW_COLUMNS`)
    """

    def __init__(self, path: str | os.PathLike, columns=ROW_COLUMNS):
        self.path = os.fspath(path)
        ext = os.path.splitext(self.path)[1].lower()
        if ext not in FORMATS:
            raise PlanError(f"results path: expected a file ending in .parquet or .csv, got {self.path!r}")
        self.format = ext[1:]
        self.columns = tuple(columns)
        #: columns of the file this study does not write (e.g. a user's notes): kept as read,
        #: empty in new rows; with their Arrow types for Parquet
        self.extra_columns: tuple[str, ...] = ()
        self._extra_types: dict = {}
        self.rows: list[dict] = self._read() if os.path.exists(self.path) else []

    # -- reading -------------------------------------------------------------------------------
    def _read(self) -> list[dict]:
        if self.format == "parquet":
            import pyarrow.parquet as pq

            try:
                raw = pq.read_table(self.path).to_pylist()
                schema = pq.read_schema(self.path)
            except Exception as exc:
                raise PlanError(f"{self.path}: not a readable Parquet table ({exc})") from None
            names = schema.names
            self._extra_types = {n: schema.field(n).type for n in names if n not in self.columns}
        else:
            with open(self.path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                raw, names = list(reader), list(reader.fieldnames or [])
        missing = [c for c in self.columns if c not in names]
        if missing:
            raise PlanError(f"{self.path}: not a results table of this study version; missing columns: "
                            f"{', '.join(missing)}")
        self.extra_columns = tuple(n for n in names if n not in self.columns)
        return [{**{c: _convert(r[c], COLUMN_TYPES.get(c, "float"), c, self.path) for c in self.columns},
                 **{c: r[c] for c in self.extra_columns}} for r in raw]

    def keys(self) -> set[tuple]:
        """(patient_id, arm) of every stored row."""
        return {tuple(r[k] for k in KEY_COLUMNS) for r in self.rows}

    def __len__(self) -> int:
        return len(self.rows)

    # -- writing -------------------------------------------------------------------------------
    def append(self, rows: list[dict]) -> None:
        """Add rows (a row with the key of a stored one replaces it) and rewrite the table
        atomically."""
        new = [{**{c: _convert(r.get(c), COLUMN_TYPES.get(c, "float"), c, self.path) for c in self.columns},
                **{c: r.get(c) for c in self.extra_columns}} for r in rows]
        keys = {tuple(r[k] for k in KEY_COLUMNS) for r in new}
        self.rows = [r for r in self.rows if tuple(r[k] for k in KEY_COLUMNS) not in keys] + new
        atomic_write(self.path, self._write, overwrite=True)

    def _write(self, f) -> None:
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            types = {"str": pa.string(), "int": pa.int64(), "bool": pa.bool_()}
            fields = [(c, types.get(COLUMN_TYPES.get(c, "float"), pa.float64())) for c in self.columns]
            schema = pa.schema(fields + [(c, self._extra_types[c]) for c in self.extra_columns])
            table = pa.Table.from_pylist(self.rows, schema=schema)
            pq.write_table(table, f)
            return
        text = io.StringIO()
        w = csv.writer(text, lineterminator="\n")
        columns = self.columns + self.extra_columns
        w.writerow(columns)
        for r in self.rows:
            w.writerow([_csv_cell(r[c]) for c in columns])
        f.write(text.getvalue().encode("utf-8"))


def _csv_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return str(v)
