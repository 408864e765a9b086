"""Files written through ``optimizer._files.atomic_write`` get the permissions of a plain
``open(path, "w")`` (0o666 less the umask), not the 0o600 of the temporary file they start as;
an overwritten regular file keeps its own permissions."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from optimizer._files import atomic_write, write_bytes

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set a umask for one test and restore the old one afterwards."""
    old = os.umask(0o022)
    try:
        yield lambda mask: os.umask(mask)
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600), (0o027, 0o640)])
def test_new_file_gets_the_mode_open_would_give(tmp_path, umask, mask, expected):
    umask(mask)
    path = write_bytes(tmp_path / "plan.npz", b"data")
    assert _mode(path) == expected
    assert Path(path).read_bytes() == b"data"
    # and exactly what a plain open() gives in the same folder
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    assert _mode(path) == _mode(tmp_path / "plain.txt")


def test_umask_is_read_back_unchanged(umask):
    from optimizer._files import _umask

    umask(0o027)
    assert _umask() == 0o027
    assert os.umask(0o027) == 0o027  # reading it left the process umask as it was


def test_exclusive_and_overwrite_paths_both_apply_the_mode(tmp_path, umask):
    umask(0o022)
    atomic_write(tmp_path / "a.dcm", lambda f: f.write(b"1"), overwrite=False)
    atomic_write(tmp_path / "b.dcm", lambda f: f.write(b"1"), overwrite=True)  # no file there yet
    assert _mode(tmp_path / "a.dcm") == 0o644 and _mode(tmp_path / "b.dcm") == 0o644


def test_overwrite_keeps_the_existing_files_mode(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "RP.dcm"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    write_bytes(path, b"new", overwrite=True)
    assert path.read_bytes() == b"new" and _mode(path) == 0o640


def test_overwriting_a_symlink_does_not_take_the_link_targets_mode(tmp_path, umask):
    umask(0o022)
    secret = tmp_path / "secret"
    secret.write_bytes(b"s")
    os.chmod(secret, 0o600)
    link = tmp_path / "out.dcm"
    link.symlink_to(secret)
    write_bytes(link, b"new", overwrite=True)
    assert not link.is_symlink() and _mode(link) == 0o644
    assert secret.read_bytes() == b"s" and _mode(secret) == 0o600


def test_plan_save_is_group_readable(tmp_path, umask, toy):
    from optimizer import Plan

    umask(0o022)
    patient, inf, _ = toy
    plan = Plan.from_weights(patient, inf, [1.0, 1.0, 1.0, 1.0], 5)
    path = plan.save(tmp_path / "x.plan")
    assert _mode(path) == 0o644


def test_no_temporary_is_left_when_the_writer_fails(tmp_path, umask):
    umask(0o022)

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "x.dcm", fail)
    assert list(tmp_path.iterdir()) == []


def test_umask_fallback_without_proc(monkeypatch, umask):
    import optimizer._files as files

    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(files, "open", no_proc, raising=False)
    umask(0o027)
    assert files._umask() == 0o027
    assert os.umask(0o027) == 0o027  # restored
