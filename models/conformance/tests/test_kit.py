"""The kit catches what it is for: a backend that rolls back one slot short, or whose batched
rows differ from the same rows alone, fails; the torch backend passes, bit for bit; a backend
that does not claim bit-exactness is held to the near-tie rule instead."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.backends import torch_backend
from models.common.device import open_device
from models.common.errors import UserError
from models.conformance import kit
from models.llama.reference import HFReference

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


class ShortRollback(Wrapped):
    """Its caches roll back one slot short: one stale entry stays in view."""

    def new_cache(self, max_seq_len: int, batch_size: int = 1):
        cache = self.model.new_cache(max_seq_len, batch_size)
        real = type(cache)

        def rollback(self, length: int) -> None:
            real.rollback(self, min(length + 1, self.length))
        cache.__class__ = type("ShortRollbackCache", (real,), {"rollback": rollback})
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


LOGIT_CHECKS = (kit.check_prefill_decode, kit.check_chain_verify, kit.check_rollback, kit.check_tree,
                kit.check_batched_rows)


def test_torch_backend_is_exact(loaded, prompts):
    for check in LOGIT_CHECKS:
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
    difference that changes a confident token is a mismatch (fails), with its margin, and so is
    a broken rollback whose logits drift far while the argmax happens to hold."""
    tiny = kit.check_batched_rows(BatchedRowsDiffer(loaded.model, 1e-4, batch_invariant=False), prompts)
    assert tiny.ok and tiny.counts[kit.NEAR_TIE] > 0 and tiny.counts[kit.MISMATCH] == 0
    large = kit.check_batched_rows(BatchedRowsDiffer(loaded.model, 1e3, batch_invariant=False), prompts)
    assert not large.ok and large.counts[kit.MISMATCH] > 0
    for prompt in prompts:  # each prompt alone: no prompt's luck hides the broken rollback
        assert not kit.check_rollback(ShortRollback(loaded.model, batch_invariant=False), [prompt]).ok


class Degenerate(Wrapped):
    """Logits that agree with themselves everywhere: constant, or NaN."""

    def __init__(self, model, value: float):
        super().__init__(model, batch_invariant=False)
        self.value = value

    def __call__(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        return None if out is None else torch.full_like(out, self.value)

    def forward_rows(self, *args, **kwargs):
        return torch.full_like(self.model.forward_rows(*args, **kwargs), self.value)


def test_non_finite_logits_never_pass(loaded, prompts):
    for check in LOGIT_CHECKS:
        assert not check(Degenerate(loaded.model, float("nan")), prompts).ok, check.__name__


def test_a_degenerate_model_fails_the_reference_anchor(loaded, prompts):
    """Constant logits agree with themselves in every other check; transformers' model on the same
    weights tells them apart, while the real model passes it (near ties only)."""
    ref = HFReference.for_random_loaded(loaded)

    def reference(tokens):
        return ref.logits(torch.tensor([tokens]))[0]

    assert all(check(Degenerate(loaded.model, 0.0), prompts).ok for check in LOGIT_CHECKS)
    assert not kit.check_reference(Degenerate(loaded.model, 0.0), reference, prompts).ok
    real = kit.check_reference(loaded.model, reference, prompts)
    assert real.ok and real.counts[kit.EXACT] + real.counts[kit.NEAR_TIE] == sum(len(p) for p in prompts)


def test_a_method_that_breaks_is_a_mismatch_and_one_that_cannot_run_is_reported():
    def broken():
        raise AttributeError("'Limited' object has no attribute 'forward_rows'")

    def refused():
        raise UserError("--method eagle needs the target's hidden states (hidden_states)")

    result = kit.check_methods({"suffix batch": broken, "eagle": refused}, [[1, 2, 3]])
    assert not result.ok and result.counts[kit.MISMATCH] == 1 and result.counts[kit.NOT_RUN] == 1
    assert "suffix batch: failed to build (AttributeError" in result.notes[0] and "eagle: not run" in result.notes[1]


def test_table_lists_counts_and_divergences(loaded, prompts):
    results = [kit.check_rollback(ShortRollback(loaded.model), prompts), kit.CheckResult("x", skipped="why")]
    text = kit.table("broken", MODEL, loaded.model, results)
    assert "bit-exact required" in text and "skipped: why" in text and "capabilities: tree_masks" in text
    assert "rollback then redecode" in text and "after rollback" in text


def test_rule_judges_hand_built_logits():
    ref = torch.tensor([3.0, 2.9, 0.0])
    assert kit.Rule(exact=True).judge(ref, ref.clone())[0] == kit.EXACT
    assert kit.Rule(exact=False).judge(ref, ref + 0.1)[0] == kit.NEAR_TIE  # close, same token
    assert kit.Rule(exact=False).judge(ref, ref + torch.tensor([0.0, 0.0, 2.0]))[0] == kit.MISMATCH  # same token, far
    nan = torch.tensor([float("nan")] * 3)
    assert kit.Rule(exact=False).judge(nan, nan)[0] == kit.MISMATCH
    assert kit.Rule(exact=True).judge(ref, ref + 1e-6)[0] == kit.MISMATCH
    assert kit.Rule(exact=False).judge(ref, torch.tensor([2.9, 3.0, 0.0]))[0] == kit.NEAR_TIE  # margin 0.1
    confident = torch.tensor([3.0, 1.0, 0.0])
    assert kit.Rule(exact=False).judge(confident, torch.tensor([1.0, 3.0, 0.0]))[0] == kit.MISMATCH
