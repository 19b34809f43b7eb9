#!/usr/bin/env python3
"""Make the speculators' training data and train a speculator (multi_projection heads or an
EAGLE-style draft head) for a target.

    python scripts/train_speculator.py                      # the data only (resumes; hours on a CPU)
    python scripts/train_speculator.py --kind eagle
    python scripts/train_speculator.py --kind multi_projection --answer_tokens 250000
    python scripts/train_speculator.py --prompt_mix evals --data_dir data/speculator/smollm2-135m-evals \
        --work_dir .cache/train/smollm2-135m/smollm2-135m-evals --n_prompts 1024 --max_seq_len 2048 --followup_share 0
    python scripts/train_speculator.py --kind eagle --extra_data data/speculator/smollm2-135m-evals

Self-distillation: the target answers a mix of prompts greedily (authored templates, tasks over
passages of the Python standard library's documentation, arithmetic word problems, translations,
questions, passages and foreign text it writes itself, and follow-up requests after its own
answers; never an evaluation prompt: any sharing a long n-gram with one is dropped, the
target's own words included), through the demo's engine in continuous batches;
the hidden states those decoding passes compute are what the heads learn from. A second mix,
--prompt_mix evals, puts real prose from OpenAI's evals registry into the same task shapes
(evals_registry.py); it gets its own data folder, which --extra_data adds to a training run. The prompts and
answers (token ids) are small and kept in --data_dir, a chunk at a time, so the data survives
and resumes anywhere; hidden states and checkpoints are a cache in --work_dir, rebuilt from the
answers when gone. The weights (bf16 safetensors + speculator_config.json) go to --output, by
default the folder the suite ships for --model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from loguru import logger

from models.common.cli import (
    ArgumentParser, check_output_folder, layers_arg, output_target, prompt_context_arg, run_cli,
)
from models.common.device import requested_device_name
from models.common.errors import UserError
from models.llama.weights import DEFAULT_MODEL
from models.speculative.engine import METHODS, TARGET, Engine, RunConfig
from models.speculative.speculators import heads
from models.speculative.speculators.heads import SHIPPED as SHIPPED_SPECULATORS
from models.training import data, evals_registry, followups, mix, sources
from models.training.contamination import Contamination, evaluation_texts
from models.training.dataset import (HELD_OUT_CHUNKS, DataFolder, answer_text, answers_chunk, data_name,
                                     features_file, followups_chunk, load_chunk)
from models.training.train import TRAINING_VERSION, TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
DEFAULT_EPOCHS = {"eagle": 4.0, "multi_projection": 6.0}
WRITTEN_TOKENS = 96  # cap on what the target writes to become a prompt
DATA_SETTINGS = ("model", "n_prompts", "max_new_tokens", "chunk_size", "max_seq_len", "seed",
                 "followup_share", "prompt_mix")  # what the saved data depends on
PROMPT_MIXES = ("own", "evals")
DRAFT_VOCAB_SIZE = 8192


def parse_args(argv=None):
    d = TrainConfig()
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", default=None, choices=heads.KINDS, help="what to train (default: make the data only)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--output", default=None, help="weights folder (default: the shipped one for the model)")
    p.add_argument("--data_dir", default=None, help="prompts and answers (default: data/speculator/MODEL)")
    p.add_argument("--work_dir", default=None, help="hidden states and checkpoints (default: .cache/train/MODEL)")
    p.add_argument("--prompt_mix", default="own", choices=PROMPT_MIXES,
                   help="own: templates, the standard library's docstrings and texts the target writes; evals: "
                        "Spec-Bench-shaped tasks over OpenAI's evals registry text (the evals wheel, fetched with pip)")
    p.add_argument("--wheels_dir", default=str(REPO / ".cache" / "unseen_prompts"),
                   help="--prompt_mix evals: where the evals wheel is (fetched with pip when missing)")
    p.add_argument("--extra_data", nargs="+", default=[],
                   help="more data folders (made before, each read with its own settings) whose training chunks "
                        "join this run's training examples")
    p.add_argument("--n_prompts", type=int, default=21000, help="prompts answered, every source together")
    p.add_argument("--max_new_tokens", type=int, default=128, help="answer length for the training data")
    p.add_argument("--chunk_size", type=int, default=256, help="prompts per saved chunk of answers")
    p.add_argument("--followup_share", type=float, default=0.25,
                   help="share of answered prompts that get a second turn (a follow-up request after the answer)")
    p.add_argument("--answer_tokens", type=int, default=None,
                   help="train on the first chunks holding this many answer tokens (default: all of them)")
    p.add_argument("--init_from", default=None,
                   help="start from this speculator folder's weights (same kind; its draft vocabulary and shape "
                        "are kept) instead of fresh ones: more training on a head made before")
    p.add_argument("--draft_vocab_size", type=int, default=None,
                   help=f"the tokens the head drafts from, the target's most frequent in the answers (default: "
                        f"{DRAFT_VOCAB_SIZE}; --init_from keeps its head's unless this is given, and then "
                        f"re-draws it from this run's answers, --extra_data's included, keeping the trained weights)")
    p.add_argument("--feature_layers", type=layers_arg, default=None,
                   help="eagle: target layers (0-based, below the last) whose outputs join the final hidden state as "
                        "the head's input, e.g. 2,14 (EAGLE-3's low/mid/high features; their hidden states are a "
                        "cache of their own). Default: the final state alone, or the --init_from head's layers")
    p.add_argument("--n_heads", type=int, default=4, help="multi_projection heads")
    p.add_argument("--n_blocks", type=int, default=1, help="residual blocks per head")
    p.add_argument("--epochs", type=float, default=None, help=f"default: {DEFAULT_EPOCHS}")
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--unroll_steps", type=int, default=d.unroll_steps,
                   help="eagle: training-time test passes, each on the features the head predicted (1: real features only)")
    p.add_argument("--gen_batch_size", type=int, default=32, help="rows decoded at once (continuous batching)")
    p.add_argument("--gen_method", default=TARGET, choices=METHODS,
                   help="how the answers are decoded (every method emits target-only greedy tokens)")
    p.add_argument("--prompt_context", type=prompt_context_arg, default=None,
                   help="prompt positions each example keeps before its answer: a number, or all (default, "
                        "as drafting sees them)")
    p.add_argument("--max_seq_len", type=int, default=1024, help="prompt + answer tokens per row (longer prompts are left out)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    return p.parse_args(argv)


class Decoder:
    """The target answering prompts through the demo's engine, with hidden states kept."""

    def __init__(self, args, device_name: str, layers: tuple[int, ...] = ()):
        self.engine = Engine(RunConfig(model=args.model, method=args.gen_method, full_batch_size=args.gen_batch_size,
                                       max_generated_tokens=args.max_new_tokens, max_seq_len=args.max_seq_len,
                                       device=device_name, dtype="float32"), uses_baseline=False)
        self.engine.generator.record_hidden = True  # the passes that decode the answers also give the features
        self.engine.generator.record_layers = layers
        self.layers = layers  # the target layers the hidden states hold beside the final state
        self.rows = args.gen_batch_size
        self.tokenizer = self.engine.tokenizer
        self.model = self.engine.target.model

    def encode(self, prompts: list[data.Prompt]) -> list[list[int]]:
        return [data.encode_prompt(self.tokenizer, p) for p in prompts]

    def answer(self, ids: list[list[int]], cap: int, desc: str) -> tuple[list[list[int]], list[data.Example]]:
        results = data.answer_prompts(self.engine.generator, ids, cap, self.rows, desc=desc)
        return [r.tokens for r in results], data.examples_from(ids, results)

    def text(self, answer: list[int]) -> str:
        return answer_text(self.tokenizer, answer)


