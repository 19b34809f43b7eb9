"""write_atomic: all or nothing, and the file gets the mode any other file would (not mkstemp's 0600)."""

import os
import stat

import pytest

from models.common.cli import write_atomic


def test_written_file_has_the_umask_mode_and_no_temporary_is_left(tmp_path):
    mask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "report.html", "<html></html>")
    finally:
        os.umask(mask)
    assert (tmp_path / "report.html").read_text() == "<html></html>"
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_atomic(target, 42)  # not text or bytes
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
