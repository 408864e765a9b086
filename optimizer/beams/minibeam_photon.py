"""6 MV photon minibeams through a multislit collimator (``modality="minibeam"``).

The model (see :mod:`optimizer.beams.minibeam` for the shared geometry and assembly): the scatter
kernel of :class:`~optimizer.beams.photon_kernel.PhotonScatterKernel` (primary, scatter, far and
electron components, each with its own depth dose and sigma), the inverse square, and septum
transmission T = exp(-mu t): each column is open (1) over its slit and T over the septum of its
period, for every kernel component. The primary's surface sigma is ``primary_sigma_mm``.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import BeamError
from ..geometry import Patient
from .minibeam import SlitCollimator, _Minibeams
from .minibeam_pattern import MinibeamPattern, _positive
from .photon_kernel import PhotonScatterKernel

#: Linear attenuation of tungsten for a 6 MV spectrum, 1/mm: mu/rho ~ 0.043 cm^2/g at 2 MeV
#: (NIST XCOM) x 19.3 g/cm^3.
TUNGSTEN_MU_PER_MM = 0.043 * 19.3 / 10.0


class PhotonMinibeams(_Minibeams):
    """6 MV photon minibeams through a multislit collimator (module docstring).

    Parameters
    ----------
    gantry_deg, pattern, field_mm, length_mm, margin_mm, cutoff_sigmas, depth_ray_mm : as
        :class:`ProtonMinibeams` (pattern dimensions projected to the isocentre plane)
    collimator : :class:`SlitCollimator` (tungsten septa; ``thickness_mm`` sets the transmission)
    source_distance_mm : source to collimator, mm (for the physical slit width in the beam table)
    kernel : a :class:`PhotonScatterKernel` (default: the package's 6 MV kernel)
    primary_sigma_mm : surface sigma of the primary component, mm
    cutoff_mm : lateral reach of a column, mm (the far-scatter tail beyond it is dropped)
    """

    normalised = False

    def __init__(self, gantry_deg, pattern: MinibeamPattern, *, collimator: SlitCollimator | None = None,
                 source_distance_mm: float = 900.0, kernel: PhotonScatterKernel | None = None,
                 primary_sigma_mm: float = 0.3, field_mm=None, length_mm=None, margin_mm: float = 2.0,
                 cutoff_mm: float = 30.0, depth_ray_mm: float = 1.0):
        super().__init__(gantry_deg, pattern, field_mm=field_mm, length_mm=length_mm, margin_mm=margin_mm,
                         cutoff_sigmas=3.0, depth_ray_mm=depth_ray_mm)
        self.collimator = SlitCollimator(thickness_mm=50.0) if collimator is None else collimator
        if not isinstance(self.collimator, SlitCollimator):
            raise BeamError(f"collimator: expected a SlitCollimator, got {type(collimator).__name__}")
        self.source_distance_mm = _positive(source_distance_mm, "source_distance_mm")
        self.kernel = PhotonScatterKernel.default() if kernel is None else kernel
        self.primary_sigma_mm = _positive(primary_sigma_mm, "primary_sigma_mm")
        self.cutoff_mm = _positive(cutoff_mm, "cutoff_mm")

    @property
    def source_axis_distance_mm(self) -> float:
        return self.kernel.sad_mm

    def _beam_info(self) -> dict:
        f = self.source_distance_mm / self.kernel.sad_mm  # isocentre plane -> collimator plane
        return {"delivery": "multislit collimator", "collimator_thickness_mm": self.collimator.thickness_mm,
                "source_distance_mm": self.source_distance_mm,
                "collimator_slit_mm": self.pattern.beam_width_mm * f,
                "collimator_period_mm": self.pattern.ctc_mm * f, "transmission": self.transmission}

    @property
    def transmission(self) -> float:
        """Septum transmission exp(-mu t) of the tungsten collimator (dimensionless)."""
        return math.exp(-TUNGSTEN_MU_PER_MM * self.collimator.thickness_mm)

    def _density(self, patient: Patient) -> np.ndarray:
        return patient.relative_electron_density()

    def _max_sigma(self) -> float:
        return self.cutoff_mm / 3.0

    def _reach_cap(self) -> float:
        return self.cutoff_mm

    def _lateral_scale(self, t):
        return np.ones_like(t)

    def _components(self, depth, t, layer):
        w, s = self.kernel.components_at(depth)
        mag = self.kernel.sad_mm / t  # to the isocentre plane
        s = s * mag
        prim = [c.name for c in self.kernel.components].index("primary")
        slope = self.kernel.components[prim].sigma_slope
        s[prim] = np.sqrt(self.primary_sigma_mm**2 + (slope * depth) ** 2) * mag
        tr = self.transmission
        comps = []
        for k in range(len(w)):  # the kernel's 4 components, each open over the slit, T over the septum
            comps += [((1 - tr) * w[k], s[k], "beam"), (tr * w[k], s[k], "period")]
        return np.ones(len(depth), bool), comps, mag**2
