"""The plan result: weights, dose, fluence (or spot) maps, and a single-file archive."""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from dataclasses import dataclass, field

import numpy as np

from objectives.errors import BioplanError

from ._archive import ARCHIVE_VERSION, read_checked_arrays, read_meta
from ._files import atomic_write
from .errors import GeometryError, PlanError
from .geometry import Patient, Structure
from .influence import LETD_MIN_DOSE_GY, InfluenceMatrix, InfluenceSet, let_d_map

#: extras that are dose-averaged (NaN without dose): :meth:`Plan.on_patient` interpolates them
#: through their product with the dose
DOSE_AVERAGED_EXTRAS = ("LETd_keV_um",)


@dataclass
class Plan:
    """A solved plan.

    Attributes
    ----------
    patient : the planning geometry
    weights : beamlet / spot weights (unit as the influence matrix's columns)
    fractions : number of fractions
    dose : total course dose on the full grid, Gy, ``[z, y, x]``
    beamlets, beams, modality : the influence matrix's beamlet table and beam list
    solver : solver record (name, status, objective, iterations, times in s, versions, ...)
    influence : the influence matrix, when still in memory (not stored in the archive)
    extras : named extra 3-D maps (e.g. "LETd_keV_um", "RBE_dose_Gy"), stored in the archive
    """

    patient: Patient
    weights: np.ndarray
    fractions: int
    dose: np.ndarray
    beamlets: dict[str, np.ndarray]
    beams: list[dict]
    modality: str
    solver: dict = field(default_factory=dict)
    influence: InfluenceMatrix | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_weights(cls, patient: Patient, influence: InfluenceMatrix, weights: np.ndarray,
                     fractions: int, solver: dict | None = None,
                     let_dose: InfluenceMatrix | None = None) -> Plan:
        """Plan of given weights: dose recomputed on the full grid from the influence matrix.

        When the influence set carries a "let_dose" form (or ``let_dose`` is given), the plan's
        dose-averaged LET map (keV/um; :func:`~optimizer.influence.let_d_map`, NaN where the
        dose per fraction is below 1e-3 Gy) is stored in ``extras["LETd_keV_um"]``."""
        influence = InfluenceSet.of(influence, let_dose=let_dose)
        dose = influence.dose_per_fraction(weights) * fractions
        extras = {}
        if "let_dose" in influence.forms:
            extras["LETd_keV_um"] = let_d_map(influence, influence.forms["let_dose"], weights)
        return cls(patient, np.asarray(weights, dtype=float), int(fractions), dose,
                   dict(influence.beamlets), list(influence.beams), influence.modality,
                   dict(solver or {}), influence, extras)

    # -- maps ----------------------------------------------------------------------------------
    def fluence_maps(self) -> list[np.ndarray]:
        """One 2-D weight map per beam, ``[row, col]`` as in the beam's eye view (rows along v,
        columns along u); closed beamlets are 0. For proton plans, the sum over energy layers."""
        maps = []
        for b, beam in enumerate(self.beams):
            m = np.zeros(tuple(beam["map_shape"]))
            sel = self.beamlets["beam"] == b
            np.add.at(m, (self.beamlets["row"][sel], self.beamlets["col"][sel]), self.weights[sel])
            maps.append(m)
        return maps

    def structure_dose(self, name: str) -> np.ndarray:
        """Total dose (Gy) of every voxel of a structure."""
        return self.dose[self.patient.structure(name).mask]

    def on_patient(self, patient: Patient) -> Plan:
        """This plan's dose interpolated (trilinear) onto another patient's grid, e.g. the CT
        grid of a plan optimized on a coarser dose grid (:meth:`Patient.resample`), so goals can
        be reported on both. Weights, beams and the solver record are kept; the influence
        matrix is not (it indexes the other grid); ``solver["dose_grid"]`` records the source grid.
        Extra maps are interpolated too: LETd dose-averaged (see :meth:`_extra_on`)."""
        from .resample import inside_of, resample_dose, target_grid

        if not isinstance(patient, Patient):
            raise PlanError(f"patient: expected an optimizer.Patient, got {type(patient).__name__}")
        try:
            target_grid(self.patient.grid, patient.grid, "patient")  # the grids must overlap
        except GeometryError as exc:
            raise PlanError(f"{exc}: the plan's dose would be 0 everywhere on it") from None
        dose = resample_dose(self.dose, self.patient.grid, patient.grid)
        outside = [s.name for s in patient.structures
                   if not inside_of(self.patient.grid, patient.grid, s.mask)]
        if outside:
            warnings.warn(f"on_patient: structures {', '.join(outside)} reach outside the plan's dose grid, "
                          f"where their dose is 0", stacklevel=2)
        grid = self.patient.grid
        solver = {**self.solver, "dose_grid": {"shape": list(grid.shape), "spacing_mm": list(grid.spacing_mm),
                                               "origin_mm": list(grid.origin_mm)}}
        extras = {k: self._extra_on(k, v, patient.grid, dose) for k, v in self.extras.items()}
        return Plan(patient, self.weights, self.fractions, dose, dict(self.beamlets), list(self.beams),
                    self.modality, solver, None, extras)

    def _extra_on(self, name: str, values, grid, dose_there: np.ndarray) -> np.ndarray:
        """An extra map on another grid: a dose-averaged one (LETd) as the ratio of the
        interpolated LETd x dose and dose, NaN where the dose per fraction is below
        LETD_MIN_DOSE_GY (as :func:`optimizer.influence.let_d_map` defines it); any other
        trilinear, NaN wherever the interpolation reads a NaN voxel."""
        from .resample import resample_dose

        v = np.asarray(values, dtype=float)
        if v.shape != self.patient.grid.shape:
            raise PlanError(f"extras['{name}']: shape {v.shape}, expected the grid's "
                            f"{self.patient.grid.shape}")
        nan = np.isnan(v)
        if name in DOSE_AVERAGED_EXTRAS:
            product = resample_dose(np.where(nan, 0.0, v) * self.dose, self.patient.grid, grid)
            out = np.full(grid.shape, np.nan)
            ok = dose_there >= LETD_MIN_DOSE_GY * self.fractions
            out[ok] = product[ok] / dose_there[ok]
            return out
        out = resample_dose(np.where(nan, 0.0, v), self.patient.grid, grid)
        if nan.any():
            out[resample_dose(nan.astype(float), self.patient.grid, grid) > 0] = np.nan
        return out

    # -- archive -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> str:
        """Write the plan to one archive file (a zip with ``arrays.npz`` and ``plan.json``).

        The file is written to a unique temporary file beside ``path`` and renamed into place, so
        a reader never sees a partial archive and a symlink at ``path`` is never followed.

        Raises FileExistsError if ``path`` exists and ``overwrite`` is False (checked atomically:
        of two processes saving to one new path, exactly one succeeds).
        """
        arrays = {
            "weights": self.weights,
            "dose": self.dose,
            "ct_hu": self.patient.ct_hu,
        }
        for i, s in enumerate(self.patient.structures):
            arrays[f"mask_{i}"] = np.packbits(s.mask.ravel())
        for k, v in self.beamlets.items():
            arrays[f"beamlet_{k}"] = np.asarray(v)
        for k, v in self.extras.items():
            arrays[f"extra_{k}"] = np.asarray(v)
        # an importer's own HU -> density table (matRad's ct.hlut): what a dose recomputed from
        # the loaded plan reads (without it, the default table: 1.167 vs 1.297 at 500 HU)
        table = getattr(self.patient, "density_table", None)
        if table is not None:
            arrays["density_table"] = np.asarray(table, dtype=float)
        meta = {
            "archive_version": ARCHIVE_VERSION,
            "patient": self.patient.name,
            "grid": {"shape": list(self.patient.grid.shape),
                     "spacing_mm": list(self.patient.grid.spacing_mm),
                     "origin_mm": list(self.patient.grid.origin_mm)},
            "structures": [{"name": s.name, "role": s.role,
                            "color": list(s.color) if s.color else None}
                           for s in self.patient.structures],
            "fractions": self.fractions,
            "modality": self.modality,
            "beams": self.beams,
            "beamlet_columns": list(self.beamlets),
            "extras": list(self.extras),
            "solver": self.solver,
        }
        if table is not None:
            meta["density_table"] = True
            meta["density_table_source"] = getattr(self.patient, "density_table_source", None)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        try:
            text = json.dumps(meta, indent=1, default=_json_default)
        except TypeError as exc:  # a value in plan.solver / beams that JSON cannot hold
            raise PlanError(f"plan record: cannot be stored in the archive ({exc}); keep solver and beam "
                            f"entries to numbers, strings, lists and dicts") from None

        def write(f):
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
                zf.writestr("plan.json", text)
                zf.writestr("arrays.npz", buf.getvalue())

        # refuse up front what load would refuse (NaN dose, extras off the grid, ...): an archive
        # that cannot be read back is a lost plan
        archive = io.BytesIO()
        write(archive)
        try:
            meta_back, grid, npz_bytes = read_meta(archive, "plan")
            read_checked_arrays("plan", meta_back, grid, npz_bytes, float("inf"))
        except PlanError as exc:
            raise PlanError(f"{os.fspath(path)}: not saved, Plan.load would refuse it: "
                            f"{str(exc).removeprefix('plan: ')}") from None
        return atomic_write(path, lambda f: f.write(archive.getbuffer()), overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, max_mb: float = 4096.0) -> Plan:
        """Read a plan written by :meth:`save`, checking everything before trusting it.

        Array shapes are read from their headers and checked against the grid and the beamlet
        count before any array is decompressed; an archive whose arrays would take more than
        ``max_mb`` MB in memory is refused. Doses and weights must be finite and non-negative,
        ``fractions`` an integer >= 1.
        """
        path = os.fspath(path)
        meta, grid, npz_bytes = read_meta(path)
        arrays = read_checked_arrays(path, meta, grid, npz_bytes, max_mb)
        try:
            structures = []
            for i, s in enumerate(meta["structures"]):
                mask = np.unpackbits(arrays[f"mask_{i}"])[: grid.n_voxels].astype(bool).reshape(grid.shape)
                structures.append(Structure(s["name"], mask, s["role"],
                                            tuple(s["color"]) if s["color"] else None))
            patient = Patient(grid, arrays["ct_hu"], structures, name=str(meta["patient"]))
            if "density_table" in arrays:
                patient.density_table = arrays["density_table"]
                patient.density_table_source = meta.get("density_table_source")
        except BioplanError as exc:
            raise PlanError(f"{path}: invalid patient in the archive ({exc})") from None
        beamlets = {k: arrays[f"beamlet_{k}"] for k in meta["beamlet_columns"]}
        extras = {k: arrays[f"extra_{k}"] for k in meta["extras"]}
        return cls(patient, arrays["weights"], int(meta["fractions"]), arrays["dose"], beamlets,
                   meta["beams"], meta["modality"], meta["solver"], None, extras)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in plan.json")
