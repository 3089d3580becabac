"""How big is the equation? Counted analytically from the Program's shapes, never by expanding.

The operation counts follow the conventions of :func:`eqcompile.ops.base.count_operations` and
equal, exactly, the counts of the literal expansion (``eqcompile.expand``), which the tests check
on tiny models; so the figures for large models can be trusted without building anything.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .ops import Embed, MatrixOp, Softmax, is_per_head, n_head
from .ops.base import Cost
from .ops.per_layer import LayerValue
from .program import Program, TensorRef

CHARS_PER_OPERATION = 32  # LaTeX characters per operation of the literal equation (measured: see tests)
CHARS_PER_PAGE = 4000  # dense display math on an A4 page at 10 pt


class _CostEvaluator:
    def __init__(self, numbers: dict, masked: dict, known: set):
        self.numbers = numbers
        self.masked = masked  # attention weights -> the mask that zeroes some of them
        self.known = known  # inputs whose values are known in advance (positions, input defaults)

    def is_known(self, symbol) -> bool:
        return symbol in self.known

    def number(self, expr):
        return sp.sympify(expr).xreplace(self.numbers)

    def size(self, expr) -> tuple[int, int]:
        return tuple(int(self.number(s)) for s in expr.shape)

    def cost(self, expr) -> Cost:
        if isinstance(expr, MatrixSymbol):
            return Cost()
        if isinstance(expr, MatrixOp):
            return expr.cost(self)
        rows, cols = self.size(expr)
        inner = sum((self.cost(a) for a in expr.args if isinstance(a, sp.MatrixExpr)), Cost())
        if isinstance(expr, sp.MatAdd):
            return inner + Cost(add=(len(expr.args) - 1) * rows * cols)
        if isinstance(expr, sp.HadamardProduct):
            return inner + Cost(mul=(len(expr.args) - 1) * rows * cols)
        if isinstance(expr, sp.Transpose):
            return inner
        if isinstance(expr, sp.MatMul):
            coefficient, matrices = expr.as_coeff_matrices()
            left_rows = self.size(matrices[0])[0]
            for index, factor in enumerate(matrices[1:]):
                inner_dim, right_cols = self.size(factor)
                terms = left_rows * inner_dim  # products per output column
                if index == 0 and matrices[0] in self.masked:  # masked weights add no term
                    terms = self.masked[matrices[0]].kept(self)
                inner += Cost(mul=right_cols * terms, add=right_cols * (terms - left_rows))
            if coefficient != 1:
                inner += Cost(mul=rows * cols)
            return inner
        raise NotImplementedError(f"no cost for {type(expr).__name__}")


def operation_counts(program: Program, seq: int, tokens_known: bool = False) -> Cost:
    """Scalar operations of the literal equation for a sequence of ``seq`` tokens.

    The literal equation takes the tokens as unknowns, so an embedding is a one-hot row times the
    table (n d V multiplications); ``tokens_known`` counts what a module run on given tokens does, a
    row lookup (none). Layer-dependent constants (e.g. a 1/l attention scale) change numbers, not
    counts, so one layer's count serves all of them.
    """
    numbers = dict(program.dims) | {program.seq: seq}
    total: Cost = Cost()
    masked = {eq.lhs: eq.rhs.arg for stage in program.stages for eq in stage.equations
              if isinstance(eq.rhs, Softmax) and hasattr(eq.rhs.arg, "kept")}
    for stage in program.stages:
        # a layer's window may change what its mask keeps (Gemma): then each layer is counted
        layers = [{symbol: number for symbol in stage.layer_symbols} for number in range(1, stage.layers + 1)] \
            if stage.layer_symbols and any(eq.rhs.has(LayerValue) for eq in stage.equations) else [None]
        for values in layers:
            ev = _CostEvaluator(numbers | (values or {symbol: 1 for symbol in stage.layer_symbols}), masked,
                                {program.positions, *program.input_defaults,
                                 *([program.input_symbol] if tokens_known else [])})
            for eq in stage.equations:
                cost = ev.cost(eq.rhs) * (1 if values else stage.layers or 1)
                total += cost * int(ev.number(n_head)) if is_per_head(eq.rhs) else cost
    return total


def _row_lookups(program: Program) -> set:
    """Parameters used only through row lookups: a token reads one row of them, not all."""
    looked_up, used_whole = set(), set()
    for stage in program.stages:
        for eq in stage.equations:
            for op in eq.rhs.atoms(Embed):
                looked_up.add(op.table)
            for symbol in eq.rhs.atoms(MatrixSymbol):
                if not any(symbol == op.table for op in eq.rhs.atoms(Embed)):
                    used_whole.add(symbol)
    return looked_up - used_whole


@dataclass(frozen=True)
class Stats:
    """The size of a model's equation; see ``eqcompile stats --help`` for each figure's meaning."""

    parameters: int  # the equation's constants
    seq: int  # context length the counts are for
    operations: dict[str, int]  # scalar operations of the literal equation for seq tokens, by kind
    operations_total: int
    operations_per_token: int  # incremental cost of the seq-th token, given the earlier ones (KV cache)
    weight_bytes_per_token: int  # weights read to generate one token (lookup tables: one row)
    latex_chars: int  # estimated size of the literal equation written out
    pages: float


def stats(program: Program, dtype_bytes: float, seq: int | None = None) -> Stats:
    """Counts for a sequence of ``seq`` tokens (default: the full context)."""
    seq = seq or program.max_seq
    lookups = _row_lookups(program)
    parameters = weight_bytes = 0
    stored = set()  # the stored numbers counted: a tied matrix read both ways round is one parameter set
    for binding in program.bindings():
        param, source = binding.param, binding.source
        rows, cols = (int(sp.sympify(s).xreplace(program.dims)) for s in param.symbol.shape)
        numbers = replace(source, transpose=False) if isinstance(source, TensorRef) else source
        if numbers not in stored:
            stored.add(numbers)
            parameters += rows * cols
        weight_bytes += (cols if param.symbol in lookups else rows * cols) * dtype_bytes
    counts = operation_counts(program, seq)
    total = sum(counts.values())
    previous = sum(operation_counts(program, seq - 1).values()) if seq > 1 else 0
    chars = total * CHARS_PER_OPERATION
    return Stats(parameters, seq, dict(sorted(counts.items())), total, total - previous,
                 round(weight_bytes), chars, chars / CHARS_PER_PAGE)
