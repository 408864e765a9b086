"""The beam-model base (optimizer.beams.base.BeamModel): photon and proton beams share one
``influence`` signature, one target default, one angle check and one memory check, and return an
InfluenceSet with their forms; results are those of the models before the base existed."""

import inspect
import logging
import pathlib
import re

import numpy as np
import pytest
import scipy.sparse as sp

from optimizer import BeamModel, InfluenceSet, Patient, phantoms
from optimizer.beams.base import BeamSetup
from optimizer.beams.photon import PhotonBeams
from optimizer.beams.proton import ProtonBeams
from optimizer.errors import BeamError
from optimizer.geometry import Structure
from optimizer.influence import InfluenceMatrix

BEAMS_DIR = pathlib.Path(__file__).resolve().parents[1] / "optimizer" / "beams"


@pytest.fixture(scope="module")
def cshape():
    return phantoms.tg119_cshape(spacing_mm=8)


def _proton_box():
    """Water box 45 x 150 x 150 mm, 5 mm voxels, a 20 mm cube PTV at its centre."""
    p = phantoms.water_box(size_mm=(45, 150, 150), spacing_mm=5.0)
    z, y, x = np.meshgrid(*p.grid.axes_mm(), indexing="ij")
    p.add_structure(Structure("PTV", (np.abs(x) <= 10) & (np.abs(y) <= 10) & (np.abs(z) <= 10), "target"))
    return p


@pytest.fixture(scope="module")
def proton_box():
    return _proton_box()


def _photon():
    return PhotonBeams([0, 120, 240], beamlet_mm=10.0)


def _proton():
    return ProtonBeams([0, 90], spot_spacing_mm=8.0)


MODELS = [(_photon, "cshape"), (_proton, "proton_box")]


@pytest.fixture(params=MODELS, ids=["photon", "proton"])
def model_case(request):
    make, patient = request.param
    return make(), request.getfixturevalue(patient)


# -- one signature ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [PhotonBeams, ProtonBeams])
@pytest.mark.parametrize("method", ["influence", "estimate_memory"])
def test_models_share_the_base_signature(cls, method):
    """The base's parameters come first, with the same kinds and defaults; a model's own options
    follow, keyword-only with defaults."""
    assert issubclass(cls, BeamModel) and cls.modality in ("photon", "proton")
    base = list(inspect.signature(getattr(BeamModel, method)).parameters.values())
    own = list(inspect.signature(getattr(cls, method)).parameters.values())
    assert [(p.name, p.kind, p.default) for p in own[:len(base)]] == [
        (p.name, p.kind, p.default) for p in base]
    for p in own[len(base):]:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    names = [p.name for p in base]
    assert names[:2] == ["self", "patient"] and "target" in names
    if method == "influence":
        assert {"max_memory_mb", "progress", "isocenter_mm", "dose_mask"} <= set(names)
        assert inspect.signature(getattr(cls, method)).return_annotation in ("InfluenceSet", InfluenceSet)


# -- forms --------------------------------------------------------------------------------------------
def test_both_models_return_an_influence_set_with_their_forms(model_case):
    model, patient = model_case
    out = model.influence(patient)
    assert isinstance(out, InfluenceSet) and isinstance(out, InfluenceMatrix)
    assert tuple(out.forms) == type(model).form_names
    assert out.modality == model.modality
    assert [b["gantry_deg"] for b in out.beams] == model.gantry_deg
    assert [b["couch_deg"] for b in out.beams] == model.couch_deg


def test_proton_let_form_has_the_sparsity_of_the_dose(proton_box):
    out = _proton().influence(proton_box)
    let = out.forms["let_dose"]
    assert np.array_equal(out.matrix.indptr, let.matrix.indptr)
    assert np.array_equal(out.matrix.indices, let.matrix.indices)
    assert np.array_equal(out.voxel_index, let.voxel_index)
    assert let.n_beamlets == out.n_beamlets and let.grid == out.grid
    dose_only = _proton().influence(proton_box, with_let=False)
    assert list(dose_only.forms) == ["dose"]
    assert (dose_only.matrix != out.matrix).nnz == 0


