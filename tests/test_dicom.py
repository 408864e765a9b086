"""DICOM import/export: round trips, dciodvfy validation, pydicom's test files, bad input, fuzzing."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from optimizer.dicom import DicomError, load_ct_series, load_dicom, load_rtdose, load_rtstruct
from optimizer.dicom_export import write_ct_series, write_rt_ion_plan, write_rtdose, write_rtstruct
from optimizer.geometry import Grid, Patient, Structure

# -- a small synthetic patient ----------------------------------------------------------------


def make_patient(shape=(20, 40, 40), spacing=(2.5, 2.0, 2.0), name="phantom") -> Patient:
    """Water cylinder body, an asymmetric C-shaped target opening towards +x, a cylinder OAR
    in the C's concavity, and a little bone so the CT is not constant."""
    nz, ny, nx = shape
    origin = (-(nz - 1) * spacing[0] / 2, -(ny - 1) * spacing[1] / 2 + 3.0, -(nx - 1) * spacing[2] / 2 - 5.0)
    grid = Grid(shape, spacing, origin)
    zs, ys, xs = grid.axes_mm()
    z, y, x = np.meshgrid(zs, ys, xs, indexing="ij")
    cx, cy = origin[2] + (nx - 1) * spacing[2] / 2, origin[1] + (ny - 1) * spacing[1] / 2
    body = np.hypot(x - cx, y - cy) < 36.0
    ct = np.where(body, 0.0, -1000.0)
    ct[body & (np.hypot(x - cx + 20, y - cy - 18) < 6)] = 900.0
    ct[body & (y < cy - 25)] = -90.0
    r, theta = np.hypot(x - cx - 2, y - cy), np.arctan2(y - cy, x - cx - 2)
    # C: an annulus sector, thicker on top than below, shorter in z than the body
    target = (r > 9) & (r < 19 + 3 * (y > cy)) & (np.abs(theta) > 0.9) & (np.abs(z) < 16)
    oar = (np.hypot(x - cx - 6, y - cy) < 5.5) & (np.abs(z) < 20)
    return Patient(grid, ct, [
        Structure("Body", body, "other"),
        Structure("PTV C", target, "target"),
        Structure("Core", oar, "oar"),
    ], name=name)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _spots_and_beams():
    spots = {
        "beam": np.array([0, 0, 0, 0, 1, 1, 1]),
        "layer": np.array([0, 0, 1, 1, 0, 0, 1]),
        "energy_MeV": np.array([120.0, 120.0, 110.5, 110.5, 130.0, 130.0, 100.0]),
        "u_mm": np.array([-5.0, 5.0, 0.0, 2.5, -5.0, 5.0, 0.0]),
        "v_mm": np.array([0.0, 0.0, 5.0, -2.5, 1.0, 1.0, 0.0]),
    }
    beams = [
        {"gantry_deg": 90.0, "couch_deg": 0.0, "isocenter_mm": (2.0, 3.0, 0.0)},
        {"gantry_deg": -90.0, "couch_deg": 10.0, "isocenter_mm": (2.0, 3.0, 0.0), "name": "LAT"},
    ]
    weights = np.array([1.0, 2.0, 0.5, 0.0, 3.0, 1.5, 0.25])
    return spots, beams, weights


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Patient written as CT + RTSTRUCT (one folder), plus an RT Ion Plan and an RT Dose."""
    root = tmp_path_factory.mktemp("export")
    patient = make_patient()
    info = write_ct_series(patient, root / "ct")
    ss_uid = write_rtstruct(patient, root / "ct" / "RS.dcm", info)
    spots, beams, weights = _spots_and_beams()
    plan_uid = write_rt_ion_plan(root / "RN.dcm", spots, beams, weights, patient, info,
                                 mu_per_weight=2.5, fractions=30, structure_set_uid=ss_uid)
    z, y, x = np.meshgrid(*patient.grid.axes_mm(), indexing="ij")
    dose = 60.0 * np.exp(-((x - 2) ** 2 + (y - 3) ** 2 + z ** 2) / 500.0)
    dose_uid = write_rtdose(dose, patient, root / "RD.dcm", info, referenced_plan_uid=plan_uid)
    return {"root": root, "patient": patient, "info": info, "dose": dose, "plan_uid": plan_uid,
            "ss_uid": ss_uid, "dose_uid": dose_uid, "spots": spots, "beams": beams, "weights": weights}


# -- round trips --------------------------------------------------------------------------------


def test_ct_and_structures_round_trip(exported):
    original = exported["patient"]
    loaded = load_dicom(exported["root"] / "ct")
    assert loaded.grid == original.grid
    np.testing.assert_array_equal(loaded.ct_hu, np.round(original.ct_hu))
    assert loaded.structure_names == original.structure_names
    for s in original.structures:
        got = loaded.structure(s.name)
        assert got.role == s.role
        assert dice(got.mask, s.mask) >= 0.98, s.name
    # the C's concavity really is outside the target after the round trip
    assert not loaded.structure("PTV C").mask[10, 20, 25]
    assert loaded.name == original.name


def test_holes_islands_and_saddles_survive_exactly(tmp_path):
    """Even-odd filling: a ring (hole), an island inside the hole, diagonal-touching voxels."""
    patient = make_patient(shape=(4, 24, 24))
    _, y, x = np.meshgrid(*[np.arange(n) for n in patient.grid.shape], indexing="ij")
    r = np.hypot(y - 11.5, x - 11.5)
    mask = (r > 6) & (r < 10)
    mask |= r < 2  # island in the hole
    mask[:, 0:6:2, 0:6:2] = True  # checkerboard corner: voxels touching only diagonally
    mask[:, 1:6:2, 1:6:2] = True
    mask[0] = False  # and one empty slice
    patient.add_structure(Structure("Ring", mask, "oar"))
    info = write_ct_series(patient, tmp_path)
    write_rtstruct(patient, tmp_path / "RS.dcm", info, structure_names=["ring", "PTV C"])
    loaded = load_dicom(tmp_path)
    assert loaded.structure_names == ["Ring", "PTV C"]
    np.testing.assert_array_equal(loaded.structure("Ring").mask, mask)


def test_ct_series_info(exported):
    series = load_ct_series(exported["root"] / "ct")
    info = exported["info"]
    assert series.info.frame_of_reference_uid == info.frame_of_reference_uid
    assert series.info.series_instance_uid == info.series_instance_uid
    assert series.info.sop_instance_uids == info.sop_instance_uids
    assert len(set(info.sop_instance_uids)) == exported["patient"].grid.shape[0]
    assert len({info.study_instance_uid, info.series_instance_uid, info.frame_of_reference_uid}) == 3


def test_rescale_slope_and_intercept_applied(tmp_path, exported):
    folder = tmp_path / "ct"
    shutil.copytree(exported["root"] / "ct", folder)
    for f in folder.glob("CT_*.dcm"):
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(float)
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-1024"
        ds.PixelRepresentation = 0
        ds.PixelData = np.rint((hu + 1024) * 2).astype("<u2").tobytes()
        ds.save_as(f)
    loaded = load_ct_series(folder)
    np.testing.assert_allclose(loaded.ct_hu, np.round(exported["patient"].ct_hu), atol=1e-3)


def test_rtdose_round_trip(exported):
    ds = pydicom.dcmread(exported["root"] / "RD.dcm")
    dose = exported["dose"]
    scaling = float(ds.DoseGridScaling)
    assert ds.DoseUnits == "GY" and ds.DoseType == "PHYSICAL" and ds.DoseSummationType == "PLAN"
    assert ds.BitsAllocated == 32 and ds.pixel_array.dtype == np.uint32
    stored = ds.pixel_array.reshape(dose.shape) * scaling
    assert np.max(np.abs(stored - dose)) <= 0.5 * scaling * (1 + 1e-6)
    nz = dose.shape[0]
    np.testing.assert_allclose([float(v) for v in ds.GridFrameOffsetVector], np.arange(nz) * 2.5)
    assert ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == exported["plan_uid"]
    assert ds.FrameOfReferenceUID == exported["info"].frame_of_reference_uid
    assert ds.StudyInstanceUID == exported["info"].study_instance_uid
    loaded, grid = load_rtdose(exported["root"] / "RD.dcm")
    assert grid == exported["patient"].grid
    np.testing.assert_allclose(loaded, stored)


def test_rt_ion_plan_content(exported):
    ds = pydicom.dcmread(exported["root"] / "RN.dcm")
    spots, weights = exported["spots"], exported["weights"]
    assert ds.SOPInstanceUID == exported["plan_uid"]
    assert "2.5 MU per unit" in ds.RTPlanDescription
    assert ds.RTPlanGeometry == "PATIENT"
    assert ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == exported["ss_uid"]
    assert ds.FractionGroupSequence[0].NumberOfFractionsPlanned == 30
    assert len(ds.IonBeamSequence) == 2
    for b_index, beam in enumerate(ds.IonBeamSequence):
        assert beam.RadiationType == "PROTON" and beam.ScanMode == "MODULATED"
        sel = (spots["beam"] == b_index) & (weights > 0)
        total = weights[sel].sum()
        assert float(beam.FinalCumulativeMetersetWeight) == pytest.approx(total)
        meterset = float(ds.FractionGroupSequence[0].ReferencedBeamSequence[b_index].BeamMeterset)
        assert meterset == pytest.approx(2.5 * total)
        cps = beam.IonControlPointSequence
        layers = np.unique(spots["layer"][sel])
        assert len(cps) == beam.NumberOfControlPoints == 2 * layers.size
        assert float(cps[0].GantryAngle) == pytest.approx(exported["beams"][b_index]["gantry_deg"] % 360)
        cumulative = 0.0
        for k, layer in enumerate(layers):
            first, second = cps[2 * k], cps[2 * k + 1]
            ls = sel & (spots["layer"] == layer)
            assert float(first.NominalBeamEnergy) == pytest.approx(spots["energy_MeV"][ls][0])
            assert float(first.CumulativeMetersetWeight) == pytest.approx(cumulative)
            np.testing.assert_allclose(first.ScanSpotMetersetWeights, weights[ls], rtol=1e-6)
            xy = np.column_stack([spots["u_mm"][ls], spots["v_mm"][ls]]).ravel()
            np.testing.assert_allclose(first.ScanSpotPositionMap, xy, rtol=1e-6)
            cumulative += weights[ls].sum()
            assert float(second.CumulativeMetersetWeight) == pytest.approx(cumulative)
            assert np.all(np.asarray(second.ScanSpotMetersetWeights) == 0)
            np.testing.assert_allclose(second.ScanSpotPositionMap, xy, rtol=1e-6)


def test_nothing_overwritten_without_permission(exported, tmp_path):
    p, info = exported["patient"], exported["info"]
    with pytest.raises(FileExistsError, match="RD.dcm"):
        write_rtdose(exported["dose"], p, exported["root"] / "RD.dcm", info)
    with pytest.raises(FileExistsError, match="CT_0000.dcm"):
        write_ct_series(p, exported["root"] / "ct")
    with pytest.raises(FileExistsError, match="RS.dcm"):
        write_rtstruct(p, exported["root"] / "ct" / "RS.dcm", info)
    spots, beams, weights = _spots_and_beams()
    with pytest.raises(FileExistsError, match="RN.dcm"):
        write_rt_ion_plan(exported["root"] / "RN.dcm", spots, beams, weights, p, info, fractions=30)
    target = tmp_path / "RD.dcm"
    write_rtdose(exported["dose"], p, target, info)
    write_rtdose(2 * exported["dose"], p, target, info, overwrite=True)
    assert float(pydicom.dcmread(target).DoseGridScaling) > 0


def test_writer_input_errors(exported, tmp_path):
    p, info = exported["patient"], exported["info"]
    with pytest.raises(DicomError, match="shape"):
        write_rtdose(np.zeros((2, 2, 2)), p, tmp_path / "a.dcm", info)
    with pytest.raises(DicomError, match="negative"):
        write_rtdose(-exported["dose"], p, tmp_path / "b.dcm", info)
    spots, beams, weights = _spots_and_beams()
    with pytest.raises(DicomError, match="weights"):
        write_rt_ion_plan(tmp_path / "c.dcm", spots, beams, weights[:-1], p, info, fractions=30)
    with pytest.raises(DicomError, match="beam"):
        write_rt_ion_plan(tmp_path / "d.dcm", spots, beams[:1], weights, p, info, fractions=30)
    bad = dict(spots, energy_MeV=np.arange(7.0) + 100)
    with pytest.raises(DicomError, match="mixes energies"):
        write_rt_ion_plan(tmp_path / "e.dcm", bad, beams, weights, p, info, fractions=30)


# -- dciodvfy -------------------------------------------------------------------------------------

DCIODVFY = shutil.which("dciodvfy")


def _dciodvfy(path: Path) -> str:
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return run.stdout + run.stderr


def _errors(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("Error")]


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not installed (Debian package dicom3tools)")
@pytest.mark.parametrize("name", ["ct/CT_0000.dcm", "ct/CT_0019.dcm", "ct/RS.dcm", "RN.dcm", "RD.dcm"])
def test_dciodvfy_reports_no_errors(exported, name, tmp_path):
    path = exported["root"] / name
    report = _dciodvfy(path)
    if name == "RD.dcm" and "bitsallocated <= bytesinword" in report:
        # dicom3tools 1.00~20220618 aborts on any 32-bit OW Pixel Data (pydicom's own rtdose.dcm
        # too). Validate every other attribute on a copy with the pixels re-encoded as 16 bits.
        ds = pydicom.dcmread(path)
        high_words = (ds.pixel_array.ravel() >> 16).astype("<u2")
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelData = high_words.tobytes()
        path = tmp_path / "RD16.dcm"
        ds.save_as(path)
        report = _dciodvfy(path)
    assert "Assertion" not in report, report
    assert _errors(report) == [], report


# -- pydicom's own test files ------------------------------------------------------------------


def test_pydicom_ct_small_is_read(tmp_path):
    src = Path(get_testdata_file("CT_small.dcm"))
    shutil.copy(src, tmp_path / src.name)
    series = load_ct_series(tmp_path)
    ds = pydicom.dcmread(src)
    assert series.grid.shape == (1, ds.Rows, ds.Columns)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(series.ct_hu[0], expected)
    assert series.grid.spacing_mm[0] == pytest.approx(float(ds.SliceThickness))
    assert series.grid.origin_mm[2] == pytest.approx(float(ds.ImagePositionPatient[0]))


def test_pydicom_rtstruct_is_rasterized_and_checked():
    path = get_testdata_file("rtstruct.dcm")  # no preamble/"DICM": read with force
    frame = "1.2.826.0.1.3680043.8.498.2010020400001.2"
    ds = pydicom.dcmread(path, force=True)
    zs = sorted({float(c.ContourData[2]) for c in ds.ROIContourSequence[0].ContourSequence})
    dz = zs[1] - zs[0]
    grid = Grid((len(zs), 41, 51), (dz, 10.0, 10.0), (zs[0], -200.0, -250.0))
    with pytest.warns(UserWarning, match="Isocenter"):
        structures = load_rtstruct(path, grid, frame)
    assert [s.name for s in structures] == ["patient"]
    body = structures[0]
    assert body.role == "other" and body.n_voxels > 0
    # the first contour is the rectangle x in [-200, 200], y in [-150, 150] at zs[0]
    _, ys, xs = grid.axes_mm()
    inside = (np.abs(xs[None, :]) < 200) & (np.abs(ys[:, None]) < 150)
    outside = (np.abs(xs[None, :]) > 200) | (np.abs(ys[:, None]) > 150)
    assert body.mask[0][inside].all() and not body.mask[0][outside].any()
    with pytest.raises(DicomError, match="rtstruct.dcm.*frame of reference"):
        load_rtstruct(path, grid, "1.2.3.4")


def test_pydicom_rtdose_is_read_and_rtplan_rejected(tmp_path):
    with pytest.warns(UserWarning, match="rtdose.dcm: DoseUnits 'RELATIVE': the values are not in Gy"):
        dose, grid = load_rtdose(get_testdata_file("rtdose.dcm"))
    assert dose.shape == grid.shape and np.all(dose >= 0)
    plan = get_testdata_file("rtplan.dcm")
    with pytest.raises(DicomError, match="rtplan.dcm: not an RT Structure Set"):
        load_rtstruct(plan, grid, "1.2.3")
    with pytest.raises(DicomError, match="rtplan.dcm: not an RT Dose"):
        load_rtdose(plan)
    for name in ("rtplan.dcm", "rtdose.dcm", "rtstruct.dcm"):
        shutil.copy(get_testdata_file(name), tmp_path / name)
    with pytest.raises(DicomError, match="no CT images"):
        load_ct_series(tmp_path)
    with pytest.raises(DicomError, match="CT_small.dcm: not an RT Dose"):
        load_rtdose(get_testdata_file("CT_small.dcm"))


# -- bad input -----------------------------------------------------------------------------------


@pytest.fixture
def ct_folder(tmp_path):
    folder = tmp_path / "ct"
    write_ct_series(make_patient(shape=(6, 12, 12)), folder)
    return folder


def test_mixed_series(ct_folder, tmp_path):
    other = tmp_path / "other"
    write_ct_series(make_patient(shape=(6, 12, 12)), other)
    shutil.copy(other / "CT_0002.dcm", ct_folder / "XX_other.dcm")
    with pytest.raises(DicomError, match=r"2 different series.*XX_other\.dcm|2 different series"):
        load_ct_series(ct_folder)


def test_missing_slice(ct_folder):
    (ct_folder / "CT_0003.dcm").unlink()
    with pytest.raises(DicomError, match=r"missing.*CT_0002\.dcm.*CT_0004\.dcm"):
        load_ct_series(ct_folder)


def test_duplicate_slice(ct_folder):
    ds = pydicom.dcmread(ct_folder / "CT_0002.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(ct_folder / "CT_0002b.dcm")
    with pytest.raises(DicomError, match=r"duplicate.*CT_0002\.dcm.*CT_0002b\.dcm"):
        load_ct_series(ct_folder)


def test_non_uniform_spacing(ct_folder):
    ds = pydicom.dcmread(ct_folder / "CT_0005.dcm")
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 1.0
    ds.save_as(ct_folder / "CT_0005.dcm")
    with pytest.raises(DicomError, match=r"non-uniform.*CT_0005\.dcm"):
        load_ct_series(ct_folder)


def test_non_axial_orientation(ct_folder):
    ds = pydicom.dcmread(ct_folder / "CT_0001.dcm")
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(ct_folder / "CT_0001.dcm")
    with pytest.raises(DicomError, match=r"CT_0001\.dcm.*not axial"):
        load_ct_series(ct_folder)


def test_rtstruct_from_another_frame_of_reference(ct_folder, tmp_path):
    other = make_patient(shape=(6, 12, 12))
    info = write_ct_series(other, tmp_path / "other")
    write_rtstruct(other, ct_folder / "RS_other.dcm", info)
    with pytest.raises(DicomError, match=r"RS_other\.dcm.*frame of reference"):
        load_dicom(ct_folder)
    series = load_ct_series(ct_folder)
    with pytest.raises(DicomError, match=r"RS_other\.dcm"):
        load_rtstruct(ct_folder / "RS_other.dcm", series.grid, series.info.frame_of_reference_uid)


def test_truncated_file(ct_folder):
    path = ct_folder / "CT_0004.dcm"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(DicomError, match=r"CT_0004\.dcm"):
        load_ct_series(ct_folder)
    path.write_bytes(data[:300])
    with pytest.raises(DicomError, match=r"CT_0004\.dcm"):
        load_ct_series(ct_folder)


def test_non_dicom_file(ct_folder):
    """A stray non-DICOM file is skipped with a warning naming it; damaged DICOM still raises."""
    (ct_folder / "notes.txt").write_text("scanned on Tuesday\n" * 20)
    with pytest.warns(UserWarning, match=r"notes\.txt.*skipped"):
        assert load_ct_series(ct_folder).grid.shape == (6, 12, 12)
    data = (ct_folder / "CT_0001.dcm").read_bytes()
    (ct_folder / "CT_0001.dcm").write_bytes(data[:140] + b"scanned on Tuesday" * 20)
    with pytest.raises(DicomError, match=r"CT_0001\.dcm"):
        load_ct_series(ct_folder)


def test_missing_folder(tmp_path):
    with pytest.raises(DicomError, match="not a folder"):
        load_ct_series(tmp_path / "nowhere")


# -- fuzzing -------------------------------------------------------------------------------------



def _fuzz_series() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        write_ct_series(make_patient(shape=(3, 8, 8)), Path(d))
        return {p.name: p.read_bytes() for p in Path(d).iterdir()}


_FUZZ_FILES = _fuzz_series()
_FUZZ_BYTES = _FUZZ_FILES["CT_0001.dcm"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(st.tuples(st.integers(0, len(_FUZZ_BYTES) - 1), st.integers(0, 255)),
                   min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, len(_FUZZ_BYTES))),
)
def test_mutated_ct_file_raises_only_dicom_error(edits, cut):
    data = bytearray(_FUZZ_BYTES)
    for pos, value in edits:
        data[pos] = value
    if cut is not None:
        data = data[:cut]
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        for name in ("CT_0000.dcm", "CT_0002.dcm"):
            (folder / name).write_bytes(_FUZZ_FILES[name])
        (folder / "CT_0001.dcm").write_bytes(bytes(data))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                series = load_ct_series(folder)
            except DicomError as exc:
                assert str(exc)
            else:
                assert series.ct_hu.shape[1:] == (8, 8)


def test_every_truncation_is_reported_naming_the_file():
    data = _FUZZ_FILES["CT_0001.dcm"]
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        for name in ("CT_0000.dcm", "CT_0002.dcm"):
            (folder / name).write_bytes(_FUZZ_FILES[name])
        for cut in range(0, len(data), 5):
            (folder / "CT_0001.dcm").write_bytes(data[:cut])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with pytest.raises(DicomError, match=r"CT_0001\.dcm"):
                    load_ct_series(folder)


@pytest.mark.parametrize("position", ["FFS", "HFP", "ffp", "HFDR"])
def test_a_ct_not_head_first_supine_loads_with_a_warning_not_silently(tmp_path, position):
    """The beam geometry places gantry 90 deg at the patient's left (+x), true for HFS only: a CT
    of another PatientPosition (here with the axial orientation kept) used to load silently. It
    loads (the image is right in patient coordinates) with a warning; no position: no warning."""
    patient = make_patient()
    write_ct_series(patient, tmp_path)
    files = sorted(tmp_path.glob("CT_*.dcm"))
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PatientPosition = position
        ds.save_as(f)
    expected = f"PatientPosition '{position.upper()}'.*placed for head-first supine"
    with pytest.warns(UserWarning, match=expected):
        assert load_ct_series(tmp_path).grid.shape == patient.grid.shape
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.PatientPosition
        ds.save_as(f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_ct_series(tmp_path).grid.shape == patient.grid.shape


def test_a_contour_through_voxel_centres_fills_the_same_voxels_either_way_round():
    """An 8 x 8 mm square with its corners on voxel centres of a 2 mm grid: 5 x 5 = 25 centres on
    or inside it (edges count in), centroid at its centre (8, 8) mm, drawn clockwise or not (the
    radius-0 test gave 20 and 12 voxels, centroid y 9 mm)."""
    from optimizer.io.rtstruct import _rasterize

    xs = ys = np.arange(0.0, 20.0, 2.0)
    square = np.array([[4.0, 4.0], [12.0, 4.0], [12.0, 12.0], [4.0, 12.0]])
    for poly in (square, square[::-1]):
        mask = _rasterize([poly], xs, ys)
        iy, ix = np.nonzero(mask)
        assert mask.sum() == 25
        assert (xs[ix].mean(), ys[iy].mean()) == (8.0, 8.0)


def test_a_repeated_roi_number_is_refused_not_one_structure_lost(exported, tmp_path):
    """Two ROIs sharing ROINumber 1 used to load as one (the second's contours under the first's
    name; the other structure gone without a word)."""
    ds = pydicom.dcmread(exported["root"] / "ct" / "RS.dcm")
    rois = ds.StructureSetROISequence
    assert len(rois) >= 2
    first, second = str(rois[0].ROIName), str(rois[1].ROIName)
    rois[1].ROINumber = rois[0].ROINumber
    ds.save_as(tmp_path / "RS.dcm")
    with pytest.raises(DicomError, match=f"ROINumber {int(rois[0].ROINumber)} is used by two ROIs, "
                                         f"'{first}' and '{second}'"):
        load_rtstruct(tmp_path / "RS.dcm", exported["patient"].grid, exported["info"].frame_of_reference_uid)


def test_ct_info_of_a_shifted_grid_is_refused_by_the_writers(exported, tmp_path):
    """The same number of slices on a grid shifted by half a slice: the RTSTRUCT used to be
    written with every contour referencing the wrong CT slice (all dropped on reload)."""
    patient = exported["patient"]
    g = patient.grid
    shifted = Grid(g.shape, g.spacing_mm, (g.origin_mm[0] + 0.5 * g.spacing_mm[0],) + tuple(g.origin_mm[1:]))
    moved = Patient(shifted, patient.ct_hu, list(patient.structures))
    with pytest.raises(DicomError, match=r"write_rtstruct: ct_info's slice positions .* differ by up to "
                                         f"{0.5 * g.spacing_mm[0]:.3g} mm"):
        write_rtstruct(moved, tmp_path / "RS.dcm", exported["info"])
    assert not (tmp_path / "RS.dcm").exists()


def test_slice_positions_that_drift_within_the_step_tolerance_are_refused(tmp_path):
    """Every step within 1 % of the spacing, but 2.5 mm for 25 steps then 2.5 x 1.0099 mm: the
    middle slice lies an eighth of a slice off the uniform grid, which used to load silently; the
    same series with exact positions loads."""
    n = 51
    g = Grid((n, 4, 4), (2.5, 2.0, 2.0), (0.0, 0.0, 0.0))
    patient = Patient(g, np.zeros(g.shape, np.float32), [Structure("B", np.ones(g.shape, bool))])
    write_ct_series(patient, tmp_path)
    assert load_ct_series(tmp_path).grid.shape == g.shape
    steps = np.where(np.arange(n - 1) < 25, 2.5, 2.5 * 1.0099)
    z = np.concatenate([[0.0], np.cumsum(steps)])
    for f in sorted(tmp_path.glob("CT_*.dcm")):
        ds = pydicom.dcmread(f)
        k = int(f.stem.split("_")[1])
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], f"{z[k]:.4f}"]
        ds.save_as(f)
    # by hand: the grid spacing is the median step, (2.5 + 2.5 x 1.0099) / 2 = 2.512375 mm; slice 25
    # (z = 62.5 mm) is the farthest from 25 x 2.512375 = 62.809 mm: 0.309 mm, an eighth of a slice
    with pytest.raises(DicomError, match=r"CT_0025.dcm \(z = 62.5 mm\) lies 0.309 mm off it"):
        load_ct_series(tmp_path)


def test_a_one_voxel_wide_grid_is_written_with_contours_one_voxel_wide(tmp_path):
    """nx = 1 with dx = 3 mm: the contour spans the voxel, x in [-1.5, 1.5] mm around its centre
    0 (it was 1 mm wide, a third of the area for another planning system)."""
    g = Grid((2, 3, 1), (2.5, 2.0, 3.0), (0.0, -2.0, 0.0))
    patient = Patient(g, np.zeros(g.shape, np.float32), [Structure("B", np.ones(g.shape, bool))])
    info = write_ct_series(patient, tmp_path)
    write_rtstruct(patient, tmp_path / "RS.dcm", info)
    ds = pydicom.dcmread(tmp_path / "RS.dcm")
    for c in ds.ROIContourSequence[0].ContourSequence:
        pts = np.asarray([float(v) for v in c.ContourData]).reshape(-1, 3)
        assert (pts[:, 0].min(), pts[:, 0].max()) == pytest.approx((-1.5, 1.5))
        assert (pts[:, 1].min(), pts[:, 1].max()) == pytest.approx((-3.0, 3.0))  # y: 3 x 2 mm


def test_an_roi_without_an_observation_item_loads_with_a_warning_naming_its_role(exported, tmp_path):
    """The target's RT ROI Observations item removed: it used to load as role "other" silently."""
    ds = pydicom.dcmread(exported["root"] / "ct" / "RS.dcm")
    number = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    obs = ds.RTROIObservationsSequence
    k = next(i for i, o in enumerate(obs) if str(o.RTROIInterpretedType) == "PTV")
    name = number[int(obs[k].ReferencedROINumber)]
    del obs[k]
    ds.save_as(tmp_path / "RS.dcm")
    with pytest.warns(UserWarning, match=f"ROI '{name}' has no RT ROI Observations item.*role 'other'"):
        structures = load_rtstruct(tmp_path / "RS.dcm", exported["patient"].grid,
                                   exported["info"].frame_of_reference_uid)
    assert {s.name: s.role for s in structures}[name] == "other"


