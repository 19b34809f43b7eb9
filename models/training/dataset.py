"""The speculators' data on disk: a data folder (small, committed: settings, prompts, the target's
answers as token ids a chunk at a time, stage times) and a work folder (a cache: hidden states
per chunk, training checkpoints), so the data survives a lost machine and its hidden states are
rebuilt from the answers in one teacher-forced pass.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from models.common.cli import write_json_atomic
from models.common.errors import UserError
from models.common.tokenizer import Tokenizer
from models.backends.interface import TorchWeights
from models.training import data, followups

HELD_OUT_CHUNKS = 1  # the first chunks of answers are never trained on: the held-out split of our own data


def answers_chunk(n: int) -> str:
    return f"answers-{n:03d}"


def followups_chunk(n: int) -> str:
    """The second turns after answers chunk n's (held out with it when it is held out)."""
    return f"followups-{n:03d}"


def features_file(work: Path, name: str, layers: tuple[int, ...] = ()) -> Path:
    """A chunk's cached hidden states: the final state alone, or with the outputs of `layers`."""
    return work / (f"features-{name}.pt" if not layers else f"features-{name}-layers-{'-'.join(map(str, layers))}.pt")


class DataFolder:
    """The prompts, the answers (a chunk at a time) and the time each stage took, for one set of
    data settings: a finished chunk is never redone, and a run with other settings is refused."""

    def __init__(self, folder: Path, settings: dict | None = None):
        """settings None: an existing folder, read as it was made."""
        self.folder = folder
        settings_file = folder / "settings.json"
        if settings is None:
            if not settings_file.exists():
                raise UserError(f"{folder} holds no speculator data (no settings.json); "
                                f"make it with scripts/train_speculator.py")
            settings = json.loads(settings_file.read_text())
        folder.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        saved = json.loads(settings_file.read_text()) if settings_file.exists() else {}
        changed = {k: (saved[k], v) for k, v in settings.items() if k in saved and saved[k] != v}
        if changed:
            what = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            raise UserError(f"{folder} holds data made with other settings ({what}); "
                            f"pass another --data_dir or remove that folder")
        if settings.keys() - saved.keys():  # a setting newer than the folder governs only stages it adds
            write_json_atomic(settings_file, {**saved, **settings})
        self.timing_file = folder / "timing.json"
        self.timing = json.loads(self.timing_file.read_text()) if self.timing_file.exists() else {}

    def timed(self, name: str, seconds: float) -> None:
        self.timing[name] = round(self.timing.get(name, 0.0) + seconds, 1)
        write_json_atomic(self.timing_file, self.timing)

    def prompts(self) -> list[str]:
        path = self.folder / "prompts.json.gz"
        if not path.exists():
            raise UserError(f"{self.folder} has no prompts yet; make the data with scripts/train_speculator.py")
        return data.load_json(path)["prompts"]


def load_chunk(folder: DataFolder, work: Path, model: TorchWeights, tokenizer: Tokenizer, name: str,
               prompts: list[data.Prompt], features: bool = True, context: int | None = None,
               layers: tuple[int, ...] = ()) -> tuple[list[list[int]], list[data.Example]] | None:
    """A saved chunk's answers and examples with the last `context` positions of each prompt (None:
    all of it), hidden states from the cache, or rebuilt by one teacher-forced pass when it is gone
    or holds fewer prompt positions; None when the chunk was never answered. features False: the
    answers only, with no examples (making data needs no hidden states of finished chunks, and
    rebuilding them costs about half a chunk's decoding). layers: the target layers whose outputs
    the hidden states hold beside the final state (a cache of their own)."""
    answers_path, features_path = folder.folder / f"{name}.json.gz", features_file(work, name, layers)
    if not answers_path.exists():
        return None
    answers = data.load_answers(answers_path, prompts)
    if not features:
        return answers, []
    ids = [data.encode_prompt(tokenizer, p) for p in prompts]
    examples = data.load_examples(features_path, ids, answers) if features_path.exists() else None
    if examples is None or not data.has_context(examples, ids, context):  # gone, other sequences', or cut
        t0 = time.perf_counter()
        examples = data.record_features(model, ids, answers, layers=layers, desc=f"hidden states {name}")
        data.save_features(features_path, examples, ids, answers)
        folder.timed("features", time.perf_counter() - t0)
    return answers, data.keep_context(examples, context)


def answer_text(tokenizer: Tokenizer, answer: list[int]) -> str:
    return tokenizer.decode([t for t in answer if t not in tokenizer.eos_token_ids]).strip()


def learned_texts(folder: DataFolder, tokenizer: Tokenizer) -> list[str]:
    """Every text in a data folder that the heads learn from or that training checks for overlap:
    the prompts and writing requests, every answer, and each follow-up conversation as its
    overlap check reads it (prompt, first answer and request together). A prompt set meant to stay
    unseen must share no n-gram with these, or adding it to the evaluation set would drop a
    follow-up conversation that a committed chunk answered."""
    prompts = folder.prompts()
    texts = list(prompts)
    requests = folder.folder / "requests.json.gz"
    if requests.exists():
        texts += [request for _, request, _ in data.load_json(requests)]
    answers = {path.name.removesuffix(".json.gz"): [answer_text(tokenizer, a) for a in data.load_json(path)["answers"]]
               for path in sorted(folder.folder.glob("*-[0-9][0-9][0-9].json.gz"))}
    texts += [text for chunk in answers.values() for text in chunk]
    size = folder.settings["chunk_size"]
    for n in range(-(-len(prompts) // size)):
        if answers_chunk(n) not in answers:
            break
        drawn = followups.conversations(prompts[n * size : (n + 1) * size], answers[answers_chunk(n)],
                                        folder.settings["followup_share"], folder.settings["seed"], n)
        texts += [followups.text(c) for c in drawn]
    return texts


def data_name(model: str) -> str:
    """The folder name a model's data and caches go under (a path's last part, ':' made safe)."""
    return (Path(model).name if Path(model).exists() else model).replace(":", "_")
