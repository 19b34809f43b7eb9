"""The transformers backend runs a family this suite's code never names: a tiny random GPT-NeoX
checkpoint (built with transformers' own config class, saved to a folder with a byte-level
tokenizer) decodes through scripts/generate.py --backend transformers, and prompt lookup and
suffix equal that backend's own target-only output; the conformance kit's logit checks hold
under the near-tie rule."""

from __future__ import annotations

import json

import pytest
import torch

FAMILY = "gpt_neox"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp(FAMILY)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>").save_pretrained(folder)
    config = GPTNeoXConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=512, eos_token_id=len(vocab) - 1,
                           bos_token_id=len(vocab) - 1, initializer_range=0.25)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def test_the_family_is_not_one_this_suite_names(run_script, checkpoint, tmp_path):
    """The torch backend refuses it in one line, pointing at the backend that runs it."""
    from models.llama.config import SUPPORTED_ARCHITECTURES

    assert FAMILY not in SUPPORTED_ARCHITECTURES
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": "abc"}]))
    code, err = run_script("generate", ["--model", str(checkpoint), "--input_prompts", str(prompts),
                                        "--output", str(tmp_path / "out.json")])
    assert code == 2 and "not supported by backend torch" in err and "--backend transformers" in err
    assert len(err.strip().splitlines()) == 1


def test_generate_with_lookup_and_suffix_equals_target_only(run_script, checkpoint, tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": "one two three one two three one two"},
                                   {"prompt": "abc abd abc abd abc"}]))
    outputs = {}
    for method, extra in [("target", []), ("prompt_lookup", ["--n_draft_tokens", "3"]),
                          ("suffix", ["--n_draft_tokens", "4"]),
                          ("prompt_lookup", ["--tree_topk", "2", "--tree_depth", "3", "--tree_budget", "6"]),
                          ("suffix", ["--full_batch_size", "2", "--batch_drafts", "all"])]:
        out = tmp_path / f"{method}{len(extra)}.json"
        code, err = run_script("generate", ["--model", str(checkpoint), "--backend", "transformers", "--method", method,
                                            "--input_prompts", str(prompts), "--output", str(out), "--instruct", "0",
                                            "--max_generated_tokens", "24", "--max_seq_len", "128", *extra])
        assert code == 0, err
        result = json.loads(out.read_text())
        outputs[method, len(extra)] = [p["output_ids"] for p in result["prompts"]]
        if "--tree_topk" in extra:  # really trees (the kit's tree check is what would catch a broken mask)
            assert result["stats"]["mean_branching"] > 1
    reference = outputs["target", 0]
    assert all(len(ids) == 24 for ids in reference)
    for key, ids in outputs.items():
        assert ids == reference, key


def test_the_kit_holds_under_the_near_tie_rule(checkpoint):
    from models.backends import transformers_backend
    from models.common.device import open_device
    from models.conformance import kit

    loaded = transformers_backend.load(str(checkpoint), None, open_device("cpu"))
    assert transformers_backend.load_tokenizer(str(checkpoint)).encode("abc abd") == loaded.tokenizer.encode("abc abd")
    target = loaded.model
    assert not target.capabilities.batch_invariant and target.capabilities.batch_rows
    prompts = [loaded.tokenizer.encode(text)[:20] for text in kit.PROMPTS]
    for check in (kit.check_prefill_decode, kit.check_chain_verify, kit.check_rollback, kit.check_tree):
        result = check(target, prompts)
        assert result.ok and result.counts[kit.MISMATCH] == 0, (check.__name__, result.notes)
        assert result.counts[kit.EXACT] + result.counts[kit.NEAR_TIE] > 0
    batched = kit.check_batched_rows(target, prompts)  # each row its own call: as alone
    assert not batched.skipped and batched.counts[kit.MISMATCH] == 0, batched.notes


def test_self_draft_is_refused_in_one_line(checkpoint):
    from models.common.errors import UserError
    from models.speculative.engine import Engine, RunConfig

    with pytest.raises(UserError) as info:
        Engine(RunConfig(model=str(checkpoint), backend="transformers", instruct=False, method="self_draft",
                         draft_layers=1, max_seq_len=128))
    assert "--method self_draft needs a view" in str(info.value) and "backend 'transformers'" in str(info.value)


def test_trees_hold_under_eager_attention_too(checkpoint):
    """The tree mask is additive, which every attention implementation reads alike (a boolean
    mask is added as 0/1 by eager attention: trees then silently attend everywhere)."""
    from models.backends import transformers_backend
    from models.common.device import open_device
    from models.conformance import kit

    loaded = transformers_backend._load(str(checkpoint), None, open_device("cpu"))  # its own copy
    loaded.model.model.config._attn_implementation = "eager"
    prompts = [loaded.tokenizer.encode(text)[:20] for text in kit.PROMPTS]
    result = kit.check_tree(loaded.model, prompts)
    assert result.ok, result.notes
