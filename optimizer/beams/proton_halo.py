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
  interactions hand to charged secondaries, gamma beta p r^(1/p) (beta = 0.012 /cm fluence loss,
  gamma = 0.6 of the released energy deposited, r the residual range). Its share of the IDD, both
  Gaussian-smeared over the range spread, is the weight where the secondaries are in equilibrium:

      w_B(z) = gamma beta p E[r^(1/p)] / E[r^(1/p - 1) + (beta + gamma beta p) r^(1/p)]

  (14 % at the entrance of a 150 MeV beam, 20 % at 230 MeV, 8 % at mid-range, ~1 % in the Bragg
  peak: the "several % to ~15 %" of Pedroni et al., PMB 2005;50:541, and Soukup et al., PMB
  2005;50:5089; REFERENCES.md).
* **Entrance build-up of the halo weight**: Bortfeld's term deposits the released energy where it
  is released. The charged secondaries (mostly protons: elastic scattering on H, elastic,
  inelastic and nonelastic interactions with O; Gottschalk et al., PMB 2015;60:5627) carry it
  downstream, so near the surface the halo dose has not built up. With secondaries released at a
  nearly constant rate over the first centimetres and each depositing its energy uniformly over
  the next L mm, the deposited share rises linearly to Bortfeld's value at z = L:

      w(z) = w_B(z) min(z / L, 1),   L = HALO_BUILDUP_MM = 38 mm,

  and the core carries the rest (1 - w), so the IDD is unchanged. Independent Monte Carlo evidence
  for the build-up: the wide Gaussian of matRad's MC-fitted generic proton machine
  (matRad/basedata/protons_Generic.mat, github.com/e0404/matRad at commit 3d984091, as in
  optimizer/beams/data/proton_mc_reference.json; our reading of its weight / sigma2 tables) holds
  0.07-0.7 % of the dose at 1 mm depth at 100-230 MeV and rises over centimetres (its weight /
  w_B: 0.03-0.06 at 5 mm, 0.10-0.16 at 15 mm, 0.24-0.33 at 29 mm). L is a fit, not a published
  constant: rms of log(model / MC PVDR) over the 42 points of the six 125 MeV focused minibeam
  arrays of Corvino et al. (TOPAS; data/minibeam_pvdr_reference.json), grid L = 20-60 mm x
  minimum halo sigma 2-4 mm; flat optimum at L = 38-45 mm, the lower end taken, which is also
  below half the range of every beam >= 100 MeV (mid-range keeps w_B). Held out: the 175 / 230 MeV
  arrays and the 28 peak / valley depth-dose arrays of the same source
  (tests/test_minibeam_reference.py).
