"""examples/matrad_plan.py end to end on a small synthetic matRad v5 file, and the C-shape helpers
and goal lists with the patient's own structure names (phantoms)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from optimizer import GeometryError, Patient, Structure, phantoms

_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "matrad_plan.py"
_spec = importlib.util.spec_from_file_location("matrad_plan_example", _EXAMPLE)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)

NY, NX, NZ = 30, 30, 8
RES_MM = 4.0
# matRad's default HU lookup table (dicom/hlutLibrary/matRad_default.hlut)
HLUT = np.array([[-1024.0, 0.00324], [200.0, 1.2], [449.0, 1.20001], [2000.0, 2.49066],
                 [2048.0, 2.5306], [3071.0, 2.53061]])


def _cell(items, shape):
    arr = np.empty(shape, dtype=object)
    flat = arr.reshape(-1, order="F")
    for i, v in enumerate(items):
        flat[i] = v
    return flat.reshape(shape, order="F")


def write_synthetic_matrad(path: Path) -> dict:
    """A matRad v5 file: 30 x 30 x 8 voxels at 4 mm; an elliptic water body in air (BODY, type
    OAR as matRad writes it), a cylindrical PTV with a smaller CTV inside, an OAR beside them,
    and the file's own HU -> density table in ct.hlut. Returns the masks, [z, y, x]."""
    x = (np.arange(NX) - (NX - 1) / 2) * RES_MM
    y = (np.arange(NY) - (NY - 1) / 2) * RES_MM
    z = (np.arange(NZ) - (NZ - 1) / 2) * RES_MM
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    body = (xx / 54.0) ** 2 + (yy / 42.0) ** 2 <= 1.0
    ptv = ((xx + 8.0) ** 2 + yy**2 <= 13.0**2) & (np.abs(zz) <= 10.0)
    ctv = ((xx + 8.0) ** 2 + yy**2 <= 7.0**2) & (np.abs(zz) <= 6.0)
    oar = (xx - 22.0) ** 2 + (yy - 8.0) ** 2 <= 7.0**2
    hu = np.where(body, 20.0, -1000.0)
    masks = {"PTV": ptv, "CTV": ctv, "Cord": oar, "BODY": body}

    def matlab_indices(mask):  # [z, y, x] -> 1-based column-major (y, x, z) linear indices
        iz, iy, ix = np.nonzero(mask)
        return (1 + iy + NY * (ix + NX * iz)).astype(float).reshape(-1, 1)

    ct = {"cubeHU": _cell([np.transpose(hu, (1, 2, 0))], (1, 1)),
          "resolution": {"x": RES_MM, "y": RES_MM, "z": RES_MM},
          "cubeDim": np.array([[NY, NX, NZ]], dtype=float),
          "numOfCtScen": 1.0,
          "hlut": HLUT}
    rows = [("PTV", "TARGET"), ("CTV", "TARGET"), ("Cord", "OAR"), ("BODY", "OAR")]
    cst = np.empty((len(rows), 6), dtype=object)
    for i, (name, kind) in enumerate(rows):
        cst[i, :] = [float(i), name, kind, _cell([matlab_indices(masks[name])], (1, 1)),
                     {"Priority": float(i + 1), "Visible": 1.0}, _cell([], (0, 0))]
    scipy.io.savemat(str(path), {"ct": ct, "cst": cst}, format="5")
    return masks


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("matrad_plan")
    path = folder / "synthetic.mat"
    masks = write_synthetic_matrad(path)
    out = folder / "out"
    t0 = time.perf_counter()
    record = example.main([str(path), "--out", str(out), "--beams", "5", "--beamlet-mm", "10",
                           "--oar-max", "Cord=30"])
    return record, out, masks, time.perf_counter() - t0


