"""The transformers backend: any Hugging Face causal LM that AutoModelForCausalLM loads, decoded
through the same engine, proposers and acceptance rules as the lean model.

It is the reference runtime for every family transformers knows, so a checkpoint whose
architecture this suite's own code never names still runs every model-free method (prompt
lookup, suffix, a draft model, trees). Its cache is transformers' own DynamicCache with a length
of ours on top: rollback is an assignment (the cache is cropped at the next call), and keeping a
verified tree's path gathers the kept entries in every layer. A token tree is verified in one
pass through a 4-D attention mask, where the model takes one: a model with sliding-window layers
(the mask would have to carry the window) or one whose own tree check at load disagrees with
decoding each path (ALiBi families, say) declares chains only, and a model with recurrent or
linear-attention layers, whose state cannot be rolled back, is refused. Eager execution, one
model call per sequence: a batch (static or continuous) runs with each row its own cache and
call, so batched output is checked on any family, without the throughput of one shared call.
It is not batch-invariant (a block's logits may differ from a step's in the last bits), so the
conformance kit holds it to the near-tie rule.

Spec: a checkpoint folder (config.json, safetensors, tokenizer), a .gguf or the default model
(converted once into a folder, as the torch backend does), or random:PRESET (tests).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect

import torch
from loguru import logger
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, PretrainedConfig, cache_utils

from models.backends.interface import Capabilities, RowBlock
from models.common.device import Device
from models.common.errors import UserError
from models.common.tokenizer import ByteTokenizer, Tokenizer
from models.llama.config import eos_ids
from models.llama.reference import random_checkpoint
from models.llama.weights import (
    LoadedModel, checkpoint_folder, folder_tokenizer, one_line, parse_random_spec, random_hf_config,
)

NAME = "transformers"
_LOADED: dict[tuple, LoadedModel] = {}


class HFCache:
    """One sequence's cache: transformers' DynamicCache and the number of live entries. Entries
    past `length` (rejected drafts) are cropped before the next call reads the cache."""

    batch_size = 1

    def __init__(self, max_seq_len: int, batch_row: int = 0):
        self.hf = DynamicCache()
        self.max_seq_len = max_seq_len
        self.length = 0
        self.batch_row = batch_row  # its row in an HFBatchCache

    def row(self, b: int) -> HFCache:
        if b != 0:
            raise ValueError(f"row {b} of a one-sequence cache")
        return self

    def stored(self) -> int:
        return self.hf.get_seq_length()

    def sync(self) -> None:
        """Drop the entries past `length` (what a rollback left)."""
        extra = self.stored() - self.length
        if extra < 0:
            raise ValueError(f"the cache holds {self.stored()} entries, fewer than its length {self.length}")
        if extra > 0:
            self.hf.crop(-extra)

    def compact(self, start: int, keep: list[int]) -> None:
        if keep != list(range(len(keep))):
            index = torch.tensor(list(range(start)) + [start + k for k in keep])
            for layer in self.hf.layers:
                if getattr(layer, "is_initialized", False) and layer.keys.numel():
                    at = index.to(layer.keys.device)
                    layer.keys = layer.keys.index_select(-2, at)
                    layer.values = layer.values.index_select(-2, at)
        self.rollback(start + len(keep))

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"rollback to {length} outside [0, {self.length}]")
        self.length = length

    def reset(self) -> None:
        self.hf = DynamicCache()
        self.length = 0


class HFBatchCache:
    """A batch's rows, each one sequence's HFCache (transformers' caches are not sliced by row)."""

    batch_row = 0

    def __init__(self, max_seq_len: int, batch_size: int):
        self.rows = [HFCache(max_seq_len, b) for b in range(batch_size)]
        self.max_seq_len = max_seq_len

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    @property
    def length(self) -> int:
        return max(r.length for r in self.rows)

    def row(self, b: int) -> HFCache:
        if not 0 <= b < len(self.rows):
            raise ValueError(f"row {b} outside a batch of {len(self.rows)}")
        return self.rows[b]

    def compact(self, start: int, keep: list[int]) -> None:
        raise ValueError("a batch cache is compacted row by row (row(b).compact)")

    def rollback(self, length: int) -> None:
        for r in self.rows:
            r.rollback(min(length, r.length))

    def reset(self) -> None:
        for r in self.rows:
            r.reset()


class HFTarget:
    """A transformers causal LM behind the TargetModel interface (models/backends/interface.py)."""

    backend = NAME

    def __init__(self, model, config: PretrainedConfig, where: str):
        """where: the spec or folder, for messages."""
        self.model = model.eval()
        self.config = config.get_text_config(decoder=True)
        # the cache argument's name: `cache` in newer transformers, `past_key_values` before
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        sliding = _attention_layers(model, where)
        self.capabilities = Capabilities(
            tree_masks=False, hidden_states=False, batch_rows=True, layer_skip=False, traced=False,
            batch_invariant=False, torch_weights=False, dtypes=("float32", "bfloat16"))
        why = "it has sliding-window layers" if sliding else self._tree_check()
        if why is None:
            self.capabilities = dataclasses.replace(self.capabilities, tree_masks=True)
        else:
            logger.info(f"{where}: token trees off on backend {NAME} ({why}); drafts are verified as chains")

    def _tree_check(self) -> str | None:
        """Why a token tree verified in one pass disagrees with each of its paths decoded as a
        chain on this model, or None: a model may ignore a 4-D mask, or place its positions by slot."""
        parents, prefix = (-1, 0, 0, 1, 2), [(7 * i + 3) % self.vocab_size for i in range(6)]
        block = [(5 * i + 11) % self.vocab_size for i in range(len(parents))]
        depth = [0] * len(parents)
        mask = torch.eye(len(parents), dtype=torch.bool)
        for i, parent in enumerate(parents):
            if parent >= 0:
                depth[i], mask[i] = depth[parent] + 1, mask[i] | mask[parent]
        try:
            cache = self.new_cache(len(prefix) + len(block))
            self(torch.tensor([prefix]), cache, 0, logits_for="none")
            tree = self(torch.tensor([block]), cache, len(prefix), tree_mask=mask,
                        positions=len(prefix) + torch.tensor(depth))[0].float()
            for node in range(len(parents)):
                path, at = [], node
                while at >= 0:
                    path, at = [at] + path, parents[at]
                chain_cache = self.new_cache(len(prefix) + len(path))
                self(torch.tensor([prefix]), chain_cache, 0, logits_for="none")
                chain = self(torch.tensor([[block[r] for r in path]]), chain_cache, len(prefix))[0, -1].float()
                scale = 1e-3 if self.dtype == torch.float32 else 5e-2
                if float((chain - tree[node]).abs().max()) > scale * (1 + float(chain.abs().max())):
                    return f"its tree check at load differs from decoding node {node}'s path"
        except Exception as exc:  # noqa: BLE001 (a model that cannot take the mask at all)
            return f"it does not take a 4-D attention mask: {type(exc).__name__}"
        return None

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def n_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    def new_cache(self, max_seq_len: int, batch_size: int = 1) -> HFCache | HFBatchCache:
        self.check_seq_len(max_seq_len)
        return HFCache(max_seq_len) if batch_size == 1 else HFBatchCache(max_seq_len, batch_size)

    def check_seq_len(self, max_seq_len: int) -> None:
        limit = getattr(self.config, "max_position_embeddings", None)
        if limit is not None and max_seq_len > limit:
            raise UserError(f"--max_seq_len {max_seq_len} exceeds the model's {limit} positions; lower it")

    def cache_bytes_per_token(self) -> int:
        c = self.config
        heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return 2 * self.n_layers * heads * head_dim * self.dtype.itemsize

    def _mask(self, start: int, n: int, tree_mask: torch.Tensor) -> torch.Tensor:
        """The 4-D mask [1, 1, n, start + n] transformers takes as given: the cached prefix visible
        to every node, the block through its ancestor mask. Additive (0 or the dtype's minimum),
        which every attention implementation adds as it is (a boolean one, eager would add as 1)."""
        visible = torch.ones(n, start + n, dtype=torch.bool, device=self.device)
        visible[:, start:] = tree_mask.to(self.device, torch.bool)
        mask = torch.zeros(n, start + n, dtype=self.dtype, device=self.device)
        return mask.masked_fill_(~visible, torch.finfo(self.dtype).min)[None, None]

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, cache: HFCache, start: int, *, positions: torch.Tensor | None = None,
                 tree_mask: torch.Tensor | None = None, logits_for: str = "all", return_hidden: bool = False,
                 hidden_layers: tuple[int, ...] = ()):
        if return_hidden or hidden_layers:
            raise UserError(f"backend {NAME} does not return hidden states; use --backend torch")
        if isinstance(start, torch.Tensor) or start != cache.length:
            raise ValueError(f"block starts at slot {start} but the cache holds {cache.length} entries; "
                             f"roll back first")
        n = tokens.shape[1]
        if start + n > cache.max_seq_len:
            raise UserError(f"sequence of {start + n} tokens exceeds max_seq_len={cache.max_seq_len}; "
                            f"raise --max_seq_len")
        cache.sync()
        if positions is None:
            positions = torch.arange(start, start + n, device=self.device)
        kwargs = {"attention_mask": self._mask(start, n, tree_mask)} if tree_mask is not None else {}
        out = self.model(input_ids=tokens.to(self.device), position_ids=positions.to(self.device)[None],
                         **{self._cache_arg: cache.hf}, use_cache=True, logits_to_keep=0 if logits_for == "all" else 1,
                         cache_position=torch.arange(start, start + n, device=self.device), **kwargs)
        cache.length = start + n
        return None if logits_for == "none" else out.logits

    def forward_rows(self, tokens: torch.Tensor, blocks: list[RowBlock], cache, return_hidden: bool = False,
                     hidden_layers: tuple[int, ...] = ()) -> torch.Tensor:
        """Each block through its own row's cache, one model call per row (tokens [N] flattened
        as the torch backend takes them); logits [N, V]."""
        if return_hidden or hidden_layers:
            raise UserError(f"backend {NAME} does not return hidden states; use --backend torch")
        logits, at = [], 0
        for block in blocks:
            n = block.n_tokens
            row = self(tokens[at : at + n][None], block.cache, block.cache.length, positions=block.positions,
                       tree_mask=block.tree_mask)
            logits.append(row[0])
            at += n
        return torch.cat(logits)

    def truncated(self, n_layers: int):
        raise UserError(f"backend {NAME} has no view on its first layers (no layer_skip); use --backend torch")

    def cache_view(self, cache, n_layers: int):
        raise UserError(f"backend {NAME} has no view on its first layers (no layer_skip); use --backend torch")


