"""The lean model against transformers' own model on the same weights."""

import pytest
import torch

from models.llama.reference import HFReference
from models.llama.weights import RANDOM_PRESETS, load_model

PRESETS = sorted(RANDOM_PRESETS)
ATOL = 1e-4


def random_tokens(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def greedy_through_cache(lean, ids: torch.Tensor, n: int) -> list[int]:
    """n greedy tokens after ids [1, T]: a prefill, then one token per step through the KV cache."""
    cache = lean.new_cache(ids.shape[1] + n)
    with torch.inference_mode():
        nxt = int(lean(ids, cache, 0, logits_for="last")[0, -1].argmax())
        out = [nxt]
        for _ in range(n - 1):
            nxt = int(lean(torch.tensor([[nxt]]), cache, cache.length)[0, -1].argmax())
            out.append(nxt)
    return out


@pytest.mark.parametrize("preset", PRESETS)
def test_prefill_logits_match_transformers(preset):
    lean = load_model(f"random:{preset}:3").model
    ref = HFReference.random(preset, 3)
    tokens = random_tokens(40, lean.args.vocab_size)
    expected = ref.logits(tokens)
    got = lean(tokens, lean.new_cache(64), 0)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("preset", PRESETS)
def test_cached_decode_and_blocks_match_transformers(preset):
    """Prefill 20, then single tokens and blocks of 3 and 5 through the cache (past the
    sliding window of tiny-mistral, 48)."""
    lean = load_model(f"random:{preset}:4").model
    ref = HFReference.random(preset, 4)
    tokens = random_tokens(70, lean.args.vocab_size, seed=1)
    expected = ref.logits(tokens)[0]
    cache = lean.new_cache(128)
    with torch.inference_mode():
        pieces = [lean(tokens[:, :20], cache, 0)]
        pos = 20
        for size in [1, 1, 3, 5, 1, 3] * 3 + [1] * 8:
            pieces.append(lean(tokens[:, pos : pos + size], cache, pos))
            pos += size
    got = torch.cat(pieces, dim=1)[0]
    assert pos == 70
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen2", "tiny-gemma3"])
def test_layer_override_matches_a_truncated_transformers_model(preset):
    lean = load_model(f"random:{preset}:5", n_layers=2).model
    assert lean.args.n_layers == 2 and len(lean.layers) == 2
    ref = HFReference.random(preset, 5, n_layers=2)
    tokens = random_tokens(16, lean.args.vocab_size)
    torch.testing.assert_close(lean(tokens, lean.new_cache(32), 0), ref.logits(tokens), atol=ATOL, rtol=1e-4)


def test_truncated_view_shares_weights_and_equals_a_layer_override():
    full = load_model("random:tiny-llama:6").model
    view = full.truncated(2)
    assert view.layers[0].wqkv.data_ptr() == full.layers[0].wqkv.data_ptr()
    assert view.output.data_ptr() == full.output.data_ptr()
    loaded = load_model("random:tiny-llama:6", n_layers=2).model
    tokens = random_tokens(12, full.args.vocab_size)
    assert torch.equal(view(tokens, view.new_cache(16), 0), loaded(tokens, loaded.new_cache(16), 0))


@pytest.mark.default_model
def test_default_model_matches_transformers(default_model):
    ref = HFReference.for_loaded(default_model)
    lean = default_model.model
    prompt = default_model.tokenizer.encode("The capital of France is", chat=True)
    tokens = torch.tensor([prompt])
    torch.testing.assert_close(lean(tokens, lean.new_cache(64), 0), ref.logits(tokens), atol=5e-4, rtol=1e-4)
    # greedy through the KV cache, token for token against transformers' generate
    assert greedy_through_cache(lean, tokens, 16) == ref.greedy(prompt, 16)
