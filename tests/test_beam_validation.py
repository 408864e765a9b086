"""Beam arguments are checked when they are given: a named BeamError, never a raw NumPy/Python
traceback, an empty matrix that fails later, silently doubled beams, or a MemoryError after
minutes of computation (issue "Nothing silently wrong", item 8)."""

import numpy as np
import pytest

from optimizer import phantoms
from optimizer.beams import base as base_mod
from optimizer.beams import proton as proton_mod
from optimizer.beams import raytrace
from optimizer.beams.photon import PhotonBeams, PhotonKernel
from optimizer.beams.proton import ProtonBeams
from optimizer.errors import BeamError
from optimizer.geometry import Structure

NAN = float("nan")


@pytest.fixture(scope="module")
def cshape():
    return phantoms.tg119_cshape(spacing_mm=8)


@pytest.fixture(scope="module")
def proton_box():
    """A small water box with a 20 mm cube target 65-85 mm deep from the anterior and side surfaces."""
    p = phantoms.water_box(size_mm=(45, 150, 150), spacing_mm=5.0)
    z, y, x = np.meshgrid(*p.grid.axes_mm(), indexing="ij")
    p.add_structure(Structure("PTV", (np.abs(x) <= 10) & (np.abs(y) <= 10) & (np.abs(z) <= 10), "target"))
    return p


# -- 1. every constructor argument: NaN, out of range, wrong type, empty --------------------------
@pytest.mark.parametrize("kwargs, field", [
    (dict(cutoff_sigma=NAN), "cutoff_sigma"),
    (dict(cutoff_sigma=0), "cutoff_sigma"),
    (dict(cutoff_sigma="3"), "cutoff_sigma"),
    (dict(min_relative=2), "min_relative"),
    (dict(min_relative=1.0), "min_relative"),
    (dict(min_relative=-0.1), "min_relative"),
    (dict(min_relative=NAN), "min_relative"),
    (dict(beamlet_mm="5"), "beamlet_mm"),
    (dict(beamlet_mm="abc"), "beamlet_mm"),
    (dict(beamlet_mm=None), "beamlet_mm"),
    (dict(beamlet_mm=[5.0]), "beamlet_mm"),
    (dict(beamlet_mm=True), "beamlet_mm"),
    (dict(margin_mm=None), "margin_mm"),
    (dict(margin_mm=[5]), "margin_mm"),
    (dict(margin_mm="5 mm"), "margin_mm"),
    (dict(sad_mm=NAN), "sad_mm"),
    (dict(sad_mm=-1000), "sad_mm"),
    (dict(sad_mm="1000"), "sad_mm"),
    (dict(kernel="6MV"), "kernel"),
    (dict(gantry_deg="abc"), "gantry_deg"),
    (dict(gantry_deg="0"), "gantry_deg"),
    (dict(gantry_deg=None), "gantry_deg"),
    (dict(gantry_deg=[0, None]), "gantry_deg"),
    (dict(gantry_deg=[[0, 90], [180, 270]]), "gantry_deg"),
    (dict(gantry_deg=[0, float("inf")]), "gantry_deg"),
])
def test_photon_constructor_names_the_bad_argument(kwargs, field):
    kwargs.setdefault("gantry_deg", [0.0])
    with pytest.raises(BeamError, match=field):
        PhotonBeams(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    (dict(mu_per_mm=NAN), "kernel.mu_per_mm"),
    (dict(mu_per_mm=0), "kernel.mu_per_mm"),
    (dict(buildup_per_mm=-1), "kernel.buildup_per_mm"),
    (dict(surface_dose=1.5), "kernel.surface_dose"),
    (dict(sigma0_mm="2.6"), "kernel.sigma0_mm"),
    (dict(sigma_slope=NAN), "kernel.sigma_slope"),
])
def test_photon_kernel_names_the_bad_parameter(kwargs, field):
    with pytest.raises(BeamError, match=field):
        PhotonKernel(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    (dict(cutoff_sigma="3"), "cutoff_sigma"),
    (dict(spot_spacing_mm="4"), "spot_spacing_mm"),
    (dict(layer_spacing_mm=[2.0]), "layer_spacing_mm"),
    (dict(margin_mm=True), "margin_mm"),
    (dict(spot_sigma_air_mm=NAN), "spot_sigma_air_mm"),
    (dict(spot_sigma_air_mm="4"), "spot_sigma_air_mm"),
    (dict(energy_spread_pct="1"), "energy_spread_pct"),
    (dict(virtual_sad_mm=None), "virtual_sad_mm"),
    (dict(energies_MeV="abc"), "energies_MeV"),
    (dict(energies_MeV="150"), "energies_MeV"),
    (dict(energies_MeV=[]), "energies_MeV"),
    (dict(energies_MeV=[150.0, NAN]), "energies_MeV"),
    (dict(rsp_table=[[1, 2, 3]]), "rsp_table"),
    (dict(rsp_table=[[0.0, 1.0], [-1000.0, 0.0]]), "rsp_table"),
    (dict(rsp_table="water"), "rsp_table"),
    (dict(gantry_deg=[0, "x"]), "gantry_deg"),
    (dict(gantry_deg=[0, NAN]), "gantry_deg"),
    (dict(gantry_deg=None), "gantry_deg"),
])
def test_proton_constructor_names_the_bad_argument(kwargs, field):
    kwargs.setdefault("gantry_deg", [0.0])
    with pytest.raises(BeamError, match=field):
        ProtonBeams(**kwargs)


