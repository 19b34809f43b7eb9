"""Each proposer's tree drafting on hand-made contexts: n-gram tries, suffix trees, Medusa's
cartesian tree, the EAGLE-2 rerank, and multi-draft merging."""

import numpy as np
import torch

from models.speculative.proposers.base import Proposer, ProposerContext
from models.speculative.proposers.multi import MultiProposer
from models.speculative.proposers.multi_projection import cartesian_tree
from models.speculative.proposers.prompt_lookup import PromptLookupProposer, ngram_continuations
from models.speculative.proposers.suffix import SEPARATOR, SuffixProposer, longest_match, suffix_tree_draft
from models.speculative.tree import DraftTree, TreeSpec
from models.speculative.tree_search import grow_tree


def ctx(tokens):
    return ProposerContext(tokens=list(tokens), target_cache=None)  # model-free proposers never read it


def paths(tree: DraftTree) -> set[tuple[int, ...]]:
    """Every root-to-leaf token path of a tree."""
    toks = tree.tokens.tolist()
    leaves = [i for i in range(tree.n_nodes) if not tree.children[i + 1]]
    return {tuple(toks[n] for n in tree.path_to(leaf)) for leaf in leaves}


# --- prompt lookup ------------------------------------------------------------------------

def test_every_match_of_the_suffix_becomes_a_branch():
    # "1 2" occurs three times, followed by 3 4, 5 6 and 3 7; the context ends in "1 2"
    tokens = [1, 2, 3, 4, 0, 1, 2, 5, 6, 0, 1, 2, 3, 7, 0, 1, 2]
    tree = PromptLookupProposer(2).propose(ctx(tokens), TreeSpec(topk=4, depth=2, budget=10))
    assert paths(tree) == {(3, 7), (5, 6), (3, 4)}
    assert tree.n_nodes == 5  # the shared 3 is drafted once
    chain = PromptLookupProposer(2).propose(ctx(tokens), TreeSpec(1, 2, 2))
    assert chain.is_chain and chain.tokens.tolist() == [3, 7]  # the most recent full match


def test_lookup_tree_respects_topk_and_budget():
    tokens = [1, 2, 3, 4, 0, 1, 2, 5, 6, 0, 1, 2, 3, 7, 0, 1, 2]
    assert len(paths(PromptLookupProposer(2).propose(ctx(tokens), TreeSpec(2, 2, 10)))) == 2
    assert PromptLookupProposer(2).propose(ctx(tokens), TreeSpec(4, 2, 3)).n_nodes == 3


def test_shorter_ngrams_add_matches_only_after_longer_ones():
    # suffix "8 9": one bigram match (-> 5); the unigram 9 also matched before 6
    tokens = [8, 9, 5, 0, 9, 6, 1, 8, 9]
    found = ngram_continuations(tokens, 1, max_ngram_size=2, limit=5)
    assert found[0] == [5] and [6] in found


# --- suffix -------------------------------------------------------------------------------

def test_longest_match_ignores_the_context_matching_itself():
    corpus = np.array([5, 6, 7, SEPARATOR, 1, 5, 6])
    length, ends = longest_match(corpus, 8)
    assert length == 2 and ends.tolist() == [1]
    assert longest_match(np.array([1, 2, 3]), 8)[0] == 0  # the last token never occurred before


def test_suffix_tree_scores_by_frequency_and_adapts_its_depth():
    # after "4 5" came 6 three times and 9 once; the match is 2 long, so depth <= 4
    seq = [4, 5, 6, 1, 2, 4, 5, 6, 1, 3, 4, 5, 9, 9, 9, 4, 5, 6, 1, 2, 0, 4, 5]
    tokens, parents = suffix_tree_draft(np.array(seq), TreeSpec(topk=2, depth=8, budget=10))
    tree = DraftTree(torch.tensor(tokens), tuple(parents))
    assert tokens[0] == 6  # the most frequent first
    assert tree.depth <= 4
    assert (9,) in {p[:1] for p in paths(tree)}  # 9 followed 1 of 4 matches: above MIN_PROB
    chain, _ = suffix_tree_draft(np.array(seq), TreeSpec(1, 8, 8))
    assert chain == [6, 1, 2, 4]


