"""The llama.cpp backend: a GGUF target decoded by llama.cpp's own kernels (through
llama-cpp-python), drafted and verified by this suite's proposers and acceptance rules.

It answers what nobody publishes: does speculation change llama.cpp's own greedy output, and
does it pay on its quantized weights? Target-only decoding on this backend is llama.cpp greedy
(one token per call); a verify block is one llama.cpp batch at the block's positions, every
position's logits kept; rollback removes the row's rejected cache cells (llama-cpp-python's
`eval` drops the cells past its token count before it decodes). Chains only: llama.cpp's
causal mask over one sequence cannot express a tree's ancestor mask without a sequence id per
branch, which this backend does not do yet. One sequence per call, CPU, and not
batch-invariant (llama.cpp's kernels round a block and a step differently), so the conformance
kit holds it to the near-tie rule.

A llama.cpp context holds one sequence's cache. A model keeps two (a draft_model run whose draft
is the target itself decodes two sequences in turn); a third cache (the conformance kit's
references) takes the least recently used context over by replaying its tokens, so every cache
stays correct.

Spec: a GGUF (smollm2-135m, gemma3-270m or a .gguf path). The tokenizer is the suite's own for
that GGUF (its converted folder's), so ids mean the same on every backend. Optional:
`bash scripts/setup.sh --with-llama-cpp` (the `llama-cpp` extra; builds llama.cpp, about 9
minutes on 2 cores).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from loguru import logger
from transformers import AutoConfig, PretrainedConfig

from models.backends.interface import Capabilities, RowBlock
from models.common.device import Device
from models.common.errors import UserError
from models.common.tokenizer import Tokenizer
from models.llama.config import eos_ids
from models.llama import weights
from models.llama.weights import LoadedModel, checkpoint_folder, folder_tokenizer

NAME = "llama_cpp"
CONTEXTS = 2  # llama.cpp contexts per model, each holding one cache's sequence
_LOADED: dict[str, LoadedModel] = {}


def gguf_of(spec: str) -> Path:
    """The GGUF a spec names, or one line saying this backend reads only GGUFs."""
    return weights.gguf_of(spec, f"backend {NAME} decodes a GGUF", otherwise="")


class LlamaCppCache:
    """One sequence's cache: the tokens at its slots (to replay into the context when another
    cache held it) and its live length."""

    batch_row = 0
    batch_size = 1

    def __init__(self, max_seq_len: int):
        self.max_seq_len = max_seq_len
        self.length = 0
        self.tokens: list[int] = []

    def row(self, b: int) -> LlamaCppCache:
        if b != 0:
            raise ValueError(f"row {b} of a one-sequence cache")
        return self

    def compact(self, start: int, keep: list[int]) -> None:
        if keep != list(range(len(keep))):
            raise ValueError(f"backend {NAME} verifies chains only; cannot keep tree nodes {keep}")
        self.rollback(start + len(keep))

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"rollback to {length} outside [0, {self.length}]")
        self.length = length
        del self.tokens[length:]

    def reset(self) -> None:
        self.rollback(0)


class LlamaCppTarget:
    """A llama.cpp context behind the TargetModel interface (models/backends/interface.py)."""

    backend = NAME
    capabilities = Capabilities(tree_masks=False, hidden_states=False, batch_rows=False, layer_skip=False,
                                traced=False, batch_invariant=False, torch_weights=False, dtypes=("float32",))

    def __init__(self, gguf: Path, vocab_size: int, n_layers: int, max_positions: int | None, n_threads: int):
        self.gguf, self._vocab, self._layers, self._positions = gguf, vocab_size, n_layers, max_positions
        self.n_threads = n_threads
        self._n_ctx = 0  # the contexts' size: the largest cache asked for (every position's logits are kept)
        self._contexts: list[list] = []  # [llama context, the cache whose tokens it holds], least recent first

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def n_layers(self) -> int:
        return self._layers

    def check_seq_len(self, max_seq_len: int) -> None:
        if self._positions is not None and max_seq_len > self._positions:
            raise UserError(f"--max_seq_len {max_seq_len} exceeds the model's {self._positions} positions; lower it")

    def cache_bytes_per_token(self) -> int:
        return 0  # llama.cpp allocates its own cache, outside torch's memory check

    def new_cache(self, max_seq_len: int, batch_size: int = 1) -> LlamaCppCache:
        if batch_size != 1:
            raise UserError(f"backend {NAME} decodes one sequence per call; a batch of {batch_size} needs --backend "
                            f"torch")
        self.check_seq_len(max_seq_len)
        if max_seq_len > self._n_ctx:
            self._n_ctx, self._contexts = max_seq_len, []  # contexts of the new size, made on first use
        return LlamaCppCache(max_seq_len)

    def _open(self):
        from llama_cpp import Llama

        llm = Llama(model_path=str(self.gguf), n_ctx=self._n_ctx, n_batch=min(self._n_ctx, 512),
                    n_threads=self.n_threads, n_threads_batch=self.n_threads, logits_all=True, verbose=False)
        if llm.n_vocab() != self._vocab:
            raise UserError(f"llama.cpp reads {llm.n_vocab()} tokens from {self.gguf.name}, the suite "
                            f"{self._vocab}: the token ids would not mean the same")
        return llm

    def _hold(self, cache: LlamaCppCache):
        """The context holding exactly this cache's live tokens: a rollback is a shorter token
        count (eval drops the cells past it before it decodes); a cache no context holds takes
        a new one, or the least recently used one over by replaying its tokens."""
        for entry in self._contexts:
            llm, owner = entry
            if owner is cache:
                self._contexts.remove(entry)
                self._contexts.append(entry)
                if llm.n_tokens < cache.length:
                    raise ValueError(f"the context holds {llm.n_tokens} tokens, fewer than the cache's {cache.length}")
                llm.n_tokens = cache.length
                return llm
        entry = [self._open(), None] if len(self._contexts) < CONTEXTS else self._contexts.pop(0)
        llm = entry[0]
        llm.reset()
        if cache.tokens:
            llm.eval(cache.tokens)
        entry[1] = cache
        self._contexts.append(entry)
        return llm

    def __call__(self, tokens: torch.Tensor, cache: LlamaCppCache, start: int, *, positions: torch.Tensor | None = None,
                 tree_mask: torch.Tensor | None = None, logits_for: str = "all", return_hidden: bool = False,
                 hidden_layers: tuple[int, ...] = ()):
        if return_hidden or hidden_layers:
            raise UserError(f"backend {NAME} does not return hidden states; use --backend torch")
        if tree_mask is not None:
            raise ValueError(f"backend {NAME} verifies chains only (tree_masks not declared)")
        if isinstance(start, torch.Tensor) or start != cache.length:
            raise ValueError(f"block starts at slot {start} but the cache holds {cache.length} entries; "
                             f"roll back first")
        ids = [int(t) for t in tokens[0].tolist()]
        n = len(ids)
        if start + n > cache.max_seq_len:
            raise UserError(f"sequence of {start + n} tokens exceeds max_seq_len={cache.max_seq_len}; "
                            f"raise --max_seq_len")
        llm = self._hold(cache)
        llm.eval(ids)
        cache.tokens.extend(ids)
        cache.length = start + n
        if logits_for == "none":
            return None
        lo = start if logits_for == "all" else start + n - 1
        scores = np.array(llm.scores[lo : start + n], dtype=np.float32, copy=True)
        return torch.from_numpy(scores)[None]

    def forward_rows(self, tokens: torch.Tensor, blocks: list[RowBlock], cache, return_hidden: bool = False,
                     hidden_layers: tuple[int, ...] = ()):
        raise UserError(f"backend {NAME} decodes one sequence per call (no batch_rows); use --backend torch")

    def truncated(self, n_layers: int):
        raise UserError(f"backend {NAME} has no view on its first layers (no layer_skip); use --backend torch")

    def cache_view(self, cache, n_layers: int):
        raise UserError(f"backend {NAME} has no view on its first layers (no layer_skip); use --backend torch")


def _folder_and_config(spec: str) -> tuple[Path, PretrainedConfig]:
    """The GGUF's converted folder (where the suite's tokenizer for it lives) and its text config."""
    gguf_of(spec)
    folder = checkpoint_folder(spec, any_architecture=True)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True).get_text_config(decoder=True)
    return folder, config


def load_tokenizer(spec: str) -> Tokenizer:
    """The suite's tokenizer for the GGUF (its converted folder's), so ids match the other backends."""
    folder, config = _folder_and_config(spec)
    return folder_tokenizer(folder, eos_ids(config))


def load(spec: str, n_layers: int | None, device: Device, tp=None) -> LoadedModel:
    """A GGUF opened once per process in llama.cpp, on as many threads as torch uses."""
    if tp is not None and tp.size > 1:
        raise UserError(f"backend {NAME} has no tensor-parallel sharding; use --backend torch")
    if n_layers is not None:
        raise UserError(f"backend {NAME} runs the whole GGUF; --target_layers needs --backend torch")
    if device.type != "cpu":
        raise UserError(f"backend {NAME} runs on the CPU here, not {device.type}; use --device cpu")
    if spec not in _LOADED:
        gguf = gguf_of(spec)
        folder, config = _folder_and_config(spec)
        tokenizer = folder_tokenizer(folder, eos_ids(config))  # before the context: no usable tokenizer, no load
        target = LlamaCppTarget(gguf, int(config.vocab_size), int(config.num_hidden_layers),
                                getattr(config, "max_position_embeddings", None), torch.get_num_threads())
        from llama_cpp import __version__

        logger.info(f"backend {NAME}: {gguf.name} through llama-cpp-python {__version__}, {target.n_threads} threads")
        _LOADED[spec] = LoadedModel(target, tokenizer, config, spec, folder)
    return dataclasses.replace(_LOADED[spec])


def runner(model: LlamaCppTarget, device: Device, max_block: int) -> LlamaCppTarget:
    """llama.cpp's own kernels, no graphs of ours."""
    return model
