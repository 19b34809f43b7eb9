"""A traced target runs a hidden-state proposer's calls eagerly: the run says so in one line,
and only when it is true (the graphs captured are counted)."""

from __future__ import annotations

import types

import pytest

from models.llama.trace import TracedModel
from models.llama.weights import load_model
from models.speculative.generator import Generator, eager_note
from models.speculative.proposers.base import Proposer, ProposerContext
from models.speculative.tree import DraftTree, TreeSpec


class Repeat(Proposer):
    """Drafts the last token again; reads the target's hidden states when told to."""

    name = "repeat"

    def __init__(self, uses_target_hidden: bool):
        self.uses_target_hidden = uses_target_hidden

    def propose(self, ctx: ProposerContext, spec: TreeSpec) -> DraftTree:
        if self.uses_target_hidden:
            assert ctx.target_hidden is not None
            ctx.target_hidden = None
        return DraftTree.chain(ctx.tokens[-1:] * spec.depth)


@pytest.mark.parametrize("reads_hidden", [True, False])
def test_a_hidden_state_proposer_makes_the_run_eager_and_says_so(reads_hidden, warnings):
    loaded = load_model("random:tiny-llama:65")
    traced = TracedModel(loaded.model, traced=True, max_block=4, graph="replay")
    generator = Generator(traced, Repeat(reads_hidden), n_draft_tokens=3, max_seq_len=64)
    generator.generate(loaded.tokenizer.encode("eager or traced"), 8)
    eager = traced.n_graphs == 0
    assert eager == reads_hidden  # what the trace really did
    said = [w for w in warnings if "runs eagerly" in w]
    assert len(said) == (1 if eager else 0), warnings
    if said:
        assert "proposer repeat drafts from the target's hidden states" in said[0]


def test_the_note_names_what_reads_hidden_states_and_only_on_a_traced_target():
    class Traced:
        capabilities = types.SimpleNamespace(traced=True)

    class Multi(Repeat):
        name = "multi"

        def __init__(self):
            self.proposers = [Repeat(True), Repeat(False)]
            self.proposers[0].name = "eagle"
            self.uses_target_hidden = True

    assert "proposer multi (through eagle) drafts" in eager_note(Traced(), Multi(), False)
    assert "recording hidden states" in eager_note(Traced(), None, True)
    assert eager_note(Traced(), Repeat(False), False) is None
    eager = types.SimpleNamespace(capabilities=types.SimpleNamespace(traced=False))
    assert eager_note(eager, Repeat(True), True) is None  # an eager target: nothing changes
