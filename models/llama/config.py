"""ModelArgs: the few numbers the lean model needs, read from a transformers config.

Llama, Mistral, Qwen2 and Gemma-3 share one block layout; they differ in q/k/v bias (Qwen2),
sliding windows (Mistral; Gemma-3's local layers), RoPE scaling and, for Gemma-3, q/k norms,
norms after attention and MLP, an embedding scale, GELU-tanh, its own attention scale and two
kinds of layers (local and global, each with its RoPE base). transformers' config classes are the
parser; this is the view of them the lean model uses.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import PretrainedConfig

from models.common.errors import UserError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma3_text")
# RoPE types whose frequencies do not depend on the sequence length, so one table serves all.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclasses.dataclass(frozen=True)
class AttentionKind:
    """What differs between a model's kinds of attention layer (Gemma-3: local and global)."""

    inv_freq: tuple[float, ...]  # RoPE inverse frequencies, as transformers computes them
    rope_attention_scaling: float
    window: int | None  # a query sees keys fewer than this many positions back; None: all


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
    attention_kinds: tuple[AttentionKind, ...]
    layer_kinds: tuple[int, ...]  # per layer, its index into attention_kinds
    eos_token_ids: tuple[int, ...]
    qk_norm: bool = False  # RMS norms on each head's query and key before RoPE
    sandwich_norm: bool = False  # RMS norms on the attention's and the MLP's outputs too
    activation: str = "silu"  # the MLP's gate: "silu" or "gelu_tanh"
    embed_scale: float | None = None  # token embeddings are multiplied by this
    attn_scale: float | None = None  # scores are q.k times this; None: 1 / sqrt(head_dim)
    norm_weight_offset: float = 0.0  # the checkpoint's norm weights w act as w + this (Gemma: 1)

    def with_layers(self, n_layers: int) -> ModelArgs:
        return dataclasses.replace(self, n_layers=n_layers, layer_kinds=self.layer_kinds[:n_layers])

    @property
    def sliding_window(self) -> int | None:
        """The narrowest window any layer has (None: every layer sees the whole sequence)."""
        windows = [self.attention_kinds[k].window for k in set(self.layer_kinds)]
        return min((w for w in windows if w is not None), default=None)

    def check_seq_len(self, max_seq_len: int) -> None:
        """A cache past the model's positions would run RoPE where it was never trained."""
        if max_seq_len > self.max_position_embeddings:
            raise UserError(f"--max_seq_len {max_seq_len} exceeds the model's {self.max_position_embeddings} "
                            f"positions (max_position_embeddings); give at most {self.max_position_embeddings}")


def _rope_parameters(config: PretrainedConfig, layer_type: str | None) -> dict:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if layer_type is not None:  # per kind of layer (Gemma-3)
        params = params.get(layer_type) or {}
    if "rope_theta" not in params:
        params = {**params, "rope_theta": getattr(config, "rope_theta", 10000.0)}
    return params


def _inv_freq(config: PretrainedConfig, head_dim: int, layer_type: str | None = None) -> tuple[torch.Tensor, float]:
    """Inverse RoPE frequencies exactly as transformers computes them (its own init functions)."""
    params = _rope_parameters(config, layer_type)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UserError(f"RoPE type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    if rope_type == "default":
        inv = 1.0 / (params["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        return inv, 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    extra = {} if layer_type is None else {"layer_type": layer_type}
    return ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"), **extra)


def _attention_kind(config: PretrainedConfig, head_dim: int, window: int | None,
                    layer_type: str | None = None) -> AttentionKind:
    inv_freq, scaling = _inv_freq(config, head_dim, layer_type)
    return AttentionKind(tuple(inv_freq.tolist()), float(scaling), window)


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
    if model_type == "gemma3_text":
        return _gemma3_args(config, head_dim)
    sliding_window = None
    if model_type == "mistral":
        sliding_window = getattr(config, "sliding_window", None)
    elif model_type == "qwen2" and getattr(config, "use_sliding_window", False):
        sliding_window = config.sliding_window
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
        attention_kinds=(_attention_kind(config, head_dim, sliding_window),),
        layer_kinds=(0,) * config.num_hidden_layers,
        eos_token_ids=eos_ids(config),
    )


GEMMA3_LAYER_TYPES = ("full_attention", "sliding_attention")


def _gemma3_args(config: PretrainedConfig, head_dim: int) -> ModelArgs:
    """Gemma-3's text model: global layers (full_attention) and local ones (sliding_attention)."""
    for name in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(config, name, None) is not None:
            raise UserError(f"config field {name}={getattr(config, name)!r}: logit soft-capping is not supported "
                            f"by backend torch (Gemma-3 has none); --backend transformers runs it")
    if getattr(config, "use_bidirectional_attention", False):
        raise UserError("config field use_bidirectional_attention=True: a bidirectional model cannot decode; "
                        "expected False")
    activation = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
    if activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise UserError(f"config field hidden_activation={activation!r}: expected gelu_pytorch_tanh")
    layer_types = list(config.layer_types)
    unknown = sorted(set(layer_types) - set(GEMMA3_LAYER_TYPES))
    if unknown or len(layer_types) != config.num_hidden_layers:
        raise UserError(f"config field layer_types: {len(layer_types)} entries of {sorted(set(layer_types))}; "
                        f"expected {config.num_hidden_layers} of {', '.join(GEMMA3_LAYER_TYPES)}")
    kinds = tuple(_attention_kind(config, head_dim, config.sliding_window if t == "sliding_attention" else None, t)
                  for t in GEMMA3_LAYER_TYPES)
    return ModelArgs(
        model_type=config.model_type,
        vocab_size=config.vocab_size,
        dim=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads,
        head_dim=head_dim,
        hidden_dim=config.intermediate_size,
        norm_eps=config.rms_norm_eps,
        qkv_bias=bool(getattr(config, "attention_bias", False)),
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
        max_position_embeddings=config.max_position_embeddings,
        attention_kinds=kinds,
        layer_kinds=tuple(GEMMA3_LAYER_TYPES.index(t) for t in layer_types),
        eos_token_ids=eos_ids(config),
        qk_norm=True,
        sandwich_norm=True,
        activation="gelu_tanh",
        embed_scale=config.hidden_size**0.5,
        attn_scale=config.query_pre_attn_scalar**-0.5,
        norm_weight_offset=1.0,
    )
