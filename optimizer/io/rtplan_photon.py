"""RT Plan for photon plans: :func:`write_rt_plan` writes a sequenced photon plan
(:class:`~optimizer.deliver.Delivery`) with MLC control points; :func:`load_rt_plan` reads the
beams, control points and MU back.

Each beam has the beam-limiting devices ASYMX, ASYMY (jaws, fixed for the beam) and MLCX (the
machine's leaf boundaries along IEC Y); every control point lists the leaf positions (bank A, the
X1 side, then bank B), ``CumulativeMetersetWeight`` is the fraction of the beam's MU delivered
before it (``FinalCumulativeMetersetWeight`` 1) and ``BeamMeterset`` in the fraction group is the
beam's MU per fraction, so a segment's MU is BeamMeterset x the difference of its weights. Step and
shoot: two control points per segment with equal leaf positions; sliding window: leaves move
linearly in meterset between control points. Both are BeamType DYNAMIC (leaf positions change).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import RTPlanStorage, generate_uid

from ..deliver.sequence import BeamDelivery, Delivery
from ..geometry import Patient
from ._dicom_common import CTInfo, DicomError, _read_dataset
from ._dicom_write import (
    _MANUFACTURER,
    _check_ct_info,
    _check_positive_number,
    _check_target,
    _ds,
    _ds_list,
    _fraction_group,
    _new_dataset,
    _plan_header,
    _save,
    _text,
)

__all__ = ["write_rt_plan", "load_rt_plan", "RTPlanContents"]


def _angle(deg: float) -> str:
    return _ds(float(deg) % 360.0)


def _device(kind: str, n: int, boundaries=None) -> Dataset:
    d = Dataset()
    d.RTBeamLimitingDeviceType = kind
    d.NumberOfLeafJawPairs = n
    if boundaries is not None:
        d.LeafPositionBoundaries = _ds_list(boundaries)
    return d


def _position(kind: str, values) -> Dataset:
    d = Dataset()
    d.RTBeamLimitingDeviceType = kind
    d.LeafJawPositions = _ds_list(values)
    return d


def _control_points(bd: BeamDelivery, energy_MV: float, dose_ref_number: int) -> list[Dataset]:
    total = bd.mu
    cps = []
    for k in range(bd.n_control_points):
        cp = Dataset()
        cp.ControlPointIndex = k
        positions = [_position("MLCX", np.r_[bd.left_mm[k], bd.right_mm[k]])]
        if k == 0:
            cp.NominalBeamEnergy = _ds(energy_MV)
            positions = [_position("ASYMX", bd.jaw_x_mm), _position("ASYMY", bd.jaw_y_mm)] + positions
            cp.GantryAngle = _angle(bd.gantry_deg)
            cp.GantryRotationDirection = "NONE"
            cp.BeamLimitingDeviceAngle = _angle(bd.collimator_deg)
            cp.BeamLimitingDeviceRotationDirection = "NONE"
            cp.PatientSupportAngle = _angle(bd.couch_deg)
            cp.PatientSupportRotationDirection = "NONE"
            cp.TableTopEccentricAngle = "0"
            cp.TableTopEccentricRotationDirection = "NONE"
            cp.IsocenterPosition = _ds_list(bd.isocenter_mm)
        cp.BeamLimitingDevicePositionSequence = DicomSequence(positions)
        cp.CumulativeMetersetWeight = _ds(bd.cumulative_mu[k] / total if k < bd.n_control_points - 1 else 1.0)
        ref = Dataset()
        ref.ReferencedDoseReferenceNumber = dose_ref_number
        ref.CumulativeDoseReferenceCoefficient = cp.CumulativeMetersetWeight
        cp.ReferencedDoseReferenceSequence = DicomSequence([ref])
        cps.append(cp)
    return cps


def _beam(number: int, bd: BeamDelivery, machine_name: str, sad_mm: float, energy_MV: float,
          path: Path) -> Dataset:
    b = Dataset()
    b.BeamNumber = number
    b.BeamName = _text(f"B{number} G{bd.gantry_deg % 360:g}", "BeamName", "LO", path)
    b.BeamDescription = (f"plan beam {bd.beam}; {bd.technique.replace('_', ' ')}; "
                         f"{bd.n_segments} segments; {bd.mu:.2f} MU")
    b.BeamType = "DYNAMIC"
    b.RadiationType = "PHOTON"
    b.TreatmentMachineName = machine_name
    b.Manufacturer = _MANUFACTURER
    b.PrimaryDosimeterUnit = "MU"
    b.SourceAxisDistance = _ds(sad_mm)
    n_pairs = bd.left_mm.shape[1]
    b.BeamLimitingDeviceSequence = DicomSequence([_device("ASYMX", 1), _device("ASYMY", 1),
                                                  _device("MLCX", n_pairs, bd.leaf_boundaries_mm)])
    b.ReferencedPatientSetupNumber = 1
    b.TreatmentDeliveryType = "TREATMENT"
    b.NumberOfWedges = 0
    b.NumberOfCompensators = 0
    b.NumberOfBoli = 0
    b.NumberOfBlocks = 0
    b.FinalCumulativeMetersetWeight = "1"
    b.NumberOfControlPoints = bd.n_control_points
    b.ControlPointSequence = DicomSequence(_control_points(bd, energy_MV, 1))
    return b


def write_rt_plan(path: str | os.PathLike, delivery: Delivery, patient: Patient, ct_info: CTInfo, *,
                  structure_set_uid: str | None = None, sop_instance_uid: str | None = None,
                  plan_label: str = "bioplan IMRT", prescription_Gy: float | None = None,
                  target_name: str | None = None, energy_MV: float = 6.0, overwrite: bool = False) -> str:
    """Write a sequenced photon plan as an RT Plan (RadiationType PHOTON, MLCX control points).

    Parameters
    ----------
    path : the file; an existing one is replaced only with ``overwrite=True``
    delivery : the sequenced plan (:func:`optimizer.deliver.sequence`); MU per fraction
    patient : the patient of the CT series of ``ct_info``
    ct_info : the CT series' identifiers (:func:`~optimizer.io.write_ct_series`)
    structure_set_uid : SOP Instance UID of the RT Structure Set; with it RTPlanGeometry is
        PATIENT and the structure set is referenced, without it TREATMENT_DEVICE
    sop_instance_uid : the plan's UID (e.g. one an RT Dose already references); default new
    plan_label : RTPlanLabel (at most 16 characters)
    prescription_Gy : total course dose of the dose reference (TargetPrescriptionDose, Gy), optional
    target_name : named in the dose reference's description
    energy_MV : NominalBeamEnergy, MV

    The dose reference (DoseReferenceSequence, structure type SITE, type TARGET) is referenced by
    every control point with its cumulative coefficient. Returns the plan's SOP Instance UID.
    """
    path = Path(path)
    _check_target(path, overwrite)
    if not isinstance(delivery, Delivery):
        raise DicomError("delivery: expected an optimizer.deliver.Delivery (optimizer.deliver.sequence), "
                         f"got {type(delivery).__name__}")
    _check_ct_info(ct_info, patient.grid, "write_rt_plan")
    if prescription_Gy is not None:
        prescription_Gy = _check_positive_number(prescription_Gy, "prescription_Gy",
                                                 "a total dose in Gy, or None")
    energy_MV = _check_positive_number(energy_MV, "energy_MV", "a nominal energy in MV")
    label = _text(plan_label, "RTPlanLabel", "SH", path)
    machine = _text(delivery.machine.name, "TreatmentMachineName", "SH", path)
    sop_uid = sop_instance_uid or generate_uid()
    ds = _new_dataset(RTPlanStorage, sop_uid, "RTPLAN", generate_uid(), 4, patient, ct_info,
                      ct_info.study_instance_uid, ct_info.frame_of_reference_uid, "bioplan photon plan", path)
    _plan_header(ds, label, (
        f"bioplan photon IMRT, {delivery.technique.replace('_', ' ')}; MU calibration "
        f"{delivery.calibration.calibration.describe()}: {delivery.calibration.mu_per_weight:.6g} MU per "
        "unit beamlet weight"
    ), structure_set_uid)
    dose_ref = Dataset()
    dose_ref.DoseReferenceNumber = 1
    dose_ref.DoseReferenceUID = generate_uid()
    dose_ref.DoseReferenceStructureType = "SITE"
    dose_ref.DoseReferenceDescription = _text(target_name or "target", "DoseReferenceDescription", "LO", path)
    dose_ref.DoseReferenceType = "TARGET"
    if prescription_Gy is not None:
        dose_ref.TargetPrescriptionDose = _ds(prescription_Gy)
    ds.DoseReferenceSequence = DicomSequence([dose_ref])
    beams, metersets = [], []
    for number, bd in enumerate(delivery.beams, start=1):
        beams.append(_beam(number, bd, machine, delivery.calibration.sad_mm, energy_MV, path))
        metersets.append((number, bd.mu))
    _fraction_group(ds, delivery.fractions, metersets, "delivery.fractions")
    ds.BeamSequence = DicomSequence(beams)
    _save(ds, path, overwrite)
    return sop_uid


@dataclass
class RTPlanContents:
    """What :func:`load_rt_plan` reads: the beams as :class:`~optimizer.deliver.BeamDelivery`
    (``beam`` = BeamNumber - 1, MU per fraction), fractions, label, machine name, the referenced
    structure set UID (or None) and the SOP Instance UID."""

    beams: list[BeamDelivery]
    fractions: int
    label: str
    machine_name: str
    structure_set_uid: str | None
    sop_instance_uid: str


def _device_values(seq, kind: str, path: str, where: str) -> np.ndarray:
    for item in seq:
        if item.RTBeamLimitingDeviceType == kind:
            return np.asarray([float(v) for v in item.LeafJawPositions])
    raise DicomError(f"{path}: {where} has no {kind} positions")


#: jaw positions in later control points that differ from the first by more than this (mm) move
JAW_TOLERANCE_MM = 1e-3


def _check_jaws_fixed(cps, first: dict, path: str, where: str) -> None:
    """Later control points repeat the jaws (or leave them out: unchanged); a delivery holds one
    jaw pair per beam, so jaws that move (jaw tracking) are refused rather than read as the first
    control point's (the delivered fluence was over-estimated, 930 vs 515 MU cells)."""
    for k, cp in enumerate(cps[1:], start=1):
        for item in cp.get("BeamLimitingDevicePositionSequence", []) or []:
            kind = item.RTBeamLimitingDeviceType
            if kind in first:
                values = np.asarray([float(v) for v in item.LeafJawPositions])
                same = values.shape == first[kind].shape
                if not same or np.max(np.abs(values - first[kind])) > JAW_TOLERANCE_MM:
                    raise DicomError(
                        f"{path}: {where} control point {k}: {kind} jaws move from "
                        f"{first[kind].tolist()} to {values.tolist()} mm; moving jaws (jaw tracking) "
                        f"are not supported (one jaw pair per beam)")


