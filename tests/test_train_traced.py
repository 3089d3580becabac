"""Training on traced models: the emitted loss_and_grad of a traced GPT-NeoX (partial rotary, fused
per-head QKV), Phi-3 (fused QKV and gate-up), Gemma-2 (1 + γ gains, soft caps, sliding-window and
global layers), Qwen3 (per-head RMSNorm) and GPT-J (interleaved rotary) against torch.autograd on transformers' own model, as tests/test_train.py does for
the hand-written families.

Tolerance: every parameter's gradient to ``TOLERANCE`` of the largest entry of torch's gradient for
that tensor, and the loss to ``TOLERANCE`` relative (float32 on both sides).
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from eqcompile import api, arch  # noqa: E402
from eqcompile.cli import main  # noqa: E402
from eqcompile.emit.python import import_module  # noqa: E402
from eqcompile.tracer.export import _checkpoint_names  # noqa: E402

import test_trace  # noqa: E402
import test_trace_gemma  # noqa: E402
from test_train import assert_gradients_match, torch_loss_and_grads  # noqa: E402

TOLERANCE = 1e-5
MAKERS = {"gpt_neox": test_trace.make_checkpoint, "phi3": test_trace.make_checkpoint,
          "gemma2": test_trace_gemma.make_checkpoint,
          "qwen3": test_trace.make_checkpoint,  # HeadRMSNorm, grouped-query attention
          "gptj": test_trace.make_checkpoint}  # InterleavedRoPE on part of each head


@pytest.mark.parametrize("name", [pytest.param(name, marks=() if name == "gpt_neox" else pytest.mark.slow)
                                  for name in MAKERS])
def test_traced_gradients_equal_autograd(tmp_path, name):
    folder = MAKERS[name](tmp_path / "ckpt", name)
    module = import_module(api.compile(folder).to_python(tmp_path / "out", train=True), f"train_traced_{name}")
    tokens = np.random.default_rng(1).integers(0, 61, 12)  # past Gemma-2's window of 6
    model, loss, grads = torch_loss_and_grads(folder, tokens, "float32")
    stored = _checkpoint_names(model, arch.open_checkpoint(folder))  # GPT-NeoX saves lm_head as embed_out
    grads = {stored[name]: grad for name, grad in grads.items()}
    ours, our_grads = module.loss_and_grad(tokens)
    assert abs(ours - loss) <= TOLERANCE * abs(loss)
    assert_gradients_match(our_grads, grads, TOLERANCE)


def test_traced_model_trains_through_the_cli(tmp_path):
    """--python DIR --train on a traced GPT-NeoX: the fused per-head QKV tensor's parts are put back
    where they were taken from (the tensors round-trip exactly), and an SGD step lowers the loss."""
    from safetensors.numpy import load_file

    folder = test_trace.make_checkpoint(tmp_path / "ckpt", "gpt_neox")
    result = CliRunner().invoke(main, [str(folder), "--python", str(tmp_path / "out"), "--train"])
    assert result.exit_code == 0, result.output
    module = import_module(tmp_path / "out" / "model.py", "train_traced_cli")
    stored = load_file(folder / "model.safetensors")
    tensors = module.initial_tensors()
    assert "gpt_neox.layers.0.attention.query_key_value.weight" in tensors
    assert all(np.array_equal(array, stored[name]) for name, array in tensors.items())
    tokens = np.random.default_rng(2).integers(0, 61, 10)
    moved, before = module.sgd_step(tensors, tokens, 0.05)
    assert module.loss(tokens, moved) < before


@pytest.mark.slow
def test_mixture_of_experts_training_is_refused_in_one_line(tmp_path):
    folder = test_trace_gemma.make_checkpoint(tmp_path / "ckpt", "mixtral")
    result = CliRunner().invoke(main, [str(folder), "--python", str(tmp_path / "out"), "--train"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("eqcompile: error: no backward for MixtureOfExperts")
    assert not (tmp_path / "out" / "model.py").exists()
