"""Trained speculators that draft from the target's own hidden states.

- MultiProjectionHeads (QEfficient's "Turbo" speculator, Medusa's heads): head i maps the
  target's last hidden state through residual blocks x + SiLU(W x + b) to a feature whose
  projection predicts the token i + 1 places after the target's own next token. One target
  pass yields the verification logits and all the next proposals.
- EagleHead: an autoregressive feature-level draft. One decoder layer, shaped like a target
  layer, reads [embedding of token t+1 ; target feature at t] (through a 2D -> D projection)
  and predicts the feature at t+1, whose projection gives token t+2; it drafts a chain with its
  own KV cache and re-reads the target's real features for the tokens accepted after each
  verification. With feature_layers (EAGLE-3) the target's feature is the outputs of those
  layers beside its final state, fused by a linear map: lower layers still say which token sits
  where, which a head copying names out of a passage needs; its own predictions skip the map.

Both project onto a reduced draft vocabulary (the target's LM-head rows for the tokens the
target actually emits, as EAGLE-3 does): the full 49152-row head is a fifth of the default
model's weights, and reading it at every draft step would eat the gain. `draft_vocab` maps
draft index -> target token id.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.common import quantized
from models.common.cli import read_json_file, write_json_atomic
from models.common.errors import UserError
from models.backends.interface import TorchWeights, hidden_layers_fit
from models.common.ops import linear
from models.llama.gguf_blocks import use_bf16_blocks
from models.llama.weights import DEFAULT_MODEL, read_safetensors_file

KINDS = ("multi_projection", "eagle")
SHIPPED = Path(__file__).resolve().parent / "weights"  # shipped speculators: <model>-<kind>/
CONFIG_FILE = "speculator_config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclasses.dataclass
class SpeculatorConfig:
    kind: str
    target: str  # the model spec it was trained for
    dim: int
    vocab_size: int  # the target's
    draft_vocab_size: int
    n_heads: int = 4  # multi_projection
    n_blocks: int = 1  # multi_projection
    # eagle: target layers whose outputs join the final hidden state as its input (EAGLE-3's
    # low/mid/high features, fused by a linear map); empty: the final hidden state alone
    feature_layers: list[int] = dataclasses.field(default_factory=list)
    training: dict = dataclasses.field(default_factory=dict)  # how it was made, for the record

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        """What the target's forward must return for this speculator (TargetModel hidden_layers)."""
        return tuple(self.feature_layers)

    def save(self, folder: Path) -> None:
        write_json_atomic(folder / CONFIG_FILE, dataclasses.asdict(self))

    @classmethod
    def load(cls, folder: Path) -> SpeculatorConfig:
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise UserError(f"{folder} has no {CONFIG_FILE}; expected a speculator folder")
        data = read_json_file(path, "speculator config")
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind not in KINDS:
            raise UserError(f"{path}: unknown speculator kind {kind!r}; expected one of {KINDS}")
        _check_fields(path, data)
        return cls(**data)


_FIELD_TYPES = {"str": str, "int": int, "list[int]": list, "dict": dict}  # SpeculatorConfig's annotations


