"""Which emitted token came from where, rebuilt from the per-iteration counts in the run log.

The first generated token comes from the prefill (the target). In each verification call, the
first min(accepted, emitted) emitted tokens are accepted drafts and the rest (at most one) is
the target's own token: the correction after a rejected draft, or the bonus after all k were
accepted. A call that proposed nothing is a plain target decode step. Each token also keeps its
call's tree size (nodes, depth; a chain of k is k nodes deep k) and, for multi-draft, the
proposer whose branch was accepted, so hovering a token tells how big a draft it came out of.
"""

from __future__ import annotations

import dataclasses

from models.benchmark.runlog import RunRecord

DRAFT, TARGET, PLAIN, PEER = "draft", "target", "plain", "peer"


@dataclasses.dataclass(frozen=True)
class TokenSource:
    kind: str  # DRAFT, TARGET (prefill, correction or bonus), PLAIN (no drafts proposed), PEER (unknown)
    iteration: int  # 0 for the prefill
    accepted: int = 0
    proposed: int = 0  # draft tree nodes verified in this call
    depth: int = 0  # the tree's deepest level (a chain: its length)
    source: str | None = None  # multi-draft: whose branch the accepted path ended on

    def describe(self) -> str:
        if self.kind == PEER:
            return "transformers generate (no per-iteration record)"
        if self.iteration == 0:
            return "prefill: the target's first token"
        what = {DRAFT: "accepted draft", TARGET: "target token", PLAIN: "target decode, no drafts"}[self.kind]
        text = f"iteration {self.iteration}: {what}, accepted {self.accepted}/{self.proposed}"
        if self.proposed:
            text += f"; tree {self.proposed} nodes, depth {self.depth}"
        return text + (f"; accepted path from {self.source}" if self.source else "")


def _iteration_sources(i: int, it: dict) -> list[TokenSource]:
    """One verification call's emitted tokens: its accepted drafts, then the target's own token."""
    depth = it.get("depth")  # absent in logs from before token trees: a chain, as deep as it is long
    info = dict(iteration=i, accepted=it["accepted"], proposed=it["proposed"],
                depth=it["proposed"] if depth is None else depth, source=it.get("source"))
    drafts = min(it["accepted"], it["emitted"])
    kind = TARGET if it["proposed"] else PLAIN
    return [TokenSource(DRAFT, **info)] * drafts + [TokenSource(kind, **info)] * (it["emitted"] - drafts)


def token_sources(record: RunRecord) -> list[TokenSource]:
    n = len(record.output_ids)
    if record.iterations is None:
        return [TokenSource(PEER, 0)] * n
    sources = [TokenSource(TARGET, 0)]
    for i, it in enumerate(record.iterations, 1):
        sources += _iteration_sources(i, it)
    return sources[:n] + [TokenSource(PEER, 0)] * (n - len(sources))
