"""RT Ion Plan: :func:`write_rt_ion_plan` writes a proton pencil-beam-scanning plan (RadiationType
PROTON, ScanMode MODULATED) from a proton :class:`~optimizer.plan.Plan` or from spot arrays."""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import overload

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import RTIonPlanStorage, generate_uid

from ..geometry import Patient
from ..plan import Plan
from ._dicom_common import CTInfo, DicomError
from ._dicom_write import (
    _MANUFACTURER,
    _call_form,
    _check_ct_info,
    _check_fractions,
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

__all__ = ["write_rt_ion_plan"]

_SPOT_KEYS = ("beam", "layer", "energy_MeV", "u_mm", "v_mm")
_BEAM_KEYS = ("gantry_deg", "couch_deg", "isocenter_mm")


@overload
def write_rt_ion_plan(path: str | os.PathLike, plan: Plan, ct_info: CTInfo, *, mu_per_weight: float = 1.0,
                      fractions: int | None = None, overwrite: bool = False,
                      structure_set_uid: str | None = None, sop_instance_uid: str | None = None,
                      plan_label: str = "bioplan", machine_name: str = "bioplan",
                      spot_tune_id: str = "1.0") -> str: ...


@overload
def write_rt_ion_plan(path: str | os.PathLike, spots: Mapping[str, np.ndarray], beams: Sequence[Mapping],
                      weights: np.ndarray, patient: Patient, ct_info: CTInfo,
                      mu_per_weight: float = 1.0, fractions: int | None = None, overwrite: bool = False,
                      structure_set_uid: str | None = None, sop_instance_uid: str | None = None,
                      plan_label: str = "bioplan", machine_name: str = "bioplan",
                      spot_tune_id: str = "1.0") -> str: ...


def write_rt_ion_plan(*args, **kwargs) -> str:
    """Write a proton pencil-beam-scanning plan as an RT Ion Plan (RadiationType PROTON,
    ScanMode MODULATED).

    Two call forms::

        write_rt_ion_plan(path, plan, ct_info, *, mu_per_weight=1.0, ...)
        write_rt_ion_plan(path, spots, beams, weights, patient, ct_info, mu_per_weight=1.0,
                          fractions=..., ...)

    The first writes a proton :class:`~optimizer.plan.Plan`: spots from ``plan.beamlets``,
    ``plan.beams``, ``plan.weights``, ``plan.patient`` and ``plan.fractions``. The second writes
    spot arrays; ``fractions`` is then required (there is no default number of fractions).

    MU calibration: one unit of spot weight (the optimizer's beamlet weight, i.e. per fraction)
    is ``mu_per_weight`` monitor units. ``ScanSpotMetersetWeights`` hold the weights themselves,
    ``FinalCumulativeMetersetWeight`` is their sum per beam and ``BeamMeterset`` (per fraction,
    MU) is that sum times ``mu_per_weight``, so a spot receives ``weight * mu_per_weight`` MU.
    The default 1.0 means the weights are already MU; a real machine needs its own commissioned
    factor (e.g. from absolute dosimetry of a reference field). The calibration is also written to
    RTPlanDescription.

    Each energy layer is a pair of control points: the first carries the energy, the spot
    positions (``ScanSpotPositionMap``, (u, v) pairs in mm in the isocentre plane, beam's-eye
    view / IEC gantry X, Y) and the weights, with ``CumulativeMetersetWeight`` before the layer;
    the second repeats energy and positions with zero weights and the cumulative weight after
    the layer. Layers are written in ascending ``layer`` index; spots with zero weight are
    dropped, and beams without any positive weight are omitted with a warning.

    Parameters
    ----------
    path : the file to write; an existing file is replaced only with ``overwrite=True``.
    plan : a proton plan (``plan.modality == "proton"``).
    spots : dict of equal-length arrays: ``beam`` (int, index into ``beams``), ``layer`` (int),
        ``energy_MeV`` (nominal energy, constant within a layer), ``u_mm``, ``v_mm``.
    beams : list of dicts with ``gantry_deg``, ``couch_deg`` (IEC 61217) and ``isocenter_mm``
        (x, y, z LPS mm); optional ``name``.
    weights : spot weights (>= 0) per fraction, same length as the spot arrays.
    patient : the patient of the CT series of ``ct_info``.
    ct_info : the CT series' identifiers (:func:`~optimizer.io.write_ct_series` or
        ``load_ct_series(folder).info``).
    mu_per_weight : MU per unit weight (see above).
    fractions : NumberOfFractionsPlanned; required with spot arrays. With a Plan it may be
        omitted (``plan.fractions`` is written) and must equal ``plan.fractions`` if given.
    structure_set_uid : SOP Instance UID of the RT Structure Set (from
        :func:`~optimizer.io.write_rtstruct`); with it RTPlanGeometry is PATIENT and the
        structure set is referenced, without it TREATMENT_DEVICE.
    sop_instance_uid : the plan's UID, e.g. one an RT Dose already references; default new.
    plan_label, machine_name, spot_tune_id : RTPlanLabel / RTPlanName, TreatmentMachineName and
        ScanSpotTuneID (at most 16 characters each).

    Returns
    -------
    str : the plan's SOP Instance UID.
    """
    form = _call_form("write_rt_ion_plan", _ion_plan_of_plan, _ion_plan_of_arrays, 1, args, kwargs)
    return form(*args, **kwargs)


def _ion_plan_of_plan(path: str | os.PathLike, plan: Plan, ct_info: CTInfo, *, mu_per_weight: float = 1.0,
                      fractions: int | None = None, overwrite: bool = False,
                      structure_set_uid: str | None = None, sop_instance_uid: str | None = None,
                      plan_label: str = "bioplan", machine_name: str = "bioplan",
                      spot_tune_id: str = "1.0") -> str:
    if plan.modality != "proton":
        raise DicomError(f"plan: an RT Ion Plan needs a proton plan, this plan's modality is "
                         f"{plan.modality!r}")
    if fractions is not None and _check_fractions(fractions) != plan.fractions:
        raise DicomError(f"fractions: {fractions} given, the plan has {plan.fractions}; omit fractions "
                         "to write the plan's")
    return _write_ion_plan(path, plan.beamlets, plan.beams, plan.weights, plan.patient, ct_info,
                           mu_per_weight, plan.fractions, overwrite, structure_set_uid, sop_instance_uid,
                           plan_label, machine_name, spot_tune_id)


def _ion_plan_of_arrays(path: str | os.PathLike, spots: Mapping[str, np.ndarray], beams: Sequence[Mapping],
                        weights: np.ndarray, patient: Patient, ct_info: CTInfo,
                        mu_per_weight: float = 1.0, fractions: int | None = None, overwrite: bool = False,
                        structure_set_uid: str | None = None, sop_instance_uid: str | None = None,
                        plan_label: str = "bioplan", machine_name: str = "bioplan",
                        spot_tune_id: str = "1.0") -> str:
    if fractions is None:
        raise DicomError(
            "fractions: required when writing spot arrays (NumberOfFractionsPlanned; there is no "
            "default): pass fractions=n, or pass the Plan itself: write_rt_ion_plan(path, plan, ct_info)"
        )
    return _write_ion_plan(path, spots, beams, weights, patient, ct_info, mu_per_weight, fractions,
                           overwrite, structure_set_uid, sop_instance_uid, plan_label, machine_name,
                           spot_tune_id)


def _validate_spots(spots: Mapping, weights, beams: Sequence[Mapping]) -> dict[str, np.ndarray]:
    if not isinstance(spots, Mapping):
        raise DicomError(f"spots: expected a dict of arrays with keys {_SPOT_KEYS}")
    missing = [k for k in _SPOT_KEYS if k not in spots]
    if missing:
        raise DicomError(f"spots: missing key(s) {missing}; expected {_SPOT_KEYS}")
    out = {k: np.asarray(spots[k]).ravel() for k in _SPOT_KEYS}
    n = out["beam"].size
    for k, v in out.items():
        if v.size != n:
            raise DicomError(f"spots['{k}']: {v.size} values, spots['beam'] has {n}")
    w = np.asarray(weights, dtype=float).ravel()
    if w.size != n:
        raise DicomError(f"weights: {w.size} values for {n} spots")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise DicomError("weights: expected finite, non-negative spot weights")
    out["weight"] = w
    for k in ("energy_MeV", "u_mm", "v_mm"):
        out[k] = out[k].astype(float)
        if not np.all(np.isfinite(out[k])):
            raise DicomError(f"spots['{k}']: contains NaN or infinite values")
    if np.any(out["energy_MeV"] <= 0):
        raise DicomError("spots['energy_MeV']: energies must be positive (MeV)")
    for k in ("beam", "layer"):
        if not np.all(np.equal(np.mod(out[k].astype(float), 1), 0)):
            raise DicomError(f"spots['{k}']: expected integer indices")
        out[k] = out[k].astype(np.int64)
    if n and (out["beam"].min() < 0 or out["beam"].max() >= len(beams)):
        raise DicomError(f"spots['beam']: indices must be in 0..{len(beams) - 1} (len(beams))")
    for i, b in enumerate(beams):
        miss = [k for k in _BEAM_KEYS if k not in b]
        if miss:
            raise DicomError(f"beams[{i}]: missing key(s) {miss}; expected {_BEAM_KEYS}")
        try:
            iso = np.asarray(b["isocenter_mm"], dtype=float).ravel()
        except (TypeError, ValueError):
            iso = np.full(0, np.nan)
        if iso.size != 3 or not np.all(np.isfinite(iso)):
            raise DicomError(f"beams[{i}]['isocenter_mm']: expected 3 finite numbers (x, y, z) LPS mm, "
                             f"got {b['isocenter_mm']!r}")
        for k in ("gantry_deg", "couch_deg"):
            v = b[k]
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) \
                    or not np.isfinite(v):
                raise DicomError(f"beams[{i}]['{k}']: expected a finite angle in degrees (a number), "
                                 f"got {v!r}")
    return out