def test_suffix_learns_from_earlier_sequences_of_the_run():
    proposer = SuffixProposer()
    proposer.start([1], None)
    proposer.propose(ctx([7, 8, 9, 10, 11, 12]), TreeSpec(1, 4, 4))
    proposer.start([1], None)
    assert proposer.propose(ctx([3, 8, 9]), TreeSpec(1, 4, 4)).n_nodes == 0  # a proposal teaches nothing
    proposer.finish([7, 8, 9, 10, 11, 12])  # the first sequence ended: it joins the corpus
    proposer.start([1], None)
    tree = proposer.propose(ctx([3, 8, 9]), TreeSpec(1, 4, 4))
    assert tree.tokens.tolist() == [10, 11, 12]
    assert proposer.propose(ctx([3, 4]), TreeSpec(1, 4, 4)).n_nodes == 0  # nothing matches
    assert proposer.fork().propose(ctx([3, 8, 9]), TreeSpec(1, 4, 4)).n_nodes == 3  # a batch row's fork shares it


def test_a_forgotten_warm_up_sequence_cannot_draft_later():
    proposer = SuffixProposer()
    proposer.start([1], None)
    proposer.propose(ctx([7, 8, 9, 10, 11, 12]), TreeSpec(1, 4, 4))  # a warm-up
    proposer.finish([7, 8, 9, 10, 11, 12])
    proposer.forget()
    proposer.start([1], None)
    assert proposer.propose(ctx([3, 8, 9]), TreeSpec(1, 4, 4)).n_nodes == 0


# --- multi-projection (Medusa) ------------------------------------------------------------

def test_cartesian_tree_keeps_the_most_probable_paths_best_first():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.9, 0.05, 0.05]])
    tokens, parents = cartesian_tree(probs.log(), TreeSpec(topk=2, depth=3, budget=5))
    # best first: a0 (.6), a0b0 (.3), a1 (.3), a0b0c0 (.27), a0b1 (.24)
    assert tokens == [0, 0, 1, 0, 1]
    assert parents == [-1, 0, -1, 1, 0]
    chain_tokens, chain_parents = cartesian_tree(probs.log(), TreeSpec(1, 3, 3))
    assert chain_tokens == [0, 0, 0] and chain_parents == [-1, 0, 1]


# --- EAGLE-2 style growth -----------------------------------------------------------------

def test_grow_tree_keeps_the_greedy_chain_and_reranks_the_rest():
    V = 6
    table = {  # next-token probabilities by (parent token path)
        (): [0.5, 0.4, 0.1, 0, 0, 0],
        (0,): [0.0, 0.1, 0.0, 0.46, 0.44, 0.0],
        (1,): [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
    }

    def lp(path):
        p = torch.tensor(table.get(path, [1.0 / V] * V)) + 1e-9
        return p.log()

    node_paths = {}

    def step(frontier):
        out = []
        for node, parent, tok in zip(frontier.nodes, frontier.parents, frontier.tokens.tolist()):
            node_paths[node] = node_paths.get(parent, ()) + (tok,)
            out.append(lp(node_paths[node]))
        return torch.stack(out)

    tree = grow_tree(lp(()), step, TreeSpec(topk=2, depth=2, budget=3))
    # greedy chain 0 -> 3 (0.5 * 0.46) is kept first; then 1 (0.4) beats 1 -> 5 (0.4) by depth
    toks = tree.tokens.tolist()
    assert toks[:2] == [0, 3] and tree.parents[:2] == (-1, 0)
    assert toks[2] == 1 and tree.parents[2] == -1
    bigger = grow_tree(lp(()), step, TreeSpec(topk=2, depth=2, budget=4))
    assert bigger.tokens.tolist()[:3] == toks  # the first b nodes are the budget-b tree


# --- multi-draft --------------------------------------------------------------------------

class Fixed(Proposer):
    def __init__(self, name, tree_paths):
        self.name = name
        self.tree_paths = tree_paths

    def propose(self, ctx, spec):
        from models.speculative.tree import TrieBuilder

        trie = TrieBuilder(spec.budget)
        for p in self.tree_paths:
            trie.add_path(p)
        return trie.build()


def test_multi_merges_trees_dedups_prefixes_and_names_sources():
    a = Fixed("a", [[1, 2, 3], [1, 4]])
    b = Fixed("b", [[1, 2, 5], [6]])
    tree = MultiProposer([a, b]).propose(ctx([0]), TreeSpec(topk=2, depth=3, budget=10))
    assert paths(tree) == {(1, 2, 3), (1, 4), (1, 2, 5), (6,)}
    assert tree.n_nodes == 6
    by_token = dict(zip(tree.tokens.tolist(), tree.sources))
    assert by_token[1] == "a" and by_token[5] == "b" and by_token[6] == "b"


def test_multi_splits_the_budget_between_proposers():
    a = Fixed("a", [[1, 2, 3, 4, 5, 6]])
    b = Fixed("b", [[7, 8, 9, 10]])
    tree = MultiProposer([a, b]).propose(ctx([0]), TreeSpec(topk=2, depth=6, budget=6))
    assert tree.tokens.tolist() == [1, 2, 3, 7, 8, 9]
