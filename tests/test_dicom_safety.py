"""DICOM import/export must never be silently wrong (issue "Nothing silently wrong", items 6 and 7).

Import: dropped contours are announced (or refused with strict=True), stray non-DICOM files are
skipped with a warning, truncated slices are called truncated. Export: one extreme CT voxel does
not re-slope the series, overwrite=True replaces a whole series, names that DICOM would split or
cut are refused, and every file is written atomically without following links.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import optimizer.dicom_export as dicom_export
import optimizer.io.rtdose as rtdose_module
from optimizer.dicom import DicomError, load_ct_series, load_dicom, load_rtdose, load_rtstruct
from optimizer.dicom_export import write_ct_series, write_rt_ion_plan, write_rtdose, write_rtstruct
from optimizer.geometry import Grid, Patient, Structure

# -- a tiny patient: 4 slices of 8 x 8 voxels, a 4 x 4 PTV on every slice (64 voxels) -----------


def tiny_patient(nz: int = 4, name: str = "tiny", ptv_name: str = "PTV") -> Patient:
    grid = Grid((nz, 8, 8), (2.5, 2.0, 2.0), (0.0, -7.0, -7.0))
    ct = np.full(grid.shape, -1000.0)
    ct[:, 1:7, 1:7] = 0.0
    ptv = np.zeros(grid.shape, dtype=bool)
    ptv[:, 2:6, 2:6] = True
    return Patient(grid, ct, [Structure("Body", ct > -500, "other"), Structure(ptv_name, ptv, "target")],
                   name=name)


@pytest.fixture
def exported(tmp_path):
    """CT + RTSTRUCT of the tiny patient in one folder."""
    folder = tmp_path / "ct"
    patient = tiny_patient()
    info = write_ct_series(patient, folder)
    write_rtstruct(patient, folder / "RS.dcm", info)
    return folder, patient, info


def _edit_contour(rs: Path, roi: str, k: int, edit) -> float:
    """Replace the ContourData of ROI ``roi``'s contour on slice ``k`` by ``edit(values)``;
    returns the slice z (mm)."""
    ds = pydicom.dcmread(rs)
    number = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == roi)
    item = next(i for i in ds.ROIContourSequence if int(i.ReferencedROINumber) == number)
    zs = sorted({float(c.ContourData[2]) for c in item.ContourSequence})
    z = zs[k]
    contour = next(c for c in item.ContourSequence if float(c.ContourData[2]) == z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid DS values we write
        contour.ContourData = edit([str(v) for v in contour.ContourData])
        ds.save_as(rs)
    return z


def _with(values: list[str], index: int, new: str) -> list[str]:
    values = list(values)
    values[index] = new
    return values


# -- 1. dropped contours: a warning naming ROI, slice and reason; strict=True refuses --------------

CORRUPTIONS = {
    "two points": (lambda v: v[:6], r"only 2 point"),
    "one point": (lambda v: v[:3], r"only 1 point"),
    "NaN coordinate": (lambda v: _with(v, 3, "nan"), r"NaN or infinite"),
    "infinite coordinate": (lambda v: _with(v, 4, "-inf"), r"NaN or infinite"),
    "3n-1 values": (lambda v: v[:-1], r"not a multiple of 3"),
    "point at 1e30": (lambda v: _with(v, 3, "1e30"), r"1e\+?06 mm"),
    "point at -1e30 in y": (lambda v: _with(v, 1, "-1e30"), r"1e\+?06 mm"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_dropped_contour_warns_naming_roi_slice_and_reason(exported, kind):
    folder, patient, info = exported
    edit, reason = CORRUPTIONS[kind]
    z = _edit_contour(folder / "RS.dcm", "PTV", 1, edit)
    pattern = rf"RS\.dcm.*ROI 'PTV'.*{reason}.*z = {z:g} mm"
    with pytest.warns(UserWarning, match=pattern):
        structures = load_rtstruct(folder / "RS.dcm", patient.grid, info.frame_of_reference_uid)
    ptv = next(s for s in structures if s.name == "PTV")
    # the contour is dropped, the other slices are untouched (64 -> 48 voxels, but not silently)
    expected = patient.structure("PTV").mask.copy()
    expected[1] = False
    np.testing.assert_array_equal(ptv.mask, expected)
    with pytest.warns(UserWarning, match=pattern):
        assert load_dicom(folder).structure("PTV").n_voxels == 48
    with pytest.raises(DicomError, match=pattern):
        load_rtstruct(folder / "RS.dcm", patient.grid, info.frame_of_reference_uid, strict=True)
    with pytest.raises(DicomError, match=pattern):
        load_dicom(folder, strict=True)


def test_contour_off_the_ct_slices_names_its_z(exported):
    folder, patient, info = exported
    z = _edit_contour(folder / "RS.dcm", "PTV", 2, lambda v: [v[i] if i % 3 != 2 else "500" for i in
                                                             range(len(v))])
    assert z == 5.0
    with pytest.warns(UserWarning, match=r"ROI 'PTV'.*outside the CT slices.*z = 500 mm"):
        load_rtstruct(folder / "RS.dcm", patient.grid, info.frame_of_reference_uid)
    with pytest.raises(DicomError, match=r"ROI 'PTV'.*z = 500 mm"):
        load_rtstruct(folder / "RS.dcm", patient.grid, info.frame_of_reference_uid, strict=True)


def test_intact_structure_set_loads_without_warnings_in_strict_mode(exported):
    folder, patient, _ = exported
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_dicom(folder, strict=True)
    for s in patient.structures:
        np.testing.assert_array_equal(loaded.structure(s.name).mask, s.mask)


# -- 2. a stray non-DICOM file is skipped with a warning; damaged DICOM still raises ------------


def test_stray_non_dicom_file_is_skipped_with_a_warning(exported):
    folder, patient, _ = exported
    (folder / "README.txt").write_text("exported on Tuesday by the planning system\n")
    with pytest.warns(UserWarning, match=r"README\.txt.*not a DICOM file.*skipped"):
        loaded = load_dicom(folder)
    assert loaded.grid == patient.grid
    assert loaded.structure("PTV").n_voxels == 64
    with pytest.warns(UserWarning, match=r"README\.txt"):
        assert load_ct_series(folder).grid == patient.grid


def test_damaged_dicom_file_in_a_series_still_raises(exported):
    folder, _, _ = exported
    data = (folder / "CT_0001.dcm").read_bytes()
    (folder / "CT_0009.dcm").write_bytes(data[:132] + bytes(range(256)) * 2)  # 'DICM', then garbage
    with pytest.raises(DicomError, match=r"CT_0009\.dcm"):
        load_ct_series(folder)


def test_dicom_without_preamble_is_read_not_skipped(exported):
    """pydicom's rtstruct.dcm has no 128-byte preamble and no 'DICM': it is DICOM all the same,
    so it is read (and refused for its frame of reference), not skipped as a stray file."""
    folder, _, _ = exported
    (folder / "RS.dcm").unlink()
    shutil.copy(get_testdata_file("rtstruct.dcm"), folder / "RS_other.dcm")
    with pytest.raises(DicomError, match=r"RS_other\.dcm.*frame of reference"):
        load_dicom(folder)


# -- 3. a truncated CT slice is called truncated, naming the file --------------------------------


@pytest.fixture
def ct_only(tmp_path):
    folder = tmp_path / "ct"
    write_ct_series(tiny_patient(nz=3), folder)
    return folder


def test_truncated_slice_is_not_reported_as_another_series(ct_only):
    path = ct_only / "CT_0001.dcm"
    data = path.read_bytes()
    cut = data.index(b"\x20\x00\x0e\x00UI")  # just before SeriesInstanceUID (0020,000E)
    path.write_bytes(data[:cut])
    with pytest.raises(DicomError) as exc_info:
        load_ct_series(ct_only)
    message = str(exc_info.value)
    assert str(path) in message and "truncated" in message and "series" not in message, message


def test_every_truncation_is_called_truncated(ct_only):
    path = ct_only / "CT_0001.dcm"
    data = path.read_bytes()
    for cut in range(0, len(data), 3):
        path.write_bytes(data[:cut])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(DicomError) as exc_info:
                load_ct_series(ct_only)
        message = str(exc_info.value)
        assert str(path) in message and "truncated" in message, (cut, message)


def test_structure_set_cut_between_elements_is_called_truncated(exported):
    """Cut just before RTROIObservationsSequence the file still parses, and every ROI would come
    back with role "other"; it is reported as truncated instead."""
    folder, patient, info = exported
    rs = folder / "RS.dcm"
    data = rs.read_bytes()
    rs.write_bytes(data[: data.index(b"\x06\x30\x80\x00SQ")])  # (3006,0080), explicit VR LE
    with pytest.raises(DicomError, match=r"RS\.dcm.*RTROIObservationsSequence.*truncated"):
        load_rtstruct(rs, patient.grid, info.frame_of_reference_uid)


# -- 4. CT export: one extreme voxel neither re-slopes the series nor passes silently --------------


def test_one_extreme_voxel_does_not_shift_air(tmp_path):
    patient = tiny_patient()
    ct = np.array(patient.ct_hu, dtype=float)
    ct[0, 0, 0] = 1e9
    ct[3, 7, 7] = -1e9
    extreme = Patient(patient.grid, ct, [], name="extreme")
    with pytest.warns(UserWarning, match=r"2 CT voxel.*clipped"):
        write_ct_series(extreme, tmp_path)
    loaded = load_ct_series(tmp_path).ct_hu
    inside = np.ones(ct.shape, dtype=bool)
    inside[0, 0, 0] = inside[3, 7, 7] = False
    assert np.max(np.abs(loaded[inside] - ct[inside])) <= 1.0  # air -1000, water 0
    low, high = dicom_export.CT_HU_RANGE
    assert loaded[0, 0, 0] == high and loaded[3, 7, 7] == low
    ds = pydicom.dcmread(tmp_path / "CT_0000.dcm")
    assert float(ds.RescaleSlope) == 1.0


def test_wide_hu_range_round_trips_within_half_an_hu(tmp_path):
    patient = tiny_patient()
    rng = np.random.default_rng(7)
    ct = rng.uniform(-3024.0, 40000.0, patient.grid.shape)
    ct[0, 0, 0], ct[-1, -1, -1] = -3024.0, 40000.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing clipped, nothing to warn about
        write_ct_series(Patient(patient.grid, ct, [], name="wide"), tmp_path)
    loaded = load_ct_series(tmp_path).ct_hu
    assert np.max(np.abs(loaded - ct.astype(np.float32))) <= 0.5 + 1e-3


# -- 5. overwrite=True replaces the whole series ---------------------------------------------------


def test_overwrite_with_a_shorter_series_removes_stale_slices(tmp_path):
    folder = tmp_path / "ct"
    write_ct_series(tiny_patient(nz=6), folder)
    (folder / "CT_notes.dcm").write_text("not a CT image: stays")
    shutil.copy(folder / "CT_0005.dcm", tmp_path / "keep.dcm")
    os.symlink(tmp_path / "keep.dcm", folder / "CT_0007.dcm")  # a link to a CT image: the link goes
    write_ct_series(tiny_patient(nz=3), folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["CT_0000.dcm", "CT_0001.dcm", "CT_0002.dcm",
                                                        "CT_notes.dcm"]
    assert (folder / "CT_notes.dcm").read_text() == "not a CT image: stays"
    assert (tmp_path / "keep.dcm").exists()  # a link target is never removed
    (folder / "CT_notes.dcm").unlink()
    assert load_ct_series(folder).grid.shape == (3, 8, 8)


# -- 6. names that DICOM would split, garble or cut are refused ------------------------------------


@pytest.mark.parametrize(
    ("bad", "why"),
    [("PTV\\boost", "backslash"), ("PTV\nboost", "control character"), ("P" * 65, "64"),
     ("PTV\x1b", "control character")],
)
def test_roi_names_dicom_would_change_are_refused(tmp_path, bad, why):
    patient = tiny_patient(ptv_name=bad)
    info = write_ct_series(patient, tmp_path / "ct")
    with pytest.raises(DicomError, match=rf"RS\.dcm.*ROIName.*{re.escape(why)}"):
        write_rtstruct(patient, tmp_path / "ct" / "RS.dcm", info)
    assert not (tmp_path / "ct" / "RS.dcm").exists()


@pytest.mark.parametrize(("bad", "why"), [("Doe\\Jane", "backslash"), ("Doe\tJane", "control character"),
                                          ("x" * 70, "64")])
def test_patient_names_dicom_would_change_are_refused(tmp_path, bad, why):
    with pytest.raises(DicomError, match=rf"Patient(Name|ID).*{re.escape(why)}"):
        write_ct_series(tiny_patient(name=bad), tmp_path / "ct")
    assert not (tmp_path / "ct").exists() or not any((tmp_path / "ct").iterdir())


def test_plan_labels_dicom_would_change_are_refused(tmp_path):
    patient = tiny_patient()
    info = write_ct_series(patient, tmp_path / "ct")
    spots = {"beam": np.array([0]), "layer": np.array([0]), "energy_MeV": np.array([100.0]),
             "u_mm": np.array([0.0]), "v_mm": np.array([0.0])}
    beams = [{"gantry_deg": 0.0, "couch_deg": 0.0, "isocenter_mm": (0.0, 0.0, 3.75)}]
    cases = [
        ({"plan_label": "a plan label over 16"}, r"RTPlanLabel.*16"),
        ({"machine_name": "gantry\\1"}, r"TreatmentMachineName.*backslash"),
        ({"beams": [dict(beams[0], name="LAT\\1")]}, r"BeamName.*backslash"),
    ]
    for kwargs, match in cases:
        args = {"beams": beams, **kwargs}
        with pytest.raises(DicomError, match=rf"RN\.dcm.*{match}"):
            write_rt_ion_plan(tmp_path / "RN.dcm", spots, args.pop("beams"), np.ones(1), patient, info,
                              fractions=1, **args)
    assert not (tmp_path / "RN.dcm").exists()


# -- 7. atomic writes: one winner of two concurrent writers, links never followed ------------------


def _dose_args(tmp_path):
    patient = tiny_patient()
    info = write_ct_series(patient, tmp_path / "ct")
    return np.ones(patient.grid.shape), patient, info


def test_two_concurrent_rtdose_writers_exactly_one_succeeds(tmp_path, monkeypatch):
    dose, patient, info = _dose_args(tmp_path)
    target = tmp_path / "RD.dcm"
    # both writers have passed their "does the file exist?" check before either writes
    both_checked = threading.Barrier(2, timeout=30)
    original = rtdose_module._new_dataset

    def synchronized(*args, **kwargs):
        both_checked.wait()
        return original(*args, **kwargs)

    monkeypatch.setattr(rtdose_module, "_new_dataset", synchronized)
    results: list = [None, None]

    def writer(i: int) -> None:
        try:
            results[i] = write_rtdose(dose * (i + 1), patient, target, info)
        except Exception as exc:  # noqa: BLE001 - recorded and checked below
            results[i] = exc

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [r for r in results if isinstance(r, str)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert isinstance(losers[0], FileExistsError) and "RD.dcm" in str(losers[0])
    assert pydicom.dcmread(target).SOPInstanceUID == winners[0]
    loaded, _ = load_rtdose(target)
    assert np.ptp(loaded) == 0 and loaded.max() in (pytest.approx(1.0), pytest.approx(2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RD.dcm", "ct"]  # no temporary left


def _write_rtdose(patient, info, path, overwrite):
    write_rtdose(np.ones(patient.grid.shape), patient, path, info, overwrite=overwrite)


def _write_rtstruct(patient, info, path, overwrite):
    write_rtstruct(patient, path, info, overwrite=overwrite)


def _write_plan(patient, info, path, overwrite):
    spots = {"beam": np.array([0]), "layer": np.array([0]), "energy_MeV": np.array([100.0]),
             "u_mm": np.array([0.0]), "v_mm": np.array([0.0])}
    beams = [{"gantry_deg": 0.0, "couch_deg": 0.0, "isocenter_mm": (0.0, 0.0, 3.75)}]
    write_rt_ion_plan(path, spots, beams, np.ones(1), patient, info, fractions=1, overwrite=overwrite)


def _write_ct(patient, info, path, overwrite):
    write_ct_series(patient, path.parent, overwrite=overwrite)


WRITERS = {"rtdose": (_write_rtdose, "RD.dcm"), "rtstruct": (_write_rtstruct, "RS.dcm"),
           "rt ion plan": (_write_plan, "RN.dcm"), "ct": (_write_ct, "CT_0000.dcm")}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_symlink_at_the_target_is_never_followed(tmp_path, writer):
    write, name = WRITERS[writer]
    patient = tiny_patient()
    info = write_ct_series(patient, tmp_path / "ct")
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    link = out / name
    os.symlink(victim, link)
    with pytest.raises(FileExistsError, match=re.escape(name)):
        write(patient, info, link, False)
    assert victim.read_bytes() == b"precious" and link.is_symlink()
    write(patient, info, link, True)
    assert not link.is_symlink() and link.is_file()
    assert victim.read_bytes() == b"precious"
    assert pydicom.dcmread(link).SOPInstanceUID
    # a dangling link is not followed either: nothing is created at its target
    missing = tmp_path / "missing.dcm"
    dangling = tmp_path / "dangling"
    dangling.mkdir()
    os.symlink(missing, dangling / name)
    with pytest.raises(FileExistsError):
        write(patient, info, dangling / name, False)
    assert not missing.exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary left


@pytest.mark.parametrize("tiny", [1e-305, 1e-318])
def test_rtdose_of_a_vanishing_dose_is_refused_not_hung(tmp_path, tiny):
    """A maximum dose below 1e-290 Gy made DoseGridScaling subnormal: the writer looped for ever
    (1e-305) or divided by zero (1e-318). It is refused by name; a zero dose writes."""
    dose, patient, info = _dose_args(tmp_path)
    with pytest.raises(DicomError, match="dose_Gy: maximum .* too small for DoseGridScaling"):
        write_rtdose(dose * tiny, patient, tmp_path / "RD.dcm", info)
    write_rtdose(dose * 0.0, patient, tmp_path / "RD0.dcm", info)
    back, _ = load_rtdose(tmp_path / "RD0.dcm")
    assert np.all(back == 0)
