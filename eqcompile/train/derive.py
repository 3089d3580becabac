"""The backward pass, derived: reverse-mode differentiation of a stage's equations by the ops' VJPs.

For a stage's equations in reverse order, the gradient of each equation's left-hand side, Ḡ, is the
sum of what the later equations that read it send back; the right-hand side's expression tree then
sends Ḡ on to its arguments by each node's vector-Jacobian product: an op's own ``vjp`` method
(``eqcompile/ops``), or for sympy's matrix sums, products, transposes and elementwise products the
rules below. Nothing is written per family: a repeated stage (the block) is derived once, for the
generic layer (l), as its forward equations are stated once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr, MatrixSymbol

from ..errors import EqcompileError
from ..ops import AtenOp, GroupedHeads, MergeHeads, SplitHeads, is_per_head
from ..ops.backward import GroupSum
from ..program import Equation, Stage


class TrainingUnsupported(EqcompileError):
    """The model uses something the backward pass does not differentiate (yet)."""


@dataclass
class BackwardStage:
    """The VJP of one forward stage: given Ḡ of its output, Ḡ of its input and of every parameter."""

    forward: Stage
    output_grad: MatrixSymbol  # Ḡ of the stage's output: the argument
    input_grad: MatrixSymbol | None  # None where the input is token ids (no gradient)
    equations: list[Equation]
    param_grads: dict[str, MatrixSymbol]  # parameter name -> its gradient's symbol
    locals_latex: dict[str, str] = field(default_factory=dict)  # LaTeX templates of the Ḡ symbols

    @property
    def name(self) -> str:
        return f"{self.forward.name}_backward"


def grad_symbol(symbol: MatrixSymbol) -> MatrixSymbol:
    return MatrixSymbol(f"g_{symbol.name}", *symbol.shape)


def bar(template: str) -> str:
    r"""``X^{($l)}`` -> ``\bar{X}^{($l)}``: the bar over the base, before its first sub- or superscript."""
    depth = 0
    for index, ch in enumerate(template):
        depth += (ch == "{") - (ch == "}")
        if depth == 0 and ch in "_^" and index:
            return rf"\bar{{{template[:index]}}}{template[index:]}"
    return rf"\bar{{{template}}}"


def transpose(expr):
    """Xᵀ, with (Xᵀ)ᵀ = X and (c A B)ᵀ = c Bᵀ Aᵀ, so products of transposes stay flat."""
    if isinstance(expr, sp.Transpose):
        return expr.arg
    if isinstance(expr, sp.MatMul):
        coefficient, matrices = expr.as_coeff_matrices()
        return product(coefficient, *(transpose(m) for m in reversed(matrices)))
    return sp.Transpose(expr)


def product(coefficient, *matrices):
    """c M_1 ⋯ M_k as one flat MatMul (c = 1 left out; a lone matrix as itself)."""
    factors = ([] if coefficient == 1 else [coefficient]) + list(matrices)
    return factors[0] if len(factors) == 1 else sp.MatMul(*factors)


def _matmul_vjp(expr, grad, output):
    """For c M_1 ⋯ M_k: M̄_i = c (M_1 ⋯ M_{i−1})ᵀ G (M_{i+1} ⋯ M_k)ᵀ."""
    coefficient, matrices = expr.as_coeff_matrices()
    return [(m, product(coefficient, *(transpose(x) for x in reversed(matrices[:index])), grad,
                        *(transpose(x) for x in reversed(matrices[index + 1:]))))
            for index, m in enumerate(matrices)]


SYMPY_VJPS = {
    sp.MatAdd: lambda expr, grad, output: [(arg, grad) for arg in expr.args],
    sp.MatMul: _matmul_vjp,
    sp.Transpose: lambda expr, grad, output: [(expr.arg, transpose(grad))],
    sp.HadamardProduct: lambda expr, grad, output: [
        (arg, sp.HadamardProduct(grad, *(other for j, other in enumerate(expr.args) if j != index)))
        for index, arg in enumerate(expr.args)],
}


def _is_atomic(grad) -> bool:
    """A gradient worth repeating inline: a symbol, or one's head split (a reshape)."""
    return isinstance(grad, MatrixSymbol) or (isinstance(grad, (SplitHeads, GroupedHeads))
                                              and isinstance(grad.arg, MatrixSymbol))


