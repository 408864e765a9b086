"""The 6 MV photon dose model against published measurements (issue 9).

Every number is computed through :class:`PhotonBeams` influence matrices (beamlets of 5 mm summed
into square fields in water) and compared with the published values in
``optimizer/beams/data/photon_6mv_reference.json`` (each block names its source):

* output factors, 10 cm depth, SAD 100 cm: 2 x 2 cm2 0.78 and 3 x 3 cm2 0.835 (midpoints of the
  IROC ranges, Followill et al., J Appl Clin Med Phys 2012;13(5):282), within 3 %;
* PDD of 10 x 10 cm2 at SSD 100 cm, 5 / 10 / 20 cm: 86.6 / 67.0 / 38.6 % (BJR Suppl. 25), within
  2 points;
* surface dose of 10 x 10 cm2: 10-25 % (Apipunyasopon et al., JACMP 2013;14(5):4338: ~16 %;
  REFERENCES.md 15-20 %), the build-up extrapolated to zero depth as measurements are;
* 80-20 % penumbra of 10 x 10 cm2 at 10 cm depth: 3-6 mm; wider inside lung than in water.

The physics ("the model") is checked with the full kernel (``cutoff_mm=inf, min_relative=0``) and
the default sparse matrix that plans use (cut-off 20 mm, the far-scatter tail folded into the
outer shell of kept entries, ``truncation="calibrated"``) against the same published output
factors and PDDs.
"""

import json
import math
import os

import numpy as np
import pytest

from optimizer import Patient, PhotonBeams, Structure, phantoms
from optimizer.beams.photon_kernel import DATA_DIR, KernelComponent, PhotonScatterKernel, penumbra_80_20
from optimizer.errors import BeamError

with open(os.path.join(DATA_DIR, "photon_6mv_reference.json")) as _f:
    REF = json.load(_f)

FULL = dict(cutoff_mm=math.inf, min_relative=0.0)
SURFACE_Y = -160.0  # water surface of the depth phantom (y, mm); beams come from -y (gantry 0)


@pytest.fixture(scope="module")
def depth_phantom():
    # 40 x 320 x 40 mm water column, 2 mm voxels, 10 mm air above: only the central axis is scored
    # (the pencil-beam kernel does not depend on the phantom's lateral size)
    p = phantoms.water_box((40, 320, 40), spacing_mm=2.0, air_margin_mm=10)
    z, y, x = p.grid.axes_mm()
    mask = np.zeros(p.grid.shape, bool)
    mask[np.argmin(abs(z)), :, np.argmin(abs(x))] = True
    mask &= p.ct_hu > -500
    return p, mask


def _cax(patient, mask, field_cm, iso_depth_mm, surface_y=SURFACE_Y, **kw):
    """Central-axis dose (Gy per unit weight) and depths (mm) of a square field of 5 mm beamlets."""
    n = int(round(field_cm * 10 / 5))
    beams = PhotonBeams([0], beamlet_mm=5.0, **kw)
    inf = beams.influence(patient, isocenter_mm=(0.0, surface_y + iso_depth_mm, 0.0), dose_mask=mask,
                          fields={0: np.ones((n, n), bool)})
    dose = inf.dose_per_fraction(np.ones(inf.n_beamlets))
    z, y, x = patient.grid.axes_mm()
    line = dose[np.argmin(abs(z)), :, np.argmin(abs(x))]
    depth = y - surface_y
    ok = mask[np.argmin(abs(z)), :, np.argmin(abs(x))]
    return depth[ok], line[ok]


def _output_factors(phantom, fields_cm, **kw):
    """Dose at 10 cm depth (SAD 100 cm) of each field relative to 10 x 10 cm2."""
    p, mask = phantom
    depth_cm = REF["output_factors"]["depth_cm"]
    z, y, x = p.grid.axes_mm()
    near = mask & (np.abs(y - (SURFACE_Y + depth_cm * 10)) <= 3.0)[None, :, None]  # score 10 cm only

    def at_depth(field_cm):
        d, dose = _cax(p, near, field_cm, depth_cm * 10, **kw)
        return float(np.interp(depth_cm * 10, d, dose))

    ref10 = at_depth(10.0)
    return {f: at_depth(f) / ref10 for f in fields_cm}


@pytest.fixture(scope="module")
def full_kernel_output_factors(depth_phantom):
    return _output_factors(depth_phantom, (2.0, 3.0), **FULL)


@pytest.mark.parametrize("field_cm", [2.0, 3.0])
def test_small_field_output_factors_match_iroc(full_kernel_output_factors, field_cm):
    block = REF["output_factors"]
    published = block["value"][block["field"].index(field_cm)]
    of = full_kernel_output_factors[field_cm]
    assert abs(of / published - 1) <= 0.03, (field_cm, of, published)


