"""llama.cpp as a CPU peer: greedy and prompt-lookup decoding through llama-cpp-python, on the
default model's own GGUF (the file the suite dequantises its fp32 checkpoint from).

llama.cpp runs that GGUF's quantized weights (Q4_1 for the default model), so its greedy tokens
legitimately differ from the suite's fp32 target-only decoding: its prompt lookup
(`llama_cpp.llama_speculative.LlamaPromptLookupDecoding` as the Llama's draft model) is held to
llama.cpp's own greedy output instead, and llama.cpp greedy is compared with target-only only to
show how far the quantized weights drift (a difference there is not counted as a mismatch).
Prompts go in as the suite's token ids (chat template applied), never as text, so both decode
the very same prompt; sampling is greedy (temperature 0, top_k 1, no penalties), with the
suite's EOS tokens and max new tokens, on as many threads as torch uses.

The package is optional (`bash scripts/setup.sh --with-llama-cpp`, or
`pip install -e '.[llama-cpp]'`; it compiles llama.cpp, about 9 minutes on 2 cores). Without it,
or for another model or device, the benchmark says so in one line and runs without these rows.
"""

from __future__ import annotations

import time

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path

import torch
from loguru import logger

from models.common.errors import UserError
from models.llama.weights import DEFAULT_MODEL, default_gguf_path

PACKAGE = "llama_cpp"
INSTALL_HINT = ("bash scripts/setup.sh --with-llama-cpp (or pip install -e '.[llama-cpp]'; it builds llama.cpp, "
                "about 9 minutes on 2 cores)")


def installed() -> bool:
    return importlib.util.find_spec(PACKAGE) is not None


def skip_reason(model: str, device_name: str) -> str | None:
    """Why the llama.cpp peers cannot run in this sweep, or None when they can (a missing package
    first: that line says how to add it)."""
    if not installed():
        return f"llama-cpp-python is not installed; add it with {INSTALL_HINT}"
    if model != DEFAULT_MODEL:
        return f"they run the default model's own GGUF ({DEFAULT_MODEL}), not {model!r}"
    if not device_name.lower().startswith("cpu"):
        return f"they are a CPU peer, and this sweep runs on {device_name!r}"
    return None


def wanted(model: str, device_name: str, requested: bool, explicit: bool) -> bool:
    """Whether to build the llama.cpp peers; when they cannot run, one line says why (an error
    when the user asked for them by name with --llama_cpp_peers 1)."""
    if not requested:
        return False
    reason = skip_reason(model, device_name)
    if reason is None:
        return True
    if explicit:
        raise UserError(f"--llama_cpp_peers 1: {reason}")
    logger.info(f"llama.cpp peers skipped: {reason}")
    return False


def quantization(gguf: Path) -> str:
    """'Q4_1' from 'SmolLM2-135M-Instruct.Q4_1.gguf'; 'quantized' when the name does not say."""
    match = re.search(r"[.-]((?:I?Q\d\w*)|F16|BF16|F32)\.gguf$", gguf.name, re.IGNORECASE)
    return match.group(1).upper() if match else "quantized"


class LlamaCppPeer:
    """Two llama.cpp contexts on one GGUF: greedy (last-token logits only, llama.cpp's fastest
    path) and prompt lookup (llama-cpp-python's speculative loop needs every position's logits,
    so that context is made with logits_all); each call starts from an empty KV cache, as the
    suite's own calls do (no prompt-prefix reuse between runs)."""

    def __init__(self, gguf: Path, n_ctx: int, n_threads: int, eos_token_ids: tuple[int, ...], vocab_size: int):
        from llama_cpp import Llama, __version__

        self.gguf, self.n_threads, self.version = gguf, n_threads, __version__
        self.eos = frozenset(eos_token_ids)
        common = dict(model_path=str(gguf), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                      verbose=False)
        self.greedy_llm = Llama(**common)
        self.lookup_llm = Llama(**common, logits_all=True)  # the draft model is set per k before each call
        if self.greedy_llm.n_vocab() != vocab_size:
            raise UserError(f"llama.cpp reads {self.greedy_llm.n_vocab()} tokens from {gguf.name}, the suite "
                            f"{vocab_size}: the token ids would not mean the same; run with --llama_cpp_peers 0")

    def meta(self) -> dict:
        return {"gguf": self.gguf.name, "weights": quantization(self.gguf), "llama_cpp_python": self.version,
                "n_threads": self.n_threads}

    def generate(self, llm, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], float]:
        """The tokens, and the seconds to the first (the prefill): llama.cpp's decode rate is then
        the tokens after the first over the time after it."""
        t0 = time.perf_counter()
        llm.reset()  # an empty KV cache: no reuse of the previous call's prompt
        out: list[int] = []
        ttft = 0.0
        for token in llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, typical_p=1.0, temp=0.0,
                                  repeat_penalty=1.0, reset=True):
            out.append(int(token))
            if len(out) == 1:
                ttft = time.perf_counter() - t0
            if out[-1] in self.eos or len(out) >= max_new_tokens:
                break
        return out, ttft

    def decoder(self, k: int | None, max_ngram_size: int) -> Callable[[list[int], int], tuple[list[int], float]]:
        """decode(prompt_ids, max_new_tokens) -> (tokens, ttft): greedy when k is None, else prompt lookup
        drafting up to k tokens per target call (configurations times it as a peer's runner)."""
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        llm = self.greedy_llm if k is None else self.lookup_llm
        draft = None if k is None else LlamaPromptLookupDecoding(max_ngram_size=max_ngram_size, num_pred_tokens=k)

        def decode(prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], float]:
            llm.draft_model = draft
            return self.generate(llm, prompt_ids, max_new_tokens)

        return decode


def open_peer(n_ctx: int, eos_token_ids: tuple[int, ...], vocab_size: int) -> LlamaCppPeer:
    """llama.cpp on the default model's GGUF, on as many threads as torch uses."""
    peer = LlamaCppPeer(default_gguf_path(), n_ctx, torch.get_num_threads(), eos_token_ids, vocab_size)
    logger.info(f"llama.cpp peers: {peer.gguf.name} ({quantization(peer.gguf)} weights) through llama-cpp-python "
                f"{peer.version}, {peer.n_threads} threads")
    return peer
