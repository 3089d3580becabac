"""The one recipe every op follows.

An op is a sympy ``MatrixExpr`` (it acts on matrices, so it composes with ``MatMul``/``MatAdd``)
that keeps three meanings side by side:

* ``_latex(printer)``: how it is written in an equation (sympy's ``LatexPrinter`` calls it);
* ``_numpycode(printer)``: how the emitted module computes it (our ``NumPyPrinter`` calls it),
  usually a call to one of ``numpy_functions``, whose source is copied into the emitted module;
* ``definition()``: what it means, element by element, as sympy equations ``(lhs, rhs)`` in index
  notation (printed at ``--level index``).
"""

from __future__ import annotations

import inspect
from typing import Callable, ClassVar

import sympy as sp
from sympy.core.sympify import _sympify
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr

# generic indices and sizes used by every op's index-notation definition
i, j, k, v = sp.symbols("i j k v", integer=True)
m, n, p = sp.symbols("m n p", integer=True, positive=True)


class MatrixOp(MatrixExpr):
    """Base class of the canonical ops; subclasses set ``shape`` and the three meanings."""

    numpy_functions: ClassVar[tuple[Callable, ...]] = ()

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
    def definition_latex(cls, printer) -> list[str]:
        """The definition as LaTeX lines ``lhs = rhs``."""
        return [f"{printer._print(lhs)} = {printer._print(rhs)}" for lhs, rhs in cls.definition()]

    def _call(self, printer, name: str, *args) -> str:
        return f"{name}({', '.join(printer._print(a) for a in args)})"


def numpy_source(functions) -> str:
    """Source text of the numpy functions, for the emitted module's prelude."""
    return "\n\n".join(inspect.getsource(f).rstrip() + "\n" for f in functions)


def operator(printer, name: str, *args, sep: str = ", ") -> str:
    r"""``\operatorname{name}\left(a, b\right)``: the one spelling of an applied op in LaTeX."""
    inside = sep.join(printer._print(a) for a in args)
    return rf"\operatorname{{{name}}}\left({inside}\right)"
