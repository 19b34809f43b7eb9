"""The llama.cpp peer's rows, wired without llama-cpp-python: configurations times a peer's
decoder as one runner per (k, length), greedy at k None, prompt lookup at each k."""

from models.benchmark.configurations import LLAMA_GREEDY, LLAMA_PROMPT_LOOKUP, Configuration, llama_cpp_runners


class EchoPeer:
    """decoder(k, max_ngram_size) -> decode(prompt_ids, max_new_tokens) that says what it got."""

    def decoder(self, k, max_ngram_size):
        return lambda prompt_ids, max_new_tokens: [-1 if k is None else k, max_ngram_size, len(prompt_ids),
                                                   max_new_tokens]


def test_one_runner_per_k_and_length_each_calling_its_decoder():
    runners = llama_cpp_runners(EchoPeer(), [2, 3], [8, 16], 4)
    assert {c.id for c in runners} == {
        "llama_cpp_greedy-n8", "llama_cpp_greedy-n16", "llama_cpp_prompt_lookup-k2-n8", "llama_cpp_prompt_lookup-k3-n8",
        "llama_cpp_prompt_lookup-k2-n16", "llama_cpp_prompt_lookup-k3-n16",
    }
    outcome = runners[Configuration(LLAMA_PROMPT_LOOKUP, 3, 16)]([5, 6, 7], 16)
    assert outcome.tokens == [3, 4, 3, 16] and outcome.stats is None and outcome.seconds >= 0
    assert runners[Configuration(LLAMA_GREEDY, 0, 8)]([5], 8).tokens == [-1, 4, 1, 8]
