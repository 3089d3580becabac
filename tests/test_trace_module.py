"""``eqcompile.trace(module, example_inputs)``: a researcher's own nn.Module, hand-written in torch,
compiled without a checkpoint file. The emitted numpy module must give the module's own output
within ``RTOL`` of its scale (max |emitted - torch| / max |torch|, float32 on both sides)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import eqcompile  # noqa: E402
from eqcompile import UnsupportedArchitecture  # noqa: E402
from eqcompile.emit.python import import_module  # noqa: E402
from eqcompile.verify import compare  # noqa: E402

ATOL, RTOL = 1e-4, 1e-5


class Block(nn.Module):
    """Pre-norm: fused qkv, causal sdpa, a GELU MLP; two residual adds."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, n, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab=50, d=32, heads=4, layers=2, context=64):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class ResidualMLP(nn.Module):
    """No attention, no list of layers: y = (x + W_down relu(W_up LN(x))) W_readout."""

    def __init__(self, d=16, hidden=48, out=5):
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.readout = nn.Linear(d, out)

    def forward(self, x):
        return self.readout(x + self.down(torch.relu(self.up(self.norm(x)))))


def randomized(module: nn.Module) -> nn.Module:
    """Norm gains and biases away from 1 and 0, so every term moves the output."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                p.copy_((1.0 if "ln" in name or "norm" in name else 0.0) + 0.3 * torch.randn_like(p))
    return module.eval()


@pytest.fixture(scope="module")
def gpt():
    module = randomized(TinyGPT())
    return module, eqcompile.trace(module, torch.zeros(1, 4, dtype=torch.long))


@pytest.fixture(scope="module")
def gpt_module(gpt, tmp_path_factory):
    return import_module(gpt[1].to_python(tmp_path_factory.mktemp("tiny_gpt")), "traced_tiny_gpt")


@pytest.mark.parametrize("length", [1, 5, 17])
def test_custom_transformer_matches_its_module(gpt, gpt_module, length):
    module, _ = gpt
    tokens = np.random.default_rng(length).integers(0, 50, length)
    with torch.no_grad():
        expected = module(torch.as_tensor(tokens)[None])[0].numpy()
    max_abs, max_rel, ok = compare(gpt_module.forward(tokens), expected, ATOL, RTOL)
    assert ok, (length, max_abs, max_rel)


def test_custom_transformer_is_one_block_with_weights_by_role(gpt):
    _, compiled = gpt
    block = compiled.program.stages[1]
    assert block.layers == 2 and [s.letter for s in compiled.program.stages] == ["E", "B", "U"]
    sources = {p.name: p.source for p in block.params}
    assert sources["W_Q"].name == "blocks.{layer}.qkv.weight" and sources["W_Q"].blocks == (96, 0, 32)
    assert r"\operatorname{softmax}" in compiled.latex() and "nn.Module TinyGPT" in compiled.latex()


def test_custom_transformer_greedy_generation(gpt, gpt_module):
    module, _ = gpt
    tokens = [3, 14, 15]
    with torch.no_grad():
        for _ in range(16):
            tokens.append(int(module(torch.tensor([tokens]))[0, -1].argmax()))
    assert gpt_module.generate([3, 14, 15], 16, seed=0, temperature=0) == tokens[3:]


def test_the_weights_are_copied_at_trace_time(gpt, gpt_module):
    module, compiled = gpt
    tensor = compiled.checkpoint.tensors["head.weight"]
    assert tensor.shape == (50, 32) and np.array_equal(tensor.read(), module.head.weight.detach().numpy())
    assert not np.shares_memory(tensor.read(), module.head.weight.detach().numpy())


def test_mlp_with_layer_norm_and_residual(tmp_path):
    module = randomized(ResidualMLP()).train()
    compiled = eqcompile.trace(module, torch.zeros(4, 16))
    assert module.training  # traced in eval mode, then left as it was
    program = compiled.program
    assert [s.name for s in program.stages] == ["network"] and program.interface == "rows"
    emitted = import_module(compiled.to_python(tmp_path), "traced_residual_mlp")
    for rows in (1, 7):
        x = np.random.default_rng(rows).standard_normal((rows, 16)).astype(np.float32)
        with torch.no_grad():
            expected = module(torch.as_tensor(x)).numpy()
        max_abs, max_rel, ok = compare(emitted.forward(x), expected, ATOL, RTOL)
        assert ok, (rows, max_abs, max_rel)
    latex = compiled.latex()
    assert r"\mathbb{R}^{n \times d} \to \mathbb{R}^{n \times 5}" in latex and "n_{\\mathrm{head}}" not in latex
    with pytest.raises(ValueError, match=r"need an array \[n, 16\]"):
        emitted.forward(np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("example, message", [
    ((torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)), "one example input tensor"),
    (torch.zeros(2, 4, dtype=torch.long), r"token ids \[1, n\]"),
    (torch.zeros(1, 16), "at least 2 positions"),
])
def test_unusable_examples_are_refused_in_one_line(example, message):
    with pytest.raises(UnsupportedArchitecture, match=message):
        eqcompile.trace(ResidualMLP(), example)


def test_the_tracer_package_stays_importable_beside_the_call():
    import eqcompile.tracer.lower as lower  # the package is eqcompile.tracer; eqcompile.trace is the function

    assert eqcompile.trace is eqcompile.api.trace and lower.StageLowering


class Unusual(nn.Module):
    """Ops no pattern takes, each in the table of generic ops (a norm of its own, a gated clamp)."""

    def __init__(self, d=12):
        super().__init__()
        self.fc, self.out = nn.Linear(d, d), nn.Linear(d, 3)
        self.scale = nn.Parameter(torch.randn(d))

    def forward(self, x):
        h = self.fc(x)
        centred = h - h.mean(-1, keepdim=True)
        h = centred * torch.rsqrt(centred.pow(2).sum(-1, keepdim=True) + 1e-3)
        h = torch.exp(-h.abs()) * self.scale + torch.clamp(h, min=-0.5, max=0.5)
        return self.out(torch.maximum(h, torch.sqrt(torch.abs(x))) / 2)


def test_ops_without_a_pattern_are_lowered_generically_and_listed(tmp_path, capfd):
    module = randomized(Unusual())
    compiled = eqcompile.trace(module, torch.zeros(4, 12))
    listed = capfd.readouterr().err
    assert listed.startswith("eqcompile: lowered generically: ") and listed.count("\n") == 1
    ops = {entry.split(" at (model)")[0] for entry in listed.split("generically: ", 1)[1].strip().split("; ")}
    assert ops == {"sub", "mean", "mul", "rsqrt", "add", "sum", "pow", "maximum", "exp", "neg", "abs", "clamp",
                   "sqrt", "div"}
    latex = compiled.latex()
    assert r"\emph{Note:} Lowered generically" in latex and r"\operatorname{rsqrt}\left(" in latex
    assert compiled.program.stages[0].params[2].source.name == "scale"  # a weight read elementwise, by its name
    emitted = import_module(compiled.to_python(tmp_path), "traced_unusual")
    x = np.random.default_rng(0).standard_normal((7, 12)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.as_tensor(x)).numpy()
    max_abs, max_rel, ok = compare(emitted.forward(x), expected, ATOL, RTOL)
    assert ok, (max_abs, max_rel)


class Cumulative(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x).cumsum(-1)


def test_an_op_outside_the_table_is_refused_naming_it():
    refusal = r"^cannot lower aten op cumsum\.default \(Stream\) at \(model\): no pattern"
    with pytest.raises(UnsupportedArchitecture, match=refusal):
        eqcompile.trace(Cumulative(), torch.zeros(3, 4))
