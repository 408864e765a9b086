"""Proton minibeam PVDR vs depth against public Monte Carlo data (issue 16).

Reference: data/minibeam_pvdr_reference.json, PVDR-vs-depth values of focused planar proton
minibeam arrays (TOPAS, Corvino et al., processed data released with their manuscript; every
configuration with its energy, beam FWHM and centre-to-centre distance; values read from the data
files, see the JSON's "sources"). Each configuration is rebuilt with ProtonMinibeams on a water
slab binned like the Monte Carlo (1 mm depth bins from the surface) and evaluated with
optimizer.evaluate.pvdr.

Tolerance: x/÷ 1.5 on the PVDR. PVDR is a ratio of a peak to a valley that is 1-10 % of it, so
small valley differences move it a lot; the sources of difference we cannot remove are (i) the
valley and peak regions (ours: the central half of the gap / of the beam; the Monte Carlo's mask
width across the slits is not stated: at mid-range, where the valley profile is curved, the
choice moves the valley by up to ~20 %), (ii) the depth convention (1 mm bins; PVDR changes by up
to ~10 %/mm at mid-range) and (iii) beam details the source does not give (divergence, energy
spread), each ~10-20 %, together about a factor 1.5.

Measured (model / Monte Carlo, 16 configurations, 70-230 MeV, FWHM 0.7-2 mm, 2.8-10 mm apart;
2 shared cores, other jobs running):
* from 0.3 R on (R: CSDA range; 0.3, 0.45, 0.6, 0.75 R): 0.68-1.25, geometric mean 0.87: the
  test holds every point to x/÷ 1.5;
* at 0.05-0.1 R: 0.21-0.50, our PVDR is 2-5x too low (our valley too high): the nuclear halo of
  proton_halo carries its Bortfeld entrance weight (~10 % of the IDD) from the surface, widening
  with depth, where the Monte Carlo's secondary dose builds up over centimetres. The test pins the
  direction (our entrance valley is never below the Monte Carlo's, so valley-dose limits planned
  with the model hold there) and a floor of 1/6 on the ratio;
* at 0.2 R (transition): 0.51-1.06, in neither test.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

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


def load_reference() -> dict:
    with open(REFERENCE) as f:
        return json.load(f)


def model_pvdr(cfg: dict, z_max: int) -> dict[int, float]:
    """PVDR per 1 mm depth bin (key: bin index = depth of the bin's top, mm) of the configuration,
    built like the Monte Carlo: focused planar beams in water, bins from the surface."""
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
    inf = ProtonMinibeams(0, MinibeamPattern(bw, ctc), energies_MeV=[e], field_mm=8 * ctc, length_mm=10.0,
                          cutoff_sigmas=4).influence(p)
    d = np.zeros(g.n_voxels)
    d[inf.voxel_index] = inf.matrix @ np.ones(inf.matrix.shape[1])
    rows = pvdr(d.reshape(shape), g, inf, bin_mm=1.0, edge_mm=0.0)["by_depth"]
    return {int(round(r["depth_mm"])): r["pvdr"] for r in rows}


@pytest.fixture(scope="module")
def comparison():
    """[(configuration id, depth mm, depth / CSDA range, Monte Carlo PVDR, model PVDR)]."""
    out = []
    for cfg in load_reference()["configurations"]:
        r0 = pp.csda_range_mm(float(cfg["energy_MeV"]))
        pts = cfg["points"]
        ours = model_pvdr(cfg, max(p["depth_mm"] for p in pts) + 1)
        out += [(cfg["id"], p["depth_mm"], p["depth_mm"] / r0, p["pvdr"], ours[p["depth_mm"]]) for p in pts]
    return out


def test_reference_file_names_its_sources_and_configurations():
    ref = load_reference()
    assert ref["sources"], "no source"
    for key, src in ref["sources"].items():
        for field in ("authors", "title", "journal", "year", "read", "method"):
            assert src.get(field), f"source {key}: missing {field}"
    for cfg in ref["configurations"]:
        assert cfg["source"] in ref["sources"], cfg["id"]
        assert cfg["modality"] == "proton" and cfg["pattern"] == "slit" and cfg["delivery"] == "focused"
        assert 70 <= cfg["energy_MeV"] <= 230 and 0 < cfg["beam_width_fwhm_mm"] < cfg["ctc_mm"], cfg["id"]
        z = [p["depth_mm"] for p in cfg["points"]]
        assert z == sorted(z) and z[0] >= 5 and all(p["pvdr"] >= 1 for p in cfg["points"]), cfg["id"]
        assert z[-1] < pp.csda_range_mm(cfg["energy_MeV"]), cfg["id"]


def test_deep_pvdr_matches_monte_carlo(comparison):
    # from 0.3 R the halo spans several periods and the core's multiple scattering sets the
    # PVDR: within x/÷ 1.5 of the Monte Carlo at every point (module docstring)
    deep = [(c, z, mc, ours) for c, z, f, mc, ours in comparison if f >= DEEP_FROM]
    assert len(deep) >= 60
    bad = [(c, z, round(mc, 2), round(ours, 2)) for c, z, mc, ours in deep
           if not 1 / FACTOR <= ours / mc <= FACTOR]
    assert not bad, bad
    # and no systematic offset: the geometric mean of the ratios within 20 %
    gm = math.exp(np.mean([math.log(ours / mc) for *_, mc, ours in deep]))
    assert 1 / 1.2 <= gm <= 1.2, gm


def test_entrance_pvdr_is_conservative_against_monte_carlo(comparison):
    # at 0.05-0.1 R our valley is too high (PVDR 2-5x too low, module docstring): a known
    # miss of the halo's entrance build-up. Pinned: never above the Monte Carlo (valley limits
    # planned with the model hold in it), never below a sixth of it
    lo, hi = ENTRANCE
    ent = [(c, z, mc, ours) for c, z, f, mc, ours in comparison if lo <= f <= hi]
    assert len(ent) >= 30
    above = [(c, z, round(mc, 1), round(ours, 1)) for c, z, mc, ours in ent if ours > mc]
    assert not above, above
    floor = [(c, z, round(mc, 1), round(ours, 1)) for c, z, mc, ours in ent if ours < mc / 6]
    assert not floor, floor
