#!/usr/bin/env python3
"""Train a speculator (multi_projection heads or an EAGLE-style draft head) for a target.

    python scripts/train_speculator.py --kind eagle
    python scripts/train_speculator.py --kind multi_projection

Self-distillation: the target answers the project's own prompt corpus greedily (authored
templates and prompts it writes itself; never Spec-Bench) through the demo's engine in
continuous batches, one teacher-forced pass records its hidden states over those answers, and
the head learns to predict what the target will say next. Every
stage is saved under --work_dir and skipped when done, so an interrupted run resumes where it
stopped (training from its last checkpoint); the data is shared by both kinds. The weights
(bf16 safetensors + speculator_config.json) go to --output, by default the folder the suite
ships for the default model.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from loguru import logger

from models.common.cli import ArgumentParser, run_cli, write_json_atomic
from models.common.device import requested_device_name
from models.common.errors import UserError
from models.llama.weights import DEFAULT_MODEL
from models.speculative.engine import METHODS, TARGET, Engine, RunConfig
from models.speculative.speculators.heads import SHIPPED as SHIPPED_SPECULATORS
from models.speculative.speculators import corpus, data, heads
from models.speculative.speculators.train import TrainConfig, train

# the shipped weights were made with these; each kind finishes in under 45 min from scratch on the
# 2-core CPU machine (data about 28 min, shared by both kinds; training 16 min for multi_projection, 15 for eagle)
DEFAULT_EPOCHS = {"eagle": 4.0, "multi_projection": 6.0}
ANSWER_CHUNK = 256  # prompts per saved chunk of answers
DATA_SETTINGS = ("model", "n_prompts", "n_self_written", "max_new_tokens", "seed")  # what the saved data depends on


def parse_args(argv=None):
    d = TrainConfig()
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", required=True, choices=heads.KINDS)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--output", default=None, help="weights folder (default: the shipped one for the model)")
    p.add_argument("--work_dir", default=None, help="data and checkpoints (default: .cache/train/MODEL)")
    p.add_argument("--n_prompts", type=int, default=1800, help="authored prompts")
    p.add_argument("--n_self_written", type=int, default=256, help="prompts the target writes itself")
    p.add_argument("--max_new_tokens", type=int, default=128, help="answer length for the training data")
    p.add_argument("--draft_vocab_size", type=int, default=8192)
    p.add_argument("--n_heads", type=int, default=4, help="multi_projection heads")
    p.add_argument("--n_blocks", type=int, default=1, help="residual blocks per head")
    p.add_argument("--epochs", type=float, default=None, help=f"default: {DEFAULT_EPOCHS}")
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--gen_batch_size", type=int, default=32, help="rows decoded at once (continuous batching)")
    p.add_argument("--gen_method", default=TARGET, choices=METHODS,
                   help="how the answers are decoded (every method emits target-only greedy tokens)")
    p.add_argument("--max_seq_len", type=int, default=1024, help="prompt + answer tokens per row")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    return p.parse_args(argv)


class Stages:
    """Each stage's result is a file in the work folder; a finished stage is never redone. The
    folder belongs to one set of data settings: a run with others is refused, not mixed in."""

    def __init__(self, folder: Path, settings: dict):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        settings_file = folder / "data_settings.json"
        if settings_file.exists():
            saved = json.loads(settings_file.read_text())
            changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
            if changed:
                what = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
                raise UserError(f"{folder} holds data made with other settings ({what}); "
                                f"pass another --work_dir or remove that folder")
        else:
            write_json_atomic(settings_file, settings)
        self.timing_file = folder / "timing.json"
        self.timing = json.loads(self.timing_file.read_text()) if self.timing_file.exists() else {}

    def timed(self, name: str, seconds: float) -> None:
        self.timing[name] = round(self.timing.get(name, 0.0) + seconds, 1)
        write_json_atomic(self.timing_file, self.timing)


def build_prompts(stages: Stages, engine: Engine, args) -> list[str]:
    path = stages.folder / "prompts.json"
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    requests = corpus.self_writing_requests(args.n_self_written, args.seed)
    tok = engine.tokenizer
    written = data.answer_prompts(engine.generator, [tok.encode(r, chat=True) for r, _ in requests], 96,
                                  args.gen_batch_size, desc="self-written prompts")
    self_written = []
    for (_, wrapper), answer in zip(requests, written):
        text = tok.decode([t for t in answer.tokens if t not in tok.eos_token_ids]).strip()
        if text:
            self_written.append(text if wrapper is None else wrapper.format(text=text))
    prompts = corpus.authored_prompts(args.n_prompts, args.seed) + self_written
    write_json_atomic(path, prompts)
    stages.timed("prompts", time.perf_counter() - t0)
    return prompts


def build_examples(stages: Stages, engine: Engine, prompts: list[str], args) -> list[data.Example]:
    """The target's answers and hidden states, a chunk at a time, saved as each finishes (an
    interrupted run resumes): answers as token ids, hidden states beside them as a cache that
    one teacher-forced pass rebuilds when it is gone."""
    tok = engine.tokenizer
    examples: list[data.Example] = []
    for n, lo in enumerate(range(0, len(prompts), ANSWER_CHUNK)):
        part = prompts[lo : lo + ANSWER_CHUNK]
        ids = [tok.encode(p, chat=True) for p in part]
        answers_path = stages.folder / f"answers-{n:03d}.json.gz"
        features_path = stages.folder / f"features-{n:03d}.pt"
        if not answers_path.exists():
            t0 = time.perf_counter()
            results = data.answer_prompts(engine.generator, ids, args.max_new_tokens, args.gen_batch_size,
                                          desc=f"answers {lo}-{lo + len(part)}/{len(prompts)}")
            chunk = data.examples_from(ids, results)
            data.save_features(features_path, chunk)
            data.save_answers(answers_path, part, [r.tokens for r in results])
            stages.timed("answers", time.perf_counter() - t0)
            examples += chunk
            continue
        saved_prompts, answers = data.load_answers(answers_path)
        if saved_prompts != part:
            raise UserError(f"{answers_path} answers other prompts than this run's; "
                            f"remove {stages.folder} or pass another --work_dir")
        if not features_path.exists():
            t0 = time.perf_counter()
            data.save_features(features_path, data.record_features(engine.target.model, ids, answers,
                                                                   desc=f"hidden states {lo}-{lo + len(part)}"))
            stages.timed("features", time.perf_counter() - t0)
        examples += data.load_examples(features_path, ids, answers)
    return examples


def main(argv=None) -> int:
    args = parse_args(argv)
    for flag, least in (("n_prompts", 1), ("n_self_written", 0), ("draft_vocab_size", 2), ("max_new_tokens", 2),
                        ("gen_batch_size", 1)):
        if getattr(args, flag) < least:
            raise UserError(f"--{flag} must be >= {least}, got {getattr(args, flag)}")
    name = args.model if not Path(args.model).exists() else Path(args.model).name
    output = Path(args.output) if args.output else SHIPPED_SPECULATORS / f"{name}-{args.kind}"
    work = Path(args.work_dir) if args.work_dir else Path(".cache") / "train" / name.replace(":", "_")
    device_name = requested_device_name(args.device, default="cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    # the demo's engine decodes the data: continuous batches, any method (all emit the same tokens)
    engine = Engine(RunConfig(model=args.model, method=args.gen_method, full_batch_size=args.gen_batch_size,
                              max_generated_tokens=args.max_new_tokens, max_seq_len=args.max_seq_len,
                              device=device_name, dtype="float32"), uses_baseline=False)
    engine.generator.record_hidden = True  # the passes that decode the answers also give the features
    device, loaded = engine.device, engine.target
    stages = Stages(work, {k: getattr(args, k) for k in DATA_SETTINGS})
    started = time.perf_counter()

    prompts = build_prompts(stages, engine, args)
    examples = build_examples(stages, engine, prompts, args)
    n_answer = sum(len(e.tokens) - e.answer_start for e in examples)
    draft_vocab = data.draft_vocabulary(examples, args.draft_vocab_size, loaded.tokenizer.eos_token_ids)
    covered = sum(int(torch.isin(e.tokens[e.answer_start:], draft_vocab).sum()) for e in examples) / max(1, n_answer)
    logger.info(f"{len(examples)} examples, {n_answer} answer tokens; draft vocabulary {draft_vocab.numel()} "
                f"covers {covered:.1%} of them")

    epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS[args.kind]
    config = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    spec_config = heads.SpeculatorConfig(
        kind=args.kind, target=args.model, dim=loaded.model.args.dim, vocab_size=loaded.model.args.vocab_size,
        draft_vocab_size=draft_vocab.numel(), n_heads=args.n_heads, n_blocks=args.n_blocks,
    )
    head = heads.build(spec_config, loaded.model, draft_vocab)
    heads.initialise(head, loaded.model, seed=args.seed)
    checkpoint = work / f"{args.kind}-checkpoint.pt"
    losses = train(head, examples, config, checkpoint=checkpoint)
    # the checkpoint carries the training time across resumes (a kill loses at most checkpoint_every steps)
    stages.timing[f"train_{args.kind}"] = round(torch.load(checkpoint, weights_only=False).get("seconds", 0.0), 1)
    write_json_atomic(stages.timing_file, stages.timing)

    spec_config.training = {
        "command": "python scripts/train_speculator.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "examples": len(examples), "answer_tokens": n_answer, "draft_vocab_coverage": round(covered, 4),
        "train": {k: v for k, v in vars(config).items()},
        "loss_first_20": round(sum(losses[:20]) / len(losses[:20]), 4),
        "loss_last_20": round(sum(losses[-20:]) / len(losses[-20:]), 4),
        "seconds": stages.timing, "device": device.describe(),
    }
    tmp = output.with_name(output.name + ".tmp")
    heads.save(head, tmp)
    if output.exists():
        import shutil

        shutil.rmtree(output)
    tmp.rename(output)
    logger.info(f"saved {args.kind} speculator to {output} (this run: {time.perf_counter() - started:.0f} s; "
                f"stages so far: {stages.timing})")
    return 0


if __name__ == "__main__":
    run_cli(main)
