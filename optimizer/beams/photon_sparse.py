"""Sparse influence entries of the photon pencil beam: which (voxel, beamlet) pairs to keep and
their lateral factors (used by :class:`optimizer.beams.photon.PhotonBeams`).

The kernel is a sum of separable Gaussian components (one for the legacy kernel). For each point
the neighbouring beamlets are visited ring by ring (Chebyshev distance in beamlets) and only as far
as an upper bound of the lateral factor can still pass the ``min_relative`` cut, so the cost follows
the number of kept entries rather than the largest reach.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.special import erf, erfc

from .base import BODY_DENSITY_THRESHOLD
from .photon_kernel import CALIBRATION_FIELD_MM, scaled_sigmas

#: Gaussian sigma (mm) of the smoothing of the relative electron density that scales the lateral
#: kernel: about half the lateral range of the secondary electrons of a 6 MV beam in water (CSDA
#: range of 2 MeV electrons ~1 cm, ICRU Report 37), so interfaces blur over ~1 cm as the dose does.
DENSITY_SMOOTH_MM = 5.0


def profile(x: np.ndarray, half_width: float, sigma: np.ndarray) -> np.ndarray:
    s = np.sqrt(2.0) * sigma
    return 0.5 * (erf((x + half_width) / s) - erf((x - half_width) / s))


def smoothed_density(density: np.ndarray, grid, voxels: np.ndarray) -> np.ndarray:
    """Relative electron density at ``voxels`` (flat indices), smoothed over the body (Gaussian of
    :data:`DENSITY_SMOOTH_MM`, normalised by the smoothed body mask so surfaces keep the tissue's
    density)."""
    rho = np.asarray(density, dtype=np.float32)
    body = (rho > BODY_DENSITY_THRESHOLD).astype(np.float32)
    sig = [DENSITY_SMOOTH_MM / s for s in grid.spacing_mm]
    num = ndimage.gaussian_filter(rho * body, sig, mode="constant", truncate=3.0)
    den = ndimage.gaussian_filter(body, sig, mode="constant", truncate=3.0)
    out = np.where(den > 1e-3, num / np.maximum(den, 1e-3), 1.0).ravel()[voxels]
    return out.astype(float)


def kernel_at(kernel, sad_mm: float, t, depth, rho):
    """Per point: the on-axis factor (SAD/t)^2 sum_k A_k, the component fractions f_k (None for one
    component) and the spreads in the isocentre plane (n_components, n), mm."""
    weights, sigmas = kernel.components_at(depth)
    if rho is not None:
        sigmas = scaled_sigmas(sigmas, kernel.density_scaled, rho)
    sigma_iso = sigmas * (sad_mm / t)
    total = weights.sum(axis=0)
    axial = (sad_mm / t) ** 2 * total
    if len(weights) == 1:
        return axial, None, sigma_iso
    frac = weights / np.where(total > 0, total, 1.0)
    return axial, frac, sigma_iso


def calibration_scale(sigma_iso, frac) -> np.ndarray:
    """Lateral factor of the full kernel on the axis of a 10 x 10 cm2 field (isocentre plane)
    centred on each point: sum_k f_k erf(50 mm / (sqrt2 s_k))^2."""
    half = CALIBRATION_FIELD_MM / 2
    return (frac * erf(half / (np.sqrt(2.0) * sigma_iso)) ** 2).sum(axis=0)


#: a point closer than this (in beamlet widths) to the midpoint of two beamlet centres is taken
#: as exactly on it
TIE_BEAMLETS = 1e-9


def own_beamlet(u: np.ndarray, u0: float, w: float) -> np.ndarray:
    """Index k of the beamlet centre u0 + k w (isocentre plane, mm) nearest to each point u; a
    point on the midpoint of two (to TIE_BEAMLETS) takes the one nearer the beam axis (u = 0).
    Why: the reach of a point (``reach_rings``, ``radial_mm``) is counted from that beamlet, and
    ``floor((u - u0) / w + 0.5)`` decided a midpoint by rounding noise: the same patient on a
    grid with another origin kept other entries (up to 0.016 against 0.72 Gy per unit weight),
    and mirrored beams differed."""
    x = (np.asarray(u, dtype=float) - u0) / w
    f = np.floor(x)
    tie = np.abs(x - f - 0.5) < TIE_BEAMLETS
    lower_nearer = np.abs(u0 + f * w) < np.abs(u0 + (f + 1) * w)
    return np.where(tie, np.where(lower_nearer, f, f + 1), np.floor(x + 0.5)).astype(np.int64)


def neighbour_pairs(u, v, t, depth, index_map, u0, v0, *, kernel, sad_mm, beamlet_mm, min_relative,
                    reach_rings, radial_mm=None, rho=None, scale_out=None, shell_mm=None, shell_out=None,
                    shell_log=None, shell_ramp_mm=5.0):
    """(point positions, beamlet columns, lateral factors) of the nonzeros, one neighbour offset at
    a time. An entry is kept where its lateral factor exceeds ``min_relative`` times the beamlet's
    on-axis value; each point only visits the rings where an upper bound of the factor can still
    pass that cut, at most ``reach_rings(largest spread)`` rings, and (``radial_mm``) only
    beamlets whose centre lies within that distance of the point's own beamlet centre.

    ``scale_out``: filled, once the generator is exhausted, with each point's factor full / kept of
    a 10 x 10 cm2 field centred on it (:func:`calibration_scale`).

    ``shell_mm`` (with ``scale_out``, ``shell_out`` and ``shell_log``): the kept entries whose
    beamlet centre lies farther than ``shell_mm`` from the point form its outer shell. Each is
    yielded twice: as it is, and in a chunk of its own as ``g * lat`` with the ramp
    ``g = min(1, (distance - shell_mm) / shell_ramp_mm)``; ``shell_log`` gets one bool per yielded
    chunk (True: a ramp chunk). The missing tail of the 10 x 10 cm2 field, full - kept, is then
    folded into the shell: ``shell_out`` gets ``(full - kept) / sum(g * lat)``, the factor of the
    ramp chunks, and ``scale_out`` 1 (the inner entries stay exact, so fields that do not reach
    the shell keep their output factor; the ramp lets the folded dose grow smoothly as a beamlet
    moves outwards). A point without a kept shell entry gets ``scale_out`` = full / kept and
    ``shell_out`` = 0."""
    w = beamlet_mm
    nv, nu = index_map.shape
    _, frac, sigma_iso = kernel_at(kernel, sad_mm, t, depth, rho)
    ci = own_beamlet(u, u0, w)
    ri = own_beamlet(v, v0, w)
    K = reach_rings(float(sigma_iso.max()))
    p0 = profile(np.zeros(1), w / 2, sigma_iso)  # (n_comp, n): a beamlet's profile on its axis
    if frac is None:
        centre = p0[0] ** 2
    else:
        centre = (frac * p0**2).sum(axis=0)
    thr = min_relative * centre
    # ring m (Chebyshev distance in beamlets): the point lies >= (m - 1) w from that beamlet's
    # edge along one axis, so its factor is <= sum_k f_k erfc((m-1) w / (sqrt2 s_k)) / 2 * p0_k
    rings = np.full(len(u), K + 1, dtype=np.int64)  # first ring the point skips
    for m in range(2, K + 1):
        bound = 0.5 * erfc((m - 1) * w / (np.sqrt(2.0) * sigma_iso)) * p0
        bound = bound[0] if frac is None else (frac * bound).sum(axis=0)
        rings = np.where((rings > m) & (bound <= thr), m, rings)
    order = np.argsort(-rings, kind="stable")
    counts = [int(np.count_nonzero(rings > m)) for m in range(K + 1)]
    n0 = counts[0]
    order = order[:n0]
    uo, vo, ci, ri = u[order], v[order], ci[order], ri[order]
    sig = sigma_iso[:, order]
    fr = None if frac is None else frac[:, order]
    thr = thr[order]
    r2_max = (radial_mm / w) ** 2 if radial_mm is not None else math.inf
    kept = np.zeros(n0) if scale_out is not None else None
    shell = shell_mm is not None and scale_out is not None
    kept_shell = np.zeros(n0) if shell else None
    pu, pv, xu, xv = {}, {}, {}, {}
    for d in range(-K, K + 1):
        n = counts[abs(d)]
        if n == 0:
            continue
        xu[d] = uo[:n] - (u0 + (ci[:n] + d) * w)
        xv[d] = vo[:n] - (v0 + (ri[:n] + d) * w)
        pu[d] = profile(xu[d], w / 2, sig[:, :n])
        pv[d] = profile(xv[d], w / 2, sig[:, :n])
    for di in range(-K, K + 1):
        for dj in range(-K, K + 1):
            n = counts[max(abs(di), abs(dj))]
            if n == 0 or di * di + dj * dj > r2_max:
                continue
            a, b = pu[dj][:, :n], pv[di][:, :n]
            if fr is None:
                lat = a[0] * b[0]
            else:
                lat = fr[0, :n] * a[0] * b[0]
                for k in range(1, len(a)):
                    lat += fr[k, :n] * a[k] * b[k]
            r = ri[:n] + di
            c = ci[:n] + dj
            ok = (r >= 0) & (r < nv) & (c >= 0) & (c < nu)
            above = lat > thr[:n]
            if kept is not None:
                kept[:n] += np.where(above, lat, 0.0)
            ok &= above
            idx = np.flatnonzero(ok)
            col = index_map[r[idx], c[idx]]
            open_ = col >= 0
            idx, col = idx[open_], col[open_]
            if shell_log is not None:
                shell_log.append(False)
            yield order[idx], col, lat[idx]
            if shell:
                dist = np.sqrt(xu[dj][:n] ** 2 + xv[di][:n] ** 2)
                bump = np.clip((dist - shell_mm) / shell_ramp_mm, 0.0, 1.0)
                kept_shell[:n] += np.where(above, lat * bump, 0.0)
                on = bump[idx] > 0
                if on.any():
                    shell_log.append(True)
                    yield order[idx[on]], col[on], lat[idx[on]] * bump[idx[on]]
    if scale_out is not None:
        scale_out[:] = 1.0
        full = calibration_scale(sigma_iso[:, order], fr)
        uniform = full / np.maximum(kept, 1e-12)
        if shell:
            has_shell = kept_shell > 1e-9 * np.maximum(kept, 1e-12)
            shell_out[:] = 0.0
            shell_out[order] = np.where(has_shell, (full - kept) / np.maximum(kept_shell, 1e-300), 0.0)
            scale_out[order] = np.where(has_shell, 1.0, uniform)
        else:
            scale_out[order] = uniform
