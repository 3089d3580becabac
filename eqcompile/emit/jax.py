"""The JAX emitter: the Program as ``model_jax.py``, the numpy module's equations jitted by XLA.

The ops' numpy functions and the stage functions are the numpy module's, printed by the same
printer; only the array module differs (``np.`` becomes ``jnp.``). What cannot run under ``jax.jit``
changes: inputs are padded to power-of-two buckets; the KV cache is a fixed number of rows written
with ``lax.dynamic_update_slice`` (its buffers donated where the caller gives them up), and the
causal masks of a cached stage take the queries' positions from the cache (a fixed-size cache has
no shape to infer them from). Input checks, weight loading and sampling stay on the host in numpy.
Every interface is written (templates/jax_forward_<interface>.py.j2), in float32 or bfloat16.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import sympy as sp
from sympy.printing.numpy import JaxPrinter

from ..errors import EqcompileError
from ..load import Checkpoint
from ..ops import OPS, CausalMask, SlidingWindowMask
from ..ops.base import numpy_source
from ..program import Program
from ..sharding import split_table
from ..tokenizer import Tokenizer
from .files import output_set, write_text
from .numpy_printer import ModulePrinter
from .python import OUTPUTS, _stage_function, module_context, write_module_files
from .templates import render_template

EXTRA = "jax"  # pip install "eqcompile[jax]"
DTYPES = ("float32", "bfloat16")  # bfloat16: weights and activations, for accelerators


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

    def _print_LayerValue(self, expr):  # the layer l is a Python int in the unrolled loop: a table lookup
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


def module_source(program: Program, dtype: str = "float32") -> str:
    """The text of ``model_jax.py``, computing in ``dtype`` (one of :data:`DTYPES`)."""
    if dtype not in DTYPES:
        raise UnsupportedForJax(f"--jax computes in {' or '.join(DTYPES)}, not {dtype}")
    functions = []
    for op in _ops_computed(program):
        functions += [f for f in op.jax_functions or op.numpy_functions if f not in functions]
    stages = [_stage_function(program, stage, JaxModulePrinter(program.dim_python, bool(stage.cached)),
                              fused=False) for stage in program.stages]
    parameters = {stage.name: {p.name: p.key for p in stage.params} for stage in program.stages}
    cached = {}
    for stage in program.stages:
        for symbol in stage.cached:
            cached[symbol.name] = int(sp.sympify(symbol.shape[1]).subs(program.dims))  # [n, columns]
    return render_template(
        "model_jax.py.j2", **module_context(program, weights="weights"), dtype=dtype, donate=True,
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


def write_jax_module(program: Program, checkpoint: Checkpoint, folder: Path,
                     tokenizer: Tokenizer | None = None, dtype: str = "float32") -> Path:
    """Write ``folder/model_jax.py`` beside the numpy module's files (it reads their float32 weights
    and rounds them to ``dtype`` on loading)."""
    if importlib.util.find_spec("jax") is None:
        raise UnsupportedForJax(f'--jax needs JAX, the "{EXTRA}" extra: pip install "eqcompile[{EXTRA}]"')
    source = module_source(program, dtype)  # refuses an unsupported model before anything is written
    with output_set(folder, OUTPUTS) as staging:  # the numpy module's files and this one, as one set
        write_module_files(program, checkpoint, staging, tokenizer=tokenizer)
        write_text(staging / "model_jax.py", source)
    return Path(folder) / "model_jax.py"
