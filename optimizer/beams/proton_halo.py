"""Lateral dose of a proton pencil beam in water: a Gaussian core and a nuclear halo.

The dose of a pencil beam at water-equivalent depth z and lateral distance r is split into two
normalised 2-D Gaussians that share the laterally integrated depth dose IDD(z)
(:func:`optimizer.beams.proton_physics.pristine_peak`):

    D(r, z) = IDD(z) [ (1 - w(z)) G(r; s_core(z)) + w(z) G(r; s_halo(z)) ],
    G(r; s) = exp(-r^2 / (2 s^2)) / (2 pi s^2),

so the integral of D over the plane equals IDD(z) exactly, at every depth (the two Gaussians
integrate to 1 each).

* **Core**: primary protons, in-air spot sigma and Fermi-Eyges/Highland multiple Coulomb
  scattering in quadrature (:func:`~optimizer.beams.proton_physics.lateral_sigma_mm`).
* **Halo weight w(z)**: the dose carried by charged nuclear secondaries. Bortfeld's analytic
  depth dose (Med Phys 1997;24:2024, eq. 16) already splits the IDD into the stopping of the
  primaries that are left, r^(1/p - 1) + beta r^(1/p), and the energy that nonelastic nuclear
  interactions hand to charged secondaries which stop nearby, gamma beta p r^(1/p) (beta = 0.012
  /cm fluence loss, gamma = 0.6 of the released energy deposited, r the residual range). The halo
  weight is that second term's share of the IDD, both Gaussian-smeared over the range spread:

      w(z) = gamma beta p E[r^(1/p)] / E[r^(1/p - 1) + (beta + gamma beta p) r^(1/p)].

  It is 14 % at the entrance of a 150 MeV beam (20 % at 230 MeV), 8 % at mid-range and falls to
  ~1 % in the Bragg peak, where the primaries' stopping dominates: the "several % to ~15 %" of
  the dose that Pedroni et al. (PMB 2005;50:541) and Soukup et al. (PMB 2005;50:5089) assign to
  the nuclear component (REFERENCES.md).
* **Halo width**: the secondaries leave at large angles, so the halo widens with the depth
  travelled. Gottschalk et al. (PMB 2015;60:5627, "On the nuclear halo of a proton pencil beam
  stopping in water") find the halo radius to be roughly one third of the range. We take the
  radius as two halo sigmas and let the halo's own spread grow linearly with depth:

      s_halo(z)^2 = s_core(z)^2 + (k min(z, R0))^2,   k = 1/6 (HALO_GROWTH),

  so at the end of the range 2 s_halo ~ R0 / 3. At the surface the halo is as narrow as the core
  (the secondaries have not yet travelled), which plays the part of the halo's build-up.

Limitations: one Gaussian halo (Gottschalk's "aura" of neutral secondaries, < 1e-3 of the dose
and reaching metres, is not modelled; neither is the in-air halo of the nozzle, which is a beam
line property); water only (in the patient the halo scales with WEPL like the core); k is our
reading of Gottschalk's "one third of the range" (verify against your machine's measured
field-size factors).
"""

from __future__ import annotations

import numpy as np

from . import proton_physics as pp

#: Growth of the halo sigma per mm of depth (dimensionless): halo radius (2 sigma) = range / 3
#: at the end of the range (Gottschalk et al., PMB 2015;60:5627: "the halo radius is roughly one
#: third of the beam range").
HALO_GROWTH = 1.0 / 6.0


def halo_weight(energy_MeV: float, depth_mm, energy_spread_pct: float = pp.DEFAULT_ENERGY_SPREAD_PCT):
    """Fraction of the IDD carried by the nuclear halo at water-equivalent ``depth_mm`` (module
    docstring): Bortfeld's locally deposited nuclear-secondary term over the whole IDD, 0-1,
    dimensionless; 0 where the IDD vanishes (far beyond the range)."""
    e = pp._scalar_energy(energy_MeV)
    sigma = pp.range_straggling_sigma_mm(e, energy_spread_pct)
    w = _halo_weight(e, np.asarray(depth_mm, dtype=float), sigma)
    return float(w) if w.ndim == 0 else w