def chunk_examples(folder: DataFolder, work: Path, decoder: Decoder, name: str, prompts: list[data.Prompt], cap: int,
                   desc: str, features: bool, context: int | None) -> tuple[list[list[int]], list[data.Example]]:
    """One chunk's answers and examples (the last `context` prompt positions each): decoded and
    saved the first time, loaded after (with no examples when features is False)."""
    loaded = load_chunk(folder, work, decoder.model, decoder.tokenizer, name, prompts, features, context,
                        decoder.layers)
    if loaded is not None:
        return loaded
    t0 = time.perf_counter()
    ids = decoder.encode(prompts)
    answers, examples = decoder.answer(ids, cap, desc)
    data.save_features(features_file(work, name, decoder.layers), examples, ids, answers)
    data.save_answers(folder.folder / f"{name}.json.gz", prompts, answers)
    folder.timed("answers", time.perf_counter() - t0)
    return answers, data.keep_context(examples, context)


def build_prompts(folder: DataFolder, work: Path, decoder: Decoder, args,
                  features: bool) -> tuple[list[str], list[data.Example]]:
    """Every prompt, interleaved by source and free of evaluation n-grams, and the examples made
    on the way (the target's answers to the writing requests)."""
    path = folder.folder / "prompts.json.gz"
    if args.prompt_mix == "evals":  # direct prompts only: nothing the target writes first
        if not path.exists():
            save_prompts(path, evals_registry.training_prompts(args.n_prompts, args.seed, Path(args.wheels_dir)),
                         decoder, args)
        return data.load_json(path)["prompts"], []
    # the writing requests are kept: docstrings differ between Python versions, and the saved
    # answers must meet the requests they answered
    passages = sources.stdlib_passages()
    requests_path = folder.folder / "requests.json.gz"
    if requests_path.exists():
        requests = [tuple(r) for r in data.load_json(requests_path)]
    else:
        requests = mix.writing_requests(args.n_prompts, args.seed, passages)
        data.save_json(requests_path, requests)
    answers: list[list[int]] = []
    written: list[data.Example] = []
    size = args.chunk_size
    for n, lo in enumerate(range(0, len(requests), size)):
        part, examples = chunk_examples(folder, work, decoder, f"written-{n:03d}", [r for _, r, _ in requests[lo : lo + size]],
                                        WRITTEN_TOKENS, f"prompts the target writes, chunk {n + 1}/{-(-len(requests) // size)}",
                                        features, args.prompt_context)
        answers += part
        written += examples
    derived = [(source, decoder.text(answer), wrapper) for (source, _, wrapper), answer in zip(requests, answers)]
    derived = [(source, text if wrapper is None else wrapper.format(text=text)) if text else (source, None)
               for source, text, wrapper in derived]
    path = folder.folder / "prompts.json.gz"
    if not path.exists():
        groups = mix.direct_prompts(args.n_prompts, args.seed, passages)
        for source, prompt in derived:
            if prompt is not None:
                groups.setdefault(source, []).append(prompt)
        save_prompts(path, groups, decoder, args)
    prompts = data.load_json(path)["prompts"]
    # a written text whose prompt was dropped (it shares an n-gram with an evaluation prompt, or
    # does not fit) is not learnt from either
    kept = set(prompts)
    return prompts, [e for e, (_, prompt) in zip(written, derived) if prompt in kept]