def test_a_repeated_or_non_planar_contour_is_dropped_with_a_warning_not_cancelling(exported, tmp_path):
    """A polygon listed twice on a slice cancelled itself by the even-odd fill, and a contour
    whose z spans 5 mm was put on one slice where it could cancel the one there: both silently.
    Now each is dropped with a warning, and the ROI keeps exactly the exported mask."""
    import copy

    patient, info = exported["patient"], exported["info"]
    ds = pydicom.dcmread(exported["root"] / "ct" / "RS.dcm")
    number = {str(r.ROIName): int(r.ROINumber) for r in ds.StructureSetROISequence}
    item = next(i for i in ds.ROIContourSequence if int(i.ReferencedROINumber) == number["PTV C"])
    first = item.ContourSequence[0]
    item.ContourSequence.append(copy.deepcopy(first))
    tilted = copy.deepcopy(first)
    pts = np.asarray([float(v) for v in tilted.ContourData]).reshape(-1, 3)
    pts[1:, 2] += 5.0  # all but the first point 5 mm up
    tilted.ContourData = [f"{v:.4f}" for v in pts.ravel()]
    item.ContourSequence.append(tilted)
    ds.save_as(tmp_path / "RS.dcm")
    with pytest.warns(UserWarning, match=r"ROI 'PTV C': 2 contour\(s\) dropped: repeats another contour"
                                         r".*not planar: z spans 5 mm"):
        structures = load_rtstruct(tmp_path / "RS.dcm", patient.grid, info.frame_of_reference_uid)
    got = {s.name: s for s in structures}["PTV C"].mask
    assert np.array_equal(got, patient.structure("PTV C").mask)