def test_deprecated_compute_returns_the_set_and_its_let_form(proton_box):
    with pytest.warns(DeprecationWarning, match="influence"):
        dose, let = _proton().compute(proton_box)
    assert isinstance(dose, InfluenceSet) and let is dose.forms["let_dose"]


# -- regression: identical to the models before the base -------------------------------------------
# Regression values computed with the pre-base code (commit 2bbfe36: PhotonBeams.influence and
# ProtonBeams.compute) on these phantoms: shape, nnz, sum of all entries, of column 7, of row 100
# and of the squared entries (float64 sums of the float32 matrices).
# Re-pinned when radiological_depth's ray fan moved onto a lattice fixed to the beam axis (a
# voxel's depth, and so its dose, no longer depends on the other voxels traced) and its points
# took their depth from the rays inside the grid only (edge slices had lost up to half their
# depth): total dose +0.015 %.
PHOTON_REGRESSION = ((13242, 225), 140696, 8611.606531407393, 31.094527983339503, 0.04192387993680313,
                     2731.7120605273494)
# The proton values were re-pinned for issue 9 (beam-data table: energy spread and in-air sigma
# per energy, now OpenTPS's generic beam model; nuclear halo, cut-off at 4 core sigmas or the
# halo reach with the kernel beyond folded into the outer shell, exact surface): the physics
# changed on purpose; re-pinned again for issue 16 (the halo's entrance build-up over the first
# 38 mm and 3 mm minimum width: uniform-weight dose moved by at most 0.19 %); the pins keep
# guarding the refactoring against unintended changes; re-pinned again for the ray fan on a
# lattice fixed to the beam axis and the edge rays (total dose -0.45 %, the box fills its grid:
# the grid-edge voxels).
PROTON_DOSE_REGRESSION = ((3699, 390), 303736, 4658.4146240899645, 13.613737431176247, 0.8518482300496544,
                          334.1174923386392)
PROTON_LET_REGRESSION = ((3699, 390), 303736, 11365.79536870485, 35.587429878220064, 0.8698330920597073,
                         8033.096135449723)
PROTON_VOXEL_INDEX_SUM = 14651647


def _summary(inf):
    m = inf.matrix.astype(np.float64)
    return (inf.matrix.shape, inf.nnz, float(m.sum()), float(m[:, 7].sum()), float(m[100].sum()),
            float((m.data ** 2).sum()))


def _check(summary, expected):
    assert summary[:2] == expected[:2]
    assert summary[2:] == pytest.approx(expected[2:], rel=1e-6)


def test_photon_matrix_is_unchanged(cshape):
    # the pre-issue-9 single-Gaussian kernel, kept as kernel="gaussian" (the default is now the
    # fitted multi-component kernel, validated in tests/test_photon_dose_model.py)
    legacy = PhotonBeams([0, 120, 240], beamlet_mm=10.0, kernel="gaussian")
    _check(_summary(legacy.influence(cshape)), PHOTON_REGRESSION)


def test_proton_matrices_are_unchanged(proton_box):
    out = _proton().influence(proton_box)
    _check(_summary(out), PROTON_DOSE_REGRESSION)
    _check(_summary(out.forms["let_dose"]), PROTON_LET_REGRESSION)
    assert int(out.voxel_index.sum()) == PROTON_VOXEL_INDEX_SUM


# -- the target default -------------------------------------------------------------------------------
def test_the_single_target_is_the_default(model_case):
    model, patient = model_case
    a = model.influence(patient)
    b = model.influence(patient, "PTV")
    assert (a.matrix != b.matrix).nnz == 0 and np.array_equal(a.voxel_index, b.voxel_index)


@pytest.mark.parametrize("make", [_photon, _proton], ids=["photon", "proton"])
def test_several_or_no_targets_are_listed(make):
    p = _proton_box()
    p.add_structure(Structure("Boost", p.structure("PTV").mask, "target"))
    with pytest.raises(BeamError, match=r"target: .*2 structures with role 'target' \(PTV, Boost\)"):
        make().influence(p)
    with pytest.raises(BeamError, match=r"target: .*2 structures.*PTV, Boost"):
        make().estimate_memory(p)
    assert make().influence(p, "Boost").nnz > 0  # naming one is enough
    none = phantoms.water_box(size_mm=(45, 150, 150), spacing_mm=5.0)
    none.add_structure(Structure("Cube", p.structure("PTV").mask, "oar"))
    with pytest.raises(BeamError, match=r"target: .*no structure with role 'target'.*Body.*Cube"):
        make().influence(none)
    assert make().influence(none, "cube").nnz > 0  # names ignore case, as Patient.structure


