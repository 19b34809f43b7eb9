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
from models.common import quantized
from models.llama.weights import DEFAULT_MODEL, RANDOM_PRESETS, load_model, random_hf_config
from models.speculative.options import WEIGHT_FORMATS

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
    """Wall times of a callable: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def once(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def __call__(self, fn, repeats: int, warmup: int = 3) -> float:
        """The median of `repeats` calls after `warmup`."""
        for _ in range(warmup):
            fn()
        return statistics.median(self.once(fn) for _ in range(repeats))


def spread(times: list[float]) -> dict[str, float]:
    """Median and the 10th / 90th percentiles, in ms: one noisy machine's run, honestly."""
    cuts = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return {"median": statistics.median(times) * 1e3, "p10": cuts[0] * 1e3, "p90": cuts[-1] * 1e3}


def copy_bandwidth(device: torch.device, n_bytes: int, timer: Timer, repeats: int) -> float:
    src = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    seconds = timer(lambda: dst.copy_(src), repeats)
    return 2 * n_bytes / seconds  # read + write


def kernel_peak_flops(timer: Timer, repeats: int, weights: str = "fp32", isa: str = "") -> float | None:
    """The CPU kernel's own FLOP rate where it is compute-bound: 64 rows against an L2-sized weight
    of the format (gguf: Q4_1 blocks, dequantized as it multiplies, under `isa`), the roofline's
    compute roof. None where the kernels do not run (CUDA, or not built)."""
    from models.common.cpu_kernels import skinny_kernels

    kernels = skinny_kernels()
    if kernels is None:
        return None
    x, w = torch.randn(64, 576), torch.randn(192, 576)
    if weights == "fp32":
        return 2 * 64 * 576 * 192 / timer(lambda: kernels.skinny_linear(x, w), max(repeats, 20))
    blocks = torch.randint(0, 256, (192, 576 // quantized.BLOCK * quantized.KINDS["Q4_1"][1]), dtype=torch.uint8)
    blocks.view(192, -1, 20)[:, :, :4] = torch.tensor([0, 0x20, 0, 0], dtype=torch.uint8)  # d = 2^-7, m = 0: finite

    def run():
        if isa:
            quantized.kernel_isa(isa)
        kernels.skinny_linear_q(x, blocks, quantized.KINDS["Q4_1"][0])
    return 2 * 64 * 576 * 192 / timer(run, max(repeats, 20))


def unique_params(model: torch.nn.Module) -> list[torch.Tensor]:
    return list({id(p): p for p in model.parameters()}.values())


def load_targets(args, device) -> dict[str, torch.nn.Module]:
    """One model per --weights format: a real one (--model), or random weights of --shape (fp32 only)."""
    formats = list(dict.fromkeys(w.strip() for w in args.weights.split(",")))
    for w in formats:
        if w not in WEIGHT_FORMATS:
            raise UserError(f"unknown --weights {w!r}; choose from {', '.join(WEIGHT_FORMATS)}")
    if args.model is None:
        if formats != ["fp32"]:
            raise UserError("--weights gguf times a GGUF's own blocks: give --model (smollm2-135m, gemma3-270m or a "
                            ".gguf)")
        return {"fp32": random_model(args.shape, device.dtype, device.torch_device)}
    return {w: load_model(args.model, dtype=device.dtype, device=device.torch_device, weights=w).model
            for w in formats}


def kernel_isas(requested: str, dev: torch.device) -> list[str]:
    """--kernel_isa as a list ([""]: the CPU's own, unchanged); one the CPU lacks is one line."""
    isas = [i.strip() for i in requested.split(",") if i.strip()]
    if not isas:
        return [""]
    if dev.type != "cpu":
        raise UserError(f"--kernel_isa is for the CPU kernels, not {dev.type}")
    for isa in isas:
        try:
            quantized.kernel_isa(isa)
        except RuntimeError as exc:
            raise UserError(f"--kernel_isa {isa}: {str(exc).splitlines()[0]}") from None
    quantized.kernel_isa(isas[0])
    return isas


def linear_weights(model: torch.nn.Module) -> int:
    """The weights its linears multiply by (a quantized one counts the weights its blocks hold)."""
    return sum(p.shape[0] * quantized.row_weights(p) if quantized.is_quantized(p) else p.numel()
               for p in unique_params(model) if p.dim() == 2 or quantized.is_quantized(p))


def roofline_ms(q: int, step_bytes: int, n_weights: int, bandwidth: float, peak: float | None) -> float:
    """The step's floor: its weight and KV bytes over the copy bandwidth, or its linears' FLOPs over
    the kernel's peak, whichever is longer."""
    compute = 2 * n_weights * q / peak if peak else 0.0
    return max(step_bytes / bandwidth, compute) * 1e3


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="llama-3.1-8b", help=f"{', '.join(SHAPES)} or random:PRESET (random weights)")
    p.add_argument("--model", default=None, help="a real model spec instead of --shape (smollm2-135m, a .gguf, ...)")
    p.add_argument("--weights", default="fp32", help="comma list of weight formats, timed interleaved: fp32, gguf "
                   "(gguf needs --model)")
    p.add_argument("--kernel_isa", default="", help="comma list of the CPU kernels' instruction sets to time "
                   "interleaved, each format under each: avx512, avx2 (default: the CPU's widest)")
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
    isas = kernel_isas(args.kernel_isa, dev)
    loaded = load_targets(args, device)
    # each format under each instruction set ("gguf avx2"), or the formats alone with the CPU's own
    models = {f"{w} {isa}" if len(isas) > 1 else w: (model, isa) for w, model in loaded.items() for isa in isas}
    steps = {}
    for w, (model, isa) in models.items():
        traced = torch_backend.runner(model, device, max(qs))
        cache = model.new_cache(args.context + max(qs) + 1)
        with torch.inference_mode():
            model(torch.ones(1, args.context, dtype=torch.int64, device=dev), cache, 0, logits_for="none")
        for q in [1, *qs]:
            def run(traced=traced, cache=cache, tokens=torch.ones(1, q, dtype=torch.int64, device=dev), isa=isa):
                if isa:
                    quantized.kernel_isa(isa)
                cache.length = args.context  # each timed call rewrites the same slots
                return traced(tokens, cache, args.context)
            steps[w, q] = run
    timer = Timer(dev)
    times: dict[tuple[str, int], list[float]] = {key: [] for key in steps}
    with torch.inference_mode():
        for fn in steps.values():
            for _ in range(3):
                fn()
        for _ in range(args.repeats):  # interleaved: formats and q share the machine's drift
            for key, fn in steps.items():
                times[key].append(timer.once(fn))
    bandwidth = copy_bandwidth(dev, args.copy_mb * 2**20, timer, max(5, args.repeats // 5))
    peaks = {w: kernel_peak_flops(timer, args.repeats, w.split()[0], isa) if dev.type == "cpu" else None
             for w, (_, isa) in models.items()}
    kv_bytes = next(iter(loaded.values())).cache_bytes_per_token() * args.context  # the same in every format
    formats = {}
    for w, (model, isa) in models.items():
        median = {q: statistics.median(times[w, q]) for q in [1, *qs]}
        weight_bytes = sum(t.numel() * t.element_size() for t in unique_params(model))
        peak = peaks[w]
        roof = {q: roofline_ms(q, weight_bytes + kv_bytes, linear_weights(model), bandwidth, peak) for q in [1, *qs]}
        formats[w] = {
            "weight_bytes": weight_bytes,
            "kernel_isa": isa or None,
            "kernel_peak_gflop_s": peak / 1e9 if peak else None,
            "decode_step_ms": median[1] * 1e3,
            "decode_spread_ms": spread(times[w, 1]),
            "decode_achieved_gb_s": (weight_bytes + kv_bytes) / median[1] / 1e9,
            "decode_fraction_of_copy_bandwidth": (weight_bytes + kv_bytes) / median[1] / bandwidth,
            "verify_ms": {str(q): median[q] * 1e3 for q in qs},
            "verify_spread_ms": {str(q): spread(times[w, q]) for q in qs},
            "verify_over_decode": {str(q): median[q] / median[1] for q in qs},
            "roofline_ms": {str(q): roof[q] for q in [1, *qs]},
            "over_roofline": {str(q): median[q] * 1e3 / roof[q] for q in [1, *qs]},
            # a chain of q - 1 free drafts (lookup) pays when its mean accepted tokens beat this
            "break_even_tau": {str(q): median[q] / median[1] for q in qs},
        }
    first = formats[next(iter(models))]
    result = {
        "date": datetime.date.today().isoformat(),
        "device": device.describe(),
        "command": "python scripts/decode_step_bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "shape": args.model or args.shape,
        "kv_bytes_read": kv_bytes,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        # the first format's figures at the top level, as before --weights
        **{k: first[k] for k in ("weight_bytes", "kernel_peak_gflop_s", "decode_step_ms", "decode_achieved_gb_s",
                                 "decode_fraction_of_copy_bandwidth", "verify_ms", "verify_over_decode")},
        "formats": formats,
    }
    write_json_atomic(output, result)
    for w, f in formats.items():
        logger.info(
            f"{result['shape']} {w} on {device.describe()}: decode {f['decode_step_ms']:.2f} ms "
            f"(p10-p90 {f['decode_spread_ms']['p10']:.2f}-{f['decode_spread_ms']['p90']:.2f}), "
            f"{f['decode_achieved_gb_s']:.0f} GB/s = {f['decode_fraction_of_copy_bandwidth']:.0%} of copy "
            f"({bandwidth / 1e9:.0f} GB/s), {f['over_roofline']['1']:.2f}x its roofline; verify/decode "
            + ", ".join(f"q={q}: {f['verify_over_decode'][str(q)]:.2f} ({f['over_roofline'][str(q)]:.2f}x roof)"
                        for q in qs)
        )
    return 0


if __name__ == "__main__":
    run_cli(main)
