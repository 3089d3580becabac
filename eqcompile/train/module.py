"""``--python DIR --train``: the training functions appended to ``model.py``, printed from the training
Program by the same printer as the forward stages (``templates/train.py.j2``)."""

from __future__ import annotations

import inspect

import sympy as sp

from ..emit.numpy_printer import ModulePrinter
from ..emit.templates import render_template
from ..load import Checkpoint
from ..ops import MatrixOp
from ..ops.attention import fuse_causal_attention
from ..ops.backward import ActivationDerivative
from ..ops.base import numpy_source
from ..program import Program, Stage, select_part
from .derive import BackwardStage, per_head
from .program import TrainingProgram, training_program


def training_source(program: Program, checkpoint: Checkpoint) -> str:
    """The text appended to ``model.py``: backward ops and stages, the tensor table, loss and updates."""
    training = training_program(program)
    printer = ModulePrinter(program.dim_python)
    backward = {b.forward.name: b for b in training.backward[1:]}
    stages = [_backward_function(program, backward[stage.name], printer) for stage in program.stages]
    loss_eq, grad_eq = training.loss.equations[0], training.backward[0].equations[0]
    shapes = {b.key: program.numeric_shape(b.param.symbol) for b in program.bindings()}
    return render_template(
        "train.py.j2", ops=_ops_source(program, training), stages=stages, tensors=_tensor_table(program, checkpoint),
        shapes=shapes, interface=program.interface, select=inspect.getsource(select_part).rstrip("\n"), forward=_forward_lines(program), backward=_backward_lines(program),
        output=training.loss.input.name, loss=printer.doprint(loss_eq.rhs), loss_grad=printer.doprint(grad_eq.rhs),
        data_doc="token ids" if program.takes_tokens else "(x, y_target)",
        output_width=program.numeric_shape(training.loss.input)[0] if not program.takes_tokens else None)


def _ops_source(program: Program, training: TrainingProgram) -> str:
    """The numpy functions the training code needs that the forward prelude lacks, then the derivatives."""
    fused = [eq for stage in program.stages for eq in fuse_causal_attention(stage.equations)]
    in_prelude = _functions(fused)
    equations = [eq for stage in program.stages for eq in stage.equations] + training.loss.equations
    equations += [eq for b in training.backward for eq in b.equations]
    needed = [f for f in _functions(equations) if f not in in_prelude]
    derivatives = sorted({op.activation for eq in equations for op in eq.rhs.atoms(ActivationDerivative)},
                         key=lambda op: op.__name__)
    return "\n\n\n".join(filter(None, [numpy_source(needed).rstrip("\n"),
                                     *(ActivationDerivative.source(op).rstrip("\n") for op in derivatives)])) + "\n"


def _functions(equations) -> list:
    """The numpy functions of the ops in ``equations``, each once, in order of first use."""
    functions = []
    for eq in equations:
        for op in sorted(eq.rhs.atoms(MatrixOp), key=sp.default_sort_key):
            functions += [f for f in type(op).numpy_functions if f not in functions]
    return functions


def _needed_forward(stage: Stage, backward: BackwardStage) -> list:
    """The forward equations the backward reads, directly or through others, in order."""
    wanted = set().union(*(eq.rhs.atoms(sp.MatrixSymbol) for eq in backward.equations))
    needed = []
    for eq in reversed(stage.equations):
        if eq.lhs in wanted:
            needed.append(eq)
            wanted |= eq.rhs.atoms(sp.MatrixSymbol)
    return needed[::-1]


def _backward_function(program: Program, backward: BackwardStage, printer: ModulePrinter) -> str:
    stage = backward.forward
    args = [stage.input.name, backward.output_grad.name, *(p.name for p in stage.params),
            *(s.name for s in stage.extra_inputs), *(str(s) for s in stage.layer_symbols)]
    printer.printed.clear()
    equations = [*_needed_forward(stage, backward), *backward.equations]
    heads = per_head(equations)
    body = []
    for eq in equations:
        dims = [program.dim_python.get(s, str(s)) for s in eq.lhs.shape]
        shape = ", ".join((["n_head"] if eq.lhs in heads else []) + dims)
        body.append(f"{eq.lhs.name} = {printer.doprint(eq.rhs)}  # [{shape}]")
    if program.seq is not None and program.seq in printer.printed:
        body.insert(0, f"{program.dim_python[program.seq]} = {stage.input.name}.shape[0]")
    grads = ", ".join(f"{name!r}: {symbol.name}" for name, symbol in backward.param_grads.items())
    doc = (f'"""{stage.title} {stage.letter}, backward: the gradient of its output -> of its input'
           f'{"" if backward.input_grad is not None else " (none: token ids)"} and its parameters."""')
    lines = ["", f"def {backward.name}({', '.join(args)}):", f"    {doc}", *(f"    {line}" for line in body),
             f"    return {backward.input_grad.name if backward.input_grad is not None else None}, {{{grads}}}"]
    return "\n".join(lines)


def _extras(stage: Stage, cache: bool) -> str:
    names = [*(s.name for s in stage.extra_inputs), *map(str, stage.layer_symbols)]
    return "".join(f", {name}={name}" for name in names) + (", cache=KVCache()" if cache and stage.cached else "")


def _forward_lines(program: Program) -> list[str]:
    """Each stage applied in turn, its input kept for its backward."""
    lines, value = [], program.input_symbol.name
    for stage in program.stages:
        if stage.layers:
            lines += [f"inputs[{stage.name!r}] = []",
                      f"for l, params in enumerate(weights[{stage.name!r}], start=1):",
                      f"    inputs[{stage.name!r}].append({value})",
                      f"    x = {stage.name}({value}, **params{_extras(stage, True)})"]
        else:
            lines += [f"inputs[{stage.name!r}] = {value}",
                      f"x = {stage.name}({value}, **weights[{stage.name!r}]{_extras(stage, True)})"]
        value = "x"
    return lines


def _backward_lines(program: Program) -> list[str]:
    """Each stage's backward, the last stage's first: g becomes the gradient of the stage's input."""
    lines = []
    for stage in reversed(program.stages):
        call = f"{stage.name}_backward"
        if stage.layers:
            lines += [f"grads[{stage.name!r}] = [None] * LAYERS",
                      "for l in range(LAYERS, 0, -1):",
                      f"    g, grads[{stage.name!r}][l - 1] = {call}(inputs[{stage.name!r}][l - 1], g, "
                      f"**weights[{stage.name!r}][l - 1]{_extras(stage, False)})"]
        else:
            lines.append(f"g, grads[{stage.name!r}] = {call}(inputs[{stage.name!r}], g, "
                         f"**weights[{stage.name!r}]{_extras(stage, False)})")
    return lines


def _tensor_table(program: Program, checkpoint: Checkpoint) -> str:
    """key -> (tensor name, stored shape, rows, columns, transposed, blocks) as Python, one key per line."""
    lines = ["{"]
    for binding in program.bindings():
        s = binding.source
        shape = tuple(checkpoint.shape(s.name))
        lines.append(f"    {binding.key!r}: ({s.name!r}, {shape!r}, {s.rows!r}, {s.columns!r}, {s.transpose!r}, "
                     f"{s.blocks!r}),")
    return "\n".join([*lines, "}"])