def test_photon_fields_for_every_beam_need_no_target():
    p = phantoms.water_box((40, 60, 40), spacing_mm=5.0)
    fields = {0: np.ones((2, 2), bool)}
    assert PhotonBeams([0], beamlet_mm=10.0).influence(p, isocenter_mm=(0, 0, 0), fields=fields).nnz > 0
    with pytest.raises(BeamError, match="isocenter_mm"):
        PhotonBeams([0], beamlet_mm=10.0).influence(p, fields=fields)
    with pytest.raises(BeamError, match="target"):  # beam 1 has no field: it covers the target
        PhotonBeams([0, 90], beamlet_mm=10.0).influence(p, isocenter_mm=(0, 0, 0), fields=fields)


@pytest.mark.parametrize("make", [_photon, _proton], ids=["photon", "proton"])
@pytest.mark.parametrize("kwargs, field", [
    (dict(patient=None), "patient"),
    (dict(target=["PTV"]), "target"),
    (dict(target="Nope"), r"target: structure 'Nope' not found; known structures"),
    (dict(progress="yes"), "progress"),
    (dict(max_memory_mb=0), "max_memory_mb"),
    (dict(isocenter_mm=(0, 0)), "isocenter_mm"),
])
def test_patient_and_target_checks_are_shared(make, kwargs, field, proton_box):
    kwargs = {"patient": proton_box, **kwargs}
    with pytest.raises(BeamError, match=field):
        make().influence(**kwargs)


def test_model_options_are_checked(proton_box):
    with pytest.raises(BeamError, match="with_let"):
        _proton().influence(proton_box, with_let="no")
    with pytest.raises(TypeError):
        _proton().influence(proton_box, "PTV", None)  # options are keyword-only