def test_cutoff_sigma_message_is_in_sigmas_not_mm():
    with pytest.raises(BeamError, match="cutoff_sigma") as err:
        ProtonBeams([0], cutoff_sigma=-1)
    assert "mm" not in str(err.value).split("got")[0]


def _influence_cases(shape):
    return [
        (dict(patient="patient"), "patient"),
        (dict(target=3), "target"),
        (dict(target="Nope"), "target"),
        (dict(isocenter_mm="abc"), "isocenter_mm"),
        (dict(isocenter_mm=(0.0, NAN, 0.0)), "isocenter_mm"),
        (dict(isocenter_mm=(0.0, 0.0)), "isocenter_mm"),
        (dict(dose_mask=np.zeros(shape, bool)), "dose_mask"),
        (dict(dose_mask=np.full(shape, NAN)), "dose_mask"),
        (dict(dose_mask=np.full(shape, 0.5)), "dose_mask"),
        (dict(dose_mask=np.ones(shape[:2], bool)), "dose_mask"),
        (dict(dose_mask="Body"), "dose_mask"),
        (dict(max_memory_mb=NAN), "max_memory_mb"),
        (dict(max_memory_mb=-5), "max_memory_mb"),
        (dict(max_memory_mb="1000"), "max_memory_mb"),
    ]


@pytest.mark.parametrize("case", range(14))
def test_photon_influence_names_the_bad_argument(cshape, case):
    kwargs, field = _influence_cases(cshape.grid.shape)[case]
    kwargs.setdefault("patient", cshape)
    with pytest.raises(BeamError, match=field):
        PhotonBeams([0], beamlet_mm=10.0).influence(**kwargs)


@pytest.mark.parametrize("case", range(14))
def test_proton_influence_names_the_bad_argument(proton_box, case):
    kwargs, field = _influence_cases(proton_box.grid.shape)[case]
    kwargs.setdefault("patient", proton_box)
    with pytest.raises(BeamError, match=field):
        ProtonBeams([0], spot_spacing_mm=8.0).influence(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    (dict(gantry_deg="a"), "gantry_deg"),
    (dict(gantry_deg=NAN), "gantry_deg"),
    (dict(isocenter_mm="abc"), "isocenter_mm"),
    (dict(isocenter_mm=(0, 0, None)), "isocenter_mm"),
    (dict(sad_mm="1000"), "sad_mm"),
    (dict(sad_mm=0), "sad_mm"),
    (dict(couch_deg="0"), "couch_deg"),
    (dict(couch_deg=10), "couch_deg"),
])
def test_beam_geometry_names_the_bad_argument(kwargs, field):
    kwargs = {"gantry_deg": 0.0, "isocenter_mm": (0.0, 0.0, 0.0), **kwargs}
    with pytest.raises(BeamError, match=field):
        raytrace.BeamGeometry(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    (dict(step_mm=0), "step_mm"),
    (dict(step_mm="x"), "step_mm"),
    (dict(ray_spacing_mm=-1), "ray_spacing_mm"),
    (dict(ray_spacing_mm=NAN), "ray_spacing_mm"),
])
def test_radiological_depth_names_the_bad_sampling(kwargs, field):
    p = phantoms.water_box((20, 40, 20), 5.0)
    geom = raytrace.BeamGeometry(0.0, (0.0, 0.0, 0.0))
    with pytest.raises(BeamError, match=field):
        raytrace.radiological_depth(p.relative_electron_density(), p.grid, geom, np.zeros((1, 3)), **kwargs)


