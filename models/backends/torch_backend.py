"""The torch backend: the lean model of models/llama/ (batch-invariant CPU kernels, CUDA graphs).

Loading goes through here so that everything outside the backend sees a TargetModel: a spec's
weights loaded once per process, this rank's tensor-parallel shard on a mesh, and the CUDA-graph
runner around the model that decodes.
"""

from __future__ import annotations

import dataclasses

import torch
from loguru import logger
from transformers import PretrainedConfig

from models.backends.interface import TargetModel
from models.common.device import Device
from models.llama.config import args_from_hf_config
from models.llama.model import Transformer
from models.llama.tensor_parallel import TensorParallel, shard
from models.llama.trace import TracedModel
from models.llama.weights import LoadedModel, has_gguf, load_model, load_tokenizer  # noqa: F401 (load_tokenizer: this backend's)

NAME = "torch"
_LOADED: dict[tuple, LoadedModel] = {}


def load(spec: str, n_layers: int | None, device: Device, tp: TensorParallel | None = None) -> LoadedModel:
    """A model spec loaded once per process (the demo's parametrizations share one target); on a
    tensor-parallel mesh (tp), this rank's shard of it."""
    weights = device.weights
    if weights == "gguf" and not has_gguf(spec):  # a draft model (RunConfig refuses such a target)
        logger.info(f"{spec} is not a GGUF: read as fp32 beside the gguf target")
        weights = "fp32"
    key = (spec, n_layers, device.dtype, str(device.torch_device), weights)
    if key not in _LOADED:
        _LOADED[key] = load_model(spec, n_layers=n_layers, dtype=device.dtype, device=device.torch_device,
                                  weights=weights)
    loaded = _LOADED[key]
    if tp is None or tp.size == 1:
        return loaded
    return dataclasses.replace(loaded, model=shard(loaded.model, tp))


def random_model_of(hf_config: PretrainedConfig, dtype: torch.dtype, device: torch.device, std: float = 0.02,
                    seed: int = 0) -> Transformer:
    """A model of this shape with normal(0, std) weights: timing a shape without its weights."""
    model = Transformer(args_from_hf_config(hf_config), dtype=dtype, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std, generator=gen)
    return model


def runner(model: TargetModel, device: Device, max_block: int) -> TargetModel:
    """The model as decoding calls it: blocks of up to max_block tokens replayed from CUDA graphs
    on a traced device, eager elsewhere."""
    return TracedModel(model, traced=device.traced, max_block=max_block)
