"""Model shapes for the symbolic benchmarks, written as header-only checkpoints (no data, no disk).

Each shape is a config.json; :func:`eqcompile.arch.header_only` lays out the tensors its
family's lowering expects, with the data region a hole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import eqcompile
from eqcompile.arch import header_only


@dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    config: dict = field(repr=False)
    dtype: str = "F32"

    def write(self, folder: Path) -> Path:
        return header_only(folder / self.name, self.config, self.dtype)


def gpt2(name: str, layers: int, width: int, vocab: int = 50257, ctx: int = 1024) -> Shape:
    return Shape(name, layers, {"model_type": "gpt2", "vocab_size": vocab, "n_positions": ctx, "n_embd": width,
                                "n_layer": layers, "n_head": width // 64})


def llama(name: str, layers: int, width: int, heads: int, kv_heads: int, ffn: int, vocab: int = 32000,
          ctx: int = 4096) -> Shape:
    """A Hugging Face ``LlamaForCausalLM`` checkpoint in bfloat16, untied."""
    return Shape(name, layers, {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": width,
        "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "vocab_size": vocab, "max_position_embeddings": ctx,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
        "torch_dtype": "bfloat16"}, dtype="BF16")


def parameters(path: Path) -> int:
    return eqcompile.compile(path).stats().parameters


# the shapes: what users compile, from 100M to 70B parameters
MODELS = [
    gpt2("gpt2-124m", 12, 768),
    gpt2("gpt2-xl-1.5b", 48, 1600),
    llama("llama-2-7b", 32, 4096, 32, 32, 11008),
    llama("llama-2-70b", 80, 8192, 64, 8, 28672),
]
LAYER_COUNTS = (12, 24, 48, 96)


def layer_series(counts=LAYER_COUNTS, width: int = 768) -> list[Shape]:
    """GPT-2-124M's width at several depths: how the cost grows with the number of layers."""
    return [gpt2(f"gpt2-d{width}-{layers}-layers", layers, width) for layers in counts]
