"""Proton minibeam PVDR vs depth against public Monte Carlo data (issue 16).

Reference: data/minibeam_pvdr_reference.json, PVDR-vs-depth of focused planar proton minibeam
arrays (TOPAS, Corvino et al., processed data released with their manuscript; every configuration
with its energy, beam FWHM and centre-to-centre distance; see the JSON's "sources"):

* 16 arrays with a PVDR file (source "corvino_mc", 125-230 MeV, 0.7-2 mm at 2.8-10 mm, 112 points);
  the six 125 MeV ones are the data the halo's entrance build-up was fitted to
  (optimizer/beams/proton_halo.py: HALO_BUILDUP_MM, HALO_MIN_SIGMA_MM), the 175 / 230 MeV ones
  are held out of that fit;
* 28 arrays held out ("corvino_mc_pdd", 125-230 MeV, 0.5-2 mm at 1.5-10 mm, 196 points): PVDR =
  the ratio of the source's peak and valley depth-dose files, arrays it has no PVDR file for.

Each configuration is rebuilt with ProtonMinibeams on a water slab binned like the Monte Carlo
(1 mm depth bins from the surface; slits 10 mm long, 8 periods across) and evaluated with
optimizer.evaluate.pvdr.

Tolerance: x/÷ 1.5 on the PVDR. PVDR is a ratio of a peak to a valley that is 1-10 % of it, so
small valley differences move it a lot; the sources of difference we cannot remove are (i) the
valley and peak regions (ours: the central half of the gap / of the beam; the Monte Carlo's mask
width across the slits is not stated: at mid-range, where the valley profile is curved, the
choice moves the valley by up to ~20 %; at ctc = 3 x FWHM our valley region starts 1.8 surface
core sigmas from the beam axis, so the core's tail sets the entrance valley and with it the
unstated mask width: our entrance PVDR is 0.40-0.62 of the Monte Carlo's at 35 of those 18
arrays' 36 entrance points, 0.83 at the other: conservative), (ii) the depth convention (1 mm
bins; PVDR changes by up to ~10 %/mm at mid-range), (iii) beam details the source does not give
(divergence, energy spread), each ~10-20 %, together about a factor 1.5, and (iv)
the slit length, not stated either: the halo (sigma up to a sixth of the range) leaks out of the
ends of short slits, so longer slits lower deep PVDRs (10 -> 20 mm: 230 MeV 2 mm / 10 mm at 99 mm
from 1.25 to 0.83 x the MC).

"Conservative" below: model / MC PVDR <= 1.5, i.e. our valley is never more than 1.5x below the
Monte Carlo's (with a lower valley a valley-dose limit would be met on paper and missed in the
patient).

Measured (model / MC; 2 shared cores, other jobs running), before -> after the entrance build-up
of the halo weight (linear over 38 mm) and its 3 mm minimum sigma:

* 112 points with PVDR files: within x/÷ 1.5 72 -> 101, geometric mean 0.62 -> 0.84, range
  0.21-1.25 -> 0.48-1.32 (never above 1.5); entrance (0.05-0.1 R, R the CSDA range) 0 -> 22 of 32,
  geometric mean 0.31 -> 0.78; fitted 125 MeV arrays 24 -> 42 of 42, held-out 175 / 230 MeV
  48 -> 59 of 70 (entrance 0.21-0.46 -> 0.48-0.90: conservative, the build-up is slower at
  175-230 MeV than the 125 MeV fit). 125 MeV 1 mm / 4 mm: 41 -> 162 at 6 mm (MC 161), 31 -> 103
  at 11 mm (MC 113), 35 -> 53 at 23 mm (MC 69); its PVDR now falls monotonically from the surface;
* then the depth of the grid's edge voxels (rays beside the grid no longer mixed into their
  interpolation; the lateral edges of the deepest rows were ~20 mm short): 101 -> 96 of 112,
  geometric mean 0.84 -> 0.83, range 0.47-1.32, entrance 22 -> 21 of 32, fitted 125 MeV arrays
  42 -> 40 of 42 (the two at 51 mm: 0.66, 0.65, low), held-out 175 / 230 MeV 59 -> 56 of 70;
  the 196 held-out peak / valley points unchanged (133 within, 1.92 -> 1.91);
* 196 held-out peak / valley points: within x/÷ 1.5 119 -> 133, entrance 2 -> 11 of 56 (0.17-1.78
  -> 0.39-1.32); above 1.5 before: 3 points, after: 2, both in 125 MeV 2 mm / 10 mm at 0.45-0.6 R
  (1.92, 1.58; unchanged, the build-up is complete there), where the 10 mm slits are as short as
  one period: with 20 mm slits they are 1.24 and 1.29.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from optimizer.beams import proton_halo as ph
from optimizer.beams import proton_physics as pp
from optimizer.beams.minibeam import ProtonMinibeams
from optimizer.beams.minibeam_pattern import MinibeamPattern
from optimizer.evaluate.pvdr import pvdr
from optimizer.geometry import Grid, Patient, Structure

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "minibeam_pvdr_reference.json"
#: PVDR band (x/÷) where the model is expected to hold (module docstring).
FACTOR = 1.5
#: Depths (fractions of the CSDA range) from which the halo has spread over several periods.
DEEP_FROM = 0.29
#: Entrance region (fractions of the CSDA range), >= 5 mm.
ENTRANCE = (0.04, 0.11)
#: Slit length of the rebuilt arrays, mm (module docstring, (iv)).
SLIT_MM = 10.0


def load_reference() -> dict:
    with open(REFERENCE) as f:
        return json.load(f)


def model_pvdr(cfg: dict, z_max: int, slit_mm: float = SLIT_MM) -> dict[int, float]:
    """PVDR per 1 mm depth bin (key: bin index = depth of the bin's top, mm) of the configuration,
    built like the Monte Carlo: focused planar beams in water, bins from the surface, slits
    ``slit_mm`` long."""
    bw, ctc, e = cfg["beam_width_fwhm_mm"], cfg["ctc_mm"], float(cfg["energy_MeV"])
    dx = min(0.2, bw / 5)  # >= 5 voxels per beam FWHM, >= 14 per period
    nx = int(round(4 * ctc / dx)) | 1  # odd: a voxel on a beam's centre line
    shape = (3, z_max + 1, nx)
    g = Grid(shape, (2.0, 1.0, dx), (-2.0, 0.5, -(nx // 2) * dx))  # first bin [0, 1] mm deep
    z, y, x = np.meshgrid(*g.axes_mm(), indexing="ij")
    tgt = (np.abs(x) <= 1.0) & (y <= 1.0)
    p = Patient(g, np.zeros(shape, np.float32), [Structure("Body", np.ones(shape, bool)),
                                                 Structure("T", tgt, "target")])
    # 8 periods across, uniform weights: wider fields change these PVDRs by < 1 % (measured)
    inf = ProtonMinibeams(0, MinibeamPattern(bw, ctc), energies_MeV=[e], field_mm=8 * ctc, length_mm=slit_mm,
                          cutoff_sigmas=4).influence(p)
    d = np.zeros(g.n_voxels)
    d[inf.voxel_index] = inf.matrix @ np.ones(inf.matrix.shape[1])
    rows = pvdr(d.reshape(shape), g, inf, bin_mm=1.0, edge_mm=0.0)["by_depth"]
    return {int(round(r["depth_mm"])): r["pvdr"] for r in rows}


def _config(cid: str) -> dict:
    return next(c for c in load_reference()["configurations"] if c["id"] == cid)


@pytest.fixture(scope="module")
def comparison():
    """[(configuration, depth mm, depth / CSDA range, Monte Carlo PVDR, model PVDR)], every array."""
    out = []
    for cfg in load_reference()["configurations"]:
        r0 = pp.csda_range_mm(float(cfg["energy_MeV"]))
        pts = cfg["points"]
        ours = model_pvdr(cfg, max(p["depth_mm"] for p in pts) + 1)
        out += [(cfg, p["depth_mm"], p["depth_mm"] / r0, p["pvdr"], ours[p["depth_mm"]]) for p in pts]
    return out


def _pvdr_files(comparison):
    return [(c["id"], z, f, mc, ours) for c, z, f, mc, ours in comparison if c["source"] == "corvino_mc"]


def _held_out(comparison):
    return [(c, z, f, mc, ours) for c, z, f, mc, ours in comparison if c.get("held_out")]


def _within(ratios) -> int:
    return sum(1 / FACTOR <= r <= FACTOR for r in ratios)


def _geomean(ratios) -> float:
    return math.exp(np.mean(np.log(ratios)))


def test_reference_file_names_its_sources_and_configurations():
    ref = load_reference()
    assert ref["sources"], "no source"
    for key, src in ref["sources"].items():
        for field in ("authors", "title", "journal", "year", "read", "method"):
            assert src.get(field), f"source {key}: missing {field}"
    ids = [c["id"] for c in ref["configurations"]]
    assert len(ids) == len(set(ids))
    for cfg in ref["configurations"]:
        assert cfg["source"] in ref["sources"], cfg["id"]
        assert cfg["modality"] == "proton" and cfg["pattern"] == "slit" and cfg["delivery"] == "focused"
        assert 70 <= cfg["energy_MeV"] <= 230 and 0 < cfg["beam_width_fwhm_mm"] < cfg["ctc_mm"], cfg["id"]
        z = [p["depth_mm"] for p in cfg["points"]]
        assert z == sorted(z) and z[0] >= 5 and all(p["pvdr"] >= 1 for p in cfg["points"]), cfg["id"]
        assert z[-1] < pp.csda_range_mm(cfg["energy_MeV"]), cfg["id"]
        # held-out arrays come from the peak / valley files, one pair per array
        assert bool(cfg.get("held_out")) == (cfg["source"] == "corvino_mc_pdd"), cfg["id"]
        if cfg.get("held_out"):
            assert len(cfg["file"]) == 2 and "zpeak" in cfg["file"][0] and "zvalley" in cfg["file"][1]
    assert sum(1 for c in ref["configurations"] if c.get("held_out")) == 28


def test_deep_pvdr_matches_monte_carlo(comparison):
    # from 0.3 R the halo spans several periods and the core's multiple scattering sets the
    # PVDR: within x/÷ 1.5 of the Monte Carlo at every point of the PVDR files (module docstring)
    # but two, 125 MeV 0.7 mm / 3.5 mm and 1 mm / 4 mm at 51 mm (0.45 R): 0.656 and 0.651, low
    # (conservative). They were 0.75 / 0.70 while the depth of the grid's lateral edge voxels in
    # the deepest rows came out ~20 mm short (rays beside the grid mixed in; fixed in raytrace)
    deep = [(c, z, mc, ours) for c, z, f, mc, ours in _pvdr_files(comparison) if f >= DEEP_FROM]
    assert len(deep) >= 60
    bad = [(c, z, round(mc, 2), round(ours, 2)) for c, z, mc, ours in deep
           if not 1 / FACTOR <= ours / mc <= FACTOR]
    assert len(bad) <= 2 and all(0.64 <= ours / mc < 1 and z == 51 for c, z, mc, ours in bad), bad
    # and no systematic offset: the geometric mean of the ratios within 20 %
    gm = _geomean([ours / mc for *_, mc, ours in deep])
    assert 1 / 1.2 <= gm <= 1.2, gm


def test_no_valley_is_non_conservatively_low_and_the_entrance_matches(comparison):
    # every point of the PVDR files from the first Monte Carlo depth: our PVDR at most 1.5x the
    # Monte Carlo's (measured max 1.32); at 0.05-0.1 R, where the halo builds up, the PVDR is
    # within x/÷ 1.5 at 22 of 32 points (0 without the build-up), the rest too low
    # (conservative), geometric mean 0.78 (0.31 without): asserted >= 20 and 0.7-1.2
    pts = _pvdr_files(comparison)
    assert len(pts) == 112
    high = [(c, z, round(mc, 1), round(ours, 1)) for c, z, f, mc, ours in pts if ours > FACTOR * mc]
    assert not high, high
    lo, hi = ENTRANCE
    ent = [ours / mc for c, z, f, mc, ours in pts if lo <= f <= hi]
    assert len(ent) == 32
    assert _within(ent) >= 20 and 0.7 <= _geomean(ent) <= 1.2, (_within(ent), _geomean(ent))
    # overall 96 of 112 within x/÷ 1.5 (72 without the build-up; 101 before the depth fix of the
    # grid's edge voxels)
    assert _within([ours / mc for *_, mc, ours in pts]) >= 92


def test_pvdr_falls_from_the_surface_like_the_monte_carlo():
    # 125 MeV, 1 mm / 4 mm: the Monte Carlo PVDR falls monotonically with depth (its points); so
    # must ours, bin by bin from the surface (without the build-up it rose from 0-1 to 1-2 mm)
    cfg = _config("mc_125MeV_1mm_4mm")
    mc = [p["pvdr"] for p in cfg["points"]]
    assert all(b < a for a, b in zip(mc, mc[1:]))
    ours = model_pvdr(cfg, cfg["points"][-1]["depth_mm"] + 1)
    v = [ours[k] for k in sorted(ours)]
    assert all(b <= a for a, b in zip(v, v[1:])), np.round(v[:15], 1)


def test_held_out_arrays_are_conservative_where_the_build_up_acts(comparison):
    # 28 arrays none of the constants was fitted to (module docstring). Where the build-up or the
    # minimum halo sigma act (depth < HALO_BUILDUP_MM): our PVDR at most 1.5x the Monte Carlo's
    # (measured max 1.32; before: 1.78, 125 MeV 2 mm / 10 mm at 6 mm)
    held = _held_out(comparison)
    assert len(held) == 196
    shallow = [(c["id"], z, round(ours / mc, 2)) for c, z, f, mc, ours in held if z < ph.HALO_BUILDUP_MM]
    assert len(shallow) >= 56
    high = [x for x in shallow if x[2] > FACTOR]
    assert not high, high
    # 133 of 196 within x/÷ 1.5 (119 before)
    assert _within([ours / mc for *_, mc, ours in held]) >= 125
    # deeper, the model is the one before the build-up: the points above 1.5 are only in arrays
    # whose period is as long as the rebuilt slits (the halo leaks out of the slit ends; the next
    # test rebuilds one with longer slits)
    deep_high = [(c["id"], z) for c, z, f, mc, ours in held if ours > FACTOR * mc]
    assert all(_config(cid)["ctc_mm"] >= SLIT_MM for cid, _ in deep_high), deep_high


def test_longer_slits_make_the_wide_held_out_array_conservative():
    # 125 MeV 2 mm / 10 mm with 20 mm slits (two periods): every point at most 1.5x the Monte
    # Carlo (measured 0.78-1.29; 10 mm slits: up to 1.92 at 51 mm)
    cfg = _config("mc_125MeV_2mm_10mm")
    ours = model_pvdr(cfg, cfg["points"][-1]["depth_mm"] + 1, slit_mm=2 * cfg["ctc_mm"])
    ratios = [ours[p["depth_mm"]] / p["pvdr"] for p in cfg["points"]]
    assert max(ratios) <= FACTOR, np.round(ratios, 2)


def test_build_up_moves_the_entrance_towards_the_monte_carlo(monkeypatch):
    # the same array with the halo's build-up and minimum sigma switched off (the model before):
    # at 6 and 11 mm its PVDR is 2.5-4x below the Monte Carlo (measured 0.25, 0.27), with them
    # within x/÷ 1.5 (1.01, 0.91)
    cfg = _config("mc_125MeV_1mm_4mm")
    mc = {p["depth_mm"]: p["pvdr"] for p in cfg["points"][:2]}
    new = model_pvdr(cfg, 12)
    monkeypatch.setattr(ph, "HALO_BUILDUP_MM", 1e-9)
    monkeypatch.setattr(ph, "HALO_MIN_SIGMA_MM", 0.0)
    old = model_pvdr(cfg, 12)
    for z, ref in mc.items():
        assert old[z] / ref < 1 / 2.5 and 1 / FACTOR <= new[z] / ref <= FACTOR, (z, old[z], new[z], ref)