def test_let_d_map_refuses_a_nan_dose_threshold(proton_box):
    dose = ProtonBeams([0], spot_spacing_mm=8.0).influence(proton_box)
    let = dose.forms["let_dose"]
    w = np.ones(dose.n_beamlets)
    assert np.isfinite(proton_mod.let_d_map(dose, let, w)).any()
    for bad in (NAN, -1.0, "0.1"):
        with pytest.raises(BeamError, match="min_dose_Gy"):
            proton_mod.let_d_map(dose, let, w, min_dose_Gy=bad)


# -- 2. an empty or malformed open-beamlet map ---------------------------------------------------
@pytest.mark.parametrize("fields, match", [
    ({1: np.zeros((4, 4), bool)}, r"fields\[1\].*beam 1.*no open beamlet"),
    ({1: np.ones(4, bool)}, r"fields\[1\].*beam 1.*2-D"),
    ({1: np.ones((0, 3), bool)}, r"fields\[1\].*beam 1"),
    ({1: np.full((3, 3), 0.5)}, r"fields\[1\].*beam 1"),
    ({1: np.full((3, 3), NAN)}, r"fields\[1\].*beam 1"),
    ({1: "open"}, r"fields\[1\].*beam 1"),
    ({5: np.ones((3, 3), bool)}, r"fields.*5.*beams 0-1"),
    ({"0": np.ones((3, 3), bool)}, r"fields"),
    ([np.ones((3, 3), bool)], r"fields.*dict"),
])
def test_empty_or_malformed_field_is_refused_naming_the_beam(cshape, fields, match):
    with pytest.raises(BeamError, match=match):
        PhotonBeams([0, 90], beamlet_mm=10.0).influence(cshape, fields=fields)


def test_valid_field_still_builds(cshape):
    inf = PhotonBeams([0, 90], beamlet_mm=10.0).influence(
        cshape, fields={1: np.array([[0, 1, 1], [1, 1, 0]])})  # 0/1 integers are accepted
    assert int(np.sum(inf.beamlets["beam"] == 1)) == 4


# -- 3. duplicate gantry angles ------------------------------------------------------------------
@pytest.mark.parametrize("angles, dup", [
    ([0, 0, 90], r"0.*0"),
    ([0, 90, 360], r"0.*360"),
    ([-90, 90, 270], r"-90.*270"),
    ([10.0, 370.0 + 1e-10], r"10.*370"),
])
@pytest.mark.parametrize("cls", [PhotonBeams, ProtonBeams])
def test_duplicate_gantry_angles_are_refused(cls, angles, dup):
    with pytest.raises(BeamError, match="gantry_deg.*duplicate.*" + dup):
        cls(angles)


def test_distinct_angles_are_kept_as_given():
    assert PhotonBeams([0, 180, 359.5]).gantry_deg == [0.0, 180.0, 359.5]
    assert ProtonBeams((180.0, 90.0, 270.0)).gantry_deg == [180.0, 90.0, 270.0]


