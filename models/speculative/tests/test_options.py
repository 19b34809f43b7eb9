"""Run options declared once (models/speculative/options.py): every place that takes them derives
them, so an option is a flag of scripts/generate.py, a pytest option of the demo that reaches its
RunConfig, a perf-target match key where marked, and the demo's ids still find their entries."""

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from models.common.cli import bool01, tree_budget_arg
from models.common.device import open_device
from models.common.perf_targets import DEFAULTS, MATCH_KEYS, find_target, load_targets
from models.demos.speculative_decoding.speculative_demo import (
    BATCH_CASES, CASES, batch_params, demo_config, demo_params,
)
from models.speculative import options
from models.speculative.engine import RunConfig
from models.speculative.options import RUN_INPUTS, RunOptions

REPO = Path(__file__).resolve().parents[3]
TARGETS = REPO / "models" / "demos" / "speculative_decoding" / "perf_targets.yaml"
DEVICE_OPTIONS = ("device", "dtype", "mesh_shape")  # the demo's come from its mesh_device fixture


def sample(name: str, opt: options.Option):
    """A value of the option's type that no default has."""
    if opt.choices:
        return opt.choices[-1]
    return {int: 7, float: 0.5, bool01: False, tree_budget_arg: 9}.get(opt.parse, f"x-{name}")


SAMPLES = {name: sample(name, opt) for name, opt in {**options.run_options(), **RUN_INPUTS}.items()}
SAMPLES.update(method="multi", proposers="draft_model,eagle")  # a method that reads --draft_model and --speculator


def load_generate():
    spec = importlib.util.spec_from_file_location("script_generate", REPO / "scripts" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_config_is_the_declared_options():
    """A field added to RunConfig itself would bypass every derivation."""
    assert [f.name for f in dataclasses.fields(RunConfig)] == [f.name for f in dataclasses.fields(RunOptions)]
    config = RunConfig()  # describe() records --weights as resolved (the default model on the CPU: gguf, kernels built)
    assert config.describe() == {**options.defaults(), "weights": config.weight_format}
    assert config.weights is None and config.weight_format in ("gguf", "fp32")


def test_every_option_is_a_generate_flag_that_reaches_the_run_config():
    parser = load_generate().build_parser()
    required = ["--input_prompts", "p.json", "--output", "o.json"]
    unset = vars(parser.parse_args(required))
    for name, opt in options.run_options().items():
        assert unset[name] == (None if opt.resolved else options.defaults()[name]), name
    argv = required + [a for name, opt in options.run_options().items()
                       for a in (f"--{name}", {False: "0", True: "1"}.get(SAMPLES[name], str(SAMPLES[name])))]
    given = options.from_args(parser.parse_args(argv))
    assert given == {name: SAMPLES[name] for name in options.run_options()}


class Request:
    """request.config.getoption over the given flags."""

    def __init__(self, given: dict):
        self.config = self
        self.given = given

    def getoption(self, flag: str):
        return self.given.get(flag)


def test_every_demo_option_is_a_pytest_option_that_reaches_the_run_config(pytestconfig):
    demo = options.demo_options()
    for name, opt in options.run_options().items():
        assert (name in demo) == opt.demo, name
    for flag, _ in demo.values():
        assert pytestconfig.getoption(flag, default="unregistered") != "unregistered", flag
    assert demo["model"][0] == "--target_model" and "input_prompts" in demo
    given = {flag: SAMPLES[name] for name, (flag, _) in demo.items()}
    config, prompts = demo_config(Request(given), open_device("cpu"), {"method": "prompt_lookup"})
    assert prompts == SAMPLES["input_prompts"]
    for name in demo:
        if name not in (*DEVICE_OPTIONS, "input_prompts"):
            assert getattr(config, name) == SAMPLES[name], name
    assert (config.device, config.dtype, config.mesh_shape) == ("cpu", "float32", "1x1")


def test_match_keys_are_the_marked_options_and_cover_every_entry_key():
    marked = [name for name, opt in {**options.run_options(), **RUN_INPUTS}.items() if opt.match]
    assert list(MATCH_KEYS) == marked and set(DEFAULTS) == set(MATCH_KEYS)
    for target in load_targets(TARGETS):  # a key no run matches on would be ignored
        assert set(target.config) <= set(MATCH_KEYS), target.id


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES + BATCH_CASES])
def test_each_demo_id_still_finds_its_perf_target_entry(case):
    targets = [t for t in load_targets(TARGETS) if (t.device, t.mesh, t.dtype) == ("cpu", "1x1", "float32")]
    if case.id not in {t.id for t in targets}:
        pytest.skip(f"no cpu float32 entry named {case.id}")
    params = (batch_params if case in BATCH_CASES else demo_params)(*case.values)
    config, prompts = demo_config(Request({}), open_device("cpu"), params)
    found = find_target(targets, "cpu", "1x1", "float32", {**config.describe(), "input_prompts": prompts})
    assert found is not None and found.id == case.id
