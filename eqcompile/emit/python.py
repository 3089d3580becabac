"""The Python emitter: the Program as a standalone numpy module plus its float32 weights."""

from __future__ import annotations

from pathlib import Path

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from ..load import Checkpoint
from ..ops import OPS, Embed, MatrixOp, is_per_head
from ..ops.attention import CausalAttention, fuse_causal_attention
from ..ops.base import numpy_source
from ..progress import progress_bar
from ..program import Program, Stage
from ..tokenizer import Tokenizer
from .files import output_set, write_safetensors, write_text
from .numpy_printer import ModulePrinter
from .templates import render_template
from .tokenizer_module import DATA_FILE, MODULE_FILE, write_tokenizer

# what a run owns in its folder: replaced as one set, the files of it a run does not write removed
OUTPUTS = ("model.py", "weights.safetensors", MODULE_FILE, DATA_FILE, "model_jax.py")


def module_source(program: Program, tokenizer: bool = False) -> str:
    """The text of ``model.py``: dims, op definitions, one function per stage, ``forward``, and
    with ``tokenizer`` the import of ``encode``/``decode`` from ``tokenizer.py`` beside it."""
    printer = ModulePrinter(program.dim_python)
    functions = _numpy_functions([eq for stage in program.stages for eq in fuse_causal_attention(stage.equations)])
    stages = [_stage_function(program, stage, printer) for stage in program.stages]
    parameters = {stage.name: {p.name: p.key for p in stage.params} for stage in program.stages}
    return render_template("model.py.j2", **module_context(program), ops=numpy_source(functions), stages=stages,
                           parameters=_parameters_source(parameters), column_major=_column_major_keys(program),
                           tokenizer=tokenizer, donate=False)


def _column_major_keys(program: Program) -> list[str]:
    """Keys of the weights the equations multiply only as their transpose ``W.mT`` (and may look rows up
    in, an embedding): model.py loads them column-major, so ``h @ W.mT`` multiplies a C-contiguous
    matrix. Measured on the tied unembedding (1 thread, OpenBLAS 0.3.31): 1.6x faster for one row,
    1.05-1.2x for 32-128; the F-ordered table's row lookup costs 4 ms at 512 tokens."""
    transposed, other = set(), set()
    for stage in program.stages:
        as_transpose = {t.arg for eq in stage.equations for t in eq.rhs.atoms(sp.Transpose)}
        as_table = {e.table for eq in stage.equations for e in eq.rhs.atoms(Embed)}
        for param in stage.params:
            symbol = param.symbol
            if symbol in as_transpose:
                transposed.add(param.key)
            elif symbol not in as_table:  # used as it is stored
                other.add(param.key)
                continue
            for eq in stage.equations:  # any other use?
                rest = eq.rhs.replace(lambda e: e == sp.Transpose(symbol) or isinstance(e, Embed) and e.table == symbol,
                                      lambda e: MatrixSymbol("_stand_in", *e.shape))
                if rest.has(symbol):
                    other.add(param.key)
    return sorted(transposed - other)


def module_context(program: Program, weights: str = "WEIGHTS") -> dict:
    """What every emitted module's template states of the Program, whatever its array library;
    ``weights``: the name the forward's calls read the weights from."""
    return dict(title=program.title, composition=sp.sstr(program.composition()), source=program.source,
                layers=program.layers, dims=[(program.dim_python[s], v) for s, v in program.dims.items()],
                calls=_forward_calls(program, weights), repeated=[s.name for s in program.stages if s.layers],
                interface=program.interface)


def _parameters_source(parameters: dict[str, dict[str, str]]) -> str:
    """The PARAMETERS table as Python: one stage per block, one argument per line."""
    lines = ["{  # stage -> {argument: its key in weights.safetensors; {layer} counts from 0}"]
    for stage, names in parameters.items():
        lines.append(f"    {stage!r}: {{")
        lines += [f"        {name!r}: {key!r}," for name, key in names.items()]
        lines.append("    },")
    return "\n".join([*lines, "}"])


def _numpy_functions(equations) -> list:
    """The numpy functions of the ops the printed equations use, in ``OPS`` order, each once."""
    used = {type(op) for eq in equations for op in eq.rhs.atoms(MatrixOp)}
    functions = []
    for op in (*OPS, CausalAttention):
        functions += [f for f in op.numpy_functions if op in used and f not in functions]
    return functions


def _shape(program: Program, symbol, expr, cached: bool = False) -> str:
    """The shape comment; ``cached``: per-head [.., n, n] arrays of a stage with a KV cache are
    [.., n, m], m the positions seen so far (n without a cache)."""
    if symbol == program.input_symbol and program.takes_tokens:
        return f"[{program.dim_python[program.seq]}]"  # token ids
    dims = [program.dim_python.get(s, str(s)) if isinstance(s, sp.Symbol) else str(s) for s in symbol.shape]
    if is_per_head(expr):
        dims.insert(0, "n_head")  # one slice per head, all heads at once
        if cached and symbol.shape[-1] == program.seq:
            dims[-1] = "m"
    return f"[{', '.join(dims)}]"


