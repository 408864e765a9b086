"""examples/dicom_roundtrip.py end to end on a coarse grid: DICOM in, plan, RT Dose / RT Ion Plan out,
metrics.json, and nothing overwritten without --overwrite."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pydicom
import pytest

import optimizer
from optimizer import evaluate, load_ct_series, load_dicom, load_rtdose

_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dicom_roundtrip.py"
_spec = importlib.util.spec_from_file_location("dicom_roundtrip_example", _EXAMPLE)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)

# coarse and fast: 6 mm voxels, 8 mm photon beamlets, 10 mm proton spots, 800 sampled helper voxels
# the round trips, not the solver, are under test: CLARABEL on a sample of the helpers is quickest here
FAST = ["--spacing-mm", "6", "--beamlet-mm", "8", "--max-voxels", "800", "--solver", "CLARABEL"]
FAST_PROTONS = FAST + ["--protons", "--spot-spacing-mm", "10", "--layer-spacing-mm", "8"]


@pytest.fixture(scope="module")
def photon_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dicom_photons")
    record = example.main(["--out", str(out)] + FAST)
    return out, record


def _check_record(out: Path, record: dict, modality: str) -> dict:
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    for key in ("case", "fractions", "structures", "goals", "sizes", "timings_s", "solver", "dicom"):
        assert key in on_disk, key
    assert on_disk["fractions"] == 25 and on_disk["modality"] == modality
    assert on_disk["solver"]["status"] == "optimal"
    for k in ("dose", "build", "solve", "total"):
        assert on_disk["timings_s"][k] >= 0
    for k in ("grid_voxels", "opt_voxels", "beamlets", "nnz"):
        assert on_disk["sizes"][k] > 0
    for name in ("PTV", "Core", "Body", "Ring", "Tissue"):
        assert {"D95_Gy", "D10_Gy", "D50_Gy", "mean_Gy", "max_Gy"} <= set(on_disk["structures"][name])
    goals = {(g["structure"], g["metric"], g["limit_Gy"]): g for g in on_disk["goals"]}
    for g in goals.values():
        assert set(g) == {"structure", "metric", "op", "limit", "value", "unit", "met",
                          "limit_Gy", "value_Gy"}
    # the PTV goals are hard constraints (CVaR surrogates with 0.5 Gy of room): always met
    assert goals[("PTV", "D95", 50.0)]["met"] and goals[("PTV", "D10", 55.0)]["met"]
    assert goals[("Core", "D10", 25.0)]["met"]

    d = on_disk["dicom"]
    files = d["files"]["dicom_in"] + d["files"]["dicom_out"]
    assert "dicom_in/CT_0000.dcm" in files and "dicom_in/RS.dcm" in files and "dicom_out/RD.dcm" in files
    assert all((out / f).is_file() for f in files)
    assert d["ct_slices"] == len(d["files"]["dicom_in"]) - 1 == 20  # 120 mm / 6 mm
    assert d["grid_equal"] is True
    assert set(d["dice"]) == {"PTV", "Core", "Body"}
    assert all(v >= 0.98 for v in d["dice"].values()), d["dice"]
    assert d["hu_max_diff"] <= 0.5  # the CT is stored to the nearest HU
    assert d["dose_grid_scaling_Gy"] > 0
    assert d["rtdose_max_diff_Gy"] <= 0.5 * d["dose_grid_scaling_Gy"] * (1 + 1e-6)
    assert d["rtdose_within_half_scaling"] is True
    png = (out / "dvh.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    return on_disk


def _check_rtdose(out: Path, record: dict):
    """The RT Dose read independently (pydicom / load_rtdose) sits on the CT grid, in its frame of
    reference, and gives the recorded PTV metrics back."""
    dose, grid = load_rtdose(out / "dicom_out" / "RD.dcm")
    ct = load_ct_series(out / "dicom_in")
    assert grid == ct.grid
    rd = pydicom.dcmread(out / "dicom_out" / "RD.dcm")
    assert rd.FrameOfReferenceUID == ct.info.frame_of_reference_uid
    assert rd.StudyInstanceUID == ct.info.study_instance_uid
    assert rd.DoseUnits == "GY" and rd.DoseType == "PHYSICAL"
    patient = load_dicom(out / "dicom_in")
    ptv = dose[patient.structure("PTV").mask]
    scaling = float(rd.DoseGridScaling)
    for key, pct in (("D95_Gy", 95), ("D10_Gy", 10)):
        assert evaluate.dose_at_volume(ptv, pct) == pytest.approx(record["structures"]["PTV"][key],
                                                                  abs=scaling)
    body_max = dose[patient.structure("Body").mask].max()
    assert body_max == pytest.approx(record["structures"]["Body"]["max_Gy"], abs=scaling)
    return rd


def test_photon_round_trip(photon_run):
    out, record = photon_run
    on_disk = _check_record(out, record, "photon")
    assert on_disk["case"] == "dicom_roundtrip_photons"
    assert on_disk["dicom"]["files"]["dicom_out"] == ["dicom_out/RD.dcm"]
    _check_rtdose(out, on_disk)


def test_second_run_without_overwrite_refuses_before_planning(photon_run, capsys):
    out, _ = photon_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exc_info:
        example.main(["--out", str(out)] + FAST)
    message = str(exc_info.value.code)
    assert "already exist" in message and "--overwrite" in message and "nothing was overwritten" in message
    assert str(out) in message
    assert "solver" not in capsys.readouterr().out  # refused before any planning
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_overwrite_replaces_an_earlier_run_without_stale_slices(tmp_path):
    out = tmp_path / "run"
    example.main(["--out", str(out)] + FAST)
    # --overwrite at another voxel size: fewer slices, none of the earlier 20 left behind
    record = example.main(["--out", str(out), "--overwrite", "--spacing-mm", "8", "--beamlet-mm", "8",
                           "--max-voxels", "500"])
    assert record["dicom"]["ct_slices"] == 15
    assert len(list((out / "dicom_in").glob("CT_*.dcm"))) == 15
    assert load_dicom(out / "dicom_in").grid.shape[0] == 15


def test_proton_round_trip_with_rt_ion_plan(tmp_path):
    out = tmp_path / "protons"
    record = example.main(["--out", str(out)] + FAST_PROTONS)
    on_disk = _check_record(out, record, "proton")
    assert on_disk["case"] == "dicom_roundtrip_protons"
    assert on_disk["dicom"]["files"]["dicom_out"] == ["dicom_out/RD.dcm", "dicom_out/RN.dcm"]
    rd = _check_rtdose(out, on_disk)
    rn = pydicom.dcmread(out / "dicom_out" / "RN.dcm")
    assert rd.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == rn.SOPInstanceUID
    rs = pydicom.dcmread(out / "dicom_in" / "RS.dcm")
    assert rn.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rs.SOPInstanceUID
    assert [b.RadiationType for b in rn.IonBeamSequence] == ["PROTON"] * len(example.PROTON_GANTRY_DEG)
    gantry = [float(b.IonControlPointSequence[0].GantryAngle) for b in rn.IonBeamSequence]
    assert gantry == pytest.approx([g % 360 for g in example.PROTON_GANTRY_DEG])
    ion = on_disk["dicom"]["rt_ion_plan"]
    assert ion["beams"] == len(rn.IonBeamSequence)
    assert ion["spots_written"] > 0 and ion["total_weight_rel_diff"] < 1e-6
    assert rn.FractionGroupSequence[0].NumberOfFractionsPlanned == 25
    total = sum(float(b.FinalCumulativeMetersetWeight) for b in rn.IonBeamSequence)
    assert total == pytest.approx(ion["total_weight"], rel=1e-6)


def test_broken_proton_model_exits_with_a_clear_message(tmp_path, monkeypatch):
    class Unfinished:
        def __init__(self, *args, **kwargs):
            raise NotImplementedError("spot placement is not written yet")

    monkeypatch.setattr(optimizer, "ProtonBeams", Unfinished)
    with pytest.raises(SystemExit) as exc_info:
        example.main(["--out", str(tmp_path / "broken")] + FAST_PROTONS)
    message = str(exc_info.value.code)
    assert "proton beam model" in message and "NotImplementedError" in message
    assert "without --protons" in message
