"""Bit-exactness on a 1x3 CPU mesh (gloo), where docs/meshes.md promises it: a verify block's logits
equal the same tokens decoded one at a time, and a batch's flat forward_rows equals each
sequence's own forward, with torch.equal. Comparing tokens is not enough: a tiny random model has
no near-ties, so a cross-rank sum whose order depends on the row count (torch's all_reduce picks
its algorithm by size) changes the logits' last bits and no token. At tp=2 any order of two
partial sums gives the same bits; at tp=3 it does not, and 8 KV heads and 160 hidden units split
3/3/2 and 54/53/53, uneven as SmolLM2's 3 KV heads over 2 ranks."""

import pytest
import torch

from models.common.cpu_kernels import skinny_kernels
from models.common.mesh import Mesh, MeshShape, run_on_mesh
from models.backends.interface import TargetModel
from models.llama.tensor_parallel import TensorParallel, shard
from models.llama.weights import load_model
from models.speculative.tests.test_batching import rows_and_alone

MODEL = "random:tiny-llama-untied"  # 8 KV heads, 160 hidden units, untied LM head (320 rows: 107 a rank)
MESH = MeshShape(1, 3)
BLOCK_SIZES = (2, 3, 4)  # verify blocks of a root and 1-3 drafts

pytestmark = pytest.mark.skipif(skinny_kernels() is None,
                                reason="the batch-invariant CPU kernels are not available here")


def sharded(mesh: Mesh) -> TargetModel:
    """This rank's shard of the model."""
    return shard(load_model(MODEL).model, TensorParallel(mesh.tp_rank, mesh.shape.tp, mesh.tp_group))


@torch.inference_mode()
def blocks_and_steps(model: TargetModel) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Logits of verify blocks of each of BLOCK_SIZES tokens after one prompt, and of the same
    tokens decoded one at a time ([n, V] each; the steps' first n rows match a block of n)."""
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 300, (1, 9), generator=gen)
    tokens = torch.randint(3, 300, (1, max(BLOCK_SIZES)), generator=gen)
    cache = model.new_cache(64)
    model(prompt, cache, 0)
    end = cache.length
    steps = torch.cat([model(tokens[:, i : i + 1], cache, cache.length)[0] for i in range(tokens.shape[1])])
    blocks = []
    for n in BLOCK_SIZES:
        cache.rollback(end)
        blocks.append(model(tokens[:, :n], cache, end)[0])
    return blocks, steps


def on_each_rank(mesh: Mesh) -> dict:
    """Every rank computes (the collectives need all); rank 0's results come back."""
    model = sharded(mesh)
    blocks, steps = blocks_and_steps(model)
    batched, alone, lengths = rows_and_alone(model)
    return {"blocks": blocks, "steps": steps, "batched": batched, "alone": alone, "lengths": lengths,
            "shard": (model.args.n_kv_heads, model.args.hidden_dim)}


@pytest.fixture(scope="module")
def mesh_run() -> dict:
    return run_on_mesh(MESH, on_each_rank)


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_the_ranks_hold_uneven_shards(mesh_run):
    """Rank 0 holds 3 of the 8 KV heads and 54 of the 160 hidden units (ranks 1 and 2: 3 and 53,
    2 and 53): the comparisons below are between sharded passes, not the whole model's."""
    args = load_model(MODEL).model.args
    assert (args.n_kv_heads, args.hidden_dim) == (8, 160) and mesh_run["shard"] == (3, 54)


def test_a_verify_block_equals_its_tokens_decoded_one_at_a_time(mesh_run):
    steps = mesh_run["steps"]
    for n, block in zip(BLOCK_SIZES, mesh_run["blocks"]):
        assert torch.equal(block, steps[:n]), f"block of {n}: max difference {max_difference(block, steps[:n])}"


def test_forward_rows_equals_each_sequence_alone(mesh_run):
    batched, alone = mesh_run["batched"], mesh_run["alone"]
    assert torch.equal(batched, alone), f"max difference {max_difference(batched, alone)}"
    assert mesh_run["lengths"] == [11, 17, 5]


def test_the_mesh_computes_the_model_of_one_device(mesh_run):
    """Equal to the last bits only among the mesh's own passes (its sums are ordered otherwise
    than one device's), but the same model: equal bits of a wrong computation would prove nothing."""
    _, steps = blocks_and_steps(load_model(MODEL).model)
    assert torch.allclose(steps, mesh_run["steps"], rtol=0, atol=1e-4)
