"""Training as equations: the emitted loss_and_grad against torch.autograd, AdamW against torch.optim.AdamW.

Tolerances: every parameter's gradient to 1e-5 (float32) and 1e-10 (float64) of the largest entry of
torch's gradient for that tensor; ten AdamW steps to 1e-5 in the weights (absolute; they are O(0.1 - 1))
and in the losses (relative).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from eqcompile import api  # noqa: E402
from eqcompile.emit.python import import_module  # noqa: E402

from conftest import make_gpt2  # noqa: E402
from llama_models import make_llama  # noqa: E402
from test_mlp import save_mlp  # noqa: E402

TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
MODELS = {
    "gpt2-tied": lambda folder: make_gpt2(folder),
    "gpt2-untied": lambda folder: make_gpt2(folder, tie_word_embeddings=False),
    "llama-gqa": lambda folder: make_llama(folder, "llama", num_attention_heads=4, num_key_value_heads=2,
                                           hidden_size=16),
}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    cache = {}

    def get(name: str, dtype: str = "float32"):
        if name not in cache:
            cache[name] = MODELS[name](tmp_path_factory.mktemp(name) / "ckpt")
        folder = cache[name]
        out = tmp_path_factory.mktemp(f"{name}-{dtype}")
        module = import_module(api.compile(folder).to_python(out, train=True, dtype=dtype), f"train_{name}_{dtype}")
        return folder, module
    return get


def float64_exact(module, model):
    """In float64, transformers still computes RoPE's angles and Llama's RMSNorm in float32 (by design);
    both sides are switched to float64 so that the comparison measures the gradient, not that rounding."""

    def rotary(self, x, position_ids):
        angles = position_ids[..., None].double() * self.inv_freq.double()
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)

    def rms_norm(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    for name, replacement in (("LlamaRotaryEmbedding", rotary), ("LlamaRMSNorm", rms_norm)):
        for sub in model.modules():
            if type(sub).__name__ == name:
                sub.forward = replacement.__get__(sub)

    def rope(x, theta, positions):
        angles = (positions.astype(np.float64)[:, None] * theta.astype(np.float64))[:, None, :]
        cos, sin = np.cos(angles), np.sin(angles)
        heads = x.reshape(x.shape[0], -1, 2 * theta.shape[-1])
        first, second = np.split(heads, 2, axis=-1)
        return np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1).reshape(x.shape)

    if hasattr(module, "rope"):
        module.rope = rope


def torch_loss_and_grads(folder, tokens, dtype):
    """transformers' model in ``dtype``; the loss is cross-entropy of logits[:-1] against tokens[1:], the
    loss ``labels=input_ids`` gives (which upcasts the logits to float32, so it is written out here)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).to(getattr(torch, dtype)).eval()
    t = torch.as_tensor(tokens)
    logits = model(t[None]).logits[0]
    loss = torch.nn.functional.cross_entropy(logits[:-1], t[1:])
    loss.backward()
    return model, loss.item(), {name: p.grad.numpy() for name, p in model.named_parameters()}


def assert_gradients_match(ours: dict, theirs: dict, tolerance: float):
    assert set(ours) == set(theirs)
    for name, expected in theirs.items():
        scale = np.abs(expected).max()
        assert scale > 0, name
        error = np.abs(ours[name] - expected).max() / scale
        assert ours[name].shape == expected.shape and error <= tolerance, (name, error)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(MODELS))
def test_gradients_equal_autograd(made, name, dtype):
    folder, module = made(name, dtype)
    tokens = np.random.default_rng(1).integers(0, 50, 12)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).to(getattr(torch, dtype)).eval()
    if dtype == "float64":
        float64_exact(module, model)
    t = torch.as_tensor(tokens)
    logits = model(t[None]).logits[0]
    loss = torch.nn.functional.cross_entropy(logits[:-1], t[1:])
    loss.backward()
    L, grads = module.loss_and_grad(tokens)
    assert abs(L - loss.item()) <= TOLERANCE[dtype] * abs(loss.item())
    assert_gradients_match(grads, {n: p.grad.numpy() for n, p in model.named_parameters()}, TOLERANCE[dtype])