def test_matrad_plan_end_to_end(run, capsys):
    record, out, masks, seconds = run
    assert seconds < 20
    assert record["solver"]["status"] == "optimal"
    patient = record["patient"]
    assert patient["target"] == "PTV"  # the largest TARGET, not the CTV
    assert patient["body"] == "BODY"
    assert patient["roles"]["BODY"] == "other"  # matRad's 'OAR' body became a helper
    assert patient["roles"]["Cord"] == "oar" and patient["roles"]["PTV"] == "target"
    assert "Ring" in patient["roles"] and "Tissue" in patient["roles"]
    assert "ct.hlut" in patient["density_table_source"]
    assert any("body contour" in n for n in patient["notes"])
    # the goal table: target D95 (hard, so met), D2 and the OAR limit
    goals = {(g["structure"], g["metric"]): g for g in record["goals"]}
    assert set(goals) == {("PTV", "D95"), ("PTV", "D2"), ("Cord", "D2")}
    assert goals[("PTV", "D95")]["met"] and goals[("PTV", "D95")]["value_Gy"] >= 60.0 - 1e-6
    assert "structure" in record["goal_table"] and "PTV" in record["goal_table"]
    for name in ("metrics.json", "dvh.png", "dose.png"):
        assert (out / name).stat().st_size > 1000, name
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["solver"]["status"] == "optimal" and on_disk["patient"]["body"] == "BODY"
    assert on_disk["sizes"]["grid_voxels"] == NX * NY * NZ


def test_matrad_plan_help(capsys):
    with pytest.raises(SystemExit) as exc:
        example.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--target", "--body", "--beams", "--oar-max", "--soft-d95"):
        assert option in text


def test_matrad_plan_names_unknown_target(tmp_path):
    path = tmp_path / "synthetic.mat"
    write_synthetic_matrad(path)
    with pytest.raises(GeometryError, match="Tumour.*known structures"):
        example.main([str(path), "--out", str(tmp_path / "out"), "--target", "Tumour"])


# -- C-shape helpers and goals with the patient's own names -----------------------------------


def _renamed_cshape(names: dict[str, str]) -> Patient:
    p = phantoms.tg119_cshape(spacing_mm=8.0)
    return Patient(p.grid, p.ct_hu, [Structure(names.get(s.name, s.name), s.mask, s.role, s.color)
                                     for s in p.structures], name="renamed")


def test_cshape_helpers_take_target_and_body_names():
    """Defect: the helpers only worked for a target named "PTV" and a body named "Body"."""
    reference = _renamed_cshape({})
    phantoms.add_cshape_helper_structures(reference)
    p = _renamed_cshape({"PTV": "PTV_50", "Body": "External"})
    phantoms.add_cshape_helper_structures(p, target="PTV_50", body="External")
    for helper in ("Ring", "Tissue"):
        np.testing.assert_array_equal(p.structure(helper).mask, reference.structure(helper).mask)
        assert p.structure(helper).role == "other"
    # own helper names; an existing name is refused before anything is added
    phantoms.add_cshape_helper_structures(p, target="PTV_50", body="External", ring="Ring 2",
                                          tissue="Tissue 2")
    assert "Ring 2" in p and "Tissue 2" in p
    n = len(p.structures)
    with pytest.raises(GeometryError, match="Ring"):
        phantoms.add_cshape_helper_structures(p, target="PTV_50", body="External")
    assert len(p.structures) == n


def test_cshape_goals_and_terms_take_names():
    """Defect: TG119_CSHAPE_GOALS and cshape_planning_terms() named only "PTV" and "Core"."""
    assert phantoms.cshape_goals() == phantoms.TG119_CSHAPE_GOALS
    assert phantoms.cshape_hard_goals() == phantoms.TG119_CSHAPE_HARD_GOALS
    goals = phantoms.cshape_goals(target="PTV_50", core="SpinalCord")
    assert [g[0] for g in goals] == ["PTV_50", "PTV_50", "SpinalCord"]
    assert [g[1:] for g in goals] == [g[1:] for g in phantoms.TG119_CSHAPE_GOALS]
    assert phantoms.cshape_hard_goals(core="SpinalCord") == [("SpinalCord", "D10", "<=", 10.0)]
    terms = phantoms.cshape_planning_terms(target="PTV_50", core="SpinalCord")
    assert [t.structure for t in terms] == ["PTV_50", "PTV_50", "PTV_50", "SpinalCord", "Ring", "Tissue"]
    default = phantoms.cshape_planning_terms()
    assert [repr(t) for t in default] == [repr(t).replace("PTV_50", "PTV").replace("SpinalCord", "Core")
                                          for t in terms]