class _Derivation:
    def __init__(self, stage: Stage, input_differentiable: bool):
        self.stage = stage
        self.live = {p.symbol for p in stage.params} | ({stage.input} if input_differentiable else set())
        for eq in stage.equations:  # what depends on a parameter or the input
            if self.depends(eq.rhs):
                self.live.add(eq.lhs)
        self.outputs = {eq.rhs: eq.lhs for eq in stage.equations}
        self.sent: dict[MatrixSymbol, list] = defaultdict(list)  # symbol -> gradient terms sent to it
        self.equations: list[Equation] = []
        self.latex: dict[str, str] = {}
        self.temporaries = 0

    def depends(self, expr) -> bool:
        return isinstance(expr, MatrixExpr) and bool(expr.atoms(MatrixSymbol) & self.live)

    def bind(self, symbol: MatrixSymbol, latex: str, value) -> MatrixSymbol:
        self.equations.append(Equation(symbol, value))
        self.latex[symbol.name] = latex
        return symbol

    def total(self, symbol: MatrixSymbol, template: str):
        terms = self.sent.pop(symbol, [])
        if not terms:
            return None
        value = terms[0] if len(terms) == 1 else sp.MatAdd(*terms, evaluate=False)
        return self.bind(grad_symbol(symbol), bar(template), value)

    def send(self, expr, grad, output) -> None:
        if isinstance(expr, MatrixSymbol):
            if expr in self.live:
                self.sent[expr].append(grad)
            return
        if not self.depends(expr):
            return
        if not hasattr(expr, "vjp") and type(expr) not in SYMPY_VJPS:
            what = f"the aten op {expr.name} (lowered generically)" if isinstance(expr, AtenOp) else type(expr).__name__
            raise TrainingUnsupported(f"no backward for {what}: training covers the hand-written families and traced "
                                      "models but for mixtures of experts and generically lowered ops")
        if sum(self.depends(arg) for arg in expr.args) > 1 and not _is_atomic(grad):
            self.temporaries += 1  # sent to several arguments: computed once
            layer = "^{($l)}" if self.stage.layers else ""
            grad = self.bind(MatrixSymbol(f"g_{self.temporaries}", *expr.shape),
                             rf"\bar{{G}}_{{{self.temporaries}}}{layer}", grad)
        pairs = expr.vjp(grad, output) if hasattr(expr, "vjp") else SYMPY_VJPS[type(expr)](expr, grad, output)
        for arg, arg_grad in pairs:
            if self.depends(arg):
                self.send(arg, arg_grad, self.outputs.get(arg, arg))


def derive(stage: Stage, output_grad: MatrixSymbol | None, input_differentiable: bool = True) -> BackwardStage:
    """The backward equations of ``stage``; ``output_grad`` None: the stage's output is the loss (Ḡ = 1)."""
    work = _Derivation(stage, input_differentiable)
    names = {eq.lhs.name: stage.locals_latex.get(eq.lhs.name, eq.lhs.name) for eq in stage.equations}
    last = stage.equations[-1].lhs
    for index, eq in enumerate(reversed(stage.equations)):
        if eq.lhs not in work.live:
            continue
        if index == 0:
            grad = output_grad if output_grad is not None else sp.Integer(1)
        else:
            grad = work.total(eq.lhs, names[eq.lhs.name])
        if grad is not None:
            work.send(eq.rhs, grad, eq.lhs)
    params = {}
    for p in stage.params:
        symbol = work.total(p.symbol, p.latex)
        if symbol is not None:
            params[p.name] = symbol
    input_grad = None
    if input_differentiable:
        input_grad = work.total(stage.input, stage.locals_latex.get(stage.input.name, stage.input.name))
    latex = dict(work.latex)
    if output_grad is not None:
        latex[output_grad.name] = bar(names[last.name])
    return BackwardStage(stage, output_grad, input_grad, work.equations, params, latex)


def per_head(equations) -> set:
    """The left-hand sides that hold one matrix per head: stated per head, or read from such, and not merged."""
    found: set = set()
    for eq in equations:
        merged = isinstance(eq.rhs, (MergeHeads, GroupSum))
        if not merged and (is_per_head(eq.rhs) or eq.rhs.atoms(MatrixSymbol) & found):
            found.add(eq.lhs)
    return found
