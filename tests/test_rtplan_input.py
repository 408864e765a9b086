"""RT (Ion) Plan export refuses, never changes, a bad number of fractions, MU calibration or beam
angle: ``fractions`` 2.5 is not written as 2, True not as 1, "3" not as 3; errors name the field
and the expected form, and no file is written."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest
from test_dicom_io_layout import tiny_patient

from optimizer import Plan, deliver
from optimizer.deliver import Calibration, DeliveryError, Machine, MUCalibration
from optimizer.io import DicomError, write_ct_series
from optimizer.io.rtplan import write_rt_ion_plan
from optimizer.io.rtplan_photon import write_rt_plan


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rtplan_input")
    patient = tiny_patient()
    info = write_ct_series(patient, root / "ct")
    return patient, info


SPOTS = {"beam": np.array([0, 0]), "layer": np.array([0, 0]), "energy_MeV": np.array([100.0, 100.0]),
         "u_mm": np.array([0.0, 4.0]), "v_mm": np.array([0.0, 0.0])}
BEAM = {"gantry_deg": 90.0, "couch_deg": 0.0, "isocenter_mm": (0.0, 0.0, 3.75)}


def _ion(path, setup, beams=None, **kwargs):
    patient, info = setup
    return write_rt_ion_plan(path, SPOTS, [BEAM] if beams is None else beams, np.ones(2), patient, info,
                             **kwargs)


@pytest.mark.parametrize("fractions", [2.5, True, False, "3", float("nan"), float("inf"), 0, -3, None,
                                       np.bool_(True), 2**31, [3]])
def test_ion_plan_refuses_fractions_that_are_not_positive_integers(tmp_path, setup, fractions):
    with pytest.raises(DicomError, match=r"fractions.*(integer|required)"):
        _ion(tmp_path / "RN.dcm", setup, fractions=fractions)
    assert not (tmp_path / "RN.dcm").exists()


@pytest.mark.parametrize("fractions", [25, 25.0, np.int64(25), np.float32(25.0)])
def test_ion_plan_writes_integral_fractions_exactly(tmp_path, setup, fractions):
    _ion(tmp_path / "RN.dcm", setup, fractions=fractions)
    fg = pydicom.dcmread(tmp_path / "RN.dcm").FractionGroupSequence[0]
    assert fg.NumberOfFractionsPlanned == 25


@pytest.mark.parametrize("mu", ["2", True, float("nan"), float("inf"), 0.0, -1.0, None, [2.0]])
def test_ion_plan_refuses_bad_mu_per_weight(tmp_path, setup, mu):
    with pytest.raises(DicomError, match=r"mu_per_weight: expected a positive number \(MU per unit weight\)"):
        _ion(tmp_path / "RN.dcm", setup, fractions=5, mu_per_weight=mu)
    assert not (tmp_path / "RN.dcm").exists()


def test_ion_plan_accepts_numpy_mu_per_weight(tmp_path, setup):
    _ion(tmp_path / "RN.dcm", setup, fractions=5, mu_per_weight=np.float32(2.0))
    rb = pydicom.dcmread(tmp_path / "RN.dcm").FractionGroupSequence[0].ReferencedBeamSequence[0]
    assert float(rb.BeamMeterset) == pytest.approx(4.0)


@pytest.mark.parametrize("key, value", [("gantry_deg", "x"), ("gantry_deg", "90"), ("couch_deg", None),
                                        ("couch_deg", float("nan")), ("gantry_deg", True)])
def test_ion_plan_names_the_beam_and_key_of_a_bad_angle(tmp_path, setup, key, value):
    beams = [BEAM, dict(BEAM, **{key: value})]
    with pytest.raises(DicomError, match=rf"beams\[1\]\['{key}'\]: expected a finite angle in degrees"):
        _ion(tmp_path / "RN.dcm", setup, beams=beams, fractions=5)
    assert not (tmp_path / "RN.dcm").exists()


def test_ion_plan_names_a_non_numeric_isocenter(tmp_path, setup):
    with pytest.raises(DicomError, match=r"beams\[0\]\['isocenter_mm'\]: expected 3 finite numbers"):
        _ion(tmp_path / "RN.dcm", setup, beams=[dict(BEAM, isocenter_mm="centre")], fractions=5)


def test_ion_plan_of_a_plan_refuses_bool_fractions(tmp_path, setup):
    patient, info = setup
    beamlets = {k: v for k, v in SPOTS.items()}
    plan = Plan(patient, np.ones(2), 1, np.zeros(patient.grid.shape), beamlets, [BEAM], "proton")
    with pytest.raises(DicomError, match="fractions: expected a positive integer"):
        write_rt_ion_plan(tmp_path / "RN.dcm", plan, info, fractions=True)
    write_rt_ion_plan(tmp_path / "RN.dcm", plan, info, fractions=1.0)
    assert pydicom.dcmread(tmp_path / "RN.dcm").FractionGroupSequence[0].NumberOfFractionsPlanned == 1


# -- photon RT Plan: the same fraction check (the shared fraction group) --------------------------


def _delivery(patient) -> deliver.Delivery:
    W = 5.0
    rng = np.random.default_rng(0)
    m = rng.integers(0, 6, size=(3, 4)).astype(float)
    r, c = np.nonzero(np.ones_like(m, bool))
    table = {"beam": np.zeros(r.size, int), "row": r, "col": c}
    beams = [{"gantry_deg": 0.0, "couch_deg": 0.0, "isocenter_mm": [0.0, 0.0, 3.75], "sad_mm": 1000.0,
              "map_shape": [3, 4], "beamlet_mm": W, "u0_mm": -7.5, "v0_mm": -5.0}]
    plan = Plan(patient, m[r, c] * 0.1, 25, np.full(patient.grid.shape, 2.0), table, beams, "photon")
    cal = MUCalibration(100.0, 1.0, 15.0, Calibration(), W, 1000.0)
    return deliver.sequence(plan, Machine(), cal, levels=3)


@pytest.mark.parametrize("fractions", [2.5, True, "3", float("nan"), 0])
def test_photon_plan_refuses_fractions_that_are_not_positive_integers(tmp_path, setup, fractions):
    """Refused when the Delivery is made, and by the writer when it was changed afterwards."""
    patient, info = setup
    delivery = _delivery(patient)
    with pytest.raises(DeliveryError, match="fractions: expected a whole number"):
        dataclasses.replace(delivery, fractions=fractions)
    delivery.fractions = fractions
    with pytest.raises(DicomError, match="delivery.fractions: expected a positive integer"):
        write_rt_plan(tmp_path / "RP.dcm", delivery, patient, info)
    assert not (tmp_path / "RP.dcm").exists()


@pytest.mark.parametrize("kwargs, field", [(dict(prescription_Gy="2"), "prescription_Gy"),
                                           (dict(prescription_Gy=float("nan")), "prescription_Gy"),
                                           (dict(energy_MV="6"), "energy_MV"),
                                           (dict(energy_MV=True), "energy_MV")])
def test_photon_plan_refuses_a_prescription_or_energy_that_is_not_a_number(tmp_path, setup, kwargs, field):
    """(strings raised a raw TypeError from np.isfinite)"""
    patient, info = setup
    with pytest.raises(DicomError, match=rf"{field}: expected a positive number"):
        write_rt_plan(tmp_path / "RP.dcm", _delivery(patient), patient, info, **kwargs)
    assert not (tmp_path / "RP.dcm").exists()


def test_photon_plan_writes_integral_fractions(tmp_path, setup):
    patient, info = setup
    delivery = dataclasses.replace(_delivery(patient), fractions=30.0)
    write_rt_plan(tmp_path / "RP.dcm", delivery, patient, info)
    assert pydicom.dcmread(tmp_path / "RP.dcm").FractionGroupSequence[0].NumberOfFractionsPlanned == 30
