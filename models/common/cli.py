"""Command-line plumbing shared by scripts/: one-line errors and atomic output files."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from models.common.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (exit 2), not usage plus an error."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def bool01(value: str) -> bool:
    if value not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"expected 0 or 1, got {value!r}")
    return value == "1"


def tree_budget_arg(value: str) -> int | str:
    """--tree_budget: a number of nodes, or 'auto'."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of nodes or 'auto', got {value!r}") from None


def prompt_context_arg(value: str) -> int | None:
    """--prompt_context: a number of prompt positions (>= 1), or all (None)."""
    if value == "all":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1 or all, got {value!r}")
    return int(value)


def layers_arg(value: str) -> tuple[int, ...]:
    """--feature_layers: comma-separated target layer indices (0 = the first), or none."""
    if value == "none":
        return ()
    parts = value.split(",")
    if not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected layer indices such as 2,14 (or none), got {value!r}")
    return tuple(int(p) for p in parts)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a script's main; a UserError becomes `error: ...` on one line and exit status 2. SIGTERM
    is handled as Ctrl-C is, so a terminated run cleans up as an interrupted one does (temporary
    files and folders, mesh workers) instead of dying where it stands."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = main()
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    sys.exit(code or 0)


def output_target(path: str | Path) -> Path:
    """Where a write to `path` lands: a symlink's final target (so the link stays a link and the
    file it names is replaced), else the path itself."""
    path = Path(path)
    if not path.is_symlink():
        return path
    try:
        return Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:  # a dangling link: the file is made where it points
        return Path(os.path.realpath(path))
    except OSError as exc:  # a symlink loop
        raise UserError(f"{str(path)!r} is a symlink that leads nowhere ({exc.strerror})") from None


def _refuse_non_regular(path: Path, target: Path, flag: str) -> None:
    """A folder, device, fifo or socket is never replaced by a regular file."""
    if target.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a folder; give a file path")
    if target.exists() and not target.is_file():
        raise UserError(f"{flag} {str(path)!r} is not a regular file (a device, fifo or socket); give a file path")


def _probe_folder(folder: Path, flag: str) -> None:
    """Create and remove a file in `folder`: the one test that holds for root, read-only mounts
    and pseudo-filesystems alike (permission bits alone do not)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"{flag} folder {str(folder)!r} is not writable ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def _existing_folder(folder: Path, flag: str) -> None:
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UserError(f"{flag} folder {str(folder)!r} {what}")


def check_writable(path: str | Path, flag: str = "--output") -> Path:
    """Fail before any work (never after a long run) if the output file cannot be written: a
    folder, device or fifo, a missing or unwritable folder. A symlink is followed, as write_atomic
    follows it; `flag` names the option in the message."""
    path = Path(path)
    target = output_target(path)
    _refuse_non_regular(path, target, flag)
    _existing_folder(target.parent, flag)
    _probe_folder(target.parent, flag)
    return path


def check_output_folder(path: str | Path, flag: str = "--output_dir") -> Path:
    """The same for an output folder that a script fills (or replaces) at the end: refused if it
    is a file or a device, or if it (when it exists) or the nearest folder above it that exists
    cannot be written (missing folders are made when the script writes)."""
    path = Path(path)
    target = output_target(path)
    if target.exists() and not target.is_dir():
        raise UserError(f"{flag} {str(path)!r} is not a folder; give a folder path")
    above = target.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    _existing_folder(above, flag)
    for folder in (above, target) if target.is_dir() else (above,):
        _probe_folder(folder, flag)
    return path


def read_json_file(path: str | Path, what: str) -> object:
    """A user-given JSON file, or a one-line error naming it (`what`: e.g. "prompts file"). A UTF-8
    byte-order mark (as some editors write) is accepted."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a folder; give a JSON file")
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, text: str | bytes) -> None:
    """Write via a temporary file and rename, so a failed run leaves no half-written file. A
    symlink is followed (the temporary goes beside its target); a folder, device or fifo is
    refused, never replaced."""
    target = output_target(path)
    _refuse_non_regular(Path(path), target, "output")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if isinstance(text, bytes) else os.fdopen(fd, "w", encoding="utf-8")) as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: object) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")