@pytest.fixture(scope="module")
def default_matrix_output_factors(depth_phantom):
    return _output_factors(depth_phantom, (2.0, 3.0, 4.0))


@pytest.mark.parametrize("field_cm", [2.0, 3.0])
def test_plan_matrix_output_factors_match_iroc(default_matrix_output_factors, field_cm):
    # the influence matrix plans use (PhotonBeams defaults: cut-off 20 mm, far-scatter tail folded
    # into the outer shell) against the IROC values, and against the analytic full-kernel output
    # factor (erf sum of the components, PhotonScatterKernel.cax_dose) within 1 %
    block = REF["output_factors"]
    published = block["value"][block["field"].index(field_cm)]
    of = default_matrix_output_factors[field_cm]
    assert abs(of / published - 1) <= 0.03, (field_cm, of, published)
    kernel = PhotonScatterKernel.default()
    analytic = float(kernel.cax_dose(field_cm * 10, 100.0)[0] / kernel.cax_dose(100.0, 100.0)[0])
    assert of == pytest.approx(analytic, rel=0.01)


def test_plan_matrix_field_size_dependence_is_monotone(depth_phantom, default_matrix_output_factors):
    # 4 x 4 cm2 reaches the shell that carries the folded tail: too hot (0.93 vs 0.87 published)
    # but still between 3 x 3 and the reference field; the former uniform rescaling and the legacy
    # kernel lose most of the small-field drop (2 x 2: 0.92 and 0.99)
    ofs = default_matrix_output_factors
    assert ofs[2.0] < ofs[3.0] < ofs[4.0] < 1.0, ofs
    uniform = _output_factors(depth_phantom, (2.0,), truncation="uniform")[2.0]
    legacy = _output_factors(depth_phantom, (2.0,), kernel="gaussian")[2.0]
    assert ofs[2.0] < uniform - 0.1 and uniform < legacy, (ofs[2.0], uniform, legacy)


@pytest.mark.parametrize("options", [FULL, {}], ids=["full kernel", "default matrix"])
def test_pdd_10x10_matches_bjr25(depth_phantom, options):
    p, mask = depth_phantom
    depth, dose = _cax(p, mask, 10, 0.0, **options)
    pdd = dose / dose.max() * 100
    block = REF["pdd"]["fields"]["10"]
    for d_cm in (5.0, 10.0, 20.0):
        published = block["pdd"][block["depth"].index(d_cm)]
        model = float(np.interp(d_cm * 10, depth, pdd))
        assert abs(model - published) <= 2.0, (d_cm, model, published)
    assert 12.0 <= depth[np.argmax(dose)] <= 20.0  # d_max 1.5 cm
    # calibration: 1 Gy at d_max for 10 x 10 cm2 at SSD 100 cm with unit weights
    assert dose.max() == pytest.approx(1.0, abs=0.01)


def test_surface_dose_10x10():
    # 0.5 mm voxels along the depth so the build-up can be extrapolated to the surface (y = -20)
    p = phantoms.water_box((10, 40, 10), spacing_mm=(2.0, 0.5, 2.0), air_margin_mm=5)
    z, y, x = p.grid.axes_mm()
    mask = np.zeros(p.grid.shape, bool)
    mask[np.argmin(abs(z)), :, np.argmin(abs(x))] = True
    mask &= p.ct_hu > -500
    depth, dose = _cax(p, mask, 10, 0.0, surface_y=-20.0, **FULL)
    assert depth[0] == pytest.approx(0.25)
    surface = dose[0] - (dose[1] - dose[0]) / (depth[1] - depth[0]) * depth[0]  # linear to d = 0
    assert 0.10 <= surface <= 0.25, surface  # relative to d_max (1 Gy by the calibration)


def _profile_at_10cm(patient, **kw):
    """Cross-plane profile of a 10 x 10 cm2 field (SSD 100 cm) at 10 cm depth: x >= 0, dose."""
    z, y, x = patient.grid.axes_mm()
    iz, iy = np.argmin(abs(z)), np.argmin(abs(y - (SURFACE_Y + 100.0)))
    mask = np.zeros(patient.grid.shape, bool)
    mask[iz, iy, :] = True
    beams = PhotonBeams([0], beamlet_mm=5.0, **kw)
    inf = beams.influence(patient, isocenter_mm=(0.0, SURFACE_Y, 0.0), dose_mask=mask,
                          fields={0: np.ones((20, 20), bool)})
    prof = inf.dose_per_fraction(np.ones(inf.n_beamlets))[iz, iy, :]
    right = x >= -1e-9
    return x[right], prof[right]