def _angle(deg: float) -> str:
    return _ds(float(deg) % 360.0)


def _control_points(sp: dict[str, np.ndarray], sel: np.ndarray, b_index: int, beam: Mapping,
                    tune_id: str) -> list[Dataset]:
    """Two control points per energy layer (ascending ``layer``) of the spots ``sel`` of one beam."""
    iso = _ds_list(np.asarray(beam["isocenter_mm"], dtype=float).ravel())
    cps, cumulative = [], 0.0
    for layer in np.unique(sp["layer"][sel]):
        ls = sel[sp["layer"][sel] == layer]
        energies = sp["energy_MeV"][ls]
        if np.ptp(energies) > 1e-6:
            raise DicomError(
                f"spots: beam {b_index} layer {layer} mixes energies {sorted(set(energies.tolist()))} MeV"
            )
        pos = np.column_stack([sp["u_mm"][ls], sp["v_mm"][ls]]).astype(np.float32).ravel()
        w = sp["weight"][ls]
        for half in (0, 1):
            cp = Dataset()
            cp.ControlPointIndex = len(cps)
            cp.NominalBeamEnergy = _ds(energies[0])
            if not cps:
                cp.GantryAngle = _angle(beam["gantry_deg"])
                cp.GantryRotationDirection = "NONE"
                cp.BeamLimitingDeviceAngle = "0"
                cp.BeamLimitingDeviceRotationDirection = "NONE"
                cp.PatientSupportAngle = _angle(beam["couch_deg"])
                cp.PatientSupportRotationDirection = "NONE"
                cp.TableTopPitchAngle = 0.0
                cp.TableTopPitchRotationDirection = "NONE"
                cp.TableTopRollAngle = 0.0
                cp.TableTopRollRotationDirection = "NONE"
                cp.IsocenterPosition = iso
                cp.SnoutPosition = 0.0
                cp.MetersetRate = 0.0
            cp.CumulativeMetersetWeight = _ds(cumulative if half == 0 else cumulative + w.sum())
            cp.ScanSpotTuneID = tune_id
            cp.NumberOfScanSpotPositions = int(ls.size)
            cp.ScanSpotPositionMap = pos.tolist()
            cp_w = w if half == 0 else np.zeros_like(w)
            cp.ScanSpotMetersetWeights = cp_w.astype(np.float32).tolist()
            cp.NumberOfPaintings = 1
            cps.append(cp)
        cumulative += float(w.sum())
    return cps


