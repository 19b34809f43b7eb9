"""Device groups: the draft model on devices of its own (QEfficient's --draft-device-group).

The target's ranks run the generator as usual with a RemoteDraft proposer; the draft group's
ranks run serve_drafts, the draft model sharded over their own tp group. Each target call,
target rank 0 broadcasts the sequence so far and the tree it may draft, and the draft group's
first rank broadcasts the tree back: every rank of both groups takes part in both, so all
stay in step. Greedy decoding of one sequence at a time for now.
"""

from __future__ import annotations

import types

import torch.distributed as dist

from models.common.device import Device
from models.common.errors import UserError
from models.common.mesh import Mesh
from models.backends.interface import Cache
from models.llama.tensor_parallel import TensorParallel
from models.speculative.proposers.base import Proposer, ProposerContext
from models.speculative.proposers.draft_model import DraftModelProposer
from models.speculative.tree import DraftTree, TreeSpec

TARGET_LEADER = 0


def _broadcast(obj, src: int, mesh: Mesh):
    """Over every rank, patiently: a draft group waits while the target loads, prefills and
    verifies, which may take longer than a collective's usual timeout."""
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=mesh.patient)
    return box[0]


class RemoteDraft(Proposer):
    """The target side: drafts come from the draft device group."""

    name = "draft_model"

    def __init__(self, mesh: Mesh, target_vocab_size: int):
        self.mesh = mesh
        self.leader = mesh.draft_leader
        self.info = _broadcast(None, self.leader, mesh)  # the draft group says what it runs
        if self.info["vocab_size"] != target_vocab_size:
            raise UserError(f"draft model vocabulary ({self.info['vocab_size']}) differs from the target's "
                            f"({target_vocab_size}); a draft must share the target's tokenizer")
        self.draft_mesh = str(mesh.draft_shape)

    def start(self, prompt: list[int], target_cache: Cache) -> None:
        _broadcast(("start", target_cache.max_seq_len), TARGET_LEADER, self.mesh)

    def propose(self, ctx: ProposerContext, spec: TreeSpec) -> DraftTree:
        _broadcast(("propose", list(ctx.tokens), spec), TARGET_LEADER, self.mesh)
        return _broadcast(None, self.leader, self.mesh)

    def forget(self) -> None:
        _broadcast(("forget",), TARGET_LEADER, self.mesh)

    def close(self) -> None:
        """The draft group stops serving (every target rank calls it at the end)."""
        _broadcast(("stop",), TARGET_LEADER, self.mesh)

    def fork(self) -> Proposer:
        raise UserError("--draft_mesh_shape decodes one sequence at a time; batches are not supported yet")

    def describe(self) -> dict:
        return {**self.info["describe"], "draft_mesh": self.draft_mesh}


def serve_drafts(mesh: Mesh, config, device: Device, backend) -> None:
    """The draft side: answer the target's requests until it says stop. backend: the
    implementation module of --backend (models/backends/registry.py)."""
    tp = TensorParallel(mesh.tp_rank, mesh.shape.tp, mesh.tp_group) if mesh.shape.tp > 1 else None
    model = backend.load(config.draft_model or config.model, config.draft_layers, device, tp).model
    proposer = DraftModelProposer(backend.runner(model, device, 2), config.max_seq_len,
                                  target_vocab_size=model.vocab_size, label=config.draft_model or config.model)
    info = {"vocab_size": model.vocab_size, "describe": proposer.describe()}
    _broadcast(info if mesh.rank == 0 else None, mesh.draft_leader, mesh)
    while True:
        message = _broadcast(None, TARGET_LEADER, mesh)
        kind = message[0]
        if kind == "start":
            proposer.start([], types.SimpleNamespace(max_seq_len=message[1]))
        elif kind == "propose":
            tree = proposer.propose(ProposerContext(tokens=message[1], target_cache=None), message[2])
            _broadcast(tree if mesh.rank == 0 else None, mesh.draft_leader, mesh)
        elif kind == "forget":
            proposer.forget()
        else:
            return