def _attention_layers(model, where: str) -> bool:
    """Whether any layer attends through a sliding window; a model with recurrent or
    linear-attention layers (their state cannot be rolled back to a slot) is refused."""
    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # noqa: BLE001 (a config the cache cannot type: plain attention layers)
        return False
    recurrent = getattr(cache_utils, "LinearAttentionCacheLayerMixin", ())  # a Mamba/SSM/conv state
    if recurrent and any(isinstance(layer, recurrent) for layer in layers):
        kind = model.config.get_text_config(decoder=True).model_type
        raise UserError(f"{where}: {kind} has recurrent or linear-attention layers, whose state backend {NAME} "
                        f"cannot roll back; use a model of attention layers only")
    return any(getattr(layer, "is_sliding", False) for layer in layers)


def _eos(config: PretrainedConfig) -> tuple[int, ...]:
    return eos_ids(config.get_text_config(decoder=True))


def _random(spec: str, n_layers: int | None, device: Device) -> LoadedModel:
    """random:PRESET[:SEED]: the same weights the torch backend builds (its first n_layers)."""
    preset, seed = parse_random_spec(spec)
    config, state = random_checkpoint(preset, seed, n_layers)
    model = AutoModelForCausalLM.from_config(config, dtype=device.dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise ValueError(f"{spec}: state dict mismatch: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.to(device.torch_device)
    # the model keeps its own config: a reader of the LoadedModel's (transformers' reference
    # model, which sets its attention implementation on it) must not change this one's
    return LoadedModel(HFTarget(model, config, spec), ByteTokenizer(config.vocab_size), copy.deepcopy(config),
                       spec, None)


def _load(spec: str, n_layers: int | None, device: Device) -> LoadedModel:
    if spec.startswith("random:"):
        return _random(spec, n_layers, device)
    folder = checkpoint_folder(spec, any_architecture=True)  # a GGUF converted once, of any architecture
    tokenizer = load_tokenizer(spec)  # before any weight: a folder without one is refused at once
    extra = {} if n_layers is None else {"num_hidden_layers": n_layers}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=device.dtype, local_files_only=True, **extra)
    except (OSError, ValueError) as exc:  # no weights, an architecture it does not know, a config it refuses
        raise UserError(f"{folder}: transformers cannot load it as a causal LM ({one_line(exc)})") from None
    model.to(device.torch_device)
    return LoadedModel(HFTarget(model, model.config, str(folder)), tokenizer, copy.deepcopy(model.config), spec,
                       folder)


def load_tokenizer(spec: str) -> Tokenizer:
    """A spec's tokenizer alone, no weights."""
    folder = checkpoint_folder(spec, any_architecture=True)
    if folder is None:
        return ByteTokenizer(random_hf_config(parse_random_spec(spec)[0]).vocab_size)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json; expected a Hugging Face checkpoint folder")
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder}: no usable config.json ({one_line(exc)})") from None
    return folder_tokenizer(folder, _eos(config))


def load(spec: str, n_layers: int | None, device: Device, tp=None) -> LoadedModel:
    """A spec loaded once per process through AutoModelForCausalLM."""
    if tp is not None and tp.size > 1:
        raise UserError(f"backend {NAME} has no tensor-parallel sharding; use --backend torch")
    key = (spec, n_layers, device.dtype, str(device.torch_device))
    if key not in _LOADED:
        _LOADED[key] = _load(spec, n_layers, device)
    return dataclasses.replace(_LOADED[key])


def runner(model: HFTarget, device: Device, max_block: int) -> HFTarget:
    """Eager: transformers' own forward, no graphs."""
    return model