def test_loss_is_what_transformers_computes_with_labels(made):
    folder, module = made("gpt2-tied")
    tokens = np.random.default_rng(2).integers(0, 50, 9)
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = model(torch.as_tensor(tokens)[None], labels=torch.as_tensor(tokens)[None]).loss.item()
    assert abs(module.loss(tokens) - expected) <= 1e-6 * expected


def test_tied_embedding_gets_both_paths(made):
    """W_E is read by the embedding and (transposed) by the unembedding: its gradient is the sum."""
    _, module = made("gpt2-tied")
    tokens = np.random.default_rng(3).integers(0, 50, 10)
    _, stage_grads = module._loss_and_grads(tokens, module.WEIGHTS, True)
    lookup, unembed = stage_grads["embedding"]["W_E"], stage_grads["unembedding"]["W_E"]
    assert np.abs(lookup).max() > 0 and np.abs(unembed).max() > 0
    _, grads = module.loss_and_grad(tokens)
    np.testing.assert_array_equal(grads["transformer.wte.weight"], lookup + unembed)


@pytest.mark.parametrize("activation, dtype", [("tanh", "float64"), ("silu", "float64"), ("relu", "float32"),
                                               ("gelu", "float32"), ("sigmoid", "float64")])
def test_mlp_gradients_equal_autograd(tmp_path, activation, dtype):
    """Mean squared error, as torch.nn.MSELoss; GELU's erf is a float32-level fit, so float32 only."""
    model, folder = save_mlp(tmp_path / "mlp", (5, 16, 8, 3), activation)
    module = import_module(api.compile(folder).to_python(tmp_path / "out", train=True, dtype=dtype),
                           f"train_mlp_{activation}_{dtype}")
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal(5).astype(dtype), rng.standard_normal(3).astype(dtype)
    model = model.to(getattr(torch, dtype))
    loss = torch.nn.functional.mse_loss(model(torch.as_tensor(x)), torch.as_tensor(y))
    loss.backward()
    L, grads = module.loss_and_grad((x, y))
    assert abs(L - loss.item()) <= TOLERANCE[dtype] * loss.item()
    assert_gradients_match(grads, {n: p.grad.numpy() for n, p in model.named_parameters()}, TOLERANCE[dtype])


@pytest.mark.parametrize("name", ["gpt2-untied", "llama-gqa"])
def test_ten_adamw_steps_equal_torch(made, name):
    folder, module = made(name)
    rng = np.random.default_rng(5)
    batches = [rng.integers(0, 50, 10) for _ in range(10)]
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    state = module.adamw_init()
    for tokens in batches:
        t = torch.as_tensor(tokens)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(t[None]).logits[0][:-1], t[1:])
        loss.backward()
        optimizer.step()
        state, L = module.adamw_step(state, tokens, lr=3e-3, weight_decay=0.05)
        assert abs(L - loss.item()) <= 1e-5 * loss.item()
    for param_name, p in model.named_parameters():
        ours, theirs = state["tensors"][param_name], p.detach().numpy()
        assert np.abs(ours - theirs).max() <= 1e-5, param_name  # absolute: the weights are O(0.1 - 1)
    assert state["step"] == 10


def test_sgd_step_moves_against_the_gradient(made):
    _, module = made("gpt2-tied")
    tokens = np.random.default_rng(6).integers(0, 50, 12)
    tensors = module.initial_tensors()
    _, grads = module.loss_and_grad(tokens, tensors)
    stepped, before = module.sgd_step(tensors, tokens, lr=0.1)
    for name in tensors:
        np.testing.assert_array_equal(stepped[name], tensors[name] - 0.1 * grads[name])
    assert module.loss(tokens, stepped) < before
    assert module.initial_tensors().keys() == tensors.keys()  # pure: the input is unchanged
    np.testing.assert_array_equal(module.initial_tensors()["transformer.h.0.attn.c_attn.weight"],
                                  tensors["transformer.h.0.attn.c_attn.weight"])


