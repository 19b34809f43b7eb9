"""Decoding on a mesh of CPU workers (gloo): the target and draft sharded over tp, the prompts
split over dp. Speculative output equals target-only output on the same mesh bit for bit, and
the mesh's target-only output equals one device's (tiny random models have no near-ties)."""

import pytest

from models.common.errors import UserError
from models.common.mesh import MeshShape, run_on_mesh
from models.common.prompts import Prompt
from models.speculative.engine import RunConfig
from models.speculative.mesh_runs import run_prompts

MODEL = "random:tiny-llama"  # 4 heads, 2 KV heads: tp 1 or 2
PROMPTS = [Prompt("count: one two three one two three one two"), Prompt("abc abc abc abc"),
           Prompt("The quick brown fox"), Prompt("x y z x y z x y")]
CONFIGS = {
    "target": dict(method="target"),
    "prompt_lookup": dict(method="prompt_lookup", max_ngram_size=2),
    "self_draft": dict(method="self_draft", draft_layers=2),
    "draft_model": dict(method="draft_model", draft_model="random:tiny-llama:7"),
    "tree": dict(method="prompt_lookup", max_ngram_size=2, tree_topk=2, tree_budget=6),
    "batch": dict(method="prompt_lookup", max_ngram_size=2, full_batch_size=3, batch_drafts="all"),
    "coupled": dict(method="self_draft", draft_layers=2, temperature=0.8, verify="coupled", seed=3),
    "target_sampled": dict(method="target", temperature=0.8, verify="coupled", seed=3),
}


def decode_all(mesh, names, model=MODEL, draft_mesh=None):
    """Every named configuration on this mesh: each prompt's tokens, from rank 0."""
    out = {}
    shape = str(mesh.shape) if mesh.role == "target" else None  # a draft rank reads only the draft's settings
    for name in names:
        config = RunConfig(model=model, max_generated_tokens=20, max_seq_len=128, mesh_shape=shape,
                           draft_mesh_shape=draft_mesh, **CONFIGS[name])
        run = run_prompts(mesh, config, PROMPTS, warm_up=False)
        if run is not None:
            out[name] = [r.tokens for r in run.result.results]
    return out


@pytest.fixture(scope="module")
def single():
    return run_on_mesh(MeshShape(1, 1), decode_all, list(CONFIGS))


@pytest.mark.parametrize("shape", ["1x2", "2x1"])
def test_every_method_on_a_mesh_equals_target_only(single, shape):
    mesh = run_on_mesh(MeshShape.parse(shape), decode_all, list(CONFIGS))
    assert single["target"] != single["target_sampled"]  # sampling really sampled
    for name in CONFIGS:
        reference = "target_sampled" if name in ("coupled", "target_sampled") else "target"
        assert mesh[name] == mesh[reference], f"{name} on {shape} differs from target-only on the same mesh"
        assert mesh[name] == single[name], f"{name} on {shape} differs from one device"


def test_a_2x2_mesh_gathers_outputs_in_input_order(single):
    assert run_on_mesh(MeshShape(2, 2), decode_all, ["target", "batch"]) == {k: single[k] for k in ("target", "batch")}


def test_kv_heads_split_unevenly_when_tp_does_not_divide_them():
    """8 KV heads and 160 hidden units over 3 ranks: 3/3/2 heads, 54/53/53 units (SmolLM2's 3 KV
    heads over 2 ranks are the same case)."""
    names = ["target", "self_draft", "tree"]
    untied = "random:tiny-llama-untied"
    assert run_on_mesh(MeshShape(1, 3), decode_all, names, untied) == run_on_mesh(MeshShape(1, 1), decode_all, names, untied)


@pytest.mark.parametrize("shape, draft", [("1x1", "1x1"), ("1x2", "1x2")])
def test_a_draft_model_on_its_own_device_group_drafts_the_same(single, shape, draft):
    got = run_on_mesh(MeshShape.parse(shape), decode_all, ["draft_model"], MODEL, draft,
                      draft_shape=MeshShape.parse(draft))
    assert got == {"draft_model": single["draft_model"]} and single["draft_model"] == single["target"]


def build(mesh, config):
    run_prompts(mesh, config, PROMPTS[:1], warm_up=False)


@pytest.mark.parametrize("overrides, message", [
    (dict(mesh_shape="1x4"), "tensor parallel 4 exceeds the model's 2 KV heads"),
    (dict(mesh_shape="1x2", method="prompt_lookup", tree_topk=2, tree_budget="auto"), "--tree_budget auto times one device"),
    (dict(mesh_shape="1x2", method="prompt_lookup", batch_size=2), "--batch_drafts auto times one device"),
    (dict(mesh_shape="0x2"), "DPxTP"),
    (dict(method="prompt_lookup", draft_mesh_shape="1x1"), "--method prompt_lookup has no draft model"),
    (dict(method="draft_model", draft_mesh_shape="1x1", batch_size=2), "--draft_mesh_shape supports greedy"),
])
def test_bad_mesh_input_is_one_line(overrides, message):
    config = RunConfig(model=MODEL, max_seq_len=128, **overrides)
    with pytest.raises(UserError) as info:
        config.validate()
        run_on_mesh(config.mesh, build, config)
    assert message in str(info.value) and "\n" not in str(info.value)
