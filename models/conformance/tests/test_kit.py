"""The kit catches what it is for: a backend that rolls back one slot short, or whose batched
rows differ from the same rows alone, fails; the torch backend passes, bit for bit; a backend
that does not claim bit-exactness is held to the near-tie rule instead."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.backends import torch_backend
from models.common.device import open_device
from models.conformance import kit
from models.llama.kv_cache import KVCache

MODEL = "random:tiny-llama"


@pytest.fixture(scope="module")
def loaded():
    return torch_backend.load(MODEL, None, open_device("cpu"))


@pytest.fixture(scope="module")
def prompts(loaded):
    return [loaded.tokenizer.encode(text, chat=False)[:20] for text in kit.PROMPTS]


class Wrapped:
    """A TargetModel that behaves as the torch model except where a subclass breaks it."""

    def __init__(self, model, batch_invariant: bool = True):
        self.model = model
        self.capabilities = dataclasses.replace(model.capabilities, batch_invariant=batch_invariant)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)


class ShortRollbackCache(KVCache):
    def rollback(self, length: int) -> None:
        super().rollback(min(length + 1, self.length))  # one stale entry left in view


class ShortRollback(Wrapped):
    def new_cache(self, max_seq_len: int, batch_size: int = 1):
        cache = self.model.new_cache(max_seq_len, batch_size)
        cache.__class__ = ShortRollbackCache
        return cache


class BatchedRowsDiffer(Wrapped):
    """Rows after the first block come back nudged by `delta` (a batch changing other rows' numbers)."""

    def __init__(self, model, delta: float, batch_invariant: bool = True):
        super().__init__(model, batch_invariant)
        self.delta = delta

    def forward_rows(self, tokens, blocks, cache, **kw):
        logits = self.model.forward_rows(tokens, blocks, cache, **kw).clone()
        first = blocks[0].n_tokens
        logits[first:] += self.delta * torch.arange(logits.shape[-1], dtype=logits.dtype) / logits.shape[-1]
        return logits


def test_torch_backend_is_exact(loaded, prompts):
    for check in (kit.check_prefill_decode, kit.check_rollback, kit.check_tree, kit.check_batched_rows):
        result = check(loaded.model, prompts)
        assert result.ok and result.counts[kit.NEAR_TIE] == result.counts[kit.MISMATCH] == 0, result.notes
        assert result.counts[kit.EXACT] > 0


def test_short_rollback_fails(loaded, prompts):
    result = kit.check_rollback(ShortRollback(loaded.model), prompts)
    assert not result.ok and result.counts[kit.MISMATCH] > 0
    assert "after rollback" in result.notes[0] and "top-2 margin" in result.notes[0]
    tree = kit.check_tree(ShortRollback(loaded.model), prompts)  # compaction rolls back too
    assert not tree.ok and "after compaction" in tree.notes[0]


def test_batched_rows_that_differ_fail(loaded, prompts):
    result = kit.check_batched_rows(BatchedRowsDiffer(loaded.model, 1e-4), prompts)
    assert not result.ok
    assert result.counts[kit.EXACT] == 1  # the first row's single token is untouched
    assert all(note.startswith("row 1") or note.startswith("row 2") for note in result.notes)


def test_near_tie_rule_without_bit_exactness(loaded, prompts):
    """A backend that does not claim bit-exactness: a tiny difference is a near tie (passes), a
    difference that changes a confident token is a mismatch (fails), with its margin."""
    tiny = kit.check_batched_rows(BatchedRowsDiffer(loaded.model, 1e-4, batch_invariant=False), prompts)
    assert tiny.ok and tiny.counts[kit.NEAR_TIE] > 0 and tiny.counts[kit.MISMATCH] == 0
    large = kit.check_batched_rows(BatchedRowsDiffer(loaded.model, 1e3, batch_invariant=False), prompts)
    assert not large.ok and large.counts[kit.MISMATCH] > 0


def test_table_lists_counts_and_divergences(loaded, prompts):
    results = [kit.check_rollback(ShortRollback(loaded.model), prompts), kit.CheckResult("x", skipped="why")]
    text = kit.table("broken", MODEL, loaded.model, results)
    assert "bit-exact required" in text and "skipped: why" in text
    assert "rollback then redecode" in text and "after rollback" in text


def test_rule_judges_hand_built_logits():
    ref = torch.tensor([3.0, 2.9, 0.0])
    assert kit.Rule(exact=True).judge(ref, ref.clone())[0] == kit.EXACT
    assert kit.Rule(exact=True).judge(ref, ref + 1e-6)[0] == kit.MISMATCH
    assert kit.Rule(exact=False).judge(ref, torch.tensor([2.9, 3.0, 0.0]))[0] == kit.NEAR_TIE  # margin 0.1
    confident = torch.tensor([3.0, 1.0, 0.0])
    assert kit.Rule(exact=False).judge(confident, torch.tensor([1.0, 3.0, 0.0]))[0] == kit.MISMATCH
