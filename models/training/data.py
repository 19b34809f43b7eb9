"""Self-distillation data: the target's own greedy answers and its hidden states over them.

A training example is one sequence (chat-templated prompt + the target's greedy answer), its
final hidden states at every position (fp16 to halve memory), and where the answer starts.
On the answer the next token is the target's own greedy choice, so heads trained here learn to
predict exactly what verification will accept. Answers are decoded once (the slow part) and
kept as token ids; hidden states come from one teacher-forced pass whenever they are needed.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
from pathlib import Path

import torch
from tqdm import tqdm

from models.common.errors import UserError
from models.common.tokenizer import Tokenizer
from models.backends.interface import TorchWeights
from models.speculative.generator import GenerationResult, Generator


# the prompt positions an example kept before its answer until the heads were trained with whole
# prompts; hidden-state caches of that time hold no more (the heads learn only on answers, but
# attend to the prompt: with a cut one they never learn to copy from far back)
CUT_CONTEXT = 64


# what the target answers: one user turn, or a conversation that ends in a user turn
Prompt = str | list[dict[str, str]]


def encode_prompt(tokenizer: Tokenizer, prompt: Prompt) -> list[int]:
    """A prompt in the chat template, ready for the target's answer."""
    return tokenizer.encode(prompt, chat=True) if isinstance(prompt, str) else tokenizer.encode_chat(prompt)


@dataclasses.dataclass
class Example:
    tokens: torch.Tensor  # [L] int64: prompt + answer
    features: torch.Tensor  # [L, D] fp16: target final hidden state at each position ([L, (n + 1) D] with n layers)
    answer_start: int  # index of the first answer token (= the prompt positions kept)


def _left_pad(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    batch = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    for b, r in enumerate(rows):
        batch[b, width - len(r):] = torch.tensor(r)
    return batch, torch.tensor([width - len(r) for r in rows])


def answer_prompts(generator: Generator, prompts: list[list[int]], max_new_tokens: int, rows: int,
                   desc: str = "answers") -> list[GenerationResult]:
    """The target's greedy answer to each prompt (EOS kept when it ended one), continuous-batched
    through the demo's own generator: every row emits exactly target-only greedy decoding, and a
    finished row takes the next prompt at once instead of idling until the batch is done. With
    the generator's record_hidden on, each result also carries the hidden states decoding made."""
    if not generator.sampling.is_greedy:
        raise ValueError("self-distillation data is the target's greedy answers; the generator samples")
    if not prompts:
        return []
    with tqdm(total=len(prompts), desc=desc, unit="prompt") as bar:
        result = generator.generate_batch(prompts, max_new_tokens, rows, continuous=True,
                                          on_iteration=lambda _, it: bar.update(len(it.finished)))
    return result.results


def _example(prompt: list[int], answer: list[int], features: torch.Tensor) -> Example:
    """prompt + answer but its last token; features may cover fewer prompt positions than the
    prompt has (a cache cut to its last ones), and the example keeps as many."""
    skip = len(prompt) + len(answer) - 1 - len(features)
    return Example(torch.tensor(prompt[skip:] + answer[:-1]), features, len(prompt) - skip)


def keep_context(examples: list[Example], context: int | None) -> list[Example]:
    """The examples with at most `context` prompt positions before each answer (None: all)."""
    if context is None:
        return examples
    out = []
    for e in examples:
        skip = max(0, e.answer_start - context)
        out.append(Example(e.tokens[skip:], e.features[skip:], e.answer_start - skip) if skip else e)
    return out


def examples_from(prompts: list[list[int]], results: list[GenerationResult]) -> list[Example]:
    """Examples from answers decoded with record_hidden: each sequence stops before its last token,
    the one position decoding never runs through the target (its hidden state is not known)."""
    examples = []
    for prompt, r in zip(prompts, results):
        if r.hidden is None:
            raise ValueError("the answers were decoded without record_hidden: no hidden states to learn from")
        examples.append(_example(prompt, r.tokens, r.hidden.to(torch.float16).cpu()))
    return examples


@torch.inference_mode()
def record_features(model: TorchWeights, prompts: list[list[int]], answers: list[list[int]], *,
                    layers: tuple[int, ...] = (), batch_tokens: int = 16384, desc: str = "features") -> list[Example]:
    """The same examples as examples_from, rebuilt from saved answers by one teacher-forced pass
    per sequence (prefill-shaped; about half the cost of decoding them again on the CPU); with
    layers, those layers' outputs precede the final state in each feature (TargetModel hidden_layers).
    model: the torch backend's model (a left-padded batch, its forward's pad argument)."""
    sequences = [p + a[:-1] for p, a in zip(prompts, answers)]
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths share a pass
    examples: list[Example] = [None] * len(sequences)  # type: ignore[list-item]
    device = model.device
    with tqdm(total=len(sequences), desc=desc, unit="seq") as bar:
        lo = 0
        while lo < len(order):
            hi = lo + 1  # sorted: the batch's last sequence is its widest
            while hi < len(order) and (hi + 1 - lo) * len(sequences[order[hi]]) <= batch_tokens:
                hi += 1
            idx = order[lo:hi]
            batch, pad = _left_pad([sequences[i] for i in idx])
            cache = model.new_cache(batch.shape[1], batch_size=len(idx))
            _, hidden = model(batch.to(device), cache, 0, pad=pad.to(device), logits_for="none", return_hidden=True,
                              hidden_layers=layers)
            for row, i in enumerate(idx):
                features = hidden[row, int(pad[row]):].to(torch.float16).cpu()
                examples[i] = _example(prompts[i], answers[i], features)
            bar.update(len(idx))
            lo = hi
    return examples


def save_json(path: Path, obj) -> None:
    """Gzipped JSON, written atomically (a kill never leaves half a file under the real name)."""
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))
    tmp.replace(path)


