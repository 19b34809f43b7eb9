from models.speculative.proposers.prompt_lookup import ngram_lookup


def test_no_match_gives_no_drafts():
    assert ngram_lookup([1, 2, 3, 4, 5], k=4, max_ngram_size=3) == []


def test_single_token_context_gives_no_drafts():
    assert ngram_lookup([7], k=4, max_ngram_size=3) == []


def test_longer_ngram_is_preferred_over_shorter():
    # suffix (8, 9): bigram occurs at 0 (-> 5); unigram 9 also occurs at 4 (-> 6)
    tokens = [8, 9, 5, 0, 9, 6, 1, 8, 9]
    assert ngram_lookup(tokens, k=1, max_ngram_size=2) == [5]


def test_match_at_the_end_gives_a_truncated_continuation():
    # the only earlier "2 3" is right before the suffix: its continuation runs into the suffix
    tokens = [1, 2, 3, 2, 3]
    assert ngram_lookup(tokens, k=4, max_ngram_size=2) == [2, 3]


def test_overlapping_repetition_drafts_the_pattern():
    tokens = [5, 5, 5, 5]
    # suffix (5, 5) matches at 0 (continuation 5, 5) and 1 (continuation 5): the longer wins
    assert ngram_lookup(tokens, k=3, max_ngram_size=2) == [5, 5]


def test_longest_continuation_wins_then_most_recent():
    # suffix 7 occurs at 0 (-> 1 2 3 4...) and at 5 (-> 9 9 ...); both give k=2 tokens: most recent wins
    tokens = [7, 1, 2, 3, 4, 7, 9, 9, 0, 7]
    assert ngram_lookup(tokens, k=2, max_ngram_size=1) == [9, 9]
    # with k=4 the later match gives only 4 tokens too (9, 9, 0, 7): still the most recent
    assert ngram_lookup(tokens, k=4, max_ngram_size=1) == [9, 9, 0, 7]
    # with k=5 only the early match can give 5 tokens
    assert ngram_lookup(tokens, k=5, max_ngram_size=1) == [1, 2, 3, 4, 7]


def test_k_caps_the_draft():
    tokens = [1, 2, 3, 4, 5, 6, 1, 2]
    assert ngram_lookup(tokens, k=2, max_ngram_size=2) == [3, 4]
