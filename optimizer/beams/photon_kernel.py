"""6 MV photon pencil-beam kernels: the fitted multi-component kernel and the legacy Gaussian.

A pencil beam of unit fluence through the isocentre plane deposits, at radiological depth d (mm)
and lateral distance r (mm, at the point), the sum of Gaussian components

    K(r, d) = sum_k A_k(d) exp(-r^2 / (2 s_k(d)^2)) / (2 pi s_k(d)^2)

* photon components (primary, near scatter, far scatter + head scatter):
  ``A_k(d) = a_k beta_k / (beta_k - mu_k) (exp(-mu_k d) - exp(-beta_k d))``, the depth form of the
  SVD pencil-beam components of Bortfeld, Schlegel and Rhein, Med Phys 1993;20:311 (build-up from
  zero at the surface, attenuation mu_k at depth);
* electron contamination: ``A_e(d) = a_e exp(-mu_e d)``, the surface dose that the photon
  components (zero at d = 0) lack; its width makes it grow with the field size, as measured;
* ``s_k(d) = sqrt(s0_k^2 + (c_k d)^2)``. Components marked ``density_scaled`` (the ones carried
  by secondary electrons and scattered photons in the patient) are widened by ``1 / rho_eff``,
  rho_eff the mean relative electron density over the last ``DENSITY_WINDOW_MM`` before the point
  (the lateral range of electrons scales with 1 / density: O'Connor's theorem, as in the density
  scaling of pencil-beam algorithms), so the penumbra widens in lung.

The integral of K over the plane is sum_k A_k(d): the broad-field depth dose. A square field of
side s (isocentre plane) gives on its axis ``(SAD / t)^2 sum_k A_k(d) erf(s / (2 sqrt2 s_k'))^2``
(s_k' = s_k SAD / t): narrow fields lose the wide components, which is the output factor.

The parameters are fitted (``tools/fit_photon_kernel.py``) to the published 6 MV data in
``data/photon_6mv_reference.json`` (PDDs, surface dose, output factors 2 x 2 to 20 x 20 cm2,
penumbra) and stored in ``data/photon_6mv_kernel.json``. Normalisation: a 10 x 10 cm2 field at
SSD 100 cm with unit beamlet weights gives 1 Gy per fraction at d_max on the axis.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields

import numpy as np
from scipy.special import erf

from ..errors import BeamError
from .raytrace import check_number

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
#: The fitted default kernel (written by tools/fit_photon_kernel.py).
DEFAULT_KERNEL_FILE = os.path.join(DATA_DIR, "photon_6mv_kernel.json")
#: Geometric path length (mm) before a point over which the density that scales the lateral
#: kernel is averaged: about the lateral range of the secondary electrons of a 6 MV beam in water
#: (CSDA range of 2 MeV electrons ~1 cm; ICRU 37), doubled to smooth interfaces.
DENSITY_WINDOW_MM = 20.0
#: Bounds of the density that scales the lateral kernel (lung ~0.25, dense bone ~1.8).
DENSITY_CLIP = (0.1, 2.0)
#: The calibration field: side (mm, isocentre plane) and SSD (mm).
CALIBRATION_FIELD_MM = 100.0
CALIBRATION_SSD_MM = 1000.0


def field_profile(x: np.ndarray, half_width: float, sigma: np.ndarray) -> np.ndarray:
    """Relative dose of a strip of half-width h = ``half_width`` blurred by a Gaussian of s =
    ``sigma`` at lateral position ``x`` (one length unit):
    ``[erf((x + h)/(sqrt2 s)) - erf((x - h)/(sqrt2 s))] / 2``."""
    s = np.sqrt(2.0) * sigma
    return 0.5 * (erf((x + half_width) / s) - erf((x - half_width) / s))


@dataclass(frozen=True)
class KernelComponent:
    """One Gaussian component of the pencil beam.

    name : label ("primary", "scatter", "far", "electron")
    amplitude : a_k (relative; the kernel normalises the sum)
    mu_per_mm : attenuation mu_k, 1/mm
    buildup_per_mm : beta_k, 1/mm (> mu_k); 0 for a component without build-up (electrons)
    sigma0_mm : lateral spread at the surface, mm
    sigma_slope : growth of the spread with depth, mm per mm
    density_scaled : widen the component by 1 / rho_eff in non-water media
    """

    name: str
    amplitude: float
    mu_per_mm: float
    buildup_per_mm: float
    sigma0_mm: float
    sigma_slope: float
    density_scaled: bool = True

    def __post_init__(self):
        checks = {
            "amplitude": ("an amplitude >= 0", lambda v: v >= 0),
            "mu_per_mm": ("an attenuation > 0 per mm", lambda v: v > 0),
            "buildup_per_mm": ("0 (no build-up) or a build-up rate > mu_per_mm",
                               lambda v: v == 0 or v > self.mu_per_mm),
            "sigma0_mm": ("a lateral spread > 0 mm", lambda v: v > 0),
            "sigma_slope": ("a spread growth >= 0 mm per mm", lambda v: v >= 0),
        }
        if not isinstance(self.name, str):
            raise BeamError(f"kernel component name: expected a string, got {self.name!r}")
        for f in dataclass_fields(self):
            if f.name in checks:
                expected, ok = checks[f.name]
                value = check_number(getattr(self, f.name), f"kernel.{self.name}.{f.name}", expected, ok)
                object.__setattr__(self, f.name, value)
        object.__setattr__(self, "density_scaled", bool(self.density_scaled))

    def depth_dose(self, depth_mm: np.ndarray) -> np.ndarray:
        """A_k(d): the component's laterally integrated dose at radiological depth d (mm)."""
        d = np.maximum(np.asarray(depth_mm, dtype=float), 0.0)
        mu, beta = self.mu_per_mm, self.buildup_per_mm
        if beta == 0:
            return self.amplitude * np.exp(-mu * d)
        return self.amplitude * beta / (beta - mu) * (np.exp(-mu * d) - np.exp(-beta * d))

    def sigma_mm(self, depth_mm: np.ndarray) -> np.ndarray:
        d = np.maximum(np.asarray(depth_mm, dtype=float), 0.0)
        return np.sqrt(self.sigma0_mm**2 + (self.sigma_slope * d) ** 2)


