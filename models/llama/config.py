"""ModelArgs: the few numbers the lean model needs, read from a transformers config.

Llama, Mistral and Qwen2 share one block layout; they differ in q/k/v bias (Qwen2), sliding
windows (Mistral) and RoPE scaling. transformers' config classes are the parser; this is the
view of them the lean model uses.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import PretrainedConfig

from models.common.errors import UserError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")
# RoPE types whose frequencies do not depend on the sequence length, so one table serves all.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclasses.dataclass(frozen=True)
class ModelArgs:
    model_type: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    norm_eps: float
    qkv_bias: bool
    tie_embeddings: bool
    max_position_embeddings: int
    sliding_window: int | None
    inv_freq: tuple[float, ...]
    rope_attention_scaling: float
    eos_token_ids: tuple[int, ...]

    def with_layers(self, n_layers: int) -> ModelArgs:
        return dataclasses.replace(self, n_layers=n_layers)

    def check_seq_len(self, max_seq_len: int) -> None:
        """A cache past the model's positions would run RoPE where it was never trained."""
        if max_seq_len > self.max_position_embeddings:
            raise UserError(f"--max_seq_len {max_seq_len} exceeds the model's {self.max_position_embeddings} "
                            f"positions (max_position_embeddings); give at most {self.max_position_embeddings}")


def _rope_parameters(config: PretrainedConfig) -> dict:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if "rope_theta" not in params:
        params = {**params, "rope_theta": getattr(config, "rope_theta", 10000.0)}
    return params


def _inv_freq(config: PretrainedConfig, head_dim: int) -> tuple[torch.Tensor, float]:
    """Inverse RoPE frequencies exactly as transformers computes them (its own init functions)."""
    params = _rope_parameters(config)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UserError(f"RoPE type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    if rope_type == "default":
        inv = 1.0 / (params["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        return inv, 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    return ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))


def eos_ids(config: PretrainedConfig) -> tuple[int, ...]:
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)


# the sizes the lean model's tensors are made from: a config missing one or holding 0 is no model
SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "max_position_embeddings")


def _check_sizes(config: PretrainedConfig) -> None:
    for name in SIZE_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"config field {name} must be a positive integer, got {value!r}")


def args_from_hf_config(config: PretrainedConfig) -> ModelArgs:
    model_type = config.model_type
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise UserError(
            f"model type {model_type!r} is not supported by backend torch (supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}); --backend transformers runs any causal LM transformers knows"
        )
    _check_sizes(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    sliding_window = None
    if model_type == "mistral":
        sliding_window = getattr(config, "sliding_window", None)
    elif model_type == "qwen2" and getattr(config, "use_sliding_window", False):
        sliding_window = config.sliding_window
    inv_freq, attention_scaling = _inv_freq(config, head_dim)
    return ModelArgs(
        model_type=model_type,
        vocab_size=config.vocab_size,
        dim=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        head_dim=head_dim,
        hidden_dim=config.intermediate_size,
        norm_eps=config.rms_norm_eps,
        qkv_bias=model_type == "qwen2" or bool(getattr(config, "attention_bias", False)),
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        max_position_embeddings=config.max_position_embeddings,
        sliding_window=sliding_window,
        inv_freq=tuple(inv_freq.tolist()),
        rope_attention_scaling=float(attention_scaling),
        eos_token_ids=eos_ids(config),
    )