def _check_fields(path: Path, data: dict) -> None:
    """Every key a field, every field without a default present, each of its type: one line
    naming the file and the key, not a TypeError from the constructor."""
    fields = {f.name: f for f in dataclasses.fields(SpeculatorConfig)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{path}: unknown keys {unknown}; expected keys among {sorted(fields)}")
    required = {n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise UserError(f"{path}: missing keys {missing}")
    for name, value in data.items():
        annotation = fields[name].type
        ok = isinstance(value, _FIELD_TYPES[annotation]) and not isinstance(value, bool)
        if ok and annotation == "list[int]":
            ok = all(type(v) is int for v in value)
        if not ok:
            raise UserError(f"{path}: {name} must be {annotation}, got {value!r}")


def draft_lm_head(target: TorchWeights, draft_vocab: torch.Tensor) -> nn.Parameter:
    """The target's LM-head rows for the draft vocabulary (a frozen gathered copy)."""
    return nn.Parameter(target.output.detach()[draft_vocab.to(target.device)].clone(), requires_grad=False)


class MultiProjectionHeads(nn.Module):
    def __init__(self, config: SpeculatorConfig, target: TorchWeights, draft_vocab: torch.Tensor):
        super().__init__()
        d, h, b = config.dim, config.n_heads, config.n_blocks
        self.config = config
        dtype, device = target.dtype, target.device
        self.weight = nn.Parameter(torch.zeros(h, b, d, d, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(h, b, d, dtype=dtype, device=device))
        self.register_buffer("draft_vocab", draft_vocab.to(device))
        self.lm_head = draft_lm_head(target, draft_vocab)

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> per-head features [..., n_heads, D]. Zero weights = identity."""
        x = hidden.unsqueeze(-2).expand(*hidden.shape[:-1], self.config.n_heads, self.config.dim)
        for b in range(self.config.n_blocks):
            x = x + F.silu(torch.einsum("...hd,hed->...he", x, self.weight[:, b]) + self.bias[:, b])
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary logits [..., n_heads, V'] (one pass over the head for all heads)."""
        return linear(self.features(hidden), self.lm_head)


class EagleHead(nn.Module):
    def __init__(self, config: SpeculatorConfig, target: TorchWeights, draft_vocab: torch.Tensor):
        super().__init__()
        self.config = config
        args = target.args
        dtype, device = target.dtype, target.device
        self.fc_weight = nn.Parameter(torch.zeros(args.dim, 2 * args.dim, dtype=dtype, device=device))
        self.fc_bias = nn.Parameter(torch.zeros(args.dim, dtype=dtype, device=device))
        n_features = len(config.feature_layers) + 1
        # several layers' features -> one; the head's own predicted features skip it
        self.fuse_weight = nn.Parameter(torch.zeros(args.dim, n_features * args.dim, dtype=dtype, device=device)) \
            if n_features > 1 else None
        self.register_buffer("draft_vocab", draft_vocab.to(device))
        # A one-layer model of the target's family sharing its embeddings; its "LM head" is the draft head.
        self.layer = target.draft_layer(draft_lm_head(target, draft_vocab))

    def inputs(self, next_tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """[embedding of the token after position t ; feature at t] -> the layer's input."""
        x = torch.cat([quantized.rows(self.layer.tok_embeddings, next_tokens), features], dim=-1)
        return linear(x, self.fc_weight) + self.fc_bias

    def target_features(self, hidden: torch.Tensor) -> torch.Tensor:
        """The target's hidden states as returned with config.hidden_layers -> the feature [..., D]
        the head reads at a real position (its own predictions are already of that size); a head
        of the final state alone takes its slice of wider hidden states."""
        return hidden[..., -self.config.dim :] if self.fuse_weight is None else linear(hidden, self.fuse_weight)

    def trainable(self) -> list[nn.Parameter]:
        fuse = [] if self.fuse_weight is None else [self.fuse_weight]
        return [self.fc_weight, self.fc_bias, *fuse, self.layer.norm, *self.layer.layers.parameters()]


def initialise(head: nn.Module, target: TorchWeights, seed: int = 0) -> None:
    """Starting weights for training. Multi-projection: zero blocks, so every head starts as
    the LM head itself. EAGLE: a freshly initialised layer (normal 0.02, unit norms; measured
    to learn faster than a copy of the target's last layer), the target's final norm, and an
    input projection that passes the feature through (identity) plus small noise."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if isinstance(head, MultiProjectionHeads):
            head.weight.zero_()
            head.bias.zero_()
            return
        for name, p in head.layer.layers.named_parameters():
            if name.endswith("norm"):
                p.fill_(1.0)
            elif name.endswith("bqkv"):
                p.zero_()
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        head.layer.norm.copy_(target.norm)
        dim = target.args.dim
        head.fc_weight.copy_(0.02 * torch.randn(head.fc_weight.shape, generator=gen))
        head.fc_weight[:, dim:] += torch.eye(dim, dtype=head.fc_weight.dtype)
        head.fc_bias.zero_()
        if head.fuse_weight is not None:
            pass_final_feature(head)


def pass_final_feature(head: EagleHead) -> None:
    """A fusion that passes the final hidden state alone (the single-layer head's input): training
    starts from what one layer knows and learns what the others add (a linear map's gradient
    does not need its weights away from zero)."""
    dim = head.config.dim
    with torch.no_grad():
        head.fuse_weight.zero_()
        head.fuse_weight[:, -dim:] = torch.eye(dim, dtype=head.fuse_weight.dtype)


def with_feature_layers(head: EagleHead, layers: tuple[int, ...], target: TorchWeights) -> EagleHead:
    """A trained single-layer eagle head reading more target layers, drafting exactly as before
    until it is trained further (its fusion passes the final state alone)."""
    if head.config.feature_layers:
        raise UserError(f"the head already reads layers {head.config.feature_layers}; train a new one for {list(layers)}")
    twin = build(dataclasses.replace(head.config, feature_layers=list(layers)), target, head.draft_vocab)
    twin.load_state_dict(_trained_state(head), strict=False)
    pass_final_feature(twin)
    return twin


def with_draft_vocab(head: nn.Module, draft_vocab: torch.Tensor, target: TorchWeights) -> nn.Module:
    """The same trained head drafting from another vocabulary: its weights never depend on the
    draft vocabulary (the projection is the target's own LM-head rows, gathered at build time)."""
    config = dataclasses.replace(head.config, draft_vocab_size=draft_vocab.numel())
    twin = build(config, target, draft_vocab)
    twin.load_state_dict({k: v for k, v in _trained_state(head).items() if k != "draft_vocab"}, strict=False)
    return twin


def check_feature_layers(layers: list[int] | tuple[int, ...], n_layers: int) -> None:
    if not hidden_layers_fit(layers, n_layers):
        raise UserError(f"feature layers {list(layers)}: increasing layer indices from 0 to {n_layers - 2} "
                        f"expected (the last layer's output, the final state, is always read)")


def build(config: SpeculatorConfig, target: TorchWeights, draft_vocab: torch.Tensor) -> nn.Module:
    if config.dim != target.args.dim or config.vocab_size != target.args.vocab_size:
        raise UserError(
            f"speculator for dim {config.dim} / vocab {config.vocab_size} does not fit this target "
            f"(dim {target.args.dim} / vocab {target.args.vocab_size}); train one for it"
        )
    if config.feature_layers and config.kind != "eagle":
        raise UserError(f"feature_layers {config.feature_layers}: only an eagle head reads several layers")
    check_feature_layers(config.feature_layers, target.args.n_layers)
    cls = MultiProjectionHeads if config.kind == "multi_projection" else EagleHead
    return cls(config, target, draft_vocab)


def _trained_state(head: nn.Module) -> dict[str, torch.Tensor]:
    """What a speculator file holds: its own weights and the draft vocabulary, not the
    target's embeddings or LM-head rows (those come from the target at load time)."""
    shared = {"lm_head", "layer.tok_embeddings", "layer.output"}
    return {k: v for k, v in head.state_dict().items() if k not in shared}


def save(head: nn.Module, folder: Path, dtype: torch.dtype = torch.bfloat16) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v if k == "draft_vocab" else v.to(dtype)).contiguous().cpu() for k, v in _trained_state(head).items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    head.config.save(folder)


def load(folder: str | Path, target: TorchWeights) -> nn.Module:
    folder = Path(folder)
    config = SpeculatorConfig.load(folder)
    if not (folder / WEIGHTS_FILE).is_file():
        raise UserError(f"{folder} has no {WEIGHTS_FILE}")
    state = read_safetensors_file(folder / WEIGHTS_FILE)
    vocab = state.get("draft_vocab")
    if vocab is None or vocab.dim() != 1 or vocab.is_floating_point() or \
            (vocab.numel() and not 0 <= int(vocab.min()) <= int(vocab.max()) < config.vocab_size):
        raise UserError(f"{folder / WEIGHTS_FILE}: no draft_vocab tensor of token ids below {config.vocab_size}")
    head = build(config, target, vocab.long())
    expected = set(_trained_state(head))
    if set(state) != expected:
        raise UserError(f"{folder}/{WEIGHTS_FILE} does not match its config (tensors {sorted(set(state) ^ expected)})")
    for name, tensor in head.state_dict().items():
        if name in state and state[name].shape != tensor.shape:
            raise UserError(f"{folder / WEIGHTS_FILE}: tensor {name} has shape {tuple(state[name].shape)}, "
                            f"its config needs {tuple(tensor.shape)}")
    state = {k: v.to(target.dtype) if v.is_floating_point() else v for k, v in state.items()}
    head.load_state_dict(state, strict=False)
    return head.eval()


def shipped_folder(model: str, kind: str) -> Path:
    """The shipped speculator weights for a model, or a one-line pointer to training them."""
    folder = SHIPPED / f"{model}-{kind}"
    if model != DEFAULT_MODEL or not folder.is_dir():
        raise UserError(
            f"no shipped {kind} speculator for model {model!r}; train one with "
            f"scripts/train_speculator.py --kind {kind} and pass --speculator PATH"
        )
    return folder


def load_configured(speculator: str | None, model: str, target: TorchWeights, kind: str) -> tuple[nn.Module, Path]:
    """--speculator PATH (default: the shipped one for --model), checked to be of this kind."""
    folder = Path(speculator) if speculator else shipped_folder(model, kind)
    # a tensor-parallel shard drafts with a head built from the whole model (its shapes and LM-head
    # rows); the head reads only the full hidden states and the replicated embeddings
    head = load(folder, target.unsharded or target)
    if head.config.kind != kind:
        raise UserError(f"--speculator {folder} holds a {head.config.kind} speculator, not {kind}")
    if getattr(target, "weights", "fp32") == "gguf":  # its linears read as stored (bf16 when shipped so): same bits
        use_bf16_blocks(head)
    return head, folder
