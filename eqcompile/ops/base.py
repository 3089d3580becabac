"""The one recipe every op follows.

An op is a sympy ``MatrixExpr`` (it acts on matrices, so it composes with ``MatMul``/``MatAdd``)
that keeps three meanings side by side:

* ``_latex(printer)``: how it is written in an equation (sympy's ``LatexPrinter`` calls it);
* ``_numpycode(printer)``: how the emitted module computes it (our ``NumPyPrinter`` calls it),
  usually a call to one of ``numpy_functions``, whose source is copied into the emitted module
  (``model_jax.py`` copies the same functions onto ``jax.numpy``, or ``jax_functions`` and calls
  them from ``_jaxcode`` where ``jax.jit`` needs other code: fixed shapes);
* ``definition()``: what it means, element by element, as sympy equations ``(lhs, rhs)`` in index
  notation (printed at ``--level index``);
* ``explicit(ev)``: its value as an explicit matrix of scalar expressions (the literal expansion,
  ``--expand``), and ``cost(ev)``: the scalar operations that expansion contains, counted
  analytically from shapes alone (``eqcompile stats``). Tests check the two agree exactly.
"""

from __future__ import annotations

import inspect
from collections import Counter
from typing import Callable, ClassVar

import sympy as sp
from sympy.core.sympify import _sympify
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr, MatrixSymbol

# generic indices and sizes used by every op's index-notation definition
i, j, k, v = sp.symbols("i j k v", integer=True)
m, n, p = sp.symbols("m n p", integer=True, positive=True)


class MatrixOp(MatrixExpr):
    """Base class of the canonical ops; subclasses set ``shape`` and the three meanings."""

    numpy_functions: ClassVar[tuple[Callable, ...]] = ()
    jax_functions: ClassVar[tuple[Callable, ...]] = ()  # model_jax.py's, where they differ (see above)
    # the docstring's first line as LaTeX prose, its math in math mode ("" when it has no math)
    summary_latex: ClassVar[str] = ""

    def __new__(cls, *args):
        return sp.Basic.__new__(cls, *map(_sympify, args))

    @property
    def arg(self):
        return self.args[0]

    @property
    def shape(self):
        return self.arg.shape

    def _entry(self, row, col, **kwargs):
        return MatrixElement(self, row, col)  # stays symbolic: an op is defined, not evaluated

    @classmethod
    def definition(cls) -> list[tuple[sp.Basic, sp.Basic]]:
        raise NotImplementedError(cls.__name__)

    @classmethod
    def definition_latex(cls, printer) -> list[tuple[str, str]]:
        """The definition as LaTeX (lhs, rhs) pairs, one per equation."""
        return [(printer._print(lhs), printer._print(rhs)) for lhs, rhs in cls.definition()]

    def _call(self, printer, name: str, *args) -> str:
        return f"{name}({', '.join(printer._print(a) for a in args)})"


def add(*terms):
    """A sum kept exactly as written (sympy would regroup it), so operation counts are exact."""
    return sp.Add(*terms, evaluate=False) if len(terms) > 1 else terms[0]


def mul(*factors):
    """A product kept exactly as written."""
    return sp.Mul(*factors, evaluate=False) if len(factors) > 1 else factors[0]


def neg(term):
    return sp.Mul(sp.S.NegativeOne, term, evaluate=False)


def matmul(left: sp.Matrix, right: sp.Matrix, bias: sp.Matrix | None = None) -> sp.Matrix:
    """Explicit ``left @ right (+ bias row)``, each entry one sum of products as written.

    Structural zeros (masked attention weights, exact integer 0) contribute no term.
    """
    def entry(row, col):
        terms = [mul(left[row, q], right[q, col]) for q in range(left.cols)
                 if left[row, q] is not sp.S.Zero and right[q, col] is not sp.S.Zero]
        return add(*terms, *([] if bias is None else [bias[0, col]]))
    return sp.Matrix(left.rows, right.cols, entry)


class Cost(Counter):
    """How many scalar operations of each kind; adds, and scales by a repeat count."""

    def __add__(self, other):
        return Cost(Counter.__add__(self, other))

    def __mul__(self, times: int):
        return Cost({kind: count * int(times) for kind, count in self.items() if count * int(times)})

    __rmul__ = __mul__


def ops(**counts: int) -> Cost:
    return Cost({kind: int(count) for kind, count in counts.items() if count})


def count_operations(expr: sp.Basic) -> Cost:
    """Scalar operations in an expression tree, counted by kind.

    A sum of k terms is k - 1 additions and a product of k factors k - 1 multiplications, except
    that a factor -1 counts as a negation and a factor b^-1 as a division; x^2 is a multiplication,
    x^(1/2) a square root, x^(-1/2) a square root and a division; exp, tanh, erf and max count
    by name. Numbers and symbols are free.
    """
    counts = Cost()

    def visit(node, in_product=False):
        if isinstance(node, sp.Add):
            counts["add"] += len(node.args) - 1
        elif isinstance(node, sp.Mul):
            negations = sum(1 for a in node.args if a == sp.S.NegativeOne)
            divisions = sum(1 for a in node.args if isinstance(a, sp.Pow) and a.exp == -1)
            counts.update(neg=negations, div=divisions, mul=len(node.args) - 1 - negations - divisions)
        elif isinstance(node, sp.Pow):
            counts.update(_power_cost(node.exp, in_product))
        elif isinstance(node, (sp.Max, sp.Min)):
            counts["max"] += len(node.args) - 1
        elif isinstance(node, sp.Function):
            counts[type(node).__name__] += 1
        for arg in node.args:
            visit(arg, isinstance(node, sp.Mul))

    visit(sp.sympify(expr))
    return Cost({kind: count for kind, count in counts.items() if count})


def _power_cost(exponent, in_product: bool) -> Counter:
    if exponent == -1:
        return Counter() if in_product else Counter(div=1)  # a product counts its divisions
    if exponent == sp.Rational(1, 2):
        return Counter(sqrt=1)
    if exponent == sp.Rational(-1, 2):
        return Counter(sqrt=1, div=1)
    if exponent.is_Integer and exponent > 1:
        return Counter(mul=int(exponent) - 1)
    return Counter(pow=1)


def numpy_source(functions) -> str:
    """Source text of the numpy functions, for the emitted module's prelude."""
    return "\n\n".join(inspect.getsource(f).rstrip() + "\n" for f in functions)


def operator(printer, name: str, *args, sep: str = ", ") -> str:
    r"""``\operatorname{name}\left(a, b\right)``: the one spelling of an applied op in LaTeX."""
    inside = sep.join(printer._print(a) for a in args)
    return rf"\operatorname{{{name}}}\left({inside}\right)"


def subscripted(printer, matrix, index) -> str:
    r"""A matrix symbol with a subscript, ``Q^{(l)}_{h}``: the subscript sits under the superscript.

    Only a symbol whose LaTeX has no subscript yet takes it directly; anything else is braced,
    ``{W_{Q}}_{h}`` (which TeX sets after a gap, but never as a double subscript).
    """
    inner, sub = printer._print(matrix), printer._print(index)
    depth, top_level = 0, []
    for ch in inner:
        depth += (ch == "{") - (ch == "}")
        if depth == 0:
            top_level.append(ch)
    if isinstance(matrix, MatrixSymbol) and "_" not in top_level:
        return rf"{inner}_{{{sub}}}"
    return rf"{{{inner}}}_{{{sub}}}"
