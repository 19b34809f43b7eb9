"""transformers' own model on the same weights: the reference for parity tests and the peer
for benchmarks."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from models.llama.weights import LoadedModel, parse_random_spec, random_hf_config, random_state_dict


def random_checkpoint(preset: str, seed: int = 0, n_layers: int | None = None) -> tuple[PretrainedConfig, dict]:
    """A random preset's config and weights as transformers names them; with n_layers, the first
    layers of the same model (the lean model's random:PRESET cut the same way)."""
    config = random_hf_config(preset)
    state = random_state_dict(config, seed)
    if n_layers is not None:
        config.num_hidden_layers = n_layers
        if hasattr(config, "layer_types") and config.layer_types:
            config.layer_types = config.layer_types[:n_layers]
        state = {k: v for k, v in state.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < n_layers}
    return config, state


class HFReference:
    def __init__(self, hf_model):
        self.model = hf_model.eval()

    @classmethod
    def from_config(cls, hf_config: PretrainedConfig, state: dict[str, torch.Tensor]) -> HFReference:
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32, attn_implementation="eager")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if m != "lm_head.weight"]:
            raise ValueError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
        if hf_config.tie_word_embeddings:
            model.tie_weights()
        return cls(model)

    @classmethod
    def random(cls, preset: str, seed: int = 0, n_layers: int | None = None) -> HFReference:
        return cls.from_config(*random_checkpoint(preset, seed, n_layers))

    @classmethod
    def for_loaded(cls, loaded: LoadedModel, dtype: torch.dtype = torch.float32) -> HFReference:
        if loaded.folder is None:
            raise ValueError(f"{loaded.name} has no checkpoint folder for transformers to load")
        return cls(AutoModelForCausalLM.from_pretrained(str(loaded.folder), dtype=dtype, local_files_only=True))

    @classmethod
    def for_random_loaded(cls, loaded: LoadedModel) -> HFReference:
        """A random:PRESET[:SEED] model has no folder; its seed rebuilds the same weights for transformers."""
        _, seed = parse_random_spec(loaded.name)
        return cls.from_config(loaded.hf_config, random_state_dict(loaded.hf_config, seed))

    @torch.inference_mode()
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens).logits

    @torch.inference_mode()
    def greedy(self, prompt: list[int], max_new_tokens: int, **generate_kwargs) -> list[int]:
        ids = torch.tensor([prompt], device=self.model.device)
        out = self.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=self.model.config.eos_token_id, **generate_kwargs,
        )
        return out[0, len(prompt):].tolist()
