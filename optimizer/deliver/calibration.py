"""Absolute dose: monitor units per unit beamlet weight, from the machine's reference condition
recomputed with the photon beam model in use.

A photon influence matrix gives Gy per fraction per unit beamlet weight. The calibration
(:class:`~optimizer.deliver.machine.Calibration`, default 1 MU = 1 cGy at d_max, SSD 100 cm,
10 x 10 cm2) is turned into MU by computing, with the *same* beam model (kernel, beamlet size,
source distance), the dose of the reference field in a water phantom: every beamlet of the
reference field at weight 1, the dose D_ref (Gy per unit weight) at the reference point on the
central axis. A weight w then takes ``w * D_ref * 100 / cGy_per_MU`` MU. Because the reference
condition is recomputed from the model each time, the MU stay right when the kernel changes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

from ..beams.photon import PhotonBeams
from ..geometry import Grid, Patient, Structure
from .machine import Calibration, DeliveryError

#: Water phantom of the reference computation: lateral size and voxel size (mm), depth of water
#: behind the reference point (mm; backscatter), air in front of the surface (mm), depth voxel
#: size (mm) and the depth range searched for d_max (mm).
_PHANTOM_WIDTH_MM = 300.0
_LATERAL_VOXEL_MM = 5.0
_WATER_DEPTH_MM = 250.0
_AIR_MM = 20.0
_DEPTH_VOXEL_MM = 0.5
_DMAX_SEARCH_MM = 100.0


@dataclass(frozen=True)
class MUCalibration:
    """The result of :func:`calibrate`.

    Attributes
    ----------
    mu_per_weight : MU per unit beamlet weight (per fraction)
    reference_Gy_per_weight : dose at the reference point of the reference field with every
        beamlet at weight 1, Gy per fraction
    reference_depth_mm : the depth of the reference point (d_max when the calibration names none), mm
    calibration : the reference condition
    beamlet_mm, sad_mm : of the beam model calibrated
    """

    mu_per_weight: float
    reference_Gy_per_weight: float
    reference_depth_mm: float
    calibration: Calibration
    beamlet_mm: float
    sad_mm: float

    def as_dict(self) -> dict:
        return {"mu_per_weight": self.mu_per_weight, "reference_Gy_per_weight": self.reference_Gy_per_weight,
                "reference_depth_mm": self.reference_depth_mm, "condition": self.calibration.describe(),
                "beamlet_mm": self.beamlet_mm, "sad_mm": self.sad_mm}


def reference_phantom(calibration: Calibration, sad_mm: float) -> tuple[Patient, tuple[float, float, float]]:
    """A water phantom set up at the calibration's SSD for a beam at gantry 0 (from anterior,
    travelling along +y), and the isocentre (x, y, z) LPS mm. The surface lies on a voxel
    boundary at ``y = ssd - sad``; voxel centres along the central axis (x = z = 0) sit at depths
    ``(k + 1/2) * 0.5`` mm."""
    y_surface = calibration.ssd_mm - sad_mm
    n_lat = 2 * int(round(_PHANTOM_WIDTH_MM / 2 / _LATERAL_VOXEL_MM)) + 1
    n_air = int(round(_AIR_MM / _DEPTH_VOXEL_MM))
    depth = _WATER_DEPTH_MM + (calibration.depth_mm or 0.0)
    n_y = n_air + int(math.ceil(depth / _DEPTH_VOXEL_MM))
    half = (n_lat - 1) / 2 * _LATERAL_VOXEL_MM
    origin = (-half, y_surface - (n_air - 0.5) * _DEPTH_VOXEL_MM, -half)
    grid = Grid((n_lat, n_y, n_lat), (_LATERAL_VOXEL_MM, _DEPTH_VOXEL_MM, _LATERAL_VOXEL_MM), origin)
    water = np.zeros(grid.shape, dtype=bool)
    water[:, n_air:, :] = True
    ct = np.where(water, 0.0, -1000.0).astype(np.float32)
    return Patient(grid, ct, [Structure("Water", water, "other")], name="reference"), (0.0, 0.0, 0.0)


def central_axis_dose(beams: PhotonBeams, calibration: Calibration,
                      max_depth_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Central-axis depth dose of the reference field computed with ``beams``' model: depths (mm,
    from the surface) and dose (Gy per fraction with every beamlet of the field at weight 1)."""
    if not isinstance(beams, PhotonBeams):
        raise DeliveryError(f"beams: expected the PhotonBeams the plan was computed with, got "
                            f"{type(beams).__name__}")
    sad = beams.source_axis_distance_mm
    width_iso = calibration.field_size_mm * sad / calibration.ssd_mm  # field size in the isocentre plane
    n = width_iso / beams.beamlet_mm
    if abs(n - round(n)) > 1e-6 * max(n, 1.0):
        raise DeliveryError(
            f"calibration.field_size_mm: the {calibration.field_size_mm:g} mm reference field "
            f"({width_iso:g} mm in the isocentre plane) is not a whole number of {beams.beamlet_mm:g} mm "
            "beamlets; choose a beamlet size that divides it"
        )
    n = int(round(n))
    patient, iso = reference_phantom(calibration, sad)
    grid = patient.grid
    n_air = int(round(_AIR_MM / _DEPTH_VOXEL_MM))
    k_max = n_air + int(math.ceil(max_depth_mm / _DEPTH_VOXEL_MM)) + 2
    centre = grid.shape[0] // 2
    mask = np.zeros(grid.shape, dtype=bool)
    mask[centre, n_air:k_max, centre] = True
    ref = copy.copy(beams)  # same kernel, beamlet size and source distance; one beam at gantry 0
    ref.gantry_deg, ref.couch_deg = [0.0], [0.0]
    influence = ref.influence(patient, isocenter_mm=iso, dose_mask=mask, fields={0: np.ones((n, n), bool)},
                              max_memory_mb=math.inf)
    dose = np.zeros(grid.n_voxels)
    dose[influence.voxel_index] = np.asarray(influence.matrix.sum(axis=1)).ravel()
    cax = dose.reshape(grid.shape)[centre, n_air:k_max, centre]
    depths = (np.arange(cax.size) + 0.5) * _DEPTH_VOXEL_MM
    return depths, cax


