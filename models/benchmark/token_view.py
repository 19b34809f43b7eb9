"""Which emitted token came from where, rebuilt from the per-iteration counts in the run log.

The first generated token comes from the prefill (the target). In each verification call, the
first min(accepted, emitted) emitted tokens are accepted drafts and the rest (at most one) is
the target's own token: the correction after a rejected draft, or the bonus after all k were
accepted. A call that proposed nothing is a plain target decode step.
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
    proposed: int = 0

    def describe(self) -> str:
        if self.kind == PEER:
            return "transformers generate (no per-iteration record)"
        if self.iteration == 0:
            return "prefill: the target's first token"
        what = {DRAFT: "accepted draft", TARGET: "target token", PLAIN: "target decode, no drafts"}[self.kind]
        return f"iteration {self.iteration}: {what}, accepted {self.accepted}/{self.proposed}"


def token_sources(record: RunRecord) -> list[TokenSource]:
    n = len(record.output_ids)
    if record.iterations is None:
        return [TokenSource(PEER, 0)] * n
    sources = [TokenSource(TARGET, 0)]
    for i, it in enumerate(record.iterations, 1):
        drafts = min(it["accepted"], it["emitted"])
        kind = TARGET if it["proposed"] else PLAIN
        sources += [TokenSource(DRAFT, i, it["accepted"], it["proposed"])] * drafts
        sources += [TokenSource(kind, i, it["accepted"], it["proposed"])] * (it["emitted"] - drafts)
    return sources[:n] + [TokenSource(PEER, 0)] * (n - len(sources))
