"""Shared fixtures: tiny random GPT-2 checkpoints made by transformers itself, the sample, TeX."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "shakespeare-char"


def make_gpt2(folder: Path, seed: int = 0, lm_head_model: bool = True, **overrides) -> Path:
    """Save a random ``GPT2LMHeadModel`` (or bare ``GPT2Model``) with save_pretrained; return folder."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    settings = dict(vocab_size=50, n_positions=16, n_embd=12, n_layer=2, n_head=3,
                    bos_token_id=None, eos_token_id=None)
    settings.update(overrides)
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**settings)
    cls = transformers.GPT2LMHeadModel if lm_head_model else transformers.GPT2Model
    return save_with_random_norms(cls(config).eval(), folder, ("ln_1.weight", "ln_2.weight", "ln_f.weight"))


def save_with_random_norms(model, folder: Path, gains: tuple[str, ...], bias_scale: float = 0.1) -> Path:
    """Random norm gains (around 1) and biases: a fresh model has 1 and 0, which would test nothing."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(gains):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(bias_scale * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


def reference_logits(folder: Path, tokens) -> np.ndarray:
    """transformers' own from_pretrained + forward: the ground truth."""
    import torch
    import transformers

    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)[None]).logits[0].numpy()


@pytest.fixture
def tiny_gpt2(tmp_path) -> Path:
    return make_gpt2(tmp_path / "tiny")


def pdflatex_available() -> bool:
    return shutil.which("pdflatex") is not None


def compile_tex(tex: Path) -> subprocess.CompletedProcess:
    """pdflatex, no shell escape, in the file's folder; returns the finished process."""
    return subprocess.run(
        ["pdflatex", "-no-shell-escape", "-interaction=nonstopmode", "-halt-on-error", tex.name],
        cwd=tex.parent, capture_output=True, text=True, timeout=120)


def make_sparse_gpt2(folder: Path, n_layer: int = 12, n_embd: int = 768, n_head: int = 12,
                     vocab_size: int = 50257, n_positions: int = 1024) -> Path:
    """A GPT-2-124M-shaped checkpoint in a second: a real safetensors header, zeros for data.

    The data is a hole in a sparse file (the file is truncated to its full size), so every
    symbolic stage sees the real names and shapes; numeric stages read zeros.
    """
    import json
    import struct

    inner = 4 * n_embd
    shapes = {"wte.weight": [vocab_size, n_embd], "wpe.weight": [n_positions, n_embd]}
    for layer in range(n_layer):
        for name, shape in [("ln_1.weight", [n_embd]), ("ln_1.bias", [n_embd]),
                            ("attn.c_attn.weight", [n_embd, 3 * n_embd]), ("attn.c_attn.bias", [3 * n_embd]),
                            ("attn.c_proj.weight", [n_embd, n_embd]), ("attn.c_proj.bias", [n_embd]),
                            ("ln_2.weight", [n_embd]), ("ln_2.bias", [n_embd]),
                            ("mlp.c_fc.weight", [n_embd, inner]), ("mlp.c_fc.bias", [inner]),
                            ("mlp.c_proj.weight", [inner, n_embd]), ("mlp.c_proj.bias", [n_embd])]:
            shapes[f"h.{layer}.{name}"] = shape
    shapes.update({"ln_f.weight": [n_embd], "ln_f.bias": [n_embd]})
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    config = dict(model_type="gpt2", vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd,
                  n_layer=n_layer, n_head=n_head)
    (folder / "config.json").write_text(json.dumps(config))
    return folder
