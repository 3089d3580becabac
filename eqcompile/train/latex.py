"""``--latex --train``: the loss, each stage's backward equations and the update rules, as LaTeX.

Printed by the forward equations' printer with the same names; a gradient ∂L/∂X is written X̄.
"""

from __future__ import annotations

from string import Template

from sympy.matrices.expressions.matexpr import MatrixSymbol

from ..emit.latex import EquationLine, EquationPrinter, StageBlock, TrainingBlocks, align, printer_for
from ..emit.text import tex_escape
from ..ops.backward import BACKWARD_OPS
from ..program import Program, _layer_fill
from .derive import BackwardStage, bar
from .loss import LOSS_OPS
from .program import TrainingProgram, training_program

UPDATES_INTRO = r"""With $\theta$ every parameter, $g = \bar\theta$ its gradient (a weight read in two
places, such as tied embeddings $W_E$, gets the sum of both gradients), $\eta$ the learning rate and $t$ the step:"""
UPDATE_LINES = [
    EquationLine(r"\text{SGD:}\quad \theta_{t}", r"\theta_{t-1} - \eta\, g_t"),
    EquationLine(r"\text{AdamW:}\quad \theta'_{t}", r"\theta_{t-1} (1 - \eta \lambda)"),
    EquationLine("m_t", r"\beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad m_0 = 0"),
    EquationLine("v_t", r"\beta_2 v_{t-1} + (1 - \beta_2)\, g_t \odot g_t, \qquad v_0 = 0"),
    EquationLine(r"\hat m_t", r"m_t / (1 - \beta_1^{t}), \qquad \hat v_t = v_t / (1 - \beta_2^{t})"),
    EquationLine(r"\theta_t", r"\theta'_{t} - \eta\, \hat m_t \oslash \bigl(\sqrt{\hat v_t} + \epsilon\bigr)"),
]
UPDATES_NOTE = r"""as \texttt{torch.optim.AdamW} takes them (defaults $\beta_1 = 0.9$, $\beta_2 = 0.999$, $\epsilon = 10^{-8}$,
weight decay $\lambda = 0.01$; the decay is decoupled: it scales $\theta$, not $g$)."""


class GradientPrinter(EquationPrinter):
    """The equations' printer, with transposes of accented symbols kept apart from their superscript."""

    def _print_Transpose(self, expr):
        inner = self._print(expr.arg)
        if isinstance(expr.arg, MatrixSymbol) and inner.startswith(("\\bar", "\\tilde")):
            return rf"{{{{}}{inner}}}^{{\top}}"  # TeX takes {\bar{X}^{(l)}} as the accent atom itself
        return super()._print_Transpose(expr)


def _printer(program: Program, stage, names: dict) -> GradientPrinter:
    symbol_names = printer_for(program, stage, "l")._settings["symbol_names"]
    return GradientPrinter({"symbol_names": {**symbol_names, **names}})


def training_latex(program: Program) -> str:
    """A fragment (amsmath, amssymb): loss, backward stages from the last to the first, updates, VJP ops."""
    blocks = training_blocks(program)
    parts = [r"\paragraph{Training.} A gradient $\partial L / \partial X$ is written $\bar X$; each stage's "
             r"backward sends the gradient of its output to its input and its parameters by the chain rule."]
    for block in blocks.stages:
        title = tex_escape(block.title) + (rf" ${block.symbol}$, for ${block.scope}$" if block.scope else "")
        parts.append(rf"\paragraph{{{title}.}}" + "\n" + align(block.lines))
    parts.append(rf"\paragraph{{Updates.}} {blocks.updates_intro}" + "\n" + align(blocks.updates)
                 + blocks.updates_note + "\n")
    items = [rf"\item {summary}" for summary in blocks.ops]
    parts.append("\\paragraph{Vector-Jacobian products.}\n\\begin{itemize}\n" + "\n".join(items) + "\n\\end{itemize}\n")
    return "\n".join(parts)


def training_blocks(program: Program) -> TrainingBlocks:
    """The training section's content, for ``--latex --train`` and the appendix (``--pdf/--tex/--html --train``).

    Raises :class:`TrainingUnsupported` for a model it cannot differentiate (an encoder)."""
    training = training_program(program)
    stages = [_loss(program, training)] + [_backward_block(program, backward) for backward in training.backward[1:]]
    return TrainingBlocks(stages, UPDATES_INTRO, UPDATE_LINES, UPDATES_NOTE, _op_summaries(training))


def _loss(program: Program, training: TrainingProgram) -> StageBlock:
    stage, backward = training.loss, training.backward[0]
    names = _names(program, backward, "l")
    printer = _printer(program, stage, names)
    lines = [EquationLine(printer._print(eq.lhs), printer._print(eq.rhs)) for eq in stage.equations + backward.equations]
    return StageBlock("loss", "Loss", "", "", None, lines)


def _names(program: Program, backward: BackwardStage, layer: str) -> dict:
    fill = _layer_fill(layer)
    stage = backward.forward
    names = stage.latex_names(layer)
    for p in stage.params:
        if p.name in backward.param_grads:
            names[backward.param_grads[p.name]] = bar(p.latex_at(layer))
    for eq in backward.equations:
        names.setdefault(eq.lhs, Template(backward.locals_latex[eq.lhs.name]).substitute(fill))
    if backward.output_grad is not None:
        names[backward.output_grad] = Template(backward.locals_latex[backward.output_grad.name]).substitute(fill)
    return names


def _backward_block(program: Program, backward: BackwardStage) -> StageBlock:
    stage = backward.forward
    printer = _printer(program, stage, _names(program, backward, "l"))
    lines = [EquationLine(printer._print(eq.lhs), printer._print(eq.rhs)) for eq in backward.equations]
    symbol, scope = (rf"{stage.letter}^{{(l)}}", r"l = L, \dots, 1") if stage.layers else ("", "")
    return StageBlock(f"{stage.name}-backward", f"{stage.title}, backward", symbol, scope, None, lines)


def _op_summaries(training: TrainingProgram) -> list[str]:
    used = {type(op) for b in training.backward for eq in b.equations for op in eq.rhs.atoms(*BACKWARD_OPS, *LOSS_OPS)}
    return [op.summary_latex for op in (*LOSS_OPS, *BACKWARD_OPS) if op in used]
