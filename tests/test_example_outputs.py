"""Examples replace nothing of an earlier run unasked: an --out folder that already holds files is
refused before any work unless --overwrite (10 of the 12 examples rewrote it silently; the cohort
study has --resume and the DICOM round trip its own --overwrite)."""

import importlib.util
import pathlib

import pytest

from optimizer import report

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
GUARDED = ["tg119_cshape", "personalized_bed", "proton_cshape", "flash_proton", "minibeam", "robust_proton",
           "matrad_plan", "beam_model_check", "beam_model_check_proton", "deliverable_imrt"]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_example", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_output_folder_refuses_an_earlier_run_and_a_file(tmp_path):
    fresh = tmp_path / "new" / "out"
    assert report.output_folder(fresh) == str(fresh) and fresh.is_dir()
    assert report.output_folder(fresh) == str(fresh)  # empty: nothing to lose
    (fresh / "metrics.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"--out .*out: holds 1 entries of an earlier run; pass "
                                              r"--overwrite"):
        report.output_folder(fresh)
    assert report.output_folder(fresh, overwrite=True) == str(fresh)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        report.output_folder(tmp_path / "file", overwrite=True)


@pytest.mark.parametrize("name", GUARDED)
def test_every_example_refuses_an_earlier_runs_folder_before_any_work(name, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dvh.png").write_bytes(b"an earlier run")
    argv = ["--out", str(out)]
    if name == "matrad_plan":
        argv = [str(tmp_path / "missing.mat")] + argv
    with pytest.raises(SystemExit) as stop:
        _load(name).main(argv)
    assert stop.value.code == 2  # argparse's usage error, not a traceback
    assert "pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["dvh.png"]
    assert (out / "dvh.png").read_bytes() == b"an earlier run"