class PhotonScatterKernel:
    """The multi-component 6 MV pencil beam (see the module docstring).

    Parameters
    ----------
    components : the Gaussian components (at least one)
    source : where the parameters come from (kept in the beam records)
    sad_mm : source-axis distance of the calibration, mm
    """

    name = "scatter"

    def __init__(self, components, source: str = "", sad_mm: float = 1000.0):
        components = tuple(components)
        if not components or not all(isinstance(c, KernelComponent) for c in components):
            raise BeamError("kernel components: expected a non-empty sequence of KernelComponent")
        self.components = components
        self.source = str(source)
        self.sad_mm = check_number(sad_mm, "kernel sad_mm", "a positive distance in mm", lambda v: v > 0)
        self.density_scaled = tuple(c.density_scaled for c in components)
        self._norm = 1.0
        self._norm = 1.0 / self.calibration_dose()

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike = DEFAULT_KERNEL_FILE) -> PhotonScatterKernel:
        """A kernel from a parameter file written by ``tools/fit_photon_kernel.py``."""
        try:
            with open(path) as f:
                data = json.load(f)
            comps = [KernelComponent(**c) for c in data["components"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BeamError(f"kernel file {os.fspath(path)}: cannot read a photon kernel ({e})") from None
        return cls(comps, source=data.get("source", os.fspath(path)), sad_mm=data.get("sad_mm", 1000.0))

    @classmethod
    def default(cls) -> PhotonScatterKernel:
        """The fitted 6 MV kernel shipped with bioplan (``data/photon_6mv_kernel.json``)."""
        global _DEFAULT
        if _DEFAULT is None:
            _DEFAULT = cls.from_file(DEFAULT_KERNEL_FILE)
        return _DEFAULT

    def to_dict(self) -> dict:
        return {"source": self.source, "sad_mm": self.sad_mm,
                "components": [{f.name: getattr(c, f.name) for f in dataclass_fields(c)}
                               for c in self.components]}

    # -- the kernel ------------------------------------------------------------------------------
    def components_at(self, depth_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(A_k(d) normalised, s_k(d) in water, mm), each of shape (n_components, n_points)."""
        d = np.asarray(depth_mm, dtype=float)
        weights = np.stack([c.depth_dose(d) for c in self.components]) * self._norm
        sigmas = np.stack([c.sigma_mm(d) for c in self.components])
        return weights, sigmas

    def cax_dose(self, field_mm: float, depth_mm, ssd_mm: float = CALIBRATION_SSD_MM) -> np.ndarray:
        """Analytic central-axis dose (Gy per unit weight) of a square field of side ``field_mm``
        (isocentre plane) in water at ``ssd_mm``, at depths ``depth_mm`` (mm)."""
        d = np.atleast_1d(np.asarray(depth_mm, dtype=float))
        t = ssd_mm + d
        w, s = self.components_at(d)
        s_iso = s * self.sad_mm / t
        frac = erf(field_mm / 2.0 / (np.sqrt(2.0) * s_iso)) ** 2
        return (self.sad_mm / t) ** 2 * (w * frac).sum(axis=0)

    def off_axis_dose(self, field_mm: float, depth_mm: float, x_mm: np.ndarray,
                      ssd_mm: float = CALIBRATION_SSD_MM) -> np.ndarray:
        """Analytic dose across a square field at one depth, at lateral positions ``x_mm`` (at the
        depth, along one axis through the centre)."""
        t = ssd_mm + depth_mm
        w, s = self.components_at(np.array([depth_mm]))
        s_iso = s * self.sad_mm / t
        x_iso = np.asarray(x_mm, dtype=float)[None, :] * self.sad_mm / t
        prof = field_profile(x_iso, field_mm / 2, s_iso) * field_profile(0.0, field_mm / 2, s_iso)
        return (self.sad_mm / t) ** 2 * (w * prof).sum(axis=0)

    def calibration_dose(self) -> float:
        """Maximum central-axis dose of the calibration field (10 x 10 cm2, SSD 100 cm)."""
        d = np.linspace(0.0, 60.0, 601)
        return float(self.cax_dose(CALIBRATION_FIELD_MM, d).max())

    def max_sigma_mm(self, depth_mm: float) -> float:
        return float(max(c.sigma_mm(depth_mm) for c in self.components))

    def __repr__(self) -> str:
        return f"PhotonScatterKernel({len(self.components)} components, {self.source!r})"


_DEFAULT: PhotonScatterKernel | None = None


@dataclass(frozen=True)
class PhotonKernel:
    """Legacy single-Gaussian 6 MV pencil beam (``PhotonBeams(kernel="gaussian")``).

    Broad-field depth dose ``exp(-mu d) (1 - (1 - s0) exp(-k d))`` fitted so that a 10 x 10 cm2
    field at SSD 100 cm has d_max 1.5 cm and PDD(10 cm) 66.5 % (BJR Suppl. 25, REFERENCES.md);
    lateral spread ``sqrt(sigma0^2 + (c d)^2)`` for an 80-20 % penumbra of ~5 mm at 10 cm. No
    field-size dependence (small fields overestimated by 15-30 %), surface dose ~45 %.

    mu_per_mm : effective attenuation, 1/mm
    buildup_per_mm : build-up rate k, 1/mm
    surface_dose : relative dose at the surface, s0
    sigma0_mm : lateral spread at the surface, mm
    sigma_slope : growth of the lateral spread with depth, mm per mm
    """

    mu_per_mm: float = 0.0032
    buildup_per_mm: float = 0.2075
    surface_dose: float = 0.45
    sigma0_mm: float = 2.6
    sigma_slope: float = 0.02

    def __post_init__(self):
        checks = {
            "mu_per_mm": ("an attenuation > 0 per mm", lambda v: v > 0),
            "buildup_per_mm": ("a build-up rate > 0 per mm", lambda v: v > 0),
            "surface_dose": ("a relative surface dose in [0, 1]", lambda v: 0 <= v <= 1),
            "sigma0_mm": ("a lateral spread > 0 mm", lambda v: v > 0),
            "sigma_slope": ("a spread growth >= 0 mm per mm", lambda v: v >= 0),
        }
        for f in dataclass_fields(self):
            expected, ok = checks[f.name]
            value = check_number(getattr(self, f.name), f"kernel.{f.name}", expected, ok)
            object.__setattr__(self, f.name, value)

    def depth_dose(self, depth_mm: np.ndarray) -> np.ndarray:
        """Relative broad-field depth dose P(d), 1 at d_max. ``depth_mm``: radiological depth."""
        d = np.maximum(np.asarray(depth_mm, dtype=float), 0.0)
        raw = np.exp(-self.mu_per_mm * d) * (1 - (1 - self.surface_dose) * np.exp(-self.buildup_per_mm * d))
        return raw / self._peak

    @property
    def _peak(self) -> float:
        dmax = self.dmax_mm
        return float(np.exp(-self.mu_per_mm * dmax)
                     * (1 - (1 - self.surface_dose) * np.exp(-self.buildup_per_mm * dmax)))

    @property
    def dmax_mm(self) -> float:
        """Depth of maximum (mm) of P(d): where d/dd [e^{-mu d} - (1-s0) e^{-(mu+k) d}] = 0."""
        mu, k, s0 = self.mu_per_mm, self.buildup_per_mm, self.surface_dose
        arg = (1 - s0) * (mu + k) / mu
        return float(np.log(arg) / k) if arg > 1 else 0.0

    def sigma_mm(self, depth_mm: np.ndarray) -> np.ndarray:
        """Lateral Gaussian spread (mm, at the point) at radiological depth ``depth_mm``."""
        d = np.maximum(np.asarray(depth_mm, dtype=float), 0.0)
        return np.sqrt(self.sigma0_mm**2 + (self.sigma_slope * d) ** 2)

    # the interface PhotonBeams uses for every kernel (see photon_kernel.PhotonScatterKernel)
    name = "gaussian"
    density_scaled = (False,)

    def components_at(self, depth_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(depth dose, lateral spread in mm), each of shape (1, n_points)."""
        return self.depth_dose(depth_mm)[None, :], self.sigma_mm(depth_mm)[None, :]

    def max_sigma_mm(self, depth_mm: float) -> float:
        return float(self.sigma_mm(depth_mm))


def scaled_sigmas(sigmas: np.ndarray, density_scaled: tuple[bool, ...], rho_eff: np.ndarray) -> np.ndarray:
    """The component spreads (n_components, n_points) widened by 1 / rho_eff where scaled."""
    rho = np.clip(rho_eff, *DENSITY_CLIP)
    out = np.array(sigmas, dtype=float, copy=True)
    for k, scaled in enumerate(density_scaled):
        if scaled:
            out[k] = sigmas[k] / rho
    return out


def penumbra_80_20(x: np.ndarray, profile: np.ndarray, centre: float) -> float:
    """80-20 % distance (same unit as x) of a falling edge of ``profile`` (x ascending, from the
    centre outwards) relative to ``centre``."""
    rel = np.asarray(profile) / centre
    x80 = float(np.interp(-0.8, -rel, x))
    x20 = float(np.interp(-0.2, -rel, x))
    return x20 - x80


def equivalent_radius(field_mm: float) -> float:
    """Radius of the circle with the area of a square field (mm), for reports."""
    return field_mm / math.sqrt(math.pi)
