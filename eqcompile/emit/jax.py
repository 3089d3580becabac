"""The JAX emitter: the Program as ``model_jax.py``, the numpy module's equations jitted by XLA.

The ops' numpy functions and the stage functions are the numpy module's, printed by the same
printer; only the array module differs (``np.`` becomes ``jnp.``). What cannot run under ``jax.jit``
changes: the KV cache is a fixed number of rows written with ``lax.dynamic_update_slice``, and the
causal masks of a cached stage take the queries' positions from the cache (a fixed-size cache has
no shape to infer them from). Input checks, weight loading and sampling stay on the host in numpy.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import sympy as sp
from sympy.printing.numpy import JaxPrinter

from ..errors import EqcompileError
from ..load import Checkpoint
from ..ops import OPS, CausalMask, GroupedHeads, Linear, MergeHeads, SlidingWindowMask, SplitHeads
from ..ops.base import numpy_source
from ..program import Interface, Program
from ..tokenizer import Tokenizer
from .files import output_set, write_text
from .numpy_printer import ModulePrinter
from .python import OUTPUTS, _stage_function, module_context, write_module_files
from .templates import render_template

EXTRA = "jax"  # pip install "eqcompile[jax]"


class UnsupportedForJax(EqcompileError):
    """A model the JAX emitter does not write yet, or JAX is not installed."""


class JaxModulePrinter(ModulePrinter, JaxPrinter):
    """The numpy module's printer, with the masks of a cached stage asking the cache for positions.

    ``printmethod`` is JAX's, so an op is printed by ``_print_<Op>`` here when there is one, else
    by its own numpy spelling (``_print_MatrixOp``).
    """

    printmethod = "_jaxcode"

    def __init__(self, names: dict, cached: bool, settings=None):
        super().__init__(names, settings)
        self.cached = cached

    def _print_MatrixOp(self, expr):
        return expr._numpycode(self)

    def _print_CausalMask(self, expr):
        return f"cache.causal_mask({self._print(expr.arg)})" if self.cached else expr._numpycode(self)

    def _print_SlidingWindowMask(self, expr):
        if not self.cached:
            return expr._numpycode(self)
        return f"cache.sliding_window_mask({self._print(expr.arg)}, {self._print(expr.window)})"


def as_jax(code: str) -> str:
    """The same code on ``jax.numpy``: every ``np.`` attribute becomes ``jnp.``."""
    return re.sub(r"\bnp\.", "jnp.", code)


def module_source(program: Program) -> str:
    """The text of ``model_jax.py``."""
    if program.interface != Interface.CAUSAL_LM:
        raise UnsupportedForJax(f"--jax writes causal language models so far; this {program.family} model's "
                                f"interface is {program.interface!r}: use --python")
    functions = []
    for op in _ops_computed(program):
        functions += [f for f in op.numpy_functions if f not in functions]
    stages = [_stage_function(program, stage, JaxModulePrinter(program.dim_python, bool(stage.cached)),
                              fused=False) for stage in program.stages]
    parameters = {stage.name: {p.name: p.key for p in stage.params} for stage in program.stages}
    cached = {}
    for stage in program.stages:
        for symbol in stage.cached:
            cached[symbol.name] = int(sp.sympify(symbol.shape[1]).subs(program.dims))  # [n, columns]
    return render_template(
        "model_jax.py.j2", **module_context(program),
        ops=as_jax(numpy_source(functions)),
        stages=[as_jax(s) for s in stages],
        parameters=parameters,
        cached=cached,
        tokenizer="",  # encode/decode live in model.py
        split={stage: ", ".join(f"{name!r}: ({axis}, {count})" for name, (axis, count) in rules.items())
               for stage, rules in split_table(program).items()},
    )


def _ops_computed(program: Program) -> list[type]:
    """The ops whose numpy functions model_jax.py calls: a cached stage's masks are the cache's methods."""
    used = {type(op) for stage in program.stages for eq in stage.equations for op in eq.rhs.atoms(*OPS)
            if not (stage.cached and isinstance(op, (CausalMask, SlidingWindowMask)))}
    return [op for op in OPS if op in used]


def split_table(program: Program) -> dict[str, dict[str, tuple[int, str]]]:
    """Megatron's placement, read off the equations: stage -> weight -> (axis, count), the axis of
    the weight split over the mesh's "model" axis and the count it holds (whole heads, d_ff, vocabulary).

    Column-parallel: the weights (and biases) of a matrix split into heads (Q, K, V), and those
    whose columns are d_ff (into the MLP). Row-parallel: the weight multiplying the merged heads
    (W_O), and those whose rows are d_ff (out of the MLP). The vocabulary axis of the embedding and
    unembedding is split too. Everything else is replicated.
    """
    named = {name: symbol for symbol, name in program.dim_python.items()}
    table = {}
    for stage in program.stages:
        params = {p.symbol: p.name for p in stage.params}
        rules = table.setdefault(stage.name, {})
        split_by = {}  # an intermediate matrix -> the head count it is split into
        merged = {}  # an intermediate matrix of merged heads -> their count
        for eq in stage.equations:
            for op in eq.rhs.atoms(SplitHeads, GroupedHeads):
                split_by[op.arg] = op.kv_heads if isinstance(op, GroupedHeads) else op.heads
            if isinstance(eq.rhs, MergeHeads):
                merged[eq.lhs] = eq.rhs.heads
        for eq in stage.equations:
            if eq.lhs in split_by:  # Q, K, V: whole heads' columns per device
                for symbol in eq.rhs.free_symbols & params.keys():
                    rules[params[symbol]] = (1, program.dim_python[split_by[eq.lhs]])
            for left, right in _products(eq.rhs):
                if left in merged and right in params:  # W_O: the rows of whole heads
                    rules[params[right]] = (0, program.dim_python[merged[left]])
        for symbol, name in params.items():
            for axis in (1, 0):
                for count in ("d_ff", "n_vocab"):
                    if name not in rules and named.get(count) in sp.sympify(symbol.shape[axis]).free_symbols:
                        rules[name] = (axis, count)
    order = [p.name for _, p in program.params]
    return {stage: dict(sorted(rules.items(), key=lambda rule: order.index(rule[0])))
            for stage, rules in table.items() if rules}


def _products(expr):
    """Every (x, W) multiplied as ``x W`` in an expression, plain or in a ``Linear``."""
    for linear in expr.atoms(Linear):
        yield linear.arg, linear.weight
    for product in expr.atoms(sp.MatMul):
        yield from zip(product.args, product.args[1:])


def write_jax_module(program: Program, checkpoint: Checkpoint, folder: Path,
                     tokenizer: Tokenizer | None = None) -> Path:
    """Write ``folder/model_jax.py`` beside the numpy module's files (it reads their weights)."""
    if importlib.util.find_spec("jax") is None:
        raise UnsupportedForJax(f'--jax needs JAX, the "{EXTRA}" extra: pip install "eqcompile[{EXTRA}]"')
    source = module_source(program)  # refuses an unsupported model before anything is written
    with output_set(folder, OUTPUTS) as staging:  # the numpy module's files and this one, as one set
        write_module_files(program, checkpoint, staging, tokenizer=tokenizer)
        write_text(staging / "model_jax.py", source)
    return Path(folder) / "model_jax.py"
