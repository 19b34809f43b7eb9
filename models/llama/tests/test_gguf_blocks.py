"""--weights gguf on the real default model: its linears read as the GGUF's own blocks, and every
output the same as fp32's, bit for bit: logits, greedy decoding, each method, trees and batches."""

import pytest
import torch

from models.common import quantized
from models.common.cpu_kernels import skinny_kernels
from models.common.device import open_device
from models.common.errors import UserError
from models.llama.gguf_blocks import CACHE_FILE, use_gguf_blocks
from models.llama.weights import DEFAULT_MODEL, checkpoint_folder, gguf_of, load_model
from models.speculative.engine import Engine, RunConfig

pytestmark = pytest.mark.skipif(skinny_kernels() is None, reason="CPU kernels unavailable")


@pytest.fixture(scope="module")
def models():
    return load_model(DEFAULT_MODEL).model, load_model(DEFAULT_MODEL, weights="gguf").model


def test_every_linear_is_read_as_blocks_and_stands_for_its_fp32_weight(models):
    fp32, gguf = models
    dense, blocks = dict(fp32.named_parameters()), dict(gguf.named_parameters())
    swapped = [n for n, p in blocks.items() if quantized.is_quantized(p)]
    # 30 layers x (qkv, o, gate_up, down) + the tied embedding / LM head
    assert len(swapped) == 4 * fp32.n_layers + 1 and gguf.output is gguf.tok_embeddings
    assert gguf.weights == "gguf" and fp32.weights == "fp32"
    for name in swapped:
        assert torch.equal(quantized.dequantize(blocks[name]), dense[name]), name
    assert sum(p.numel() * p.element_size() for p in gguf.parameters()) < 0.2 * sum(
        p.numel() * p.element_size() for p in fp32.parameters())


def test_logits_are_bit_identical(models):
    fp32, gguf = models
    prompt = torch.randint(3, 40000, (1, 90), generator=torch.Generator().manual_seed(0))
    block = torch.randint(3, 40000, (1, 7), generator=torch.Generator().manual_seed(1))
    out = []
    for model in models:
        cache = model.new_cache(128)
        prefill = model(prompt, cache, 0)  # many rows: torch's GEMM on the dequantized weights
        out.append((prefill, model(block[:, :1], cache, 90), model(block, cache, 91)))
    for a, b in zip(*out):
        assert torch.equal(a, b)


def test_match_is_cached_beside_the_checkpoint(models):
    folder = checkpoint_folder(DEFAULT_MODEL)
    assert (folder / CACHE_FILE).is_file()
    again = load_model(DEFAULT_MODEL, n_layers=2).model
    report = use_gguf_blocks(again, gguf_of(DEFAULT_MODEL), folder)
    assert report.swapped == 4 * 2 + 1 and report.kept == 0


METHODS = {
    "target": dict(method="target"),
    "prompt_lookup": dict(method="prompt_lookup", n_draft_tokens=4),
    "suffix_tree": dict(method="suffix", n_draft_tokens=4, tree_topk=3, tree_budget=8),
    "eagle": dict(method="eagle", n_draft_tokens=3),
    "batch": dict(method="prompt_lookup", n_draft_tokens=3, full_batch_size=2),
}
PROMPTS = ["Repeat after me: the quick brown fox jumps over the lazy dog. The quick brown fox",
           "Write a Python function that adds two numbers."]


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_decodes_the_same_tokens_in_both_formats(name):
    outputs = {}
    for weights in ("fp32", "gguf"):
        engine = Engine(RunConfig(max_generated_tokens=24, max_seq_len=256, weights=weights, **METHODS[name]))
        ids = [engine.tokenizer.encode(p, chat=True) for p in PROMPTS]
        outputs[weights] = [r.tokens for r in engine.run_batch(ids).results] if engine.config.rows > 1 else [
            engine.run(p, prompt_index=i).tokens for i, p in enumerate(ids)]
        assert engine.target.model.weights == weights
        if name == "eagle":  # the shipped head's bf16 linears read as stored beside a gguf target
            bf16 = [p for p in engine.proposer.head.parameters()
                    if quantized.is_quantized(p) and quantized.kind_of(p) == quantized.KINDS["BF16"][0]]
            assert (len(bf16) >= 5) == (weights == "gguf"), len(bf16)  # fc + the layer's 4 linears
    assert outputs["gguf"] == outputs["fp32"]


def test_bad_requests_are_one_line():
    with pytest.raises(UserError, match="not a GGUF"):
        load_model("random:tiny-llama", weights="gguf")
    with pytest.raises(UserError, match="backend transformers runs fp32"):
        RunConfig(backend="transformers", weights="gguf").validate()
    with pytest.raises(UserError, match="CPU in float32"):
        open_device("cpu", "bfloat16", weights="gguf")
    with pytest.raises(UserError, match="tensor-parallel"):
        RunConfig(weights="gguf", device="cpu:1x2").validate()
    with pytest.raises(UserError, match="not 'random:tiny-llama' \\(not a GGUF\\); or use --weights fp32"):
        RunConfig(model="random:tiny-llama", weights="gguf").validate()  # before any device opens


def test_the_default_format_is_gguf_where_it_runs_and_fp32_elsewhere():
    from models.backends.registry import backend

    torch_backend = backend("torch")
    assert torch_backend.weight_format(None, DEFAULT_MODEL, "cpu", None, 1) == "gguf"
    assert torch_backend.weight_format(None, DEFAULT_MODEL, "cpu:2x1", "float32", 1) == "gguf"  # data-parallel
    for model, device, dtype, tp in [("random:tiny-llama", "cpu", None, 1), (DEFAULT_MODEL, "cuda", None, 1),
                                     (DEFAULT_MODEL, "cpu", "bfloat16", 1), (DEFAULT_MODEL, "cpu:1x2", None, 2)]:
        assert torch_backend.weight_format(None, model, device, dtype, tp) == "fp32", (model, device, dtype, tp)
    assert torch_backend.weight_format("fp32", DEFAULT_MODEL) == "fp32"  # asked for: as asked
    assert backend("transformers").weight_format(None, DEFAULT_MODEL) == "fp32"
    assert backend("llama_cpp").weight_format(None, DEFAULT_MODEL) == "gguf"
    assert RunConfig().weight_format == "gguf" and RunConfig(device="cpu:1x2").weight_format == "fp32"
    assert RunConfig(model="random:tiny-llama").weight_format == "fp32"
    assert RunConfig().describe()["weights"] == "gguf"  # what ran, in records and perf keys


def test_a_draft_model_that_is_not_a_gguf_is_read_as_fp32_beside_a_gguf_target():
    from models.backends import torch_backend
    from models.common.device import with_weights

    device = with_weights(open_device("cpu"), "gguf")
    draft = torch_backend.load("random:tiny-llama", None, device)
    assert draft.model.weights == "fp32"
    assert torch_backend.load(DEFAULT_MODEL, 2, device).model.weights == "gguf"


def test_a_gguf_that_holds_none_of_the_models_weights_is_one_line():
    from models.llama.packaged import PACKAGED_MODELS, gguf_path

    try:
        other = gguf_path("gemma3-270m")
    except UserError:
        pytest.skip("Gemma-3-270M is not installed (bash scripts/setup.sh --with-gemma3)")
    assert "gemma3-270m" in PACKAGED_MODELS
    model = load_model(DEFAULT_MODEL, n_layers=1).model
    with pytest.raises(UserError, match="holds none of this model's weights"):
        use_gguf_blocks(model, other)  # no cache folder: nothing is written
    assert not any(quantized.is_quantized(p) for p in model.parameters())