ACTIVATIONS = {"GELUTanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"), "SiLU": torch.nn.functional.silu,
               "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "ReLU": torch.relu, "GELU": torch.nn.functional.gelu,
               "QuickGELU": lambda x: x * torch.sigmoid(1.702 * x)}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_derivatives_are_sympys(name):
    """σ' is sympy.diff of the printed definition, printed by the NumPy printer: it equals torch's autograd,
    and stays finite where exp overflows (|x| up to 200)."""
    from eqcompile.ops import ACTIVATIONS as OPS
    from eqcompile.ops.activation import erf
    from eqcompile.ops.backward import ActivationDerivative

    op = next(o for o in OPS if o.__name__ == name)
    namespace = {"np": np, "erf": erf}
    exec(ActivationDerivative.source(op), namespace)
    x = np.concatenate([np.linspace(-6, 6, 241), [-200.0, -100.0, -50.0, 50.0, 100.0, 200.0]])
    with np.errstate(over="ignore"):  # exp(200) is inf, and s = 1 / (1 + inf) = 0 as it should be
        ours = namespace[ActivationDerivative.function_name(op)](x)
    xt = torch.as_tensor(x, dtype=torch.float64).requires_grad_()
    ACTIVATIONS[name](xt).sum().backward()
    assert np.abs(ours - xt.grad.numpy()).max() <= (1e-6 if name == "GELU" else 1e-12)