# -- 4. memory: refuse up front, with an estimate close to the real size --------------------------
def test_photon_memory_refused_before_computing(cshape, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the dose computation started before the memory check")

    monkeypatch.setattr(PhotonBeams, "_beam_dose", never)
    with pytest.raises(BeamError, match=r"(?s)max_memory_mb.*MB.*1 MB.*coarser") as err:
        PhotonBeams([0, 120, 240], beamlet_mm=10.0).influence(cshape, max_memory_mb=1)
    assert "beamlet_mm" in str(err.value)


def test_proton_memory_refused_before_computing(proton_box, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the dose computation started before the memory check")

    monkeypatch.setattr(ProtonBeams, "_beam_dose", never)
    for with_let in (True, False):
        with pytest.raises(BeamError, match=r"(?s)max_memory_mb.*MB.*coarser") as err:
            ProtonBeams([0, 90], spot_spacing_mm=8.0).influence(proton_box, max_memory_mb=0.01,
                                                                 with_let=with_let)
        assert "spot_spacing_mm" in str(err.value)


def test_memory_check_uses_available_memory(cshape, monkeypatch):
    monkeypatch.setattr(base_mod, "available_memory_mb", lambda: 0.5)
    with pytest.raises(BeamError, match=r"0\.5 MB available"):
        PhotonBeams([0], beamlet_mm=10.0).influence(cshape)
    # unknown available memory: no check
    monkeypatch.setattr(base_mod, "available_memory_mb", lambda: None)
    assert PhotonBeams([0], beamlet_mm=10.0).influence(cshape).nnz > 0
    monkeypatch.setattr(base_mod, "available_memory_mb", lambda: 0.001)
    with pytest.raises(BeamError, match="available"):
        ProtonBeams([0], spot_spacing_mm=8.0).influence(phantoms.tg119_cshape(spacing_mm=8))


def test_available_memory_reads_meminfo(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemFree:  100 kB\nMemAvailable:   2048000 kB\n")
    assert raytrace.available_memory_mb(str(meminfo)) == pytest.approx(2000.0)
    # no MemAvailable line and no sysconf: unknown
    meminfo.write_text("MemTotal: 32000000 kB\n")
    monkeypatch.setattr(raytrace.os, "sysconf", lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert raytrace.available_memory_mb(str(meminfo)) is None
    assert raytrace.available_memory_mb(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("kwargs", [
    dict(gantry_deg=[0, 120, 240], beamlet_mm=10.0),
    dict(gantry_deg=[30, 200], beamlet_mm=5.0, margin_mm=0.0, min_relative=0.05),
])
def test_photon_memory_estimate_is_close_to_the_real_matrix(cshape, kwargs):
    beams = PhotonBeams(**kwargs)
    est = beams.estimate_memory(cshape)
    inf = beams.influence(cshape)
    assert est["nnz"] * 8 / 3 <= inf.nnz * 8 <= est["nnz"] * 8 * 3
    assert est["matrix_mb"] == pytest.approx(est["nnz"] * 8 / 2**20)
    assert est["peak_mb"] > est["matrix_mb"]


def test_photon_memory_estimate_follows_the_dose_mask(cshape):
    mask = np.zeros(cshape.grid.shape, bool)
    mask[cshape.grid.shape[0] // 2] = cshape.structure("Body").mask[cshape.grid.shape[0] // 2]
    beams = PhotonBeams([0, 90], beamlet_mm=10.0)
    est = beams.estimate_memory(cshape, dose_mask=mask)
    inf = beams.influence(cshape, dose_mask=mask)
    assert est["nnz"] / 3 <= inf.nnz <= est["nnz"] * 3


@pytest.mark.parametrize("kwargs", [
    dict(gantry_deg=[0, 90], spot_spacing_mm=6.0, margin_mm=3.0),
    dict(gantry_deg=[0], energies_MeV=[100.0], margin_mm=0.0, cutoff_sigma=2.0),
])
def test_proton_memory_estimate_is_close_to_the_real_matrix(proton_box, kwargs):
    beams = ProtonBeams(**kwargs)
    est = beams.estimate_memory(proton_box, with_let=False)
    inf = beams.influence(proton_box, with_let=False)
    assert list(inf.forms) == ["dose"]
    assert est["nnz"] * 8 / 3 <= inf.nnz * 8 <= est["nnz"] * 8 * 3
    est_let = beams.estimate_memory(proton_box)  # with_let=True, as influence()
    assert est_let["nnz"] == est["nnz"] and est_let["peak_mb"] > est["peak_mb"]
