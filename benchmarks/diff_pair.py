"""The pair of checkpoints the diff benchmarks compare: A random, B = A changed as a fine-tune would.

Used by ``diff_speed.py`` (the fine-tune-like pair and, ``every_tensor``, the worst case), ``diff_memory.py``
and ``documents.py`` (every tensor changed). B is A plus, by default, N(0, 1e-3) noise on every tensor of
the upper half of the layers, a rank-8 update merged into two attention matrices, a scaled final norm;
the rest bit-identical; ``every_tensor`` adds the noise to every tensor instead.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

GPT2_124M = dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
LLAMA_1B = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=2048, intermediate_size=8192,
                num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, hidden_act="silu",
                tie_word_embeddings=True)
NOISE = 1e-3
LORA_RANK = 8


def shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor a GPT-2 or Llama ``config`` has, by name, as the lowering expects it."""
    from eqcompile.arch import gpt2, llama

    family = gpt2 if config["model_type"] == "gpt2" else llama
    return dict(family.expected_tensors(family.config_from_dict(config)))


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    for before, index in zip(parts, parts[1:]):
        if before in ("h", "layers") and index.isdigit():
            return int(index)
    return None


def change(name: str, shape: tuple[int, ...], layers: int, every_tensor: bool):
    """How B's tensor ``name`` differs from A's: "noise", "low-rank", "scale" or None (identical)."""
    layer = layer_of(name)
    if every_tensor or (layer is not None and layer >= layers // 2):
        return "noise"
    if layer in (0, 1) and len(shape) == 2 and name.endswith(("c_attn.weight", "q_proj.weight")):
        return "low-rank"
    if name in ("ln_f.weight", "model.norm.weight"):
        return "scale"
    return None


def write_pair(folder: Path, config: dict, every_tensor: bool) -> tuple[Path, Path]:
    """``folder/a`` with N(0, 0.02) weights and ``folder/b`` changed as :func:`change` says."""
    import numpy as np

    from eqcompile.emit.files import write_safetensors

    table = shapes(config)
    layers = config.get("n_layer") or config["num_hidden_layers"]

    def weights(name: str, side: str):
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        value = rng.standard_normal(table[name], dtype=np.float32)
        value *= np.float32(0.02)
        form = change(name, table[name], layers, every_tensor) if side == "b" else None
        if form == "noise":
            value += np.float32(NOISE) * rng.standard_normal(table[name], dtype=np.float32)
        elif form == "low-rank":
            rows, cols = table[name]
            value += (rng.standard_normal((rows, LORA_RANK), dtype=np.float32) * np.float32(0.01)) \
                @ rng.standard_normal((LORA_RANK, cols), dtype=np.float32)
        elif form == "scale":
            value *= np.float32(1.1)
        return value

    pair = []
    for side in ("a", "b"):
        target = folder / side
        target.mkdir(parents=True, exist_ok=True)
        if not (target / "model.safetensors").exists():
            write_safetensors(target / "model.safetensors", list(table.items()), lambda n, s=side: weights(n, s))
        (target / "config.json").write_text(json.dumps(config))
        pair.append(target)
    return pair[0], pair[1]
