"""``--latex --train``: the loss, each stage's backward equations and the update rules, as LaTeX.

Printed by the forward equations' printer with the same names; a gradient ∂L/∂X is written X̄.
"""

from __future__ import annotations

from string import Template

from sympy.matrices.expressions.matexpr import MatrixSymbol

from ..emit.latex import EquationLine, EquationPrinter, align, printer_for
from ..emit.text import tex_escape
from ..ops.backward import BACKWARD_OPS
from ..program import Program, _layer_fill
from .derive import BackwardStage, bar
from .loss import LOSS_OPS
from .program import TrainingProgram, training_program

UPDATES = r"""\paragraph{Updates.} With $\theta$ every parameter, $g = \bar\theta$ its gradient (a weight read in two
places, such as tied embeddings $W_E$, gets the sum of both gradients), $\eta$ the learning rate and $t$ the step:
\begin{align*}
\text{SGD:}\quad \theta_{t} &= \theta_{t-1} - \eta\, g_t \\
\text{AdamW:}\quad \theta'_{t} &= \theta_{t-1} (1 - \eta \lambda) \\
m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad m_0 = 0 \\
v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, g_t \odot g_t, \qquad v_0 = 0 \\
\hat m_t &= m_t / (1 - \beta_1^{t}), \qquad \hat v_t = v_t / (1 - \beta_2^{t}) \\
\theta_t &= \theta'_{t} - \eta\, \hat m_t \oslash \bigl(\sqrt{\hat v_t} + \epsilon\bigr)
\end{align*}
as \texttt{torch.optim.AdamW} takes them (defaults $\beta_1 = 0.9$, $\beta_2 = 0.999$, $\epsilon = 10^{-8}$,
weight decay $\lambda = 0.01$; the decay is decoupled: it scales $\theta$, not $g$).
"""


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
    training = training_program(program)
    parts = [r"\paragraph{Training.} A gradient $\partial L / \partial X$ is written $\bar X$; each stage's "
             r"backward sends the gradient of its output to its input and its parameters by the chain rule."]
    parts.append(_loss(program, training))
    for backward in training.backward[1:]:
        parts.append(_backward_block(program, backward))
    parts.append(UPDATES)
    parts.append(_op_list(training))
    return "\n".join(parts)


def _loss(program: Program, training: TrainingProgram) -> str:
    stage, backward = training.loss, training.backward[0]
    names = _names(program, backward, "l")
    printer = _printer(program, stage, names)
    lines = [EquationLine(printer._print(eq.lhs), printer._print(eq.rhs)) for eq in stage.equations + backward.equations]
    return r"\paragraph{Loss.}" + "\n" + align(lines)


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


def _backward_block(program: Program, backward: BackwardStage) -> str:
    stage = backward.forward
    printer = _printer(program, stage, _names(program, backward, "l"))
    lines = [EquationLine(printer._print(eq.lhs), printer._print(eq.rhs)) for eq in backward.equations]
    title = f"{tex_escape(stage.title)}, backward"
    if stage.layers:
        title += rf" ${stage.letter}^{{(l)}}$, for $l = L, \dots, 1$"
    return rf"\paragraph{{{title}.}}" + "\n" + align(lines)


def _op_list(training: TrainingProgram) -> str:
    used = {type(op) for b in training.backward for eq in b.equations for op in eq.rhs.atoms(*BACKWARD_OPS, *LOSS_OPS)}
    items = [rf"\item {op.summary_latex}" for op in (*LOSS_OPS, *BACKWARD_OPS) if op in used]
    return "\\paragraph{Vector-Jacobian products.}\n\\begin{itemize}\n" + "\n".join(items) + "\n\\end{itemize}\n"
