"""Load scripts/*.py as modules and run their main like the command line does."""

import importlib.util
from pathlib import Path

import pytest

from models.common.cli import run_cli

SCRIPTS = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run_script(capsys):
    """run_script(name, argv) -> (exit code, stderr), exactly as `python scripts/NAME.py argv`."""

    def run(name: str, argv: list[str]):
        module = load_script(name)
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: module.main(argv))
        return exit_info.value.code, capsys.readouterr().err

    return run