def _ion_beam(number: int, b_index: int, beam: Mapping, cps: list[Dataset], total: float,
              mu_per_weight: float, machine: str, path: Path) -> Dataset:
    ib = Dataset()
    ib.BeamNumber = number
    ib.BeamName = _text(beam.get("name", f"B{number}"), f"BeamName (beams[{b_index}])", "LO", path)
    ib.BeamDescription = (
        f"gantry {float(beam['gantry_deg']) % 360:g} deg, couch {float(beam['couch_deg']) % 360:g} deg, "
        f"{mu_per_weight:g} MU per unit weight"
    )
    ib.BeamType = "STATIC"
    ib.RadiationType = "PROTON"
    ib.TreatmentMachineName = machine
    ib.Manufacturer = _MANUFACTURER
    ib.PrimaryDosimeterUnit = "MU"
    ib.TreatmentDeliveryType = "TREATMENT"
    ib.NumberOfWedges = 0
    ib.NumberOfCompensators = 0
    ib.NumberOfBoli = 0
    ib.NumberOfBlocks = 0
    ib.NumberOfRangeShifters = 0
    ib.NumberOfLateralSpreadingDevices = 0
    ib.NumberOfRangeModulators = 0
    ib.PatientSupportType = "TABLE"
    ib.ReferencedPatientSetupNumber = 1
    ib.ScanMode = "MODULATED"
    ib.ModulatedScanModeType = "STATIONARY"  # beam off while moving between spots
    ib.VirtualSourceAxisDistances = [2000.0, 2000.0]
    ib.FinalCumulativeMetersetWeight = _ds(total)
    ib.NumberOfControlPoints = len(cps)
    ib.IonControlPointSequence = DicomSequence(cps)
    return ib


