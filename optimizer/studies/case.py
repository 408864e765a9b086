"""The planning case of one virtual patient: a small phantom built from its geometry, its biology
(hypoxia map, tumour and normal-tissue LQ parameters) and the influence matrix that all of its
planning arms share.

Phantom (LPS, mm; arrays [z, y, x]): a water body |x| <= 75, |y| <= 60 in air, 72 mm long; a
spherical target "PTV" of radius R centred at (0, -10, 0); a spinal-cord-like cylinder "Cord"
(radius 7 mm, along z) posterior to it at ``cord_gap_mm`` from the target surface; a
parotid-like sphere "Gland" (radius 12 mm) to the patient's left at ``gland_gap_mm``; a hypoxic
well inside the target ("Hypoxic": the PTV voxels with pO2 below the baseline, "PTV_oxic": the
rest) with pO2(r) = p0 - (p0 - p_min)(1 - (r/r_h)^2)^2 as in ``examples/personalized_bed.py``;
"Ring" and "Tissue" helpers from :func:`optimizer.phantoms.add_cshape_helper_structures`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from objectives.radiobiology import GARD_BETA_GY2, LQ, OER_MAX, alpha_from_rsi, alpha_map_from_hypoxia, oer

from ..errors import PlanError
from ..geometry import Patient, Structure
from ..phantoms import _grid_for, add_cshape_helper_structures
from .cohort import PO2_BASELINE_MMHG, VirtualPatient

#: Phantom dimensions (demonstration choices, mm): body half-widths (x, y), grid extent
#: (z, y, x), target centre (x, y, z), cord and gland radii.
BODY_HALF_MM = (75.0, 60.0)
GRID_EXTENT_MM = (72.0, 140.0, 170.0)
TARGET_CENTRE_MM = (0.0, -10.0, 0.0)
CORD_RADIUS_MM = 7.0
GLAND_RADIUS_MM = 12.0
#: Names of the tumour structures (evaluated with the tumour LQ maps)
TUMOUR_STRUCTURES = ("PTV", "PTV_oxic", "Hypoxic")


@dataclass(frozen=True)
class StudySetup:
    """Planning settings shared by every patient and arm of a study (picklable).

    Attributes
    ----------
    spacing_mm : dose-grid voxel size, mm (coarse: 6 mm keeps a plan to seconds)
    beamlet_mm : photon beamlet size at the isocentre, mm
    n_beams : equispaced 6 MV beams (gantry 0, 360/n, ...)
    fractions : number of fractions of every arm
    max_voxels : optimization sample of each helper structure (``PlanProblem.max_voxels_per_structure``)
    solver : cvxpy solver name or "FIRST_ORDER" (None: PlanProblem.solve's choice by size; CLARABEL at
        the default size, 0.44 M non-zeros)
    solver_options : ((name, value), ...) passed to ``PlanProblem.solve``
    """

    spacing_mm: float = 4.0
    beamlet_mm: float = 10.0
    n_beams: int = 7
    fractions: int = 30
    max_voxels: int = 400
    solver: str | None = None
    solver_options: tuple = field(default_factory=tuple)

    def __post_init__(self):
        for name in ("spacing_mm", "beamlet_mm"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
                raise PlanError(f"StudySetup.{name}: expected a number > 0 (mm), got {v!r}")
        for name in ("n_beams", "fractions", "max_voxels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise PlanError(f"StudySetup.{name}: expected an integer >= 1, got {v!r}")
        if isinstance(self.solver_options, dict):
            object.__setattr__(self, "solver_options", tuple(sorted(self.solver_options.items())))

    @property
    def gantry_deg(self) -> list[float]:
        return [float(a) for a in np.arange(self.n_beams) * 360.0 / self.n_beams]

    def as_dict(self) -> dict:
        return {"spacing_mm": self.spacing_mm, "beamlet_mm": self.beamlet_mm, "n_beams": self.n_beams,
                "fractions": self.fractions, "max_voxels": self.max_voxels, "solver": self.solver,
                "solver_options": dict(self.solver_options)}


@dataclass
class Case:
    """Everything the arms of one patient share (built once per patient by :func:`build_case`).

    Attributes
    ----------
    vp, setup : the virtual patient and the study settings
    patient : the phantom (structures PTV, PTV_oxic, Hypoxic, Cord, Gland, Body, Ring, Tissue)
    po2 : pO2 map, mmHg, [z, y, x]
    alpha_map, beta_map : tumour alpha (Gy^-1) and beta (Gy^-2) per voxel with hypoxia
    lq_tumour : LQ of the maps; lq_oar : alpha/beta table of Cord and Gland, default tissue
    influence : the 6 MV photon influence set (Gy per fraction per unit weight)
    times_s : {"phantom", "dose"} seconds
    """

    vp: VirtualPatient
    setup: StudySetup
    patient: Patient
    po2: np.ndarray
    alpha_map: np.ndarray
    beta_map: np.ndarray
    lq_tumour: LQ
    lq_oar: LQ
    influence: object
    times_s: dict

    @property
    def alpha_oxic(self) -> float:
        """Tumour alpha at the baseline pO2, Gy^-1 (from the RSI)."""
        return float(alpha_from_rsi(self.vp.rsi))

    def lq_eval(self) -> dict:
        """{structure name: LQ} for evaluation: tumour maps on the tumour structures, the
        normal-tissue table elsewhere."""
        return {n: (self.lq_tumour if n in TUMOUR_STRUCTURES else self.lq_oar)
                for n in self.patient.structure_names}


def hypoxia_map(patient: Patient, vp: VirtualPatient) -> np.ndarray:
    """pO2 (mmHg) on the grid: the baseline everywhere, a smooth well inside the target."""
    z, y, x = np.meshgrid(*patient.grid.axes_mm(), indexing="ij")
    cx, cy, cz = (c + o for c, o in zip(TARGET_CENTRE_MM, vp.hypoxic_offset_mm))
    r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / vp.hypoxic_radius_mm
    well = np.where(r < 1.0, (1.0 - np.minimum(r, 1.0) ** 2) ** 2, 0.0)
    return PO2_BASELINE_MMHG - (PO2_BASELINE_MMHG - vp.po2_min_mmHg) * well


def tumour_parameters(po2: np.ndarray, rsi: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel tumour alpha (Gy^-1) and beta (Gy^-2): the RSI-derived values (GARD model,
    beta 0.05 Gy^-2) at the baseline pO2, modified by the OER model elsewhere
    (:func:`objectives.radiobiology.alpha_map_from_hypoxia`, scaled so that a baseline voxel
    keeps the RSI values)."""
    omf_base = OER_MAX / oer(PO2_BASELINE_MMHG)
    return alpha_map_from_hypoxia(po2, float(alpha_from_rsi(rsi)) * omf_base, GARD_BETA_GY2 * omf_base ** 2)