def load_rt_plan(path: str | os.PathLike) -> RTPlanContents:
    """Read a photon RT Plan's beams (MLCX leaf positions, jaws, angles, isocentre and MU per
    control point) as written by :func:`write_rt_plan`; other RT Plans with ASYMX / ASYMY / MLCX
    devices read too. Raises :class:`DicomError` naming what is missing."""
    path = str(path)
    ds = _read_dataset(path)
    if str(ds.get("SOPClassUID", "")) != RTPlanStorage:
        raise DicomError(f"{path}: not an RT Plan (SOPClassUID {ds.get('SOPClassUID', 'missing')})")
    try:
        meterset = {int(rb.ReferencedBeamNumber): float(rb.BeamMeterset)
                    for rb in ds.FractionGroupSequence[0].ReferencedBeamSequence}
        fractions = int(ds.FractionGroupSequence[0].NumberOfFractionsPlanned)
        beams = []
        for b in ds.BeamSequence:
            number = int(b.BeamNumber)
            where = f"beam {number}"
            mlc = [d for d in b.BeamLimitingDeviceSequence if d.RTBeamLimitingDeviceType == "MLCX"]
            if not mlc:
                raise DicomError(f"{path}: {where} has no MLCX beam-limiting device")
            boundaries = np.asarray([float(v) for v in mlc[0].LeafPositionBoundaries])
            n = int(mlc[0].NumberOfLeafJawPairs)
            cps = list(b.ControlPointSequence)
            first = cps[0]
            jaw_x = _device_values(first.BeamLimitingDevicePositionSequence, "ASYMX", path, where)
            jaw_y = _device_values(first.BeamLimitingDevicePositionSequence, "ASYMY", path, where)
            _check_jaws_fixed(cps, {"ASYMX": jaw_x, "ASYMY": jaw_y}, path, where)
            leaves = np.array([_device_values(cp.BeamLimitingDevicePositionSequence, "MLCX", path,
                                              f"{where} control point {k}") for k, cp in enumerate(cps)])
            if leaves.shape[1] != 2 * n:
                raise DicomError(f"{path}: {where}: MLCX positions hold {leaves.shape[1]} values, "
                                 f"expected {2 * n}")
            final = float(b.FinalCumulativeMetersetWeight)
            weights = np.array([float(cp.CumulativeMetersetWeight) for cp in cps])
            if number not in meterset:
                raise DicomError(f"{path}: {where} has no BeamMeterset in the fraction group")
            technique = ("step_and_shoot" if len(cps) % 2 == 0
                         and np.array_equal(leaves[0::2], leaves[1::2]) else "sliding_window")
            beams.append(BeamDelivery(
                number - 1, float(first.GantryAngle), float(first.PatientSupportAngle),
                tuple(float(v) for v in first.IsocenterPosition), technique, boundaries, jaw_x, jaw_y,
                leaves[:, :n], leaves[:, n:], weights / final * meterset[number],
                collimator_deg=float(first.BeamLimitingDeviceAngle)))
        ss = ds.get("ReferencedStructureSetSequence")
        return RTPlanContents(beams, fractions, str(ds.get("RTPlanLabel", "")),
                              str(ds.BeamSequence[0].get("TreatmentMachineName", "")),
                              str(ss[0].ReferencedSOPInstanceUID) if ss else None, str(ds.SOPInstanceUID))
    except DicomError:
        raise
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise DicomError(f"{path}: cannot read the RT Plan ({type(exc).__name__}: {exc})") from exc