def _peak(depths: np.ndarray, dose: np.ndarray) -> tuple[float, float]:
    """Depth and value of the maximum: the largest sample refined by the parabola through it and
    its two neighbours."""
    i = int(np.argmax(dose))
    if i == 0 or i == dose.size - 1:
        raise DeliveryError(
            f"calibration: the central-axis depth dose of the beam model has its maximum at the edge of "
            f"the searched depths (0-{_DMAX_SEARCH_MM:g} mm); give calibration.depth_mm explicitly"
        )
    y0, y1, y2 = dose[i - 1: i + 2]
    denom = y0 - 2 * y1 + y2
    shift = 0.5 * (y0 - y2) / denom if denom < 0 else 0.0
    h = depths[1] - depths[0]
    return float(depths[i] + shift * h), float(y1 - 0.25 * (y0 - y2) * shift)


def _at_depth(depths: np.ndarray, dose: np.ndarray, depth: float) -> float:
    """Quadratic interpolation through the three samples nearest ``depth``."""
    i = int(np.clip(np.searchsorted(depths, depth), 1, depths.size - 2))
    x, y = depths[i - 1: i + 2], dose[i - 1: i + 2]
    return float(np.polyval(np.polyfit(x, y, 2), depth))


def calibrate(beams: PhotonBeams, calibration: Calibration | None = None) -> MUCalibration:
    """MU per unit beamlet weight of ``beams``' model under the reference ``calibration``.

    The reference field (``calibration.field_size_mm`` square at SSD ``calibration.ssd_mm``,
    every beamlet at weight 1) is computed with a copy of ``beams`` (same kernel, beamlet size and
    source distance; one beam at gantry 0) in a water phantom (0.5 mm voxels along the central
    axis). Its central-axis dose at the reference depth (d_max by default: the maximum of the
    computed depth dose) is D_ref, Gy per fraction per unit weight, and
    ``mu_per_weight = 100 * D_ref / cGy_per_MU``.
    """
    calibration = Calibration() if calibration is None else calibration
    if not isinstance(calibration, Calibration):
        raise DeliveryError(f"calibration: expected an optimizer.deliver.Calibration, got "
                            f"{type(calibration).__name__}")
    max_depth = _DMAX_SEARCH_MM if calibration.depth_mm is None else calibration.depth_mm + 2.0
    depths, dose = central_axis_dose(beams, calibration, max_depth)
    if calibration.depth_mm is None:
        depth, d_ref = _peak(depths, dose)
    else:
        depth, d_ref = calibration.depth_mm, _at_depth(depths, dose, calibration.depth_mm)
    if not (d_ref > 0 and math.isfinite(d_ref)):
        raise DeliveryError(f"calibration: the beam model gives no dose ({d_ref:g} Gy) at the reference "
                            "point")
    return MUCalibration(100.0 * d_ref / calibration.cGy_per_MU, d_ref, depth, calibration,
                         float(beams.beamlet_mm), float(beams.source_axis_distance_mm))
