"""The hand-written families as the tracer's test: the tracer, forced on a GPT-2, a Llama (grouped-
query attention) and a Qwen2 checkpoint (``TRACER.lower``, bypassing the family that would take
them), must state the same equations and compute the same numbers as the family.

"The same equations up to naming" is checked as: stage by stage (same letters, same repetition),
every equation's sympy tree is identical once (1) every matrix symbol (weights, inputs, named
intermediates) is renamed by its order of first appearance in the stage, (2) every dimension and
constant symbol (d, n_head, ε, θ_base, ...) is replaced by its value, and (3) a weight used
transposed (Wᵀ) counts as a weight of its own; and the weights renamed alike hold the same
numbers (read from the checkpoint, first and last layer). Names and LaTeX spellings (W_{Q} or W_Q,
Y or M) are free. The numbers: both emitted modules within 1e-5 of each other relative to the
logits' scale, and of transformers.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import eqcompile  # noqa: E402
from eqcompile import arch  # noqa: E402
from eqcompile.api import CompiledModel  # noqa: E402
from eqcompile.emit.python import import_module  # noqa: E402
from eqcompile.tracer import TRACER  # noqa: E402
from eqcompile.verify import compare  # noqa: E402

ATOL, RTOL = 1e-4, 1e-5
SIZES = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
             max_position_embeddings=48, bos_token_id=None, eos_token_id=None, pad_token_id=None)
CONFIGS = {  # every size distinct, so that no dimension is taken for another
    "gpt2": lambda: transformers.GPT2Config(vocab_size=61, n_embd=32, n_layer=2, n_head=4, n_inner=40,
                                            n_positions=48, bos_token_id=None, eos_token_id=None),
    "llama": lambda: transformers.LlamaConfig(**SIZES, num_key_value_heads=2),
    "qwen2": lambda: transformers.Qwen2Config(**SIZES, num_key_value_heads=2),
}


@pytest.fixture(scope="module", params=[pytest.param(name, marks=() if name == "llama" else pytest.mark.slow)
                                        for name in CONFIGS])
def both(request, tmp_path_factory):
    """(folder, the tracer's CompiledModel, the hand-written family's) for one random checkpoint."""
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[request.param]()).eval()
    with torch.no_grad():  # gains and biases away from 1 and 0
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp(request.param) / "ckpt"
    model.save_pretrained(folder)
    checkpoint = arch.open_checkpoint(folder)
    return folder, CompiledModel(checkpoint, TRACER.lower(checkpoint)), eqcompile.compile(folder)


def canonical(model: CompiledModel):
    """Per stage: (letter, layers, the equations renamed as the module docstring says, the renamed
    weights' numbers at the first and last layer)."""
    program = model.program
    stages = []
    for stage in program.stages:
        params = {p.symbol: p for p in stage.params}
        transposed = {}  # a weight used as Wᵀ -> a symbol of its own, numbers transposed

        def own_transpose(expr):
            if isinstance(expr, sp.Transpose) and expr.arg in params:
                return transposed.setdefault(expr.arg, MatrixSymbol(f"{expr.arg.name}_T", *expr.shape))
            return expr

        equations = [(eq.lhs, eq.rhs.replace(lambda e: isinstance(e, sp.Transpose) and e.arg in params,
                                             own_transpose)) for eq in stage.equations]
        dims = {symbol: sp.sympify(value) for symbol, value in program.dims.items()}
        order: dict = {}
        for lhs, rhs in equations:
            for node in (*sp.preorder_traversal(rhs), lhs):
                if isinstance(node, MatrixSymbol) and node not in order:  # shapes in numbers (n stays n)
                    order[node] = MatrixSymbol(f"s{len(order)}", *(sp.sympify(s).xreplace(dims) for s in node.shape))
        renamed = [sp.srepr(rhs.xreplace(order).xreplace(dims)) for _, rhs in equations]
        numbers = {}
        for symbol, canonical_symbol in order.items():
            source = params[symbol] if symbol in params else next(
                (params[w] for w, t in transposed.items() if t == symbol), None)
            if source is not None:
                layers = (0, stage.layers - 1) if stage.layers else (None,)
                arrays = [source.source.for_layer(layer).read(model.checkpoint) for layer in layers]
                numbers[canonical_symbol.name] = [a.T if symbol in transposed.values() else a for a in arrays]
        stages.append((stage.letter, stage.layers, renamed, numbers))
    return stages


def test_same_equations_up_to_naming(both):
    _, traced, written = both
    for (letter, layers, equations, numbers), expected in zip(canonical(traced), canonical(written), strict=True):
        assert (letter, layers) == expected[:2]
        assert equations == expected[2], letter
        assert numbers.keys() == expected[3].keys()
        for name, arrays in numbers.items():
            for got, want in zip(arrays, expected[3][name], strict=True):
                np.testing.assert_array_equal(got, want)


def test_same_numbers(both, tmp_path):
    folder, traced, written = both
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    modules = [import_module(m.to_python(tmp_path / name), f"forced_{name}_{folder.parent.name}")
               for name, m in (("traced", traced), ("written", written))]
    rng = np.random.default_rng(0)
    for length in (1, 5, 16):
        tokens = rng.integers(0, 61, length)
        with torch.no_grad():
            expected = reference(torch.as_tensor(tokens)[None], use_cache=False).logits[0].numpy()
        from_trace, from_family = (module.forward(tokens) for module in modules)
        for got, want in ((from_trace, from_family), (from_trace, expected)):
            max_abs, max_rel, ok = compare(got, want, ATOL, RTOL)
            assert ok, (length, max_abs, max_rel)