def test_latex_train_compiles_with_pdflatex(tmp_path):
    """--latex --train of the sample: loss, every stage's backward (the block once, for l), the updates."""
    from click.testing import CliRunner

    from conftest import SAMPLE, compile_tex, pdflatex_available
    from eqcompile.cli import main

    result = CliRunner().invoke(main, [str(SAMPLE), "--latex", "--train", "--standalone", "-o", str(tmp_path / "t.tex")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "t.tex").read_text()
    for expected in (r"\paragraph{Loss.}", r"\log \operatorname{softmax}\left(Z_{i}\right)_{t_{i+1}}",
                     r"\paragraph{Transformer block, backward $B^{(l)}$, for $l = L, \dots, 1$.}",
                     r"\bar{W}_Q^{(l)} &= {H^{(l)}}^{\top} \bar{Q}^{(l)}", r"\hat m_t &= m_t / (1 - \beta_1^{t})",
                     r"\bar{W}_E &= \operatorname{onehot}\left(t\right)^{\top} \bar{X}^{(0)}"):
        assert expected in text, expected
    assert text.count(r"\paragraph{Transformer block, backward") == 1  # the generic layer, stated once
    if not pdflatex_available():
        pytest.skip("pdflatex is not installed")
    assert compile_tex(tmp_path / "t.tex").returncode == 0


def test_python_train_through_the_cli(tmp_path, made):
    from click.testing import CliRunner

    from eqcompile.cli import main

    folder, _ = made("gpt2-tied")
    result = CliRunner().invoke(main, [str(folder), "--python", str(tmp_path / "out"), "--train"])
    assert result.exit_code == 0, result.output
    module = import_module(tmp_path / "out" / "model.py", "train_cli_gpt2")
    L, grads = module.loss_and_grad([1, 2, 3, 4])
    assert L > 0 and grads["transformer.wte.weight"].shape == (50, 12)


def test_bert_is_refused_for_training(tmp_path, family):
    from click.testing import CliRunner

    from eqcompile.cli import main

    folder, _ = family("bert")
    result = CliRunner().invoke(main, [str(folder), "--python", str(tmp_path / "out"), "--train"])
    assert result.exit_code == 2 and "encoder" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_fine_tuning_the_sample_lowers_its_loss_and_loads_everywhere(tmp_path):
    """eqcompile train: 50 AdamW steps on a paragraph of the corpus; the result loads in transformers (whose
    loss on the paragraph agrees with the one reported) and in eqcompile (whose module computes the same)."""
    from click.testing import CliRunner

    from conftest import ROOT, SAMPLE
    from eqcompile.cli import main

    paragraph = (ROOT / "samples" / "corpus.txt").read_text()[600:1200]
    (tmp_path / "para.txt").write_text(paragraph)
    out = tmp_path / "tuned"
    result = CliRunner().invoke(main, ["train", str(SAMPLE), str(tmp_path / "para.txt"), "--steps", "50",
                                       "--lr", "1e-3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert sum(line.startswith("step ") and " loss " in line for line in lines) == 50  # a line per step
    summary = next(line for line in lines if line.startswith("loss over the whole text:"))
    before, after = (float(x) for x in summary.split(":")[1].replace("before", "").replace("after", "").split(","))
    assert after < 0.5 * before

    compiled = api.compile(out)
    ids = compiled.tokenizer.encode(paragraph)[:64]
    model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    original = transformers.GPT2LMHeadModel.from_pretrained(SAMPLE).eval()
    t = torch.as_tensor(ids)[None]
    with torch.no_grad():
        tuned_loss = model(t, labels=t).loss.item()
        original_loss = original(t, labels=t).loss.item()
        logits = model(t).logits[0].numpy()
    assert tuned_loss < original_loss
    module = import_module(compiled.to_python(tmp_path / "module"), "tuned_sample")
    assert np.abs(module.forward(ids) - logits).max() <= 1e-4
    moved = CliRunner().invoke(main, ["diff", str(SAMPLE), str(out)])  # which weights moved: all of them
    assert moved.exit_code == 1 and "36 of 36 parameters changed" in moved.output


def test_train_refuses_what_it_cannot_read(tmp_path):
    from click.testing import CliRunner

    from conftest import SAMPLE
    from eqcompile.cli import main

    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe not text")
    (tmp_path / "alien.txt").write_text("Zebras \u00e9 quack")  # characters the char-level vocabulary lacks
    for data in ("bad.txt", "alien.txt", "missing.txt"):
        result = CliRunner().invoke(main, ["train", str(SAMPLE), str(tmp_path / data), "-o", str(tmp_path / "o")])
        assert result.exit_code == 2 and result.output.startswith("eqcompile: error:"), (data, result.output)
    assert not (tmp_path / "o").exists()


def test_backward_operations_counted_by_hand(tmp_path):
    """y = W_2 ReLU(W_1 x + b_1) + b_2, widths 5 -> 16 -> 3, MSE: every operation of the backward counted."""
    from eqcompile.train.stats import backward_counts, backward_stats

    _, folder = save_mlp(tmp_path / "mlp", (5, 16, 3), "relu")
    program = api.compile(folder).program
    loss = dict(add=3, mul=3 + 3)  # 2/3 (y + (-1) y*): the sum, the -1 and the 2/3
    layer_2 = dict(mul=3 * 16 + 16 * 3, add=16 * 2)  # W̄_2 = ȳ h_1ᵀ, h̄_1 = W_2ᵀ ȳ
    gate = dict(mul=16 * 5 + 16, add=16 * 4 + 16, Heaviside=16)  # ḡ = h̄_1 ⊙ H(W_1 x + b_1), recomputed
    layer_1 = dict(mul=16 * 5)  # W̄_1 = ḡ xᵀ (b̄_1 = ḡ, x needs none)
    expected = {kind: sum(part.get(kind, 0) for part in (loss, layer_2, gate, layer_1))
                for kind in ("add", "mul", "Heaviside")}
    assert dict(backward_counts(program, 1)) == expected
    assert backward_stats(program).backward == sum(expected.values())


def test_stats_train_reports_the_ratio():
    from click.testing import CliRunner

    from conftest import SAMPLE
    from eqcompile.cli import main

    result = CliRunner().invoke(main, ["stats", str(SAMPLE), "--train"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("backward / forward"))
    backward, forward = (int(x.replace(",", "")) for x in line.split()[3:6:2])
    assert forward == 9_004_544 and 2 < backward / forward < 3 and f"{backward / forward:.4f}" in line


def test_every_backward_op_prints_in_both_printers():
    """Golden strings: a missing LaTeX handler would fail silently (\\operatorname{SoftmaxGrad}), so each is pinned."""
    import sympy as sp
    from sympy.matrices.expressions.matexpr import MatrixSymbol

    from eqcompile.emit.latex import EquationPrinter
    from eqcompile.emit.numpy_printer import ModulePrinter
    from eqcompile.ops import SiLU, n_head, n_kv_head
    from eqcompile.ops.backward import (ActivationDerivative, ColumnSum, GroupSum, LayerNormGainGrad, LayerNormGrad,
                                        RMSNormGainGrad, RMSNormGrad, ScatterAdd, SoftmaxGrad)
    from eqcompile.ops.backward import HeadRMSNormGainGrad, HeadRMSNormGrad
    from eqcompile.ops.softcap import SoftCapGrad
    from eqcompile.train.loss import CrossEntropyGrad, MeanSquaredError, NextTokenCrossEntropy

    n, d, v = sp.symbols("n d v", integer=True, positive=True)
    A, G, X = MatrixSymbol("A", n, n), MatrixSymbol("G", n, d), MatrixSymbol("X", n, d)
    gamma, eps, t = MatrixSymbol("gamma", 1, d), sp.Symbol("epsilon"), MatrixSymbol("t", n, 1)
    Z, y, target = MatrixSymbol("Z", n, v), MatrixSymbol("y", d, 1), MatrixSymbol("y_target", d, 1)
    cases = [
        (SoftmaxGrad(A, A), r"A \odot \left(A - \left(A \odot A\right) \mathbf{1} \mathbf{1}^{\top}\right)",
         "softmax_grad(A, A)"),
        (ColumnSum(G), r"\mathbf{1}^{\top} G", "column_sum(G)"),
        (ScatterAdd(G, t, v), r"\operatorname{onehot}\left(t\right)^{\top} G", "scatter_add(G, t, v)"),
        (GroupSum(G, n_kv_head, n_head), r"\operatorname{concat}_{g=1}^{n_{kv head}}\left(\sum_{h : g(h) = g} G\right)",
         "group_sum(G, n_kv_head)"),
        (LayerNormGrad(X, gamma, eps, G),
         r"\operatorname{\partial_X LN}\left(X;\, \gamma;\, \epsilon\right)^{\top} \left[G\right]",
         "layer_norm_grad(X, gamma, epsilon, G)"),
        (LayerNormGainGrad(X, eps, G), r"\operatorname{\partial_\gamma LN}\left(X;\, \epsilon\right)^{\top} \left[G\right]",
         "layer_norm_gain_grad(X, epsilon, G)"),
        (RMSNormGrad(X, gamma, eps, G),
         r"\operatorname{\partial_X RMSNorm}\left(X;\, \gamma;\, \epsilon\right)^{\top} \left[G\right]",
         "rms_norm_grad(X, gamma, epsilon, G)"),
        (RMSNormGainGrad(X, eps, G),
         r"\operatorname{\partial_\gamma RMSNorm}\left(X;\, \epsilon\right)^{\top} \left[G\right]",
         "rms_norm_gain_grad(X, epsilon, G)"),
        (ActivationDerivative(X, sp.Symbol(SiLU.__name__)), r"\operatorname{SiLU'}\left(X\right)", "silu_derivative(X)"),
        (CrossEntropyGrad(Z, t), r"\frac{1}{n - 1} \begin{bmatrix} \operatorname{softmax}\left(Z_{1:n-1}\right) - "
         r"\operatorname{onehot}\left(t_{2:n}\right) \\ \mathbf{0} \end{bmatrix}", "cross_entropy_grad(Z, t)"),
        (NextTokenCrossEntropy(Z, t), r"-\frac{1}{n - 1} \sum_{i=1}^{n-1} \log \operatorname{softmax}\left(Z_{i}\right)"
         r"_{t_{i+1}}", "cross_entropy(Z, t)"),
        (MeanSquaredError(y, target), r"\frac{1}{d} \left\lVert y - y_{target} \right\rVert^{2}",
         "mean_squared_error(y, y_target)"),
        (SoftCapGrad(X, sp.Symbol("c"), G), r"G \odot \left(1 - \tanh^{2}\left(X / c\right)\right)",
         "soft_cap_grad(X, c, G)"),
        (HeadRMSNormGrad(X, gamma, eps, d, G),
         r"\operatorname{\partial_X RMSNorm_h}\left(X;\, \gamma;\, \epsilon;\, d\right)^{\top} \left[G\right]",
         "head_rms_norm_grad(X, gamma, epsilon, d, G)"),
        (HeadRMSNormGainGrad(X, eps, d, G),
         r"\operatorname{\partial_\gamma RMSNorm_h}\left(X;\, \epsilon;\, d\right)^{\top} \left[G\right]",
         "head_rms_norm_gain_grad(X, epsilon, d, G)"),
    ]
    for op, latex, code in cases:
        assert EquationPrinter()._print(op) == latex, type(op).__name__
        assert ModulePrinter({}).doprint(op) == code, type(op).__name__