def _halo_weight(energy: float, depth_mm: np.ndarray, sigma_mm: float) -> np.ndarray:
    r0_cm = pp.csda_range_mm(energy) / 10.0
    p, beta, gam = pp.BK_P, pp.NUCLEAR_BETA_PER_CM, pp.NUCLEAR_GAMMA
    sigma_cm = sigma_mm / 10.0
    zeta = (r0_cm - depth_mm / 10.0) / sigma_cm
    nu = 1.0 / p - 1.0
    stop = sigma_cm**nu * pp._smeared_power(nu, zeta)
    power = sigma_cm ** (nu + 1.0) * pp._smeared_power(nu + 1.0, zeta)
    total = stop + (beta + gam * beta * p) * power
    nucl = gam * beta * p * power
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(total > 0, nucl / np.where(total > 0, total, 1.0), 0.0)
    return np.clip(w, 0.0, 1.0)


def halo_sigma_mm(energy_MeV: float, depth_mm, sigma_air_mm: float = pp.DEFAULT_SPOT_SIGMA_AIR_MM):
    """Lateral 1-sigma of the nuclear halo at water-equivalent depth, mm: the core sigma and
    :data:`HALO_GROWTH` x depth (held at the range beyond it) in quadrature."""
    e = pp._scalar_energy(energy_MeV)
    z = np.asarray(depth_mm, dtype=float)
    core = np.asarray(pp.lateral_sigma_mm(e, z, sigma_air_mm))
    grow = HALO_GROWTH * np.clip(z, 0.0, pp.csda_range_mm(e))
    s = np.sqrt(core**2 + grow**2)
    return float(s) if s.ndim == 0 else s


def fraction_within(radius_mm, weight, sigma_core_mm, sigma_halo_mm):
    """Fraction of the two-Gaussian lateral kernel (core weight 1 - ``weight``) inside a circle of
    ``radius_mm`` (exact for 2-D Gaussians: 1 - exp(-R^2 / (2 s^2)) each), dimensionless."""
    r2 = np.asarray(radius_mm, dtype=float) ** 2
    w = np.asarray(weight, dtype=float)
    return ((1.0 - w) * -np.expm1(-0.5 * r2 / np.asarray(sigma_core_mm) ** 2)
            + w * -np.expm1(-0.5 * r2 / np.asarray(sigma_halo_mm) ** 2))


def lateral_dose(energy_MeV: float, depth_mm, radius_mm, *,
                 sigma_air_mm: float = pp.DEFAULT_SPOT_SIGMA_AIR_MM,
                 energy_spread_pct: float = pp.DEFAULT_ENERGY_SPREAD_PCT, halo: bool = True):
    """Dose of one proton at water-equivalent depth ``depth_mm`` and lateral distance
    ``radius_mm`` (broadcast together, mm): IDD (MeV cm^2/g) x lateral kernel (1/mm^2), i.e. in
    MeV cm^2 / (g mm^2) per proton; its integral over the plane (mm^2) is the IDD.

    Multiply by :data:`~optimizer.beams.proton_physics.GY_MM2_PER_UNIT_WEIGHT` for Gy per unit
    spot weight. ``halo=False``: the core Gaussian alone carries the IDD.
    """
    e = pp._scalar_energy(energy_MeV)
    z, r = np.broadcast_arrays(np.asarray(depth_mm, dtype=float), np.asarray(radius_mm, dtype=float))
    sig_r = pp.range_straggling_sigma_mm(e, energy_spread_pct)
    idd = pp._idd(e, z, sig_r)
    sc = np.asarray(pp.lateral_sigma_mm(e, z, sigma_air_mm))
    core = np.exp(-0.5 * r**2 / sc**2) / (2 * np.pi * sc**2)
    if not halo:
        return idd * core
    w = _halo_weight(e, z, sig_r)
    sh = halo_sigma_mm(e, z, sigma_air_mm)
    h = np.exp(-0.5 * r**2 / sh**2) / (2 * np.pi * sh**2)
    return idd * ((1.0 - w) * core + w * h)