def test_an_rbe_weighted_rt_dose_loads_with_a_warning_a_physical_one_without(exported, tmp_path):
    """DoseType EFFECTIVE (RBE-weighted, Gy(RBE)) used to load as bare numbers like a physical
    dose; the exported physical dose in Gy loads without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        physical, _ = load_rtdose(exported["root"] / "RD.dcm")
    ds = pydicom.dcmread(exported["root"] / "RD.dcm")
    ds.DoseType = "EFFECTIVE"
    ds.save_as(tmp_path / "RD.dcm")
    with pytest.warns(UserWarning, match="DoseType 'EFFECTIVE': not physical dose .*RBE-weighted"):
        effective, _ = load_rtdose(tmp_path / "RD.dcm")
    assert np.array_equal(effective, physical)


@pytest.mark.parametrize("how", ["another start point", "the other way round"])
def test_a_contour_repeated_from_another_start_or_direction_is_dropped(exported, tmp_path, how):
    """The repeat check compared the point lists as given, so the same polygon listed again from
    its third vertex, or reversed, still cancelled the first by the even-odd fill."""
    import copy

    patient, info = exported["patient"], exported["info"]
    ds = pydicom.dcmread(exported["root"] / "ct" / "RS.dcm")
    number = {str(r.ROIName): int(r.ROINumber) for r in ds.StructureSetROISequence}
    item = next(i for i in ds.ROIContourSequence if int(i.ReferencedROINumber) == number["PTV C"])
    again = copy.deepcopy(item.ContourSequence[0])
    pts = np.asarray([float(v) for v in again.ContourData]).reshape(-1, 3)
    pts = np.roll(pts, -2, axis=0) if how == "another start point" else pts[::-1]
    again.ContourData = [f"{v:.4f}" for v in pts.ravel()]
    item.ContourSequence.append(again)
    ds.save_as(tmp_path / "RS.dcm")
    with pytest.warns(UserWarning, match=r"ROI 'PTV C': 1 contour\(s\) dropped: repeats another contour"):
        structures = load_rtstruct(tmp_path / "RS.dcm", patient.grid, info.frame_of_reference_uid)
    got = {s.name: s for s in structures}["PTV C"].mask
    assert np.array_equal(got, patient.structure("PTV C").mask)


def test_observation_and_contour_items_of_no_roi_warn(exported, tmp_path):
    """An RT ROI Observations or ROI Contour item whose ROI number no StructureSetROISequence
    item has (an ROI deleted from one sequence only) was ignored without a word."""
    patient, info = exported["patient"], exported["info"]
    ds = pydicom.dcmread(exported["root"] / "ct" / "RS.dcm")
    ds.StructureSetROISequence = ds.StructureSetROISequence[1:]
    gone = int(ds.ROIContourSequence[0].ReferencedROINumber)
    ds.save_as(tmp_path / "RS.dcm")
    with pytest.warns(UserWarning) as caught:
        structures = load_rtstruct(tmp_path / "RS.dcm", patient.grid, info.frame_of_reference_uid)
    messages = [str(w.message) for w in caught]
    for label in ("RT ROI Observations", "ROI Contour"):
        assert any(f"{label} items refer to ROINumber {gone}, which no StructureSetROISequence item has"
                   in m for m in messages), messages
    assert len(structures) == len(patient.structures) - 1


def test_a_plan_on_a_dose_grid_writes_its_rt_dose_either_way_it_names(tmp_path):
    """write_rtdose(plan, ...) of a plan on an 8 mm dose grid with the 4 mm CT's ct_info refused
    with a bare slice count; it now names the two ways out, and both write what they say: the
    dose grid itself (read back voxel for voxel) and the dose on the CT grid."""
    from objectives import SquaredDeviation
    from optimizer import PhotonBeams, PlanProblem, phantoms

    ct = phantoms.tg119_cshape(spacing_mm=8.0)
    inf = PhotonBeams([0, 120, 240], beamlet_mm=16.0).influence(ct, target="PTV", dose_grid=16.0)
    problem = PlanProblem(ct, inf, fractions=25)
    problem += SquaredDeviation("PTV", 50.0, weight=1.0)
    plan = problem.solve(solver="CLARABEL")
    info = write_ct_series(ct, tmp_path / "ct")
    with pytest.raises(DicomError, match=r"a plan on a dose grid\?\): write plan.on_patient\(ct_patient\)"):
        write_rtdose(plan, tmp_path / "RD.dcm", info)
    write_rtdose(plan.dose, ct, tmp_path / "RD.dcm", info, grid=plan.patient.grid)
    dose, grid = load_rtdose(tmp_path / "RD.dcm")
    assert grid == plan.patient.grid
    np.testing.assert_allclose(dose, plan.dose, atol=1e-6 * plan.dose.max())
    write_rtdose(plan.on_patient(ct), tmp_path / "RD_ct.dcm", info)
    assert load_rtdose(tmp_path / "RD_ct.dcm")[1].shape == ct.grid.shape
