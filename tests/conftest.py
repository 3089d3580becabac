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
    model = cls(config).eval()
    with torch.no_grad():  # non-trivial LayerNorm gains and biases, so they are tested too
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
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
