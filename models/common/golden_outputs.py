"""Golden token outputs: target-only greedy output ids stored per device, dtype, model and prompts.

Speculative output is checked against target-only output in the same run; that cannot notice a
change that alters the target itself (model code, kernels, weights, tokenizer, chat template),
since both sides change together. The goldens pin the target: fp32 on the CPU must match
exactly; half precision may differ only at a near-tie of the target's own logits (the same rule
as models/common/correctness.py). A run of n tokens is compared with the first n golden tokens,
so one golden serves every length up to the longest ever stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from models.common.cli import write_atomic
from models.common.correctness import compare
from models.common.errors import UserError

COMMENT = (
    "Target-only greedy output ids of the demo's prompts, per device/dtype/model/prompts/instruct. "
    "Written by: pytest models/demos/speculative_decoding/speculative_demo.py --update_perf_targets"
)


def golden_key(device: str, dtype: str, model: str, prompts: str, instruct: bool) -> str:
    return f"{device}/{dtype}/{model}/{prompts}/{'instruct' if instruct else 'raw'}"


def load_goldens(path: Path) -> dict[str, list[list[int]]]:
    """Every golden of a file; a missing or malformed file is a one-line UserError, so that the
    gate never switches itself off (nor fails only after the whole run)."""
    if not path.is_file():
        raise UserError(f"--golden_outputs {str(path)!r} is not a file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a golden outputs file (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON at line {exc.lineno}: {exc.msg}") from None
    outputs = data.get("outputs") if isinstance(data, dict) else None
    if not isinstance(outputs, dict):
        raise UserError(f"{path}: not a golden outputs file (expected JSON with an 'outputs' mapping)")
    for key, prompts in outputs.items():
        if not (isinstance(prompts, list) and all(
            isinstance(ids, list) and all(type(t) is int for t in ids) for ids in prompts
        )):
            raise UserError(f"{path}: outputs[{key!r}] must be a list of token-id lists, one per prompt")
    return outputs


def check_goldens(
    golden: list[list[int]],
    outputs: list[list[int]],
    *,
    exact: bool,
    margin_at: Callable[[int, list[int]], float] | None = None,
    describe_token: Callable[[int], str] = str,
) -> list[str]:
    """One line per prompt whose target-only output departs from its golden (prefix of equal
    length); margin_at(prompt_index, prefix) gives the target's top-2 margin there."""
    if len(golden) != len(outputs):
        return [f"the goldens hold {len(golden)} prompts but this run has {len(outputs)}"]
    failures = []
    for i, (want, got) in enumerate(zip(golden, outputs)):
        n = min(len(want), len(got))
        margin = None if margin_at is None else (lambda prefix, i=i: margin_at(i, prefix))
        c = compare(want[:n], got[:n], exact=exact, margin_at=margin)
        if not c.ok:
            at = c.diverged_at
            failures.append(
                f"prompt {i}: target-only token {at} is {describe_token(got[at])} ({got[at]}), golden "
                f"{describe_token(want[at])} ({want[at]})" + ("" if c.margin is None else f", top-2 margin {c.margin:.4f}")
            )
    return failures


def merged(golden: list[list[int]] | None, outputs: list[list[int]]) -> list[list[int]]:
    """The goldens to store after a run: the longer of the old and new output per prompt when
    they agree on their common prefix, else the new one."""
    if golden is None or len(golden) != len(outputs):
        return [list(o) for o in outputs]
    result = []
    for old, new in zip(golden, outputs):
        n = min(len(old), len(new))
        result.append(list(old) if old[:n] == new[:n] and len(old) > len(new) else list(new))
    return result


def write_goldens(path: Path, goldens: dict[str, list[list[int]]]) -> None:
    """JSON with one line per prompt, so a changed golden shows as a one-line diff."""
    blocks = []
    for key, outputs in sorted(goldens.items()):
        rows = ",\n".join(f"      {json.dumps(ids)}" for ids in outputs)
        blocks.append(f"    {json.dumps(key)}: [\n{rows}\n    ]")
    text = "{\n" + f'  "_comment": {json.dumps(COMMENT)},\n  "outputs": {{\n' + ",\n".join(blocks) + "\n  }\n}\n"
    write_atomic(path, text)
