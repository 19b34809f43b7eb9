"""Self-distillation data: the target's own greedy answers and its hidden states over them.

A training example is one sequence (chat-templated prompt + the target's greedy answer), its
final hidden states at every position (fp16 to halve memory), and where the answer starts.
On the answer the next token is the target's own greedy choice, so heads trained here learn to
predict exactly what verification will accept.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from tqdm import tqdm

from models.llama.model import Transformer


@dataclasses.dataclass
class Example:
    tokens: torch.Tensor  # [L] int64: prompt + answer
    features: torch.Tensor  # [L, D] fp16: target final hidden state at each position
    answer_start: int  # index of the first answer token


def _left_pad(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    batch = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    for b, r in enumerate(rows):
        batch[b, width - len(r):] = torch.tensor(r)
    return batch, torch.tensor([width - len(r) for r in rows])


@torch.inference_mode()
def batched_greedy(
    model: Transformer,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_ids: tuple[int, ...],
    *,
    batch_size: int = 32,
    desc: str = "generating",
) -> list[Example]:
    """Greedy answers for many prompts, a left-padded batch at a time, with the target's
    hidden state at every position recorded on the way (training data only: the demo's
    generator is the batch-1 engine). Answers stop after their first EOS."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    examples: list[Example] = [None] * len(prompts)  # type: ignore[list-item]
    device = model.device
    eos = torch.tensor(sorted(eos_ids) or [-1], device=device)
    with tqdm(total=len(prompts), desc=desc, unit="prompt") as bar:
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            batch, pad = _left_pad([prompts[i] for i in idx])
            batch, pad = batch.to(device), pad.to(device)
            cache = model.new_cache(batch.shape[1] + max_new_tokens + 1, batch_size=len(idx))
            logits, hidden = model(batch, cache, 0, pad=pad, logits_for="last", return_hidden=True)
            feats, out = [hidden], []
            done = torch.zeros(len(idx), dtype=torch.bool, device=device)
            for _ in range(max_new_tokens):
                nxt = logits[:, -1].argmax(-1)
                out.append(nxt)
                done |= torch.isin(nxt, eos)
                # process the new token too, so every kept token has its hidden state
                logits, hidden = model(nxt[:, None], cache, cache.length, pad=pad, return_hidden=True)
                feats.append(hidden)
                if bool(done.all()):
                    break
            generated = torch.stack(out, dim=1).tolist()
            all_feats = torch.cat(feats, dim=1)
            for row, i in enumerate(idx):
                ids = generated[row]
                stop = next((j for j, t in enumerate(ids) if t in eos_ids), None)
                answer = ids if stop is None else ids[: stop + 1]
                p = int(pad[row])
                length = len(prompts[i]) + len(answer)
                examples[i] = Example(
                    torch.tensor(prompts[i] + answer), all_feats[row, p : p + length].to(torch.float16).cpu(),
                    len(prompts[i]),
                )
            bar.update(len(idx))
    return examples


def save_examples(examples: list[Example], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save([dataclasses.asdict(e) for e in examples], tmp)
    tmp.replace(path)


def load_examples(path: Path) -> list[Example]:
    return [Example(**d) for d in torch.load(path, weights_only=True)]


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
