"""Shared fixtures: tiny random GPT-2 checkpoints made by transformers itself, the sample, TeX."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from eqcompile.load.sparse import header_only

# The reference implementation (the test extra). Where one is not installed at all (.ci/floors runs
# the suite with eqcompile's own dependencies at their floors and no reference library), a test that
# needs it is reported as skipped, naming it, rather than failed.
REFERENCE_LIBRARIES = ("torch", "transformers", "tokenizers")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    error = call.excinfo.value if call.excinfo is not None else None
    if isinstance(error, ModuleNotFoundError):
        missing = (error.name or "").split(".")[0]
        if missing in REFERENCE_LIBRARIES and importlib.util.find_spec(missing) is None:
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0, f"needs {missing} (the test extra)")

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


# Small checkpoints of the families besides GPT-2, for the emitters' tests (appendix, HTML):
# name -> (how to make it in a folder, compile options). The makers live with each family's tests.
FAMILIES = {
    "llama-gqa": (lambda folder: _llama(folder, "llama", num_attention_heads=4, num_key_value_heads=2,
                                        hidden_size=16), {}),
    "qwen2-bias-window": (lambda folder: _llama(folder, "qwen2", num_key_value_heads=1, use_sliding_window=True,
                                                sliding_window=4, max_window_layers=0, tie_word_embeddings=True),
                          {}),
    "bert": (lambda folder: _bert(folder), {}),
    "bert-mean-pooling": (lambda folder: _bert(folder), dict(pooling="mean")),
    "mlp": (lambda folder: _mlp(folder, (4, 16, 4), "gelu"), {}),
}


def _llama(folder: Path, model_type: str, **overrides) -> Path:
    from llama_models import make_llama

    return make_llama(folder, model_type, **overrides)


def _bert(folder: Path) -> Path:
    from test_bert import make_bert

    return make_bert(folder)


def _mlp(folder: Path, widths, activation: str) -> Path:
    from test_mlp import save_mlp

    return save_mlp(folder, widths, activation)[1]


@pytest.fixture(scope="session")
def family(tmp_path_factory):
    """``family(name)``: the folder of the FAMILIES checkpoint ``name`` and its compile options, made once."""
    made: dict[str, tuple[Path, dict]] = {}

    def get(name: str) -> tuple[Path, dict]:
        if name not in made:
            make, options = FAMILIES[name]
            made[name] = make(tmp_path_factory.mktemp(name) / "ckpt"), options
        return made[name]
    return get


def pdflatex_available() -> bool:
    return shutil.which("pdflatex") is not None


def compile_tex(tex: Path) -> subprocess.CompletedProcess:
    """pdflatex, no shell escape, in the file's folder; returns the finished process."""
    return subprocess.run(
        ["pdflatex", "-no-shell-escape", "-interaction=nonstopmode", "-halt-on-error", tex.name],
        cwd=tex.parent, capture_output=True, text=True, timeout=120)


def make_sparse_gpt2(folder: Path, n_layer: int = 12, n_embd: int = 768, n_head: int | None = None,
                     vocab_size: int = 50257, n_positions: int = 1024) -> Path:
    """A GPT-2-shaped checkpoint in a moment: a real safetensors header, its data a hole (zeros).

    Every symbolic stage sees the real names and shapes; numeric stages would read zeros.
    """
    return header_only(folder, dict(model_type="gpt2", vocab_size=vocab_size, n_positions=n_positions,
                                    n_embd=n_embd, n_layer=n_layer, n_head=n_head or n_embd // 64))


def make_sparse_llama(folder: Path, n_layer: int = 32, width: int = 4096, heads: int = 32, kv_heads: int = 32,
                      ffn: int = 11008, vocab: int = 32000, ctx: int = 4096) -> Path:
    """A Llama-2-7B-shaped (by default) bfloat16 checkpoint, header only."""
    return header_only(folder, {
        "model_type": "llama", "vocab_size": vocab, "hidden_size": width, "intermediate_size": ffn,
        "num_hidden_layers": n_layer, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "max_position_embeddings": ctx, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}, "BF16")
