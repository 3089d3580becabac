"""The literal equation: every weight substituted, the output as explicit scalar expressions.

A pure expression tree explodes (one attention layer at n = 4, d = 8 is ~645k operations as a
tree), so every entry of every Program equation becomes a *named term* defined once, e.g.
``h^{(1)}_{2,3} = γ_3 (x_{2,3} − μ_2) r_2 + β_3``; ops name the terms they share (row means,
softmax denominators). The result is a straight-line program: the definitions in order, the last
ones being the outputs. Token inputs are one-hot indicators ``[t_i = v]``. The other inputs are
known numbers: positions are 0, ..., n - 1 (a causal LM reads the tokens from the start), and a
family's ``Program.input_defaults`` fix the rest (bert: attention mask 1, no padding; token type 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .errors import ConfigError
from .load import Checkpoint
from .ops import MatrixOp, is_per_head, n_head
from .ops.base import Cost, add, count_operations, matmul, mul
from .program import Binding, Interface, Program, Stage

DIGITS = 17  # 17 significant digits reproduce a float64 weight exactly


@dataclass
class Term:
    symbol: sp.Symbol
    expr: sp.Expr
    latex: str


@dataclass
class Expansion:
    """The straight-line literal program of a model at a fixed sequence length."""

    program: Program
    seq: int
    inputs: list[sp.Symbol]  # one-hot indicators (tokens) or the input vector's entries
    input_latex: dict[sp.Symbol, str]
    terms: list[Term] = field(default_factory=list)
    outputs: sp.Matrix = None

    def operations(self) -> Cost:
        total = Cost()
        for term in self.terms:
            total += count_operations(term.expr)
        return total


class _Evaluator:
    """Evaluates Program expressions to explicit matrices, naming shared terms (see ops' ``explicit``)."""

    def __init__(self, expansion: Expansion, values: dict, numbers: dict):
        self.expansion, self.values, self.numbers = expansion, values, numbers
        self.head = 0
        self.owner = ("", "")
        self.defined: set[sp.Symbol] = set()  # (python, LaTeX) name of the equation being expanded

    # --- the interface ops use
    def number(self, expr):
        value = sp.sympify(expr).xreplace(self.numbers)
        return sp.Float(value, DIGITS) if isinstance(value, sp.Float) else value

    def size(self, expr) -> tuple[int, int]:
        return tuple(int(self.number(s)) for s in expr.shape)

    def is_known(self, symbol) -> bool:
        program = self.expansion.program
        return symbol == program.positions or symbol in program.input_defaults

    def name(self, base: str, expr, *index: int, latex: str | None = None) -> sp.Symbol:
        """A term named ``base`` (its LaTeX ``\\mathrm{base}`` unless given) of the current equation."""
        python = "_".join([base, self.owner[0], *map(str, index)])
        head = rf"\mathrm{{{base}}}" if latex is None else f"{{{latex}}}"
        latex = rf"{head}^{{[{self.owner[1]}]}}_{{{','.join(str(i + 1) for i in index)}}}"
        return self._define(python, expr, latex)

    def shared(self, expr) -> sp.Matrix:
        """The value of ``expr`` with compound entries named, for ops that use entries repeatedly."""
        value = self.value(expr)
        if all(e.is_Symbol or e.is_Number for e in value):
            return value
        return sp.Matrix(value.rows, value.cols, lambda r, c: self.name("u", value[r, c], r, c))

    def each_head(self, expr) -> list[sp.Matrix]:
        outer, results = self.head, []
        for h in range(int(self.number(n_head))):
            self.head = h
            results.append(self.value(expr))
        self.head = outer
        return results

    def value(self, expr) -> sp.Matrix:
        if isinstance(expr, MatrixSymbol):
            value = self.values[expr]
            return value[self.head] if isinstance(value, list) else value
        if isinstance(expr, MatrixOp):
            return expr.explicit(self)
        if isinstance(expr, sp.MatAdd):
            parts = [self.value(a) for a in expr.args]
            return sp.Matrix(parts[0].rows, parts[0].cols, lambda r, c: add(*(p[r, c] for p in parts)))
        if isinstance(expr, sp.MatMul):
            coefficient, matrices = expr.as_coeff_matrices()
            product = self.value(matrices[0])
            for factor in matrices[1:]:
                product = matmul(product, self.value(factor))
            if coefficient != 1:
                scale = sp.Float(sp.N(self.number(coefficient), DIGITS), DIGITS)
                product = product.applyfunc(lambda e: mul(scale, e))
            return product
        if isinstance(expr, sp.Transpose):
            return self.value(expr.arg).T
        if isinstance(expr, sp.HadamardProduct):
            parts = [self.value(a) for a in expr.args]
            return sp.Matrix(parts[0].rows, parts[0].cols, lambda r, c: mul(*(p[r, c] for p in parts)))
        raise NotImplementedError(f"cannot expand {type(expr).__name__}")

    def _define(self, python: str, expr, latex: str) -> sp.Symbol:
        symbol = sp.Symbol(python)
        if symbol in self.defined:
            raise AssertionError(f"term {python} defined twice")  # would silently merge two terms
        self.defined.add(symbol)
        self.expansion.terms.append(Term(symbol, expr, latex))
        return symbol


def expand(program: Program, checkpoint: Checkpoint, seq: int | None = None) -> Expansion:
    """Substitute every weight and write each output entry through named scalar terms."""
    extra = list(dict.fromkeys(s.name for stage in program.stages for s in stage.extra_inputs
                               if s != program.positions and s not in program.input_defaults))
    if extra:
        raise ConfigError(f"the literal expansion (--expand) supports models with one input; "
                          f"{program.family} models also take {', '.join(extra)}")
    seq = seq or program.max_seq
    numbers = {s: v for s, v in program.dims.items()} | {program.seq: seq}
    inputs, input_latex, input_value = _inputs(program, seq)
    expansion = Expansion(program, seq, inputs, input_latex)
    values: dict = {program.input_symbol: input_value}
    if program.positions is not None:  # positions are known: 0, ..., n - 1
        values[program.positions] = sp.Matrix(list(range(seq)))
    for symbol, default in program.input_defaults.items():  # e.g. no padding, token type 0
        rows, cols = (int(sp.sympify(s).xreplace(numbers)) for s in symbol.shape)
        values[symbol] = sp.Matrix(rows, cols, lambda r, c: sp.Integer(default))
    plan = {binding.key: binding for binding in program.bindings()}
    ev = _Evaluator(expansion, values, numbers)
    value = None
    for stage in program.stages:
        for layer in range(stage.layers) if stage.layers else [None]:
            for p in stage.params:
                key = Binding(stage, p, layer).key
                values[p.symbol] = _numbers(Binding(stage, plan[key].param, layer).read(checkpoint, program))
            if value is not None:
                values[stage.input] = value
            for symbol in stage.layer_symbols:
                numbers[symbol] = (layer or 0) + 1
            value = _expand_stage(ev, program, stage, layer)
    expansion.outputs = value
    return expansion


def _expand_stage(ev: _Evaluator, program: Program, stage: Stage, layer: int | None) -> sp.Matrix:
    names = stage.latex_names(str(layer + 1) if layer is not None else "l")
    tag = "" if layer is None else str(layer + 1)
    result = None
    for eq in stage.equations:
        python, latex = f"{eq.lhs.name}{tag}", names[eq.lhs]
        ev.owner = (python, latex)
        if is_per_head(eq.rhs):
            result = []
            for h in range(int(ev.number(n_head))):
                head_latex = latex[:-2] + f"_{{{h + 1}}}" if latex.endswith("_h") else f"{latex}[{h + 1}]"
                ev.head, ev.owner = h, (f"{python}h{h + 1}", head_latex)
                result.append(_name_entries(ev, ev.value(eq.rhs), *ev.owner))
            ev.head = 0
        else:
            result = _name_entries(ev, ev.value(eq.rhs), python, latex)
        ev.values[eq.lhs] = result
    return result


def _name_entries(ev: _Evaluator, value: sp.Matrix, python: str, latex: str) -> sp.Matrix:
    return sp.Matrix(value.rows, value.cols, lambda r, c: value[r, c] if value[r, c].is_Number else
                     ev._define(f"{python}_{r}_{c}", value[r, c], f"{{{latex}}}_{{{r + 1},{c + 1}}}"))


def _numbers(array: np.ndarray) -> sp.Matrix:
    return sp.Matrix(array.shape[0], array.shape[1], lambda r, c: sp.Float(float(array[r, c]), DIGITS))


def _inputs(program: Program, seq: int):
    if program.interface == Interface.VECTOR:
        width = int(sp.sympify(program.input_symbol.shape[0]).xreplace(program.dims))
        symbols = [sp.Symbol(f"x_{i}") for i in range(width)]
        return symbols, {s: f"x_{{{i + 1}}}" for i, s in enumerate(symbols)}, sp.Matrix(symbols)
    grid = [[sp.Symbol(f"t_{i}_{v}") for v in range(program.vocab)] for i in range(seq)]
    latex = {grid[i][v]: f"[t_{{{i + 1}}} = {v}]" for i in range(seq) for v in range(program.vocab)}
    return [s for row in grid for s in row], latex, sp.Matrix(grid)
