"""The Python emitter: the Program as a standalone numpy module plus its float32 weights."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import sympy as sp

from ..load import Checkpoint
from ..ops import OPS, MatrixOp, is_per_head
from ..ops.attention import CausalAttention, fuse_causal_attention
from ..ops.base import numpy_source
from ..program import Param, Program, Stage
from ..tokenizer import Tokenizer, write_tokenizer
from .files import progress_bar, staging_folder, write_safetensors, write_text
from .numpy_printer import ModulePrinter
from .templates import render_template


def module_source(program: Program, tokenizer: str = "") -> str:
    """The text of ``model.py``: dims, op definitions, one function per stage, ``forward``, and
    ``tokenizer`` (the source :func:`eqcompile.tokenizer.write_tokenizer` returns), if any."""
    printer = ModulePrinter(program.dim_python)
    functions = _numpy_functions([eq for stage in program.stages for eq in fuse_causal_attention(stage.equations)])
    stages = [_stage_function(program, stage, printer) for stage in program.stages]
    parameters = {stage.name: {p.name: p.key for p in stage.params} for stage in program.stages}
    return render_template(
        "model.py.j2",
        title=program.title,
        composition=sp.sstr(program.composition()),
        source=program.source,
        layers=program.layers,
        dims=[(program.dim_python[s], v) for s, v in program.dims.items()],
        ops=numpy_source(functions),
        stages=stages,
        calls=_forward_calls(program),
        parameters=parameters,
        repeated=[s.name for s in program.stages if s.layers],
        interface=program.interface,
        tokenizer=tokenizer,
    )


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


def _stage_function(program: Program, stage: Stage, printer: ModulePrinter) -> str:
    args = [stage.input.name, *(p.name for p in stage.params), *(s.name for s in stage.extra_inputs),
            *(str(s) for s in stage.layer_symbols), *(["cache"] if stage.cached else [])]
    body = []
    for eq in fuse_causal_attention(stage.equations):  # causal attention's two equations as one call
        shape = _shape(program, eq.lhs, eq.rhs, bool(stage.cached))
        body.append(f"{eq.lhs.name} = {printer.doprint(eq.rhs)}  # {shape}")
        if eq.lhs in stage.cached:  # earlier positions' rows, then these: [m, d]
            body.append(f"{eq.lhs.name} = cache.extend({eq.lhs.name!r}, {eq.lhs.name})  # with earlier positions")
    if program.seq is not None and any(
            _uses(line.split("  #")[0].split(" = ", 1)[1], program.dim_python[program.seq]) for line in body
            if " = " in line):
        body.insert(0, f"{program.dim_python[program.seq]} = {stage.input.name}.shape[0]")
    doc = (f'"""{stage.title} {stage.letter}: {_shape(program, stage.input, stage.input)} -> '
           f'{_shape(program, stage.output, stage.output)}."""')
    lines = ["", f"def {stage.name}({', '.join(args)}):", f"    {doc}", *(f"    {line}" for line in body),
             f"    return {stage.output.name}"]
    return "\n".join(lines)


def _uses(code: str, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", code) is not None


def _forward_calls(program: Program) -> list[str]:
    """The body of ``forward`` after its input checks: the composition, stage by stage."""
    calls, value = [], program.input_symbol.name
    for stage in program.stages:
        names = [*(s.name for s in stage.extra_inputs), *map(str, stage.layer_symbols)]
        names += ["cache"] if stage.cached else []
        extra = "".join(f", {name}={name}" for name in names)
        if stage.layers:
            loop, items = "params", f"weights[{stage.name!r}]"
            if stage.cached:
                loop, items = "params, cache", f"zip({items}, caches)"
            if stage.layer_symbols:
                loop, items = f"l, ({loop})", f"enumerate({items}, start=1)"
            calls += [f"    for {loop} in {items}:", f"        x = {stage.name}({value}, **params{extra})"]
        else:
            calls.append(f"    x = {stage.name}({value}, **weights[{stage.name!r}]{extra})")
        value = "x"
    return calls


def parameter_value(checkpoint: Checkpoint, program: Program, param: Param, layer: int | None) -> np.ndarray:
    """The numbers a parameter stands for in one layer (numeric stages only)."""
    ref = param.source.for_layer(layer)
    array = checkpoint.tensor(ref.name)
    if ref.columns:
        array = array[..., ref.columns[0]:ref.columns[1]]
    if ref.transpose:
        array = array.T
    return np.ascontiguousarray(array.reshape(program.numeric_shape(param.symbol)), dtype=np.float32)


def weight_plan(program: Program) -> dict[str, tuple[Param, int | None]]:
    """Every key of the emitted weight file, with the parameter and layer it holds."""
    return {b.key: (b.param, b.layer) for b in program.bindings()}


def write_module(program: Program, checkpoint: Checkpoint, folder: Path, dtype: str = "float32",
                 tokenizer: Tokenizer | None = None) -> Path:
    """Write ``folder/model.py`` and ``folder/weights.safetensors`` (and ``tokenizer_data.json``
    with ``encode``/``decode`` in model.py, given a tokenizer); return the module's path.

    ``dtype="float64"`` stores the weights (float32 values, widened exactly) as float64, so the
    module computes in float64: a second implementation to measure rounding against.
    """
    folder = Path(folder)
    with staging_folder(folder) as staging:  # nothing reaches ``folder`` unless every file is written
        tokenizer_source = write_tokenizer(tokenizer, staging) if tokenizer is not None else ""
        plan = weight_plan(program)
        shapes = [(key, program.numeric_shape(p.symbol)) for key, (p, _) in plan.items()]
        write_safetensors(staging / "weights.safetensors", shapes,
                          lambda key: parameter_value(checkpoint, program, *plan[key]),
                          progress_bar(shapes, "weights"), dtype)
        write_text(staging / "model.py", module_source(program, tokenizer_source))
    return folder / "model.py"


def import_module(path: Path, name: str = "eqcompile_emitted"):
    """Import an emitted ``model.py`` from its path (it is not on ``sys.path``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