@pytest.fixture(scope="module")
def slab_phantoms():
    # 10 mm voxels along z, 1 mm across (x), 2 mm in depth; lung (-700 HU, density ~0.3) from 5 to
    # 15 cm depth in the second phantom
    water = phantoms.water_box((10, 320, 160), spacing_mm=(10.0, 2.0, 1.0), air_margin_mm=4)
    z, y, x = water.grid.axes_mm()
    ct = water.ct_hu.copy()
    slab = (y >= SURFACE_Y + 50) & (y <= SURFACE_Y + 150)
    ct[:, slab, :] = np.where(water.ct_hu[:, slab, :] > -500, -700.0, water.ct_hu[:, slab, :])
    lung = Patient(water.grid, ct, [Structure("Body", water.structure("Body").mask)])
    return water, lung


@pytest.mark.parametrize("options", [{}, FULL], ids=["default matrix", "full kernel"])
def test_penumbra_80_20_at_10cm(slab_phantoms, options):
    x, prof = _profile_at_10cm(slab_phantoms[0], **options)
    width = penumbra_80_20(x, prof, prof[0])
    assert 3.0 <= width <= 6.0, width
    # 50 % point at the field edge projected to 10 cm depth (50 mm x 1100 / 1000)
    x50 = float(np.interp(-0.5, -prof / prof[0], x))
    assert abs(x50 - 55.0) < 1.5, x50


def test_penumbra_is_wider_in_lung(slab_phantoms):
    water, lung = slab_phantoms
    xw, pw = _profile_at_10cm(water)
    xl, pl = _profile_at_10cm(lung)
    w_water = penumbra_80_20(xw, pw, pw[0])
    w_lung = penumbra_80_20(xl, pl, pl[0])
    # lateral electron transport scales with 1 / density: the penumbra widens markedly (measured
    # 6 MV penumbrae in lung are ~1.5-2x those in water, e.g. AAPM TG-65 report, 2004)
    assert w_lung > 1.5 * w_water, (w_lung, w_water)
    # the legacy kernel had no density scaling: the same width in lung (or narrower)
    xg, pg = _profile_at_10cm(lung, kernel="gaussian")
    assert penumbra_80_20(xg, pg, pg[0]) < w_lung


def test_legacy_kernel_is_the_pre_issue_9_matrix():
    # same regression numbers as tests/test_beam_base.py (pre-base code, commit 2bbfe36)
    from test_beam_base import PHOTON_REGRESSION
    from test_beam_base import _summary as summary

    inf = PhotonBeams([0, 120, 240], beamlet_mm=10.0, kernel="gaussian").influence(
        phantoms.tg119_cshape(spacing_mm=8))
    got = summary(inf)
    assert got[:2] == PHOTON_REGRESSION[:2]
    assert got[2:] == pytest.approx(PHOTON_REGRESSION[2:], rel=1e-6)


@pytest.mark.parametrize("kwargs, field", [
    (dict(kernel="6MV"), "kernel"),
    (dict(truncation="none"), "truncation"),
    (dict(truncation=None), "truncation"),
    (dict(cutoff_mm=0), "cutoff_mm"),
    (dict(cutoff_mm=float("nan")), "cutoff_mm"),
    (dict(cutoff_mm="20"), "cutoff_mm"),
])
def test_bad_model_options_are_named(kwargs, field):
    with pytest.raises(BeamError, match=field):
        PhotonBeams([0], **kwargs)


@pytest.mark.parametrize("kwargs, field", [
    (dict(amplitude=-1), "kernel.primary.amplitude"),
    (dict(mu_per_mm=0), "kernel.primary.mu_per_mm"),
    (dict(buildup_per_mm=0.001), "kernel.primary.buildup_per_mm"),  # must exceed mu
    (dict(sigma0_mm=float("nan")), "kernel.primary.sigma0_mm"),
    (dict(sigma_slope="0.01"), "kernel.primary.sigma_slope"),
])
def test_bad_kernel_component_is_named(kwargs, field):
    good = dict(name="primary", amplitude=1.0, mu_per_mm=0.005, buildup_per_mm=0.3, sigma0_mm=2.0,
                sigma_slope=0.01)
    with pytest.raises(BeamError, match=field):
        KernelComponent(**{**good, **kwargs})


def test_unreadable_kernel_file_is_named(tmp_path):
    bad = tmp_path / "k.json"
    bad.write_text('{"components": [{"name": "p"}]}')
    with pytest.raises(BeamError, match="kernel file"):
        PhotonScatterKernel.from_file(bad)