* **Halo width**: the secondaries leave at large angles, so the halo widens with the depth
  travelled. Gottschalk et al. (PMB 2015;60:5627) find the halo radius to be roughly one third of
  the range. We take the radius as two halo sigmas and let the halo's own spread grow linearly
  with depth, but never below a minimum:

      s_halo(z)^2 = s_core(z)^2 + max(k min(z, R0), s_min)^2,
      k = 1/6 (HALO_GROWTH),   s_min = 3 mm (HALO_MIN_SIGMA_MM),

  so at the end of the range 2 s_halo ~ R0 / 3. The minimum: the secondaries that reach a shallow
  depth were already thrown out at large angles, so the halo is not as narrow as the core there
  (matRad's MC-fitted wide Gaussian has a sigma of 14-21 mm at 1 mm depth); 3 mm is fitted with
  L above (same data and procedure). It acts only where k z < 3 mm, i.e. in the first 18 mm of
  every beam.

Limitations: one Gaussian halo (Gottschalk's "aura" of neutral secondaries, < 1e-3 of the dose
and reaching metres, is not modelled; neither is the in-air halo of the nozzle, which is a beam
line property); water only (in the patient the halo scales with WEPL like the core); k is our
reading of Gottschalk's "one third of the range"; L and s_min are fitted to minibeam PVDRs of one
Monte Carlo study (slit length and valley mask not stated there; verify the entrance valley
against your machine's measurements, and its field-size factors).
"""

from __future__ import annotations

import math

import numpy as np

from . import proton_physics as pp

#: Growth of the halo sigma per mm of depth (dimensionless): halo radius (2 sigma) = range / 3
#: at the end of the range (Gottschalk et al., PMB 2015;60:5627: "the halo radius is roughly one
#: third of the beam range").
HALO_GROWTH = 1.0 / 6.0
#: Depth over which the halo weight builds up linearly to Bortfeld's local-deposition value, mm
#: (water). A fit: rms of log(model / Monte Carlo PVDR) over the six 125 MeV focused minibeam arrays
#: of Corvino et al. (TOPAS; data/minibeam_pvdr_reference.json), optimum flat at 38-45 mm, lower end
#: taken (module docstring); the build-up itself is seen in matRad's MC-fitted generic machine.
HALO_BUILDUP_MM = 38.0
#: Smallest halo sigma beyond the core, mm (water): same fit as HALO_BUILDUP_MM (module docstring).
HALO_MIN_SIGMA_MM = 3.0


def halo_weight(energy_MeV: float, depth_mm, energy_spread_pct: float = pp.DEFAULT_ENERGY_SPREAD_PCT,
                buildup: bool = True):
    """Fraction of the IDD carried by the nuclear halo at water-equivalent ``depth_mm`` (mm; module
    docstring), 0-1, dimensionless: Bortfeld's nuclear-secondary term over the whole IDD times the
    entrance build-up :func:`halo_buildup` (``buildup=False``: Bortfeld's local-deposition share
    alone); 0 where the IDD vanishes (far beyond the range)."""
    e = pp._scalar_energy(energy_MeV)
    sigma = pp.range_straggling_sigma_mm(e, energy_spread_pct)
    w = _halo_weight(e, np.asarray(depth_mm, dtype=float), sigma, buildup)
    return float(w) if w.ndim == 0 else w


def halo_buildup(depth_mm):
    """Entrance build-up of the halo weight at water-equivalent ``depth_mm`` (mm):
    min(z / HALO_BUILDUP_MM, 1), 0 at and above the surface, dimensionless (module docstring)."""
    return np.clip(np.asarray(depth_mm, dtype=float) / HALO_BUILDUP_MM, 0.0, 1.0)


def _halo_weight(energy: float, depth_mm: np.ndarray, sigma_mm: float, buildup: bool = True) -> np.ndarray:
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
    if buildup:
        w = w * halo_buildup(depth_mm)
    return np.clip(w, 0.0, 1.0)


def halo_sigma_mm(energy_MeV: float, depth_mm, sigma_air_mm: float = pp.DEFAULT_SPOT_SIGMA_AIR_MM):
    """Lateral 1-sigma of the nuclear halo at water-equivalent depth, mm: the core sigma and
    :data:`HALO_GROWTH` x depth (held at the range beyond it; at least
    :data:`HALO_MIN_SIGMA_MM`) in quadrature."""
    e = pp._scalar_energy(energy_MeV)
    z = np.asarray(depth_mm, dtype=float)
    s = _halo_sigma(e, z, np.asarray(pp.lateral_sigma_mm(e, z, sigma_air_mm)))
    return float(s) if s.ndim == 0 else s


def _halo_sigma(energy: float, depth_mm: np.ndarray, core_mm: np.ndarray) -> np.ndarray:
    """:func:`halo_sigma_mm` from an already computed core sigma (validated inputs, mm)."""
    grow = np.maximum(HALO_GROWTH * np.clip(depth_mm, 0.0, pp.csda_range_mm(energy)), HALO_MIN_SIGMA_MM)
    return np.sqrt(core_mm**2 + grow**2)


def fraction_within(radius_mm, weight, sigma_core_mm, sigma_halo_mm):
    """Fraction of the two-Gaussian lateral kernel (core weight 1 - ``weight``) inside a circle of
    ``radius_mm`` (exact for 2-D Gaussians: 1 - exp(-R^2 / (2 s^2)) each), dimensionless."""
    r2 = np.asarray(radius_mm, dtype=float) ** 2
    w = np.asarray(weight, dtype=float)
    return ((1.0 - w) * -np.expm1(-0.5 * r2 / np.asarray(sigma_core_mm) ** 2)
            + w * -np.expm1(-0.5 * r2 / np.asarray(sigma_halo_mm) ** 2))



#: Gauss-Legendre nodes and weights on [0, 1] for the shell integral of :func:`folded_cutoff`.
_GL_X, _GL_W = np.polynomial.legendre.leggauss(24)
_GL_X, _GL_W = 0.5 * (_GL_X + 1.0), 0.5 * _GL_W


def shell_shape(r_mm, shell_mm, reach_mm):
    """Shape of the folded dose in the outer shell: the hat 4 (r - a)(R - r) / (R - a)^2 on
    [a, R] (0 elsewhere; 1 midway; 0 at the reach, so the kept kernel stays continuous there),
    dimensionless."""
    r, a, big_r = (np.asarray(v, dtype=float) for v in (r_mm, shell_mm, reach_mm))
    return np.clip(4.0 * (r - a) * (big_r - r) / (big_r - a) ** 2, 0.0, None)


def cutoff_reach(cutoff_sigma: float, halo_cutoff_sigma: float, weight, sigma_core_mm, sigma_halo_mm,
                 min_fraction: float = 0.01):
    """The reach R (mm) of :func:`folded_cutoff` alone, without the fold's quadrature (the memory
    estimate and the pair search need only R): ``cutoff_sigma`` core sigmas, or
    ``halo_cutoff_sigma`` halo sigmas where that is farther and the halo beyond the core reach
    carries at least ``min_fraction`` of the IDD."""
    w = np.asarray(weight, dtype=float)
    sc, sh = np.asarray(sigma_core_mm, dtype=float), np.asarray(sigma_halo_mm, dtype=float)
    r_core = cutoff_sigma * sc
    beyond = 1.0 - fraction_within(r_core, w, sc, sh)
    return np.where(beyond >= min_fraction, np.maximum(r_core, halo_cutoff_sigma * sh), r_core)


def folded_cutoff(cutoff_sigma: float, halo_cutoff_sigma: float, weight, sigma_core_mm, sigma_halo_mm,
                  min_fraction: float = 0.01, shell_fraction: float = 0.3) -> dict:
    """Lateral reach of the sparse kernel and the fold of the dose beyond it, per depth.

    The reach R is ``cutoff_sigma`` core sigmas, or ``halo_cutoff_sigma`` halo sigmas where that
    is farther and the halo beyond the core reach carries at least ``min_fraction`` of the IDD.
    The kernel stays exact inside the shell radius a = (1 - ``shell_fraction``) R; its part beyond
    R, 1 - :func:`fraction_within` (R), is folded into the outer shell [a, R]: the kernel is
    multiplied by 1 + f g(r), g = :func:`shell_shape`, with f chosen so that the kernel
    integrates to 1 again (the IDD is kept exactly; fields whose edge lies inside a keep their
    central dose). The shell integral is a 24-point Gauss-Legendre quadrature.

    Returns ``reach_mm`` (R), ``shell_mm`` (a), ``fold`` (f, dimensionless) and ``folded`` (the
    fraction of the IDD moved into the shell), arrays like ``weight``.
    """
    w = np.asarray(weight, dtype=float)
    sc, sh = np.asarray(sigma_core_mm, dtype=float), np.asarray(sigma_halo_mm, dtype=float)
    reach = cutoff_reach(cutoff_sigma, halo_cutoff_sigma, w, sc, sh, min_fraction)
    folded = 1.0 - fraction_within(reach, w, sc, sh)
    shell = (1.0 - shell_fraction) * reach
    r = shell[..., None] + (reach - shell)[..., None] * _GL_X  # quadrature nodes, mm
    kern = ((1.0 - w)[..., None] * np.exp(-0.5 * (r / sc[..., None]) ** 2) / sc[..., None] ** 2
            + w[..., None] * np.exp(-0.5 * (r / sh[..., None]) ** 2) / sh[..., None] ** 2)  # x 2 pi r / 2 pi
    g = shell_shape(r, shell[..., None], reach[..., None])
    mass = (reach - shell) * np.sum(_GL_W * kern * g * r, axis=-1)
    fold = folded / np.maximum(mass, 1e-300)
    return {"reach_mm": reach, "shell_mm": shell, "fold": fold, "folded": folded}


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


def matrix_field_size_factor(beams, energy_MeV: float, small_mm: float = 40.0, large_mm: float = 200.0,
                             *, spot_spacing_mm: float = 2.5, voxel_mm: float = 5.0) -> dict:
    """Field-size factor as a plan's influence matrix sees it: central-axis dose at half the CSDA
    range of a square spot field of side ``small_mm`` over one of side ``large_mm`` (mm, both
    multiples of ``spot_spacing_mm``), in a water phantom, one energy, gantry 0.

    ``beams``: a :class:`~optimizer.beams.proton.ProtonBeams` whose settings (cut-offs, halo,
    beam data) are used; its spot spacing, margin, energies and source distance are replaced
    (spots every ``spot_spacing_mm``, isocentre at the dose point, SAD 1e6 mm so that the spot
    grid is the fluence grid at that depth). The fields are uniform fluence: spots on the grid
    with trapezoid weights (1/2 on the edges, 1/4 in the corners). Returns ``fsf`` (small /
    large), the doses ``dose_small`` / ``dose_large`` (Gy per unit weight of the full-weight
    spots), ``depth_mm`` (WEPL of the dose point), ``analytic_fsf`` and ``analytic_small`` /
    ``analytic_large`` (the same spots summed with :func:`lateral_dose`, the full halo, Gy) and
    ``nnz`` of the matrix (one dose point: the number of spots that reach it).
    """
    import copy

    from .. import phantoms
    from ..geometry import Structure

    e = pp._scalar_energy(energy_MeV)
    for name, side in (("small_mm", small_mm), ("large_mm", large_mm)):
        n = side / spot_spacing_mm
        if not (side > 0 and abs(n - round(n)) < 1e-9):
            raise pp.BeamError(f"{name}: expected a positive multiple of spot_spacing_mm "
                               f"({spot_spacing_mm:g} mm), got {side!r}")
    r0 = pp.csda_range_mm(e)
    dy = 2.0
    n_lat = 2 * int(math.ceil((large_mm / 2 + voxel_mm) / voxel_mm)) + 1  # odd: a voxel on the axis
    depth_len = 2 * dy * math.ceil((r0 + 30.0) / (2 * dy))
    p = phantoms.water_box(size_mm=(n_lat * voxel_mm, depth_len, n_lat * voxel_mm),
                           spacing_mm=(voxel_mm, dy, voxel_mm))
    z, y, x = np.meshgrid(*p.grid.axes_mm(), indexing="ij")
    ys = p.grid.axes_mm()[1]
    surface = ys[0] - dy / 2
    iy = int(np.argmin(np.abs(ys - surface - r0 / 2)))
    depth = float(ys[iy] - surface)
    near_peak = np.abs(y - surface - r0) <= dy
    half = large_mm / 2
    p.add_structure(Structure("field", near_peak & (np.abs(x) <= half) & (np.abs(z) <= half), "target"))
    mask = np.zeros(p.grid.shape, bool)
    mask[n_lat // 2, iy, n_lat // 2] = True
    b = copy.copy(beams)
    b.gantry_deg, b.couch_deg = [0.0], [0.0]
    b.energies_MeV, b.margin_mm, b.spot_spacing_mm, b.virtual_sad_mm = [e], 0.0, spot_spacing_mm, 1e6
    inf = b.influence(p, "field", isocenter_mm=(0.0, float(ys[iy]), 0.0), dose_mask=mask, with_let=False)
    u, v = np.asarray(inf.beamlets["u_mm"]), np.asarray(inf.beamlets["v_mm"])
    col = np.asarray(inf.matrix.sum(axis=0)).ravel()
    kw = dict(sigma_air_mm=b.sigma_air_mm(e), energy_spread_pct=b.spread_pct(e), halo=b.halo)
    out = {"energy_MeV": e, "depth_mm": depth, "nnz": int(inf.nnz)}
    for key, side in (("small", small_mm), ("large", large_mm)):
        h = side / 2 + 1e-6
        edge_u = np.where(np.abs(np.abs(u) - side / 2) < 1e-6, 0.5, 1.0)
        edge_v = np.where(np.abs(np.abs(v) - side / 2) < 1e-6, 0.5, 1.0)
        wt = edge_u * edge_v * ((np.abs(u) <= h) & (np.abs(v) <= h))
        out[f"dose_{key}"] = float(wt @ col)
        lat = lateral_dose(e, depth, np.hypot(u, v), **kw) * pp.GY_MM2_PER_UNIT_WEIGHT
        out[f"analytic_{key}"] = float(wt @ lat)
    out["fsf"] = out["dose_small"] / out["dose_large"]
    out["analytic_fsf"] = out["analytic_small"] / out["analytic_large"]
    return out