def save_prompts(path: Path, groups: dict[str, list[str]], decoder: Decoder, args) -> None:
    """The prompt list, interleaved by source, without the prompts that do not fit --max_seq_len
    or share an n-gram with an evaluation prompt."""
    fits = [(s, p) for s, p in mix.interleave(groups)
            if len(decoder.encode([p])[0]) + args.max_new_tokens <= args.max_seq_len]
    evaluation, found = evaluation_texts()
    keep, drop = Contamination(evaluation).clean([p for _, p in fits])
    logger.info(f"{len(fits)} prompts fit --max_seq_len {args.max_seq_len}; {len(drop)} dropped for sharing an "
                f"n-gram with the {len(evaluation)} evaluation prompts in {len(found)} files")
    kept = [fits[i] for i in keep]
    data.save_json(path, {"prompts": [p for _, p in kept], "sources": [s for s, _ in kept],
                          "dropped_for_overlap": len(drop), "evaluation_files": [str(f.relative_to(REPO.parent))
                                                                                 for f in found]})


def chunk_and_followups(folder: DataFolder, work: Path, decoder: Decoder, prompts: list[data.Prompt], n: int,
                        settings, evaluation: Contamination, *, decode: bool, features: bool,
                        context: int | None) -> tuple[list[list[int]], list[data.Example]] | None:
    """Chunk n of the prompts, answers then follow-ups: every answer, and the examples (the last
    `context` prompt positions each). decode False never runs the engine, whose --max_seq_len may
    not fit another folder's prompts: None when the chunk was never answered, and follow-ups not
    yet answered are left out."""
    size = settings.chunk_size
    n_chunks = -(-len(prompts) // size)
    part = prompts[n * size : (n + 1) * size]

    def one(name: str, chunk: list, what: str):
        if decode:
            return chunk_examples(folder, work, decoder, name, chunk, settings.max_new_tokens,
                                  f"{what}, chunk {n + 1}/{n_chunks}", features, context)
        return load_chunk(folder, work, decoder.model, decoder.tokenizer, name, chunk, features, context,
                          decoder.layers)

    first = one(answers_chunk(n), part, "answers")
    if first is None:
        return None
    second = followup_prompts(decoder, evaluation, part, first[0], n, settings)
    more = one(followups_chunk(n), second, "follow-ups") if second else None
    return (first[0] + more[0], first[1] + more[1]) if more else first


def build_examples(folder: DataFolder, work: Path, decoder: Decoder, prompts: list[str], args,
                   features: bool) -> tuple[list[data.Example], list[data.Example], int]:
    """(held-out examples, training examples, the training examples' answer tokens): the chunks in
    order, each chunk's answers then its follow-ups, until the training ones hold answer_tokens
    (None: every chunk). The tokens are counted from the answers, so a budget holds whether or not
    the examples were built (an example learns every answer token but its last)."""
    held_out: list[data.Example] = []
    training: list[data.Example] = []
    trained = 0
    evaluation = Contamination(evaluation_texts()[0])
    for n in range(-(-len(prompts) // args.chunk_size)):
        if args.answer_tokens is not None and n > HELD_OUT_CHUNKS and trained >= args.answer_tokens:
            break
        answers, examples = chunk_and_followups(folder, work, decoder, prompts, n, args, evaluation, decode=True,
                                                features=features, context=args.prompt_context)
        (held_out if n < HELD_OUT_CHUNKS else training).extend(examples)
        trained += sum(len(a) - 1 for a in answers) if n >= HELD_OUT_CHUNKS else 0
    return held_out, training, trained


def extra_examples(path: Path, work: Path, decoder: Decoder, args) -> list[data.Example]:
    """--extra_data: another data folder's training examples (its chunks after the held-out ones,
    with their follow-ups), read with the settings it was made with. Only answered chunks are
    read: its prompts may need a longer --max_seq_len than this run's engine has."""
    folder = DataFolder(path)
    if folder.settings.get("model") != args.model:
        raise UserError(f"--extra_data {path} holds answers of {folder.settings.get('model')}, not --model {args.model}")
    own = argparse.Namespace(**folder.settings, prompt_context=args.prompt_context)
    prompts = folder.prompts()
    evaluation = Contamination(evaluation_texts()[0])
    n_chunks = -(-len(prompts) // own.chunk_size)
    examples: list[data.Example] = []
    for n in range(HELD_OUT_CHUNKS, n_chunks):
        loaded = chunk_and_followups(folder, work, decoder, prompts, n, own, evaluation, decode=False, features=True,
                                     context=args.prompt_context)
        if loaded is None:
            logger.warning(f"--extra_data {path}: chunks {n} to {n_chunks - 1} are not answered yet; "
                           f"training on the ones before")
            break
        examples += loaded[1]
    logger.info(f"--extra_data {path}: {len(examples)} training examples, {data.answer_tokens(examples)} answer tokens")
    return examples


def followup_prompts(decoder: Decoder, evaluation: Contamination, prompts: list[str], answers: list[list[int]],
                     n: int, args) -> list[followups.Conversation]:
    """Chunk n's second-turn conversations that fit --max_seq_len and share no n-gram with an
    evaluation prompt (the target's first answer included)."""
    drawn = followups.conversations(prompts, [decoder.text(a) for a in answers], args.followup_share, args.seed, n)
    fits = [c for c in drawn if len(decoder.encode([c])[0]) + args.max_new_tokens <= args.max_seq_len]
    return [fits[i] for i in evaluation.clean([followups.text(c) for c in fits])[0]]


def digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def digest_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def starting_head(folder: str, kind: str, target) -> tuple[torch.nn.Module, dict]:
    """--init_from: a saved speculator of this kind for this target, to train further, and the
    record of where it came from (its folder, weights digest and own training record)."""
    head = heads.load(folder, target)  # one-line errors for a folder that is not a speculator
    if head.config.kind != kind:
        raise UserError(f"--init_from {folder}: its speculator is {head.config.kind}, not --kind {kind}")
    logger.info(f"starting from {folder} (trained on {head.config.training.get('answer_tokens', '?')} answer "
                f"tokens, draft vocabulary {head.config.draft_vocab_size})")
    record = {"folder": str(Path(folder).resolve()), "weights_sha256": digest_file(Path(folder) / heads.WEIGHTS_FILE),
              "training": dict(head.config.training)}
    return head, record


def main(argv=None) -> int:
    args = parse_args(argv)
    for flag, least in (("n_prompts", 1), ("draft_vocab_size", 2), ("max_new_tokens", 2), ("gen_batch_size", 1),
                        ("answer_tokens", 1), ("chunk_size", 1), ("unroll_steps", 1)):
        value = getattr(args, flag)
        if value is not None and value < least:
            raise UserError(f"--{flag} must be >= {least}, got {value}")
    if not 0 <= args.followup_share <= 1:
        raise UserError(f"--followup_share must be between 0 and 1, got {args.followup_share}")
    name = data_name(args.model)
    output = None  # the weights folder, replaced at the end after hours of work: checked now (a link: its target)
    if args.kind is not None:
        output = output_target(check_output_folder(args.output or SHIPPED_SPECULATORS / f"{name}-{args.kind}",
                                                   "--output"))
    work = Path(args.work_dir) if args.work_dir else REPO / ".cache" / "train" / name
    work.mkdir(parents=True, exist_ok=True)
    folder = DataFolder(Path(args.data_dir) if args.data_dir else REPO / "data" / "speculator" / name,
                        {k: getattr(args, k) for k in DATA_SETTINGS})
    device_name = requested_device_name(args.device, default="cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    start_layers = heads.SpeculatorConfig.load(Path(args.init_from)).hidden_layers if args.init_from else ()
    layers = args.feature_layers if args.feature_layers is not None else start_layers
    if layers and args.kind != "eagle":
        raise UserError(f"--feature_layers {','.join(map(str, layers))}: only --kind eagle reads several layers")
    if start_layers and layers != start_layers:
        raise UserError(f"--init_from {args.init_from} reads layers {list(start_layers)}, not --feature_layers "
                        f"{','.join(map(str, layers)) or 'none'}; start a new head for other layers")
    decoder = Decoder(args, device_name, layers)
    heads.check_feature_layers(layers, decoder.model.n_layers)
    started = time.perf_counter()

    features = args.kind is not None  # the data alone needs no hidden states of what is already answered
    # the target's written texts join the full set only (a budget is chunks of answers), so a budget
    # needs no hidden states of them
    prompts, written = build_prompts(folder, work, decoder, args, features and args.answer_tokens is None)
    held_out, examples, trained = build_examples(folder, work, decoder, prompts, args, features)
    if args.kind is None:
        logger.info(f"data ready in {folder.folder}: {len(prompts)} prompts, {trained} answer tokens to learn "
                    f"outside the held-out chunks (stage times: {folder.timing})")
        return 0
    if args.answer_tokens is None:
        examples = written + examples
    for extra in args.extra_data:
        examples += extra_examples(Path(extra), work / Path(extra).name, decoder, args)
    n_answer = data.answer_tokens(examples)
    loaded = decoder.engine.target
    start, started_from = starting_head(args.init_from, args.kind, loaded.model) if args.init_from else (None, None)
    if start is not None and args.draft_vocab_size is None:
        draft_vocab = start.draft_vocab.cpu()
    else:
        draft_vocab = data.draft_vocabulary(examples, args.draft_vocab_size or DRAFT_VOCAB_SIZE,
                                            loaded.tokenizer.eos_token_ids)
        if start is not None:
            start = heads.with_draft_vocab(start, draft_vocab, loaded.model)
    if start is not None and layers != start.config.hidden_layers:
        start = heads.with_feature_layers(start, layers, loaded.model)
    covered = sum(int(torch.isin(e.tokens[e.answer_start:], draft_vocab).sum()) for e in examples) / max(1, n_answer)
    logger.info(f"{len(examples)} examples, {n_answer} answer tokens; draft vocabulary {draft_vocab.numel()} "
                f"covers {covered:.1%} of them")

    epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS[args.kind]
    config = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         unroll_steps=args.unroll_steps)
    if start is not None:
        head, spec_config = start, start.config
    else:
        spec_config = heads.SpeculatorConfig(
            kind=args.kind, target=args.model, dim=loaded.model.args.dim, vocab_size=loaded.model.args.vocab_size,
            draft_vocab_size=draft_vocab.numel(), n_heads=args.n_heads, n_blocks=args.n_blocks,
            feature_layers=list(layers),
        )
        head = heads.build(spec_config, loaded.model, draft_vocab)
        heads.initialise(head, loaded.model, seed=args.seed)
    run = {"version": TRAINING_VERSION, "train": vars(config), "answer_tokens": args.answer_tokens,
           "prompt_context": args.prompt_context, "n_heads": spec_config.n_heads, "n_blocks": spec_config.n_blocks,
           "draft_vocab_size": draft_vocab.numel(),
           "data": [str(folder.folder.resolve()), len(examples), n_answer],
           **({"extra_data": [str(Path(e).resolve()) for e in args.extra_data]} if args.extra_data else {}),
           **({"init_from": started_from["weights_sha256"]} if started_from else {}),
           **({"feature_layers": list(layers)} if layers else {})}
    checkpoint = work / f"{args.kind}-{digest(run)}.pt"  # another configuration never resumes this one
    losses = train(head, examples, config, checkpoint=checkpoint)
    train_seconds = round(torch.load(checkpoint, weights_only=False).get("seconds", 0.0), 1)

    spec_config.training = {
        "command": "python scripts/train_speculator.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "examples": len(examples), "answer_tokens": n_answer, "draft_vocab_coverage": round(covered, 4),
        **({"extra_data": list(args.extra_data)} if args.extra_data else {}),
        "train": {k: v for k, v in vars(config).items()},
        "loss_first_20": round(sum(losses[:20]) / len(losses[:20]), 4),
        "loss_last_20": round(sum(losses[-20:]) / len(losses[-20:]), 4),
        "seconds": {**folder.timing, f"train_{args.kind}": train_seconds},
        "device": decoder.engine.device.describe(),
        **({"init_from": started_from} if started_from else {}),
    }
    tmp = output.with_name(output.name + ".tmp")
    heads.save(head, tmp)
    if output.exists():
        shutil.rmtree(output)
    tmp.rename(output)
    logger.info(f"saved {args.kind} speculator to {output} (this run: {time.perf_counter() - started:.0f} s; "
                f"data stages: {folder.timing}; training {train_seconds} s)")
    return 0


if __name__ == "__main__":
    run_cli(main)