def load_json(path: Path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _fingerprint(prompts: list[Prompt]) -> str:
    return hashlib.sha256("\0".join(p if isinstance(p, str) else json.dumps(p) for p in prompts).encode()).hexdigest()


def save_answers(path: Path, prompts: list[Prompt], answers: list[list[int]]) -> None:
    """The target's answers (token ids) to prompts kept elsewhere, with the prompts' fingerprint."""
    save_json(path, {"prompts_sha256": _fingerprint(prompts), "answers": answers})


def load_answers(path: Path, prompts: list[Prompt]) -> list[list[int]]:
    saved = load_json(path)
    if saved["prompts_sha256"] != _fingerprint(prompts):
        raise UserError(f"{path} answers other prompts than this run's; remove it or use another data folder")
    return saved["answers"]


def _sequences_fingerprint(prompts: list[list[int]], answers: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps([prompts, answers]).encode()).hexdigest()


def save_features(path: Path, examples: list[Example], prompts: list[list[int]], answers: list[list[int]]) -> None:
    """Hidden states only (fp16), marked with the sequences they belong to: they can always be
    rebuilt from the answers (record_features)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"sequences": _sequences_fingerprint(prompts, answers), "features": [e.features for e in examples]}, tmp)
    tmp.replace(path)


def load_examples(path: Path, prompts: list[list[int]], answers: list[list[int]]) -> list[Example] | None:
    """The examples whose hidden states path holds (whole prompts, or caches of the time they were
    cut to CUT_CONTEXT positions); None when it holds other sequences' (a cache from other data)."""
    saved = torch.load(path, weights_only=True)
    if isinstance(saved, list):  # the first layout, unmarked: taken when every length fits
        features = saved
        if len(features) != len(answers) or any(
                not len(a) - 1 <= len(f) <= len(p) + len(a) - 1 for p, a, f in zip(prompts, answers, features)):
            return None
    elif saved.get("sequences") != _sequences_fingerprint(prompts, answers):
        return None
    else:
        features = saved["features"]
    return [_example(p, a, f) for p, a, f in zip(prompts, answers, features)]


def has_context(examples: list[Example], prompts: list[list[int]], context: int | None) -> bool:
    """Whether every example holds the last `context` positions of its prompt (None: all of it)."""
    return all(e.answer_start >= (len(p) if context is None else min(len(p), context))
               for e, p in zip(examples, prompts))


def answer_tokens(examples: list[Example]) -> int:
    return sum(len(e.tokens) - e.answer_start for e in examples)


def draft_vocabulary(examples: list[Example], size: int, always: tuple[int, ...]) -> torch.Tensor:
    """The `size` tokens the target emits most in its answers (plus `always`, e.g. EOS)."""
    counts: dict[int, int] = {}
    for e in examples:
        for t in e.tokens[e.answer_start :].tolist():
            counts[t] = counts.get(t, 0) + 1
    for t in always:
        counts[t] = counts.get(t, 0) + 10**9
    ranked = sorted(counts, key=lambda t: (-counts[t], t))[:size]
    return torch.tensor(sorted(ranked), dtype=torch.int64)
