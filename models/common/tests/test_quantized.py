"""GGUF Q8_0 / Q4_1 blocks in the CPU kernels: the loader's bits when dequantized, and linears with
exactly the fp32 path's bits at every row count (so --weights gguf changes no output)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.common import quantized
from models.common.cpu_kernels import skinny_kernels
from models.common.ops import linear

kernels = skinny_kernels()
pytestmark = pytest.mark.skipif(kernels is None, reason="CPU kernels unavailable (no AVX2/FMA/F16C or no compiler)")
gguf_quants = pytest.importorskip("gguf.quants")
from gguf import GGMLQuantizationType  # noqa: E402


def random_blocks(kind: str, n: int, k: int, seed: int = 0) -> torch.Tensor:
    """n rows of k weights as random blocks of kind, with scales like a real GGUF's (and a few
    extremes: a subnormal, a negative and a zero scale)."""
    gen = np.random.default_rng(seed)
    if kind == "BF16":  # finite values, a zero and a subnormal among them
        values = torch.from_numpy(gen.normal(0, 0.05, size=(n, k)).astype(np.float32)).to(torch.bfloat16)
        values.view(-1)[:2] = torch.tensor([0.0, 1e-39], dtype=torch.bfloat16)
        return values.view(torch.uint8).reshape(n, k // 32, 64)
    nb, nbytes = k // 32, quantized.KINDS[kind][1]
    raw = gen.integers(0, 256, size=(n, nb, nbytes), dtype=np.uint8)
    scales = gen.normal(0, 0.02, size=(n, nb, 2)).astype(np.float16)
    scales.flat[:3] = np.array([6e-8, -0.5, 0.0], dtype=np.float16)
    heads = 4 if kind == "Q4_1" else 2
    raw[:, :, :heads] = scales[:, :, : heads // 2].view(np.uint8).reshape(n, nb, heads)
    return torch.from_numpy(raw)


def loader_dequantize(blocks: torch.Tensor, kind: str, k: int) -> torch.Tensor:
    """gguf-py's dequantization, the one transformers' GGUF reader (our fp32 loader) runs."""
    out = gguf_quants.dequantize(blocks.reshape(blocks.shape[0], -1).numpy(), GGMLQuantizationType[kind])
    return torch.from_numpy(np.ascontiguousarray(out)).reshape(blocks.shape[0], k)


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_1", "BF16"])
@pytest.mark.parametrize("n, k", [(130, 576), (49, 1536), (7, 32), (1000, 64)])
def test_dequantize_has_the_loaders_bits(kind, n, k):
    blocks = random_blocks(kind, n, k)
    assert quantized.kind_of(blocks) == quantized.KINDS[kind][0] and quantized.row_weights(blocks) == k
    got = quantized.dequantize(blocks)
    want = loader_dequantize(blocks, kind, k)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))  # bits, not values (-0.0, subnormals)


def _available_isas() -> list[str]:
    if kernels is None:
        return []
    chosen, isas = kernels.kernel_isa(""), ["avx2"]
    try:
        kernels.kernel_isa("avx512")
        isas.append("avx512")
    except RuntimeError:
        pass
    kernels.kernel_isa(chosen)
    return isas


ISAS = _available_isas()


@pytest.fixture(params=["avx2", "avx512"])
def isa(request):
    """Each instruction set the quantized kernels have, where this CPU has it; restored after."""
    if request.param not in ISAS:
        pytest.skip(f"this CPU has no {request.param}")
    chosen = quantized.kernel_isa("")
    quantized.kernel_isa(request.param)
    yield request.param
    quantized.kernel_isa(chosen)


def test_kernel_isa_is_chosen_and_refused_in_one_line():
    assert quantized.kernel_isa("") == ISAS[-1]  # the widest the CPU has, by default
    with pytest.raises(RuntimeError, match="avx512, avx2"):
        quantized.kernel_isa("sse")


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_1", "BF16"])
@pytest.mark.parametrize("n, k", [(960, 576), (49, 1536), (130, 64), (7, 32), (1, 64)])
def test_quantized_linear_has_the_fp32_paths_bits_at_every_row_count(kind, n, k, isa):
    blocks = random_blocks(kind, n, k, seed=1)
    dense = quantized.dequantize(blocks)
    x = torch.randn(64, k, generator=torch.Generator().manual_seed(2))
    for m in range(1, 65):
        assert torch.equal(kernels.skinny_linear_q(x[:m], blocks.reshape(n, -1), quantized.kind_of(blocks)),
                           kernels.skinny_linear(x[:m], dense)), f"{m} rows"
    # through ops.linear: few rows take the kernels, many (prefill) torch's on the dequantized weight
    for rows in (1, 5, 64, 100):
        xs = torch.randn(1, rows, k)
        assert torch.equal(linear(xs, blocks), linear(xs, dense)), f"{rows} rows via ops.linear"
    assert torch.equal(linear(torch.ones(1, 100, k), blocks), F.linear(torch.ones(1, 100, k), dense))


def test_bf16_blocks_are_a_bf16_valued_weight_read_as_stored():
    weight = torch.randn(40, 96).to(torch.bfloat16).float()
    blocks = quantized.bf16_blocks(weight)
    assert blocks.shape == (40, 3, 64) and quantized.kind_of(blocks) == quantized.KINDS["BF16"][0]
    assert torch.equal(quantized.dequantize(blocks).view(torch.int32), weight.view(torch.int32))
    assert torch.equal(blocks, loader_free_bf16(weight))
    assert quantized.bf16_blocks(weight + 1e-4) is None  # not every value a bfloat16: kept fp32
    assert quantized.bf16_blocks(torch.zeros(4, 48)) is None  # K not a multiple of 32
    assert quantized.bf16_blocks(torch.zeros(4, 2, 32)) is None


def loader_free_bf16(weight: torch.Tensor) -> torch.Tensor:
    return weight.to(torch.bfloat16).view(torch.uint8).reshape(weight.shape[0], -1, 64)


def test_rows_is_an_embedding_lookup_in_either_format():
    blocks = random_blocks("Q8_0", 50, 64)
    dense = quantized.dequantize(blocks)
    index = torch.tensor([[3, 49, 0], [3, 3, 7]])
    assert torch.equal(quantized.rows(blocks, index), dense[index])
    assert torch.equal(quantized.rows(dense, index), dense[index])


def test_bad_shapes_are_refused():
    blocks = random_blocks("Q4_1", 4, 64)
    with pytest.raises(ValueError, match="not \\[4, 40\\]"):
        quantized.kind_of(blocks.reshape(4, -1))
    with pytest.raises(ValueError, match="input of 96 features against a weight of rows of 64"):
        linear(torch.randn(1, 96), blocks)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        kernels.skinny_linear_q(torch.randn(1, 48), torch.zeros(4, 30, dtype=torch.uint8), 1)
    with pytest.raises(RuntimeError, match="kind must be"):
        kernels.dequantize(blocks.reshape(4, -1), 7, 64)
    with pytest.raises(RuntimeError, match="uint8"):
        kernels.dequantize(blocks.reshape(4, -1).float(), 1, 64)