def _write_ion_plan(path: str | os.PathLike, spots: Mapping[str, np.ndarray], beams: Sequence[Mapping],
                    weights: np.ndarray, patient: Patient, ct_info: CTInfo, mu_per_weight: float,
                    fractions: int, overwrite: bool, structure_set_uid: str | None,
                    sop_instance_uid: str | None, plan_label: str, machine_name: str,
                    spot_tune_id: str) -> str:
    path = Path(path)
    _check_target(path, overwrite)
    _check_ct_info(ct_info, patient.grid, "write_rt_ion_plan")
    mu_per_weight = _check_positive_number(mu_per_weight, "mu_per_weight", "MU per unit weight")
    fractions = _check_fractions(fractions)
    beams = list(beams)
    if not beams:
        raise DicomError("beams: expected at least one beam")
    sp = _validate_spots(spots, weights, beams)
    label = _text(plan_label, "RTPlanLabel", "SH", path)  # also RTPlanName (LO, longer limit)
    machine = _text(machine_name, "TreatmentMachineName", "SH", path)
    tune_id = _text(spot_tune_id, "ScanSpotTuneID", "SH", path)
    keep = sp["weight"] > 0
    sp = {k: v[keep] for k, v in sp.items()}
    sop_uid = sop_instance_uid or generate_uid()
    ds = _new_dataset(RTIonPlanStorage, sop_uid, "RTPLAN", generate_uid(), 4, patient, ct_info,
                      ct_info.study_instance_uid, ct_info.frame_of_reference_uid, "bioplan proton plan",
                      path)
    _plan_header(ds, label, (
        f"bioplan proton PBS plan. MU calibration: {mu_per_weight:g} MU per unit optimizer spot weight "
        "(per fraction); ScanSpotMetersetWeights are the spot weights, "
        "BeamMeterset = FinalCumulativeMetersetWeight x MU per weight."
    ), structure_set_uid)
    ion_beams, ref_beams = [], []
    for b_index, b in enumerate(beams):
        sel = np.flatnonzero(sp["beam"] == b_index)
        if sel.size == 0:
            # stacklevel: the caller of write_rt_ion_plan (-> its call form -> here)
            warnings.warn(f"write_rt_ion_plan: beam {b_index} has no spot with positive weight; omitted",
                          stacklevel=4)
            continue
        number = len(ion_beams) + 1
        total = float(sp["weight"][sel].sum())
        cps = _control_points(sp, sel, b_index, b, tune_id)
        ion_beams.append(_ion_beam(number, b_index, b, cps, total, mu_per_weight, machine, path))
        ref_beams.append((number, total * mu_per_weight))
    if not ion_beams:
        raise DicomError("weights: no spot has a positive weight; nothing to write")
    _fraction_group(ds, fractions, ref_beams)
    ds.IonBeamSequence = DicomSequence(ion_beams)
    _save(ds, path, overwrite)
    return sop_uid