# -- angles -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [PhotonBeams, ProtonBeams])
@pytest.mark.parametrize("kwargs, match", [
    (dict(gantry_deg=[0, 360]), r"gantry_deg: duplicate.*0 and 360 \(beams 0 and 1\)"),
    (dict(gantry_deg=[90, -270, 10]), r"gantry_deg: duplicate.*90 and -270"),
    (dict(gantry_deg=[0, 360], couch_deg=[0, 0]), r"gantry_deg: duplicate.*couch 0"),
    (dict(gantry_deg=[0, float("nan")]), r"gantry_deg\[1\]"),
    (dict(gantry_deg=[]), "gantry_deg"),
    (dict(gantry_deg=[0, 90], couch_deg=float("inf")), "couch_deg"),
    (dict(gantry_deg=[0, 90], couch_deg=[0]), r"couch_deg: expected one couch angle or one per beam \(2\)"),
    (dict(gantry_deg=[0, 90], couch_deg="0"), "couch_deg"),
    (dict(gantry_deg=[0, 90], couch_deg=[0, 10]), r"couch_deg: only 0 .*10 for beam 1"),
])
def test_angles_are_checked_once_for_every_model(cls, kwargs, match):
    with pytest.raises(BeamError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("cls", [PhotonBeams, ProtonBeams])
def test_angles_are_kept_as_given(cls):
    m = cls((270, 90.0, np.float32(180)), couch_deg=[0, 0.0, 0])
    assert m.gantry_deg == [270.0, 90.0, 180.0] and m.couch_deg == [0.0, 0.0, 0.0]
    assert m.n_beams == 3 and all(type(a) is float for a in m.gantry_deg + m.couch_deg)


# -- the memory check, progress and messages ---------------------------------------------------------
@pytest.mark.parametrize("make, patient", MODELS, ids=["photon", "proton"])
def test_memory_is_refused_before_any_dose(make, patient, request, monkeypatch):
    model = make()

    def never(*args, **kwargs):
        raise AssertionError("the dose computation started before the memory check")

    monkeypatch.setattr(type(model), "_compute", never)
    with pytest.raises(BeamError, match=r"(?s)max_memory_mb.*coarser"):
        model.influence(request.getfixturevalue(patient), max_memory_mb=0.001)


def test_progress_bar_only_when_asked_and_one_log_record_per_beam(model_case, capsys, caplog):
    model, patient = model_case
    with caplog.at_level(logging.INFO, logger="optimizer.beams"):
        model.influence(patient)
    assert capsys.readouterr().err == ""  # quiet by default
    records = [r for r in caplog.records if r.name == "optimizer.beams.base"]
    assert len(records) == model.n_beams
    assert all(f"{model.modality} beam" in r.getMessage() for r in records)
    model.influence(patient, progress=True)
    err = capsys.readouterr().err
    assert f"{model.modality} dose" in err and f"{model.n_beams}/{model.n_beams}" in err


# -- a model is only its physics ----------------------------------------------------------------------
class _Uniform(BeamModel):
    """One beamlet per beam, 1 Gy per unit weight in every dose-mask voxel: the smallest model."""

    modality = "photon"

    @property
    def source_axis_distance_mm(self):
        return 1000.0

    def _density(self, patient):
        return patient.relative_electron_density()

    def _place(self, setup):
        assert isinstance(setup, BeamSetup) and setup.target == "PTV"
        return [1] * len(setup.geometries)

    def _estimate(self, setup, placed):
        nnz = len(setup.voxels) * sum(placed)
        return {"nnz": nnz, "matrix_mb": nnz * 8 / 2**20, "peak_mb": nnz * 8 / 2**20}

    def _compute(self, setup, placed, progress):
        n = len(placed)
        m = sp.csr_matrix(np.ones((len(setup.voxels), n), np.float32))
        beams = [{"gantry_deg": g, "couch_deg": c, "isocenter_mm": list(setup.isocenter_mm),
                  "map_shape": [1, 1]} for g, c in zip(self.gantry_deg, self.couch_deg)]
        table = {"beam": np.arange(n), "row": np.zeros(n, int), "col": np.zeros(n, int)}
        return InfluenceSet(InfluenceMatrix(m, setup.voxels, setup.grid, table, beams, self.modality))


def test_a_new_model_inherits_every_check(proton_box):
    out = _Uniform([0, 90]).influence(proton_box)
    inside = proton_box.relative_electron_density() > 0.05  # the default dose mask
    assert isinstance(out, InfluenceSet) and out.matrix.shape == (int(inside.sum()), 2)
    with pytest.raises(BeamError, match="duplicate"):
        _Uniform([0, 360])
    with pytest.raises(BeamError, match="max_memory_mb"):
        _Uniform([0]).influence(proton_box, max_memory_mb=1e-6)
    with pytest.raises(BeamError, match="fields: not an option"):
        _Uniform([0])._run(proton_box, None, None, None, None, False, fields={})
    with pytest.raises(BeamError, match="patient"):
        _Uniform([0]).influence("PTV")
    assert isinstance(proton_box, Patient)


# -- no cache keyed by object identity -----------------------------------------------------------------
def test_no_cache_keyed_by_object_identity():
    for path in sorted(BEAMS_DIR.glob("*.py")):
        text = path.read_text()
        assert not re.search(r"\bid\(", text), path.name
        assert "self._cache" not in text, path.name


def test_default_dose_region_is_the_body_contour_when_there_is_one():
    """A couch below the body (dense, outside the body contour) gets no dose rows by default."""
    from optimizer import PhotonBeams, phantoms

    p = phantoms.tg119_cshape(spacing_mm=8.0)
    ct = p.ct_hu.copy()
    z, y, x = np.meshgrid(*p.grid.axes_mm(), indexing="ij")
    couch = (y > y[p.structure("Body").mask].max()) & (y <= y[p.structure("Body").mask].max() + 16)
    assert couch.any()
    ct[couch] = 200.0  # carbon-fibre-like couch, denser than water
    p.ct_hu = ct
    inf = PhotonBeams([180], beamlet_mm=10.0).influence(p, "PTV")
    rows = np.zeros(p.grid.n_voxels, bool)
    rows[inf.voxel_index] = True
    assert not rows[couch.ravel()].any()
    # without a body contour the density rule applies and the couch gets dose rows
    p.structures = [s for s in p.structures if s.name != "Body"]
    assert p.body() is None
    inf2 = PhotonBeams([180], beamlet_mm=10.0).influence(p, "PTV")
    rows2 = np.zeros(p.grid.n_voxels, bool)
    rows2[inf2.voxel_index] = True
    assert rows2[couch.ravel()].any()


# -- a voxel's dose does not depend on the other voxels computed -------------------------------------
@pytest.mark.parametrize("make, name", [(lambda: PhotonBeams([160], beamlet_mm=10.0), "cshape"),
                                        (lambda: ProtonBeams([160], spot_spacing_mm=8.0), "cshape")],
                         ids=["photon", "proton"])
def test_rows_do_not_depend_on_the_dose_mask(make, name, request):
    # radiological_depth interpolates between the rays of a fan; the fan must not be placed by the
    # extent of the points traced, or the depth (and dose) of a voxel changes with the dose mask
    patient = request.getfixturevalue(name)
    model = make()
    a = model.influence(patient)
    b = model.influence(patient, dose_mask=np.ones(patient.grid.shape, bool))
    common, ia, ib = np.intersect1d(a.voxel_index, b.voxel_index, return_indices=True)
    assert len(common) == len(a.voxel_index)
    assert abs(a.matrix[ia] - b.matrix[ib]).max() <= 1e-6 * abs(a.matrix).max()


@pytest.mark.parametrize("exact_surface", [False, True])
@pytest.mark.parametrize("gantry", [0.0, 90.0])
def test_edge_slices_get_the_depth_of_the_middle_slices(exact_surface, gantry):
    # a water box filling its grid, beams in the axial plane: every slice has the same depths. The
    # rays beside the grid (beyond its first / last slice) see no density; mixed into the edge
    # slices' interpolation they took up to 58 mm off their depth (12 mm voxels and rays)
    from optimizer.beams.raytrace import BeamGeometry, radiological_depth
    from optimizer.geometry import Grid

    grid = Grid((8, 20, 20), (12.0, 12.0, 12.0), (-42.0, -114.0, -114.0))
    pos = grid.positions_mm(np.arange(grid.n_voxels))
    geom = BeamGeometry(gantry, (0.0, 0.0, 0.0), 1000.0, 0.0)
    depth = radiological_depth(np.ones(grid.shape, np.float32), grid, geom, pos, 12.0,
                               exact_surface=exact_surface)[3].reshape(grid.shape)
    assert depth[4].max() > 200.0
    assert np.abs(depth[0] - depth[4]).max() < 0.5 and np.abs(depth[-1] - depth[4]).max() < 0.5


def test_estimate_memory_takes_the_dose_grid_the_refusal_advises():
    """estimate_memory(..., dose_grid=) sizes the dose-grid computation (the refusal's first
    advice is a coarser dose grid, which could not be estimated): within 3 % of the non-zeros
    then computed, photons and protons; the dose grid's own errors name dose_grid."""
    import warnings

    from optimizer import GeometryError

    ct = phantoms.tg119_cshape(spacing_mm=6.0)
    for model in (PhotonBeams([0, 120, 240], beamlet_mm=10.0),
                  ProtonBeams([90.0], spot_spacing_mm=8.0, margin_mm=3.0)):
        est = model.estimate_memory(ct, "PTV", dose_grid=12.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            done = model.influence(ct, "PTV", dose_grid=12.0)
        assert abs(est["nnz"] / done.nnz - 1.0) <= 0.03, (type(model).__name__, est["nnz"], done.nnz)
        assert est["nnz"] < 0.5 * model.estimate_memory(ct, "PTV")["nnz"]
    with pytest.raises(GeometryError, match="dose_grid: expected positive finite sizes in mm"):
        PhotonBeams([0], beamlet_mm=10.0).estimate_memory(ct, "PTV", dose_grid=-5.0)
