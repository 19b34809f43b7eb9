"""write_atomic: all or nothing, and the file gets the mode any other file would (not mkstemp's 0600);
output checks: a symlink is followed, a device, fifo or folder refused, an unwritable folder found
before any work; JSON inputs: a byte-order mark is accepted, a folder named as one."""

import json
import os
import re
import stat
from pathlib import Path

import pytest

from models.common.cli import check_output_folder, check_writable, read_json_file, write_atomic
from models.common.errors import UserError


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


# --- output paths: a link is followed, a non-regular file refused, an unwritable folder found first


def test_a_symlink_output_writes_where_it_points_and_stays_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "out.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert check_writable(link) == link
    write_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["out.json"]  # the temporary went beside it
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "real" / "made.json")
    write_atomic(check_writable(dangling), "made")
    assert dangling.is_symlink() and (tmp_path / "real" / "made.json").read_text() == "made"


def _fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    return fifo


@pytest.mark.parametrize("kind", ["fifo", "link to a fifo", "device", "folder", "link to a folder"])
def test_a_non_regular_output_is_refused_and_left_alone(tmp_path, kind):
    """Never replaced by a regular file (a fifo in tmp stands in for a device node: replacing it is
    harmless if the check is broken, replacing /dev/null as root would not be)."""
    paths = {"fifo": lambda: _fifo(tmp_path), "device": lambda: Path("/dev/null"), "folder": lambda: tmp_path}
    if kind.startswith("link to"):
        path = tmp_path / "link"
        path.symlink_to(paths[kind.removeprefix("link to a ")]())
    else:
        path = paths[kind]()
    folder = "folder" in kind
    message = "is a folder; give a file path" if folder else "is not a regular file (a device, fifo or socket)"
    with pytest.raises(UserError, match=re.escape(f"--output {str(path)!r} {message}")):
        check_writable(path)
    if kind != "device":  # write_atomic refuses too, whoever calls it without check_writable
        with pytest.raises(UserError, match=re.escape(message)):
            write_atomic(path, "text")
        target = Path(os.path.realpath(path))
        assert target.is_dir() if folder else stat.S_ISFIFO(target.stat().st_mode)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_missing_folder_or_a_file_as_folder_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="--json folder .*nope' does not exist"):
        check_writable(tmp_path / "nope" / "out.json", "--json")
    with pytest.raises(UserError, match="--output folder .*file' is not a folder"):
        check_writable(tmp_path / "file" / "out.json")


def test_an_unwritable_folder_is_found_before_any_work_even_as_root():
    """sysfs refuses new files to root too; permission bits (below) do not stop root."""
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys here")
    with pytest.raises(UserError, match=r"--output folder '/sys/kernel' is not writable \("):
        check_writable("/sys/kernel/out.json")
    with pytest.raises(UserError, match=r"--output_dir folder '/sys/kernel' is not writable \("):
        check_output_folder("/sys/kernel/run/a", "--output_dir")


def test_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("root writes in a read-only folder (CAP_DAC_OVERRIDE); the /sys test covers root")
        with pytest.raises(UserError, match="is not writable"):
            check_writable(folder / "out.json")
        with pytest.raises(UserError, match="is not writable"):
            check_output_folder(folder, "--output_dir")  # it exists: filled in place
    finally:
        folder.chmod(0o755)


def test_an_output_folder_may_be_new_but_not_a_file(tmp_path):
    assert check_output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"  # made when written
    assert not (tmp_path / "a").exists() and not list(tmp_path.iterdir())  # the probe left nothing
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="--output_dir .*file' is not a folder; give a folder path"):
        check_output_folder(tmp_path / "file")
    with pytest.raises(UserError, match="--output_dir folder .*file' is not a folder"):
        check_output_folder(tmp_path / "file" / "run")


# --- JSON input files


def test_json_input_may_start_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"prompt": "hi"}]).encode())
    assert read_json_file(path, "prompts file") == [{"prompt": "hi"}]


def test_a_folder_given_as_a_json_file_is_named_a_folder(tmp_path):
    with pytest.raises(UserError, match=re.escape(f"prompts file {str(tmp_path)!r} is a folder; give a JSON file")):
        read_json_file(tmp_path, "prompts file")
    with pytest.raises(UserError, match="not found"):
        read_json_file(tmp_path / "nope.json", "prompts file")


def test_sigterm_cleans_up_as_ctrl_c_does(tmp_path):
    """A terminated script runs its cleanup (here a finally block; in the scripts, temporary files,
    conversion folders and mesh workers) and says so in one line, as an interrupted one does."""
    import signal
    import subprocess
    import sys
    import time

    started, cleaned = tmp_path / "started", tmp_path / "cleaned"
    script = (
        "import time, pathlib\n"
        "from models.common.cli import run_cli\n"
        "def main():\n"
        "    try:\n"
        f"        pathlib.Path({str(started)!r}).touch()\n"
        "        time.sleep(60)\n"
        "    finally:\n"
        f"        pathlib.Path({str(cleaned)!r}).touch()\n"
        "run_cli(main)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[3],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert (proc.returncode, err, cleaned.exists()) == (130, "interrupted\n", True)
