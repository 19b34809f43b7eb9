#!/usr/bin/env python3
"""Decode-step and verify cost of the lean model, against the device's own copy bandwidth.

    python scripts/decode_step_bench.py --shape llama-3.1-8b --device cuda --output step.json

For a target of the given shape (random weights: only the shape matters for timing) it
measures, in one process: a device-to-device copy of a large tensor (bytes read + written per
second: the practical bandwidth bound), the traced decode step (q = 1), the verify step for each
q in --q, and from those the achieved weight bandwidth of a decode step (weight bytes / step
time, as a fraction of the copy bandwidth) and the verify cost relative to q = 1. On the CPU the
same steps run eagerly (for tests; absolute CPU times are not a GPU claim).
"""

from __future__ import annotations

import datetime
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from loguru import logger
from transformers import LlamaConfig

from models.common.cli import ArgumentParser, check_writable, run_cli, write_json_atomic
from models.common.device import open_device, requested_device_name
from models.common.errors import UserError
from models.backends import torch_backend
from models.llama.weights import DEFAULT_MODEL, RANDOM_PRESETS, random_hf_config

SHAPES = {
    # Llama-3.1-8B's published config.
    "llama-3.1-8b": dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=False, eos_token_id=128001,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
    ),
    # SmolLM2-135M's shape (the default model), with random weights.
    DEFAULT_MODEL: dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=100000.0, tie_word_embeddings=True, eos_token_id=2,
    ),
}


def shape_config(name: str):
    if name in SHAPES:
        return LlamaConfig(**SHAPES[name])
    if name.startswith("random:") and name.split(":")[1] in RANDOM_PRESETS:
        return random_hf_config(name.split(":")[1])
    raise UserError(f"unknown --shape {name!r}; choose from {', '.join(SHAPES)} or random:PRESET")


def random_model(name: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The torch backend's model of this shape, random weights (this script times that backend)."""
    return torch_backend.random_model_of(shape_config(name), dtype, device)


class Timer:
    """Median wall time of a callable: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, repeats: int, warmup: int = 3) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)


def copy_bandwidth(device: torch.device, n_bytes: int, timer: Timer, repeats: int) -> float:
    src = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    seconds = timer(lambda: dst.copy_(src), repeats)
    return 2 * n_bytes / seconds  # read + write


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="llama-3.1-8b", help=f"{', '.join(SHAPES)} or random:PRESET")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--q", default="2,4,6,8,16", help="verify block sizes compared with q = 1")
    p.add_argument("--context", type=int, default=1024, help="tokens already in the cache")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--copy_mb", type=int, default=2048, help="size of the bandwidth probe")
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    output = check_writable(args.output)
    try:
        qs = sorted({int(q) for q in args.q.split(",")})
    except ValueError:
        raise UserError(f"--q must be a comma list of integers, got {args.q!r}") from None
    if not qs or qs[0] < 1 or args.context < 1 or args.repeats < 1:
        raise UserError("--q values, --context and --repeats must be >= 1")
    device = open_device(requested_device_name(args.device), args.dtype)
    dev = device.torch_device
    model = random_model(args.shape, device.dtype, dev)
    traced = torch_backend.runner(model, device, max(qs))
    cache = model.new_cache(args.context + max(qs) + 1)
    with torch.inference_mode():
        model(torch.zeros(1, args.context, dtype=torch.int64, device=dev), cache, 0, logits_for="none")
    timer = Timer(dev)

    def step(q: int):
        tokens = torch.ones(1, q, dtype=torch.int64, device=dev)

        def run():
            cache.length = args.context  # each timed call rewrites the same slots
            return traced(tokens, cache, args.context)

        return run

    with torch.inference_mode():
        times = {q: timer(step(q), args.repeats) for q in [1, *qs]}
    bandwidth = copy_bandwidth(dev, args.copy_mb * 2**20, timer, max(5, args.repeats // 5))
    weight_bytes = sum(t.numel() * t.element_size() for t in {id(p): p for p in model.parameters()}.values())
    kv_bytes = model.cache_bytes_per_token() * args.context
    achieved = (weight_bytes + kv_bytes) / times[1]
    result = {
        "date": datetime.date.today().isoformat(),
        "device": device.describe(),
        "command": "python scripts/decode_step_bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "shape": args.shape,
        "weight_bytes": weight_bytes,
        "kv_bytes_read": kv_bytes,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "decode_step_ms": times[1] * 1e3,
        "decode_achieved_gb_s": achieved / 1e9,
        "decode_fraction_of_copy_bandwidth": achieved / bandwidth,
        "verify_ms": {str(q): times[q] * 1e3 for q in qs},
        "verify_over_decode": {str(q): times[q] / times[1] for q in qs},
    }
    write_json_atomic(output, result)
    logger.info(
        f"{args.shape} on {device.describe()}: decode {times[1] * 1e3:.2f} ms, {achieved / 1e9:.0f} GB/s "
        f"= {achieved / bandwidth:.0%} of copy ({bandwidth / 1e9:.0f} GB/s); verify/decode "
        + ", ".join(f"q={q}: {times[q] / times[1]:.2f}" for q in qs)
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