def build_phantom(vp: VirtualPatient, spacing_mm: float) -> tuple[Patient, np.ndarray]:
    """The phantom of ``vp`` on a grid of ``spacing_mm`` and its pO2 map (see the module
    docstring). A structure too small for the grid raises :class:`~optimizer.errors.GeometryError`
    naming it."""
    grid = _grid_for(GRID_EXTENT_MM, spacing_mm)
    z, y, x = np.meshgrid(*grid.axes_mm(), indexing="ij")
    bx, by = BODY_HALF_MM
    body = (np.abs(x) <= bx) & (np.abs(y) <= by)
    tx, ty, tz = TARGET_CENTRE_MM
    R = vp.target_radius_mm
    ptv = (x - tx) ** 2 + (y - ty) ** 2 + (z - tz) ** 2 <= R ** 2
    cord_y = ty + R + vp.cord_gap_mm + CORD_RADIUS_MM
    cord = ((x - tx) ** 2 + (y - cord_y) ** 2 <= CORD_RADIUS_MM ** 2) & body
    gland_x = tx + R + vp.gland_gap_mm + GLAND_RADIUS_MM
    gland = ((x - gland_x) ** 2 + (y - ty) ** 2 + (z - tz) ** 2 <= GLAND_RADIUS_MM ** 2) & body
    ct = np.where(body, 0.0, -1000.0).astype(np.float32)
    patient = Patient(grid, ct, [
        Structure("PTV", ptv, "target", (1.0, 0.2, 0.2)),
        Structure("Cord", cord, "oar", (0.2, 0.6, 1.0)),
        Structure("Gland", gland, "oar", (0.9, 0.7, 0.1)),
        Structure("Body", body, "other", (0.6, 0.6, 0.6)),
    ], name=vp.patient_id)
    add_cshape_helper_structures(patient)
    po2 = hypoxia_map(patient, vp)
    hyp = (po2 < PO2_BASELINE_MMHG - 1e-9) & ptv
    patient.add_structure(Structure("Hypoxic", hyp, "target", (0.6, 0.0, 0.6)))
    patient.add_structure(Structure("PTV_oxic", ptv & ~hyp, "target", (1.0, 0.6, 0.2)))
    return patient, po2


def build_case(vp: VirtualPatient, setup: StudySetup) -> Case:
    """Phantom, biology and influence matrix of one patient (a pure function of its inputs)."""
    from ..beams.photon import PhotonBeams

    t0 = time.perf_counter()
    patient, po2 = build_phantom(vp, setup.spacing_mm)
    alpha, beta = tumour_parameters(po2, vp.rsi)
    lq_t = LQ(alpha_map=alpha, beta_map=beta, grid_shape=po2.shape)
    lq_oar = LQ({"Cord": vp.alpha_beta_cord_Gy, "Gland": vp.alpha_beta_gland_Gy},
                default=vp.alpha_beta_tissue_Gy)
    t1 = time.perf_counter()
    influence = PhotonBeams(gantry_deg=setup.gantry_deg, beamlet_mm=setup.beamlet_mm).influence(
        patient, target="PTV")
    t2 = time.perf_counter()
    return Case(vp, setup, patient, po2, alpha, beta, lq_t, lq_oar, influence,
                {"phantom": t1 - t0, "dose": t2 - t1})
