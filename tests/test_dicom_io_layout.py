"""optimizer.io layout (issue "One term protocol", item 6): the old import paths give the new
objects, the Plan call forms of the writers write what the array forms write, and spot arrays
without a number of fractions are refused."""

from __future__ import annotations

import importlib
import importlib.metadata

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, RTDoseStorage, RTIonPlanStorage, RTStructureSetStorage

import optimizer
import optimizer.io as bio_io
from optimizer.geometry import Grid, Patient, Structure
from optimizer.plan import Plan

OLD_PATHS = {
    "optimizer.dicom": ["DicomError", "CTInfo", "CTSeries", "load_ct_series", "load_rtstruct", "load_dicom",
                        "load_rtdose"],
    "optimizer.dicom_export": ["write_ct_series", "write_rtstruct", "write_rtdose", "write_rt_ion_plan",
                               "CT_HU_RANGE", "DicomError", "CTInfo"],
    "optimizer.matrad": ["BODY_NAMES", "MatradError", "is_body_name", "load_matrad"],
}


@pytest.mark.parametrize("module", sorted(OLD_PATHS))
def test_old_import_paths_give_the_new_objects(module):
    old = importlib.import_module(module)
    for name in OLD_PATHS[module]:
        assert getattr(old, name) is getattr(bio_io, name), f"{module}.{name}"
    for name in getattr(old, "__all__", []):
        new_home = bio_io if hasattr(bio_io, name) else importlib.import_module("optimizer.io._dicom_common")
        assert getattr(old, name) is getattr(new_home, name), f"{module}.{name}"


def test_package_exports_are_the_io_objects():
    for name in ("DicomError", "MatradError", "load_ct_series", "load_dicom", "load_rtdose", "load_rtstruct",
                 "load_matrad", "write_ct_series", "write_rtstruct", "write_rtdose", "write_rt_ion_plan"):
        assert getattr(optimizer, name) is getattr(bio_io, name), name
    assert bio_io.load_ct_series is importlib.import_module("optimizer.io.ct").load_ct_series
    assert bio_io.write_rt_ion_plan is importlib.import_module("optimizer.io.rtplan").write_rt_ion_plan
    assert bio_io.load_matrad is importlib.import_module("optimizer.io.matrad").load_matrad
    assert issubclass(bio_io.DicomError, ValueError) and issubclass(bio_io.MatradError, ValueError)


def test_sop_classes_are_pydicom_constants():
    import optimizer.dicom as old

    assert old.CT_IMAGE_STORAGE == CTImageStorage and old.RT_DOSE_STORAGE == RTDoseStorage
    assert old.RT_STRUCTURE_SET_STORAGE == RTStructureSetStorage
    assert old.RT_ION_PLAN_STORAGE == RTIonPlanStorage


# -- a tiny proton plan: 4 slices of 8 x 8 voxels, two beams, three layers ------------------------


def tiny_patient() -> Patient:
    grid = Grid((4, 8, 8), (2.5, 2.0, 2.0), (0.0, -7.0, -7.0))
    ct = np.full(grid.shape, -1000.0)
    ct[:, 1:7, 1:7] = 0.0
    ptv = np.zeros(grid.shape, dtype=bool)
    ptv[:, 2:6, 2:6] = True
    return Patient(grid, ct, [Structure("Body", ct > -500, "other"), Structure("PTV", ptv, "target")],
                   name="tiny")


def tiny_plan(modality: str = "proton", fractions: int = 5) -> Plan:
    patient = tiny_patient()
    beamlets = {
        "beam": np.array([0, 0, 0, 1, 1]),
        "layer": np.array([0, 0, 1, 0, 0]),
        "energy_MeV": np.array([120.0, 120.0, 110.0, 130.0, 130.0]),
        "range_mm": np.array([100.0, 100.0, 90.0, 115.0, 115.0]),
        "u_mm": np.array([-5.0, 5.0, 0.0, -2.5, 2.5]),
        "v_mm": np.array([0.0, 0.0, 5.0, 1.0, 1.0]),
        "row": np.array([0, 0, 1, 0, 0]),
        "col": np.array([0, 1, 0, 0, 1]),
    }
    beams = [
        {"gantry_deg": 90.0, "couch_deg": 0.0, "isocenter_mm": [0.0, 0.0, 3.75], "map_shape": [2, 2]},
        {"gantry_deg": 270.0, "couch_deg": 0.0, "isocenter_mm": [0.0, 0.0, 3.75], "map_shape": [1, 2]},
    ]
    weights = np.array([1.0, 2.0, 0.5, 0.0, 3.0])
    z, y, x = np.meshgrid(*patient.grid.axes_mm(), indexing="ij")
    dose = 50.0 * np.exp(-(x ** 2 + y ** 2 + (z - 3.75) ** 2) / 40.0)
    return Plan(patient, weights, fractions, dose, beamlets, beams, modality)


@pytest.fixture()
def written(tmp_path):
    plan = tiny_plan()
    info = bio_io.write_ct_series(plan.patient, tmp_path / "ct")
    return plan, info


def _values(value) -> list[float]:
    """A DICOM FL value (one number, or several) as a list."""
    return np.atleast_1d(np.asarray(value, dtype=float)).tolist()


def _spot_table(path):
    ds = pydicom.dcmread(path)
    rows = []
    for beam in ds.IonBeamSequence:
        for cp in beam.IonControlPointSequence:
            rows.append((int(beam.BeamNumber), float(cp.NominalBeamEnergy), _values(cp.ScanSpotPositionMap),
                         _values(cp.ScanSpotMetersetWeights), str(cp.CumulativeMetersetWeight)))
    meterset = [str(rb.BeamMeterset) for rb in ds.FractionGroupSequence[0].ReferencedBeamSequence]
    return ds, rows, meterset


