"""bioplan optimizer: geometry, beam models, problem assembly and solve, plans and evaluation."""

from . import bio_evaluate, deliver, evaluate, flash, io, phantoms, plots, report, studies
from .beams import proton_physics
from .beams.base import BeamModel
from .beams.minibeam import ProtonMinibeams, SlitCollimator
from .beams.minibeam_pattern import MinibeamPattern, fine_slab
from .beams.minibeam_photon import PhotonMinibeams
from .beams.photon import PhotonBeams, PhotonKernel
from .beams.photon_kernel import PhotonScatterKernel
from .beams.proton import ProtonBeams, let_d_map, spot_maps
from .beams.proton_beamdata import ProtonBeamData
from .beams.raytrace import BeamGeometry, radiological_depth
from .errors import (
    BeamError,
    EvaluationError,
    GeometryError,
    InfeasiblePlanError,
    PlanError,
    PlotError,
    SolverError,
)
from .geometry import Grid, Patient, Structure, hu_to_red
from .influence import InfluenceMatrix, InfluenceSet
from .io import (
    DicomError,
    MatradError,
    load_ct_series,
    load_dicom,
    load_matrad,
    load_rtdose,
    load_rtstruct,
    write_ct_series,
    write_rt_ion_plan,
    write_rtdose,
    write_rtstruct,
)
from .plan import Plan
from .problem import PlanProblem
from .robust.influence import scenario_influence
from .robust.scenarios import Scenario, nominal9, scenario_list, set21
from .stopping_power import HU_TO_RSP_TABLE, hu_to_rsp

__all__ = [
    "bio_evaluate", "deliver", "evaluate", "flash", "io", "phantoms", "plots", "report", "studies",
    "BeamError", "GeometryError", "InfeasiblePlanError", "PlanError", "SolverError", "EvaluationError",
    "PlotError",
    "DicomError", "MatradError",
    "Grid", "Patient", "Structure", "hu_to_red", "InfluenceMatrix", "InfluenceSet",
    "BeamModel", "BeamGeometry", "radiological_depth", "PhotonBeams", "PhotonKernel",
    "PhotonScatterKernel", "ProtonBeamData",
    "ProtonMinibeams", "PhotonMinibeams", "SlitCollimator", "MinibeamPattern", "fine_slab",
    "ProtonBeams", "spot_maps", "let_d_map", "proton_physics", "hu_to_rsp", "HU_TO_RSP_TABLE",
    "PlanProblem", "Plan",
    "Scenario", "nominal9", "set21", "scenario_list", "scenario_influence",
    "load_ct_series", "load_dicom", "load_rtdose", "load_rtstruct", "load_matrad",
    "write_ct_series", "write_rtstruct", "write_rtdose", "write_rt_ion_plan",
]