def _stage_function(program: Program, stage: Stage, printer: ModulePrinter, fused: bool = True) -> str:
    """A stage as a Python function; ``fused``: causal attention as one ``causal_attention`` call (numpy,
    blocked past 64 tokens; the JAX module keeps the two equations, its cache masks by position)."""
    args = [stage.input.name, *(p.name for p in stage.params), *(s.name for s in stage.extra_inputs),
            *(str(s) for s in stage.layer_symbols), *(["cache"] if stage.cached else [])]
    body = []
    printer.printed.clear()
    equations = fuse_causal_attention(stage.equations) if fused else stage.equations
    for eq in equations:  # causal attention's two equations as one call, where fused
        shape = _shape(program, eq.lhs, eq.rhs, bool(stage.cached))
        body.append(f"{eq.lhs.name} = {printer.doprint(eq.rhs)}  # {shape}")
        if eq.lhs in stage.cached:  # earlier positions' rows, then these: [m, d]
            body.append(f"{eq.lhs.name} = cache.extend({eq.lhs.name!r}, {eq.lhs.name})  # with earlier positions")
    if program.seq is not None and program.seq in printer.printed:  # the code names n: read it off the input
        body.insert(0, f"{program.dim_python[program.seq]} = {stage.input.name}.shape[0]")
    doc = (f'"""{stage.title} {stage.letter}: {_shape(program, stage.input, stage.input)} -> '
           f'{_shape(program, stage.output, stage.output)}."""')
    lines = ["", f"def {stage.name}({', '.join(args)}):", f"    {doc}", *(f"    {line}" for line in body),
             f"    return {stage.output.name}"]
    return "\n".join(lines)


def _forward_calls(program: Program, weights: str) -> list[str]:
    """The body of ``forward`` after its input checks: the composition, stage by stage, each stage's
    weights read from the dict named ``weights``."""
    calls, value = [], program.input_symbol.name
    for stage in program.stages:
        names = [*(s.name for s in stage.extra_inputs), *map(str, stage.layer_symbols)]
        names += ["cache"] if stage.cached else []
        extra = "".join(f", {name}={name}" for name in names)
        if stage.layers:
            loop, items = "params", f"{weights}[{stage.name!r}]"
            if stage.cached:
                loop, items = "params, cache", f"zip({items}, caches)"
            if stage.layer_symbols:
                loop, items = f"l, ({loop})", f"enumerate({items}, start=1)"
            calls += [f"    for {loop} in {items}:", f"        x = {stage.name}({value}, **params{extra})"]
        else:
            calls.append(f"    x = {stage.name}({value}, **{weights}[{stage.name!r}]{extra})")
        value = "x"
    return calls


def write_module(program: Program, checkpoint: Checkpoint, folder: Path, dtype: str = "float32",
                 tokenizer: Tokenizer | None = None, train: bool = False) -> Path:
    """Write ``folder/model.py`` and ``folder/weights.safetensors`` (and, given a tokenizer,
    ``tokenizer.py`` with the ``tokenizer_data.json`` it reads); return the module's path. They
    replace the earlier run's :data:`OUTPUTS` as one set (``files.output_set``).

    ``dtype="float64"`` stores the weights (float32 values, widened exactly; folded ones rounded
    once from float64) as float64, so the module computes in float64: a second implementation to
    measure rounding against. ``train`` appends the training functions (:mod:`eqcompile.train.module`).
    """
    with output_set(folder, OUTPUTS) as staging:  # nothing reaches ``folder`` unless every file is written
        write_module_files(program, checkpoint, staging, dtype, tokenizer, train)
    return Path(folder) / "model.py"


def write_module_files(program: Program, checkpoint: Checkpoint, folder: Path, dtype: str = "float32",
                       tokenizer: Tokenizer | None = None, train: bool = False) -> None:
    """:func:`write_module`'s files, written straight into ``folder`` (a staging folder)."""
    if tokenizer is not None:
        write_tokenizer(tokenizer, folder)
    plan = {binding.key: binding for binding in program.bindings()}
    shapes = [(key, program.numeric_shape(binding.param.symbol)) for key, binding in plan.items()]
    write_safetensors(folder / "weights.safetensors", shapes, lambda key: plan[key].read(checkpoint, program, dtype),
                      progress_bar(shapes, "weights"), dtype)
    source = module_source(program, tokenizer is not None)
    if train:
        from ..train.module import training_source

        source += training_source(program, checkpoint)
    write_text(folder / "model.py", source)


def write_source_only(folder: Path, source: str) -> Path:
    """``folder/model.py`` alone (the literal expansion reads no weights file), replacing the
    earlier run's :data:`OUTPUTS` as one set: its weights and tokenizer do not stay behind."""
    with output_set(folder, OUTPUTS) as staging:
        write_text(staging / "model.py", source)
    return Path(folder) / "model.py"


def import_module(path: Path, name: str = "eqcompile_emitted"):
    """Import an emitted ``model.py`` from its path (it is not on ``sys.path``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
