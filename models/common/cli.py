"""Command-line plumbing shared by scripts/: one-line errors and atomic output files."""

from __future__ import annotations

import argparse
import json
import os
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


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a script's main; a UserError becomes `error: ...` on one line and exit status 2."""
    try:
        code = main()
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    sys.exit(code or 0)


def check_writable(path: str | Path, flag: str = "--output") -> Path:
    """Fail before any work if the output's folder is missing (never after a long run); `flag`
    names the option in the message."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a folder; give a file path")
    if not path.parent.is_dir():
        raise UserError(f"{flag} folder {str(path.parent)!r} does not exist")
    return path


def read_json_file(path: str | Path, what: str) -> object:
    """A user-given JSON file, or a one-line error naming it (`what`: e.g. "prompts file")."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, text: str | bytes) -> None:
    """Write via a temporary file and rename, so a failed run leaves no half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if isinstance(text, bytes) else os.fdopen(fd, "w", encoding="utf-8")) as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: object) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")