def test_rtdose_of_a_plan_is_the_rtdose_of_its_dose(written, tmp_path):
    plan, info = written
    uid_plan = bio_io.write_rtdose(plan, tmp_path / "plan.dcm", info, referenced_plan_uid="1.2.3")
    uid_raw = bio_io.write_rtdose(plan.dose, plan.patient, tmp_path / "raw.dcm", info,
                                  referenced_plan_uid="1.2.3")
    assert uid_plan != uid_raw
    a, b = pydicom.dcmread(tmp_path / "plan.dcm"), pydicom.dcmread(tmp_path / "raw.dcm")
    assert a.PixelData == b.PixelData
    for keyword in ("DoseGridScaling", "ImagePositionPatient", "PixelSpacing", "GridFrameOffsetVector",
                    "NumberOfFrames", "Rows", "Columns", "FrameOfReferenceUID", "PatientID"):
        assert a[keyword].value == b[keyword].value, keyword
    assert a.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == "1.2.3"
    dose, grid = bio_io.load_rtdose(tmp_path / "plan.dcm")
    assert grid == plan.patient.grid
    np.testing.assert_allclose(dose, plan.dose, atol=float(a.DoseGridScaling))
    # keyword forms, old and new
    bio_io.write_rtdose(plan=plan, path=tmp_path / "kw_plan.dcm", ct_info=info)
    bio_io.write_rtdose(dose_Gy=plan.dose, patient=plan.patient, path=tmp_path / "kw_raw.dcm", ct_info=info)
    assert pydicom.dcmread(tmp_path / "kw_plan.dcm").PixelData == a.PixelData


def test_rt_ion_plan_of_a_plan_is_the_rt_ion_plan_of_its_spots(written, tmp_path):
    plan, info = written
    bio_io.write_rt_ion_plan(tmp_path / "plan.dcm", plan, info, mu_per_weight=2.0, plan_label="tiny")
    spots = (plan.beamlets, plan.beams, plan.weights, plan.patient)
    bio_io.write_rt_ion_plan(tmp_path / "raw.dcm", *spots, info, 2.0, plan.fractions, plan_label="tiny")
    a, rows_a, meterset_a = _spot_table(tmp_path / "plan.dcm")
    b, rows_b, meterset_b = _spot_table(tmp_path / "raw.dcm")
    assert rows_a == rows_b and meterset_a == meterset_b
    assert int(a.FractionGroupSequence[0].NumberOfFractionsPlanned) == plan.fractions == 5
    assert int(b.FractionGroupSequence[0].NumberOfFractionsPlanned) == 5
    weights = sorted(w for row in rows_a for w in row[3] if w > 0)
    np.testing.assert_allclose(weights, sorted(plan.weights[plan.weights > 0]))
    # the plan's own fractions may be repeated, not contradicted
    bio_io.write_rt_ion_plan(tmp_path / "same.dcm", plan, info, fractions=5)
    with pytest.raises(bio_io.DicomError, match="fractions: 3 given, the plan has 5"):
        bio_io.write_rt_ion_plan(tmp_path / "other.dcm", plan, info, fractions=3)
    assert not (tmp_path / "other.dcm").exists()


def test_spot_arrays_without_fractions_are_refused(written, tmp_path):
    plan, info = written
    spots = (plan.beamlets, plan.beams, plan.weights, plan.patient)
    with pytest.raises(bio_io.DicomError, match=r"fractions: required when writing spot arrays"):
        bio_io.write_rt_ion_plan(tmp_path / "RN.dcm", *spots, info)
    with pytest.raises(bio_io.DicomError, match=r"fractions: required"):
        bio_io.write_rt_ion_plan(tmp_path / "RN.dcm", *spots, info, mu_per_weight=1.0)
    assert not (tmp_path / "RN.dcm").exists()


def test_plan_forms_refuse_what_they_cannot_write(written, tmp_path):
    plan, info = written
    photon = tiny_plan("photon")
    with pytest.raises(bio_io.DicomError, match=r"proton plan.*'photon'"):
        bio_io.write_rt_ion_plan(tmp_path / "RN.dcm", photon, info)
    with pytest.raises(TypeError, match=r"write_rtdose \(called with a Plan\)"):
        bio_io.write_rtdose(plan, plan.patient, tmp_path / "RD.dcm", info)
    with pytest.raises(TypeError, match=r"write_rt_ion_plan \(called with arrays\)"):
        bio_io.write_rt_ion_plan(tmp_path / "RN.dcm", plan.beamlets, info, fractions=1)
    assert not (tmp_path / "RN.dcm").exists() and not (tmp_path / "RD.dcm").exists()


def test_written_objects_carry_the_installed_version_and_pydicom_sop_classes(written, tmp_path):
    plan, info = written
    ss = bio_io.write_rtstruct(plan.patient, tmp_path / "RS.dcm", info)
    bio_io.write_rt_ion_plan(tmp_path / "RN.dcm", plan, info, structure_set_uid=ss)
    bio_io.write_rtdose(plan, tmp_path / "RD.dcm", info)
    version = importlib.metadata.version("bioplan")
    expected = {"ct/CT_0000.dcm": CTImageStorage, "RS.dcm": RTStructureSetStorage, "RN.dcm": RTIonPlanStorage,
                "RD.dcm": RTDoseStorage}
    for name, sop_class in expected.items():
        ds = pydicom.dcmread(tmp_path / name)
        assert ds.SOPClassUID == sop_class and ds.file_meta.MediaStorageSOPClassUID == sop_class, name
        assert ds.SoftwareVersions == version, name
