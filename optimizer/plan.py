"""The plan result: weights, dose, fluence (or spot) maps, and a single-file archive."""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from .errors import PlanError
from .geometry import Grid, Patient, Structure
from .influence import InfluenceMatrix

ARCHIVE_VERSION = 1


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

        With a proton ``let_dose`` matrix the plan's dose-averaged LET map (keV/um, 0 where
        there is no dose) is stored in ``extras["LETd_keV_um"]``."""
        dose = influence.dose_per_fraction(weights) * fractions
        extras = {}
        if let_dose is not None:
            per_fx = dose / fractions
            ld = let_dose.dose_per_fraction(weights)
            extras["LETd_keV_um"] = np.where(per_fx > 1e-9 * max(per_fx.max(), 1e-30),
                                             ld / np.maximum(per_fx, 1e-30), 0.0)
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

    # -- archive -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> str:
        """Write the plan to one archive file (a zip with ``arrays.npz`` and ``plan.json``).

        Raises FileExistsError if ``path`` exists and ``overwrite`` is False.
        """
        path = os.fspath(path)
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path}: exists; pass overwrite=True to replace it")
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
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        tmp = path + ".tmp"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("plan.json", json.dumps(meta, indent=1, default=_json_default))
            zf.writestr("arrays.npz", buf.getvalue())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        """Read a plan written by :meth:`save`."""
        path = os.fspath(path)
        try:
            with zipfile.ZipFile(path) as zf:
                meta = json.loads(zf.read("plan.json"))
                arrays = np.load(io.BytesIO(zf.read("arrays.npz")))
                arrays = {k: arrays[k] for k in arrays.files}
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
            raise PlanError(f"{path}: not a bioplan plan archive ({exc})") from exc
        if meta.get("archive_version") != ARCHIVE_VERSION:
            raise PlanError(f"{path}: archive_version {meta.get('archive_version')} is not supported")
        g = meta["grid"]
        grid = Grid(tuple(g["shape"]), tuple(g["spacing_mm"]), tuple(g["origin_mm"]))
        structures = []
        for i, s in enumerate(meta["structures"]):
            mask = np.unpackbits(arrays[f"mask_{i}"])[: grid.n_voxels].astype(bool).reshape(grid.shape)
            structures.append(Structure(s["name"], mask, s["role"],
                                        tuple(s["color"]) if s["color"] else None))
        patient = Patient(grid, arrays["ct_hu"], structures, name=meta["patient"])
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
