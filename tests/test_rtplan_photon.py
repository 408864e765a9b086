"""RT Plan export of sequenced photon plans: required attributes, dciodvfy, round trip of the
segments, RT Dose referencing the right plan class (RT Plan for photons, RT Ion Plan for protons)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import RTIonPlanStorage, RTPlanStorage

from optimizer import Grid, Patient, Plan, Structure, deliver
from optimizer.deliver import Calibration, Machine, MUCalibration
from optimizer.io import DicomError, write_ct_series, write_rtdose, write_rtstruct
from optimizer.io.rtplan_photon import load_rt_plan, write_rt_plan

W = 5.0


def _patient() -> Patient:
    grid = Grid((6, 12, 12), (5.0, 5.0, 5.0), (-12.5, -27.5, -27.5))
    body = np.ones(grid.shape, bool)
    ptv = np.zeros(grid.shape, bool)
    ptv[2:4, 4:8, 4:8] = True
    structures = [Structure("Body", body, "other"), Structure("PTV", ptv, "target")]
    return Patient(grid, np.zeros(grid.shape), structures, name="rtplan")


def _plan(patient, technique="step_and_shoot", levels=5) -> tuple[Plan, deliver.Delivery]:
    rng = np.random.default_rng(0)
    table = {k: [] for k in ("beam", "row", "col")}
    beams, weights = [], []
    for b, gantry in enumerate((0.0, 120.0, 240.0)):
        m = rng.integers(0, 6, size=(5, 7)).astype(float)
        r, c = np.nonzero(np.ones_like(m, bool))
        table["beam"].append(np.full(r.size, b))
        table["row"].append(r)
        table["col"].append(c)
        weights.append(m[r, c] * 0.1)
        beams.append({"gantry_deg": gantry, "couch_deg": 0.0, "isocenter_mm": [1.0, -2.0, 0.5],
                      "sad_mm": 1000.0, "map_shape": [5, 7], "beamlet_mm": W, "u0_mm": -15.0, "v0_mm": -10.0})
    table = {k: np.concatenate(v) for k, v in table.items()}
    dose = np.full(patient.grid.shape, 2.0)
    plan = Plan(patient, np.concatenate(weights), 25, dose, table, beams, "photon")
    cal = MUCalibration(100.0, 1.0, 15.0, Calibration(), W, 1000.0)
    return plan, deliver.sequence(plan, Machine(), cal, levels=levels, technique=technique)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("rtplan")
    patient = _patient()
    plan, delivery = _plan(patient)
    info = write_ct_series(patient, root / "ct")
    ss_uid = write_rtstruct(patient, root / "ct" / "RS.dcm", info)
    plan_uid = write_rt_plan(root / "RP.dcm", delivery, patient, info, structure_set_uid=ss_uid,
                             prescription_Gy=50.0, target_name="PTV")
    write_rtdose(plan, root / "RD.dcm", info, referenced_plan_uid=plan_uid)
    return {"root": root, "patient": patient, "plan": plan, "delivery": delivery, "info": info,
            "ss_uid": ss_uid, "plan_uid": plan_uid}


def test_rt_plan_has_the_required_attributes(written):
    ds = pydicom.dcmread(written["root"] / "RP.dcm")
    assert ds.SOPClassUID == RTPlanStorage and ds.Modality == "RTPLAN"
    for kw in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
               "RTPlanLabel", "RTPlanDate", "RTPlanTime", "RTPlanGeometry", "ApprovalStatus"):
        assert kw in ds, kw
    assert ds.FrameOfReferenceUID == written["info"].frame_of_reference_uid
    assert ds.RTPlanGeometry == "PATIENT"
    assert ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == written["ss_uid"]
    dref = ds.DoseReferenceSequence[0]
    assert dref.DoseReferenceType == "TARGET" and float(dref.TargetPrescriptionDose) == 50.0
    fg = ds.FractionGroupSequence[0]
    assert int(fg.NumberOfFractionsPlanned) == 25 and int(fg.NumberOfBeams) == 3
    delivery = written["delivery"]
    for beam, ref, bd in zip(ds.BeamSequence, fg.ReferencedBeamSequence, delivery.beams):
        assert beam.RadiationType == "PHOTON" and beam.BeamType == "DYNAMIC"
        assert float(ref.BeamMeterset) == pytest.approx(bd.mu, rel=1e-12)
        devices = {d.RTBeamLimitingDeviceType: d for d in beam.BeamLimitingDeviceSequence}
        assert set(devices) == {"ASYMX", "ASYMY", "MLCX"}
        assert int(devices["MLCX"].NumberOfLeafJawPairs) == 61
        assert len(devices["MLCX"].LeafPositionBoundaries) == 62
        cps = beam.ControlPointSequence
        assert int(beam.NumberOfControlPoints) == len(cps) == bd.n_control_points
        assert float(cps[0].CumulativeMetersetWeight) == 0 and float(cps[-1].CumulativeMetersetWeight) == 1
        assert float(beam.FinalCumulativeMetersetWeight) == 1
        w = [float(cp.CumulativeMetersetWeight) for cp in cps]
        assert np.all(np.diff(w) >= 0)
        assert float(cps[0].GantryAngle) == bd.gantry_deg
        assert [float(v) for v in cps[0].IsocenterPosition] == [1.0, -2.0, 0.5]


def test_round_trip_reads_the_segments_back_identically(written):
    back = load_rt_plan(written["root"] / "RP.dcm")
    delivery = written["delivery"]
    assert back.fractions == 25 and back.structure_set_uid == written["ss_uid"]
    assert back.sop_instance_uid == written["plan_uid"] and back.machine_name == delivery.machine.name
    assert len(back.beams) == len(delivery.beams)
    for a, b in zip(delivery.beams, back.beams):
        assert b.technique == "step_and_shoot"
        assert np.array_equal(a.left_mm, b.left_mm) and np.array_equal(a.right_mm, b.right_mm)
        assert np.array_equal(a.jaw_x_mm, b.jaw_x_mm) and np.array_equal(a.jaw_y_mm, b.jaw_y_mm)
        assert np.array_equal(a.leaf_boundaries_mm, b.leaf_boundaries_mm)
        np.testing.assert_allclose(b.cumulative_mu, a.cumulative_mu, rtol=1e-12, atol=1e-10)
        assert [s[0] for s in b.segments()] == pytest.approx([s[0] for s in a.segments()], rel=1e-12)
        assert (b.gantry_deg, b.couch_deg, b.isocenter_mm) == (a.gantry_deg, a.couch_deg, a.isocenter_mm)


def test_sliding_window_round_trip(written, tmp_path):
    plan, delivery = _plan(written["patient"], technique="sliding_window", levels=2)
    write_rt_plan(tmp_path / "RP.dcm", delivery, written["patient"], written["info"])
    back = load_rt_plan(tmp_path / "RP.dcm")
    for a, b in zip(delivery.beams, back.beams):
        assert b.technique == "sliding_window"
        np.testing.assert_allclose(b.left_mm, a.left_mm, rtol=1e-13, atol=1e-12)
        np.testing.assert_allclose(b.cumulative_mu, a.cumulative_mu, rtol=1e-12, atol=1e-10)
    assert pydicom.dcmread(tmp_path / "RP.dcm").RTPlanGeometry == "TREATMENT_DEVICE"


def _plan_class(path) -> str:
    return pydicom.dcmread(path).ReferencedRTPlanSequence[0].ReferencedSOPClassUID


def test_rt_dose_references_rt_plan_for_photons_and_rt_ion_plan_for_protons(written, tmp_path):
    rd = pydicom.dcmread(written["root"] / "RD.dcm")
    ref = rd.ReferencedRTPlanSequence[0]
    assert ref.ReferencedSOPClassUID == RTPlanStorage and ref.ReferencedSOPInstanceUID == written["plan_uid"]
    plan, info, patient = written["plan"], written["info"], written["patient"]
    proton = Plan(patient, plan.weights, plan.fractions, plan.dose, plan.beamlets, plan.beams, "proton")
    write_rtdose(proton, tmp_path / "p.dcm", info, referenced_plan_uid="1.2.3")
    assert _plan_class(tmp_path / "p.dcm") == RTIonPlanStorage
    write_rtdose(plan.dose, patient, tmp_path / "a.dcm", info, plan_modality="proton")
    assert _plan_class(tmp_path / "a.dcm") == RTIonPlanStorage
    write_rtdose(plan.dose, patient, tmp_path / "b.dcm", info)
    assert _plan_class(tmp_path / "b.dcm") == RTPlanStorage
    with pytest.raises(DicomError, match="plan_modality"):
        write_rtdose(plan.dose, patient, tmp_path / "c.dcm", info, plan_modality="electron")


def test_bad_input(written, tmp_path):
    with pytest.raises(DicomError, match="delivery"):
        write_rt_plan(tmp_path / "x.dcm", written["plan"], written["patient"], written["info"])
    with pytest.raises(DicomError, match="prescription_Gy"):
        write_rt_plan(tmp_path / "x.dcm", written["delivery"], written["patient"], written["info"],
                      prescription_Gy=-1.0)
    with pytest.raises(FileExistsError):
        write_rt_plan(written["root"] / "RP.dcm", written["delivery"], written["patient"], written["info"])
    with pytest.raises(DicomError, match="not an RT Plan"):
        load_rt_plan(written["root"] / "RD.dcm")


DCIODVFY = shutil.which("dciodvfy")


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not installed (Debian package dicom3tools)")
def test_dciodvfy_reports_no_errors(written):
    path = str(written["root"] / "RP.dcm")
    run = subprocess.run([DCIODVFY, path], capture_output=True, text=True, timeout=60)
    report = run.stdout + run.stderr
    assert "Assertion" not in report, report
    assert [line for line in report.splitlines() if line.startswith("Error")] == [], report


def test_jaws_that_move_after_the_first_control_point_are_refused(written, tmp_path):
    """A beam holds one jaw pair: X jaws closing to +-5 mm from control point 2 used to load as
    the first control point's jaws (the delivered fluence over-estimated); repeated unchanged
    jaws still load."""
    ds = pydicom.dcmread(written["root"] / "RP.dcm")
    cps = ds.BeamSequence[0].ControlPointSequence
    jaws = [d for d in cps[0].BeamLimitingDevicePositionSequence if d.RTBeamLimitingDeviceType == "ASYMX"][0]
    repeat = pydicom.Dataset()
    repeat.RTBeamLimitingDeviceType = "ASYMX"
    repeat.LeafJawPositions = list(jaws.LeafJawPositions)
    cps[1].BeamLimitingDevicePositionSequence.append(repeat)
    ds.save_as(tmp_path / "RP.dcm")
    assert len(load_rt_plan(tmp_path / "RP.dcm").beams) == len(ds.BeamSequence)
    cps[2].BeamLimitingDevicePositionSequence.append(pydicom.Dataset())
    moving = cps[2].BeamLimitingDevicePositionSequence[-1]
    moving.RTBeamLimitingDeviceType = "ASYMX"
    moving.LeafJawPositions = [-5.0, 5.0]
    ds.save_as(tmp_path / "RP.dcm")
    with pytest.raises(DicomError, match=r"control point 2: ASYMX jaws move from .* to \[-5.0, 5.0\] mm"):
        load_rt_plan(tmp_path / "RP.dcm")
