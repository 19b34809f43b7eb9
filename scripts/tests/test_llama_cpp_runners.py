"""The llama.cpp peer's rows, wired without llama-cpp-python: configurations times a peer's
decoder as one runner per (k, length), greedy at k None, prompt lookup at each k."""

from models.benchmark.configurations import LLAMA_GREEDY, LLAMA_PROMPT_LOOKUP, Configuration, llama_cpp_runners


class EchoPeer:
    """decoder(k, max_ngram_size) -> decode(prompt_ids, max_new_tokens) that says what it got (and a
    time to its first token of 0.25 s)."""

    def decoder(self, k, max_ngram_size):
        return lambda prompt_ids, max_new_tokens: ([-1 if k is None else k, max_ngram_size, len(prompt_ids),
                                                    max_new_tokens], 0.25)


def test_one_runner_per_k_and_length_each_calling_its_decoder():
    runners = llama_cpp_runners(EchoPeer(), [2, 3], [8, 16], 4)
    assert {c.id for c in runners} == {
        "llama_cpp_greedy-n8", "llama_cpp_greedy-n16", "llama_cpp_prompt_lookup-k2-n8", "llama_cpp_prompt_lookup-k3-n8",
        "llama_cpp_prompt_lookup-k2-n16", "llama_cpp_prompt_lookup-k3-n16",
    }
    outcome = runners[Configuration(LLAMA_PROMPT_LOOKUP, 3, 16)]([5, 6, 7], 16)
    assert outcome.tokens == [3, 4, 3, 16] and outcome.stats is None and outcome.seconds >= 0
    assert outcome.ttft_s == 0.25
    assert runners[Configuration(LLAMA_GREEDY, 0, 8)]([5], 8).tokens == [-1, 4, 1, 8]


def test_a_peers_decode_rate_is_its_tokens_after_the_first_over_the_time_after_it():
    from models.benchmark.runlog import RunRecord
    from models.benchmark.summary import _peer_decode_rate, _peer_ttft_ms

    def record(tokens: int, total: float, ttft: float | None) -> RunRecord:
        return RunRecord(config_id="llama_cpp_greedy-n8", method=LLAMA_GREEDY, k=0, max_generated_tokens=8,
                         prompt_index=0, run_order=0, category="c", source="s", question_id=None, prompt_tokens=3,
                         output_ids=[1] * tokens, token_strings=None, total_s=total, ttft_s=ttft, iterations=None,
                         matches_target_only=True, first_mismatch=None)

    runs = [record(9, 1.25, 0.25), record(5, 0.75, 0.25)]
    assert _peer_decode_rate(runs) == (8 + 4) / (1.0 + 0.5)
    assert _peer_ttft_ms(runs) == 250.0
    assert _peer_decode_rate([*runs, record(9, 1.0, None)]) is None  # transformers tells no first token
