"""sympy's ``NumPyPrinter``, taught the ops (via their ``_numpycode``) and float32 discipline."""

from __future__ import annotations

import sympy as sp

from sympy import S
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.pycode import PythonCodePrinter


class ModulePrinter(NumPyPrinter):
    """Prints matrix expressions as numpy code that reads like the equations.

    Matrix products are ``@`` (batched over heads where operands are stacked), elementwise products
    ``*``, transposes ``.mT``,
    and scalar factors are plain Python ``math`` floats, never ``np.float64`` scalars, which numpy 2
    would let promote the float32 activations to float64.
    """

    printmethod = "_numpycode"
    _default_settings = {**NumPyPrinter._default_settings, "order": "none"}

    def __init__(self, names: dict, settings=None):
        super().__init__(settings)
        self.names = {symbol: str(name) for symbol, name in names.items()}
        self.scalars = PythonCodePrinter({"order": "none"})
        self.scalars._print_Symbol = self._print_Symbol
        self.printed: set[sp.Symbol] = set()  # the dimensions the printed code names (n: the function reads it)

    def _print_Symbol(self, expr):
        self.printed.add(expr)
        return self.names.get(expr, expr.name)

    def _print_MatMul(self, expr):
        """``A @ B``; a scalar factor c scales the first matrix, ``c * A / k @ B`` = (c A / k) B.

        Same value as scaling the product, fewer multiplications for attention scores: the
        queries Q_h [n, d_head] are scaled rather than the scores [n, m].
        """
        coefficient, matrices = expr.as_coeff_matrices()
        factors = [self.parenthesize(m, PRECEDENCE["Mul"], strict=True) for m in matrices]
        numerator, denominator = coefficient.as_numer_denom()
        if numerator != S.One:
            factors[0] = f"{self.scalars.doprint(numerator)} * {factors[0]}"
        if denominator != S.One:
            factors[0] = f"{factors[0]} / {self.scalars.parenthesize(denominator, PRECEDENCE['Mul'], strict=False)}"
        return " @ ".join(factors)

    def _print_MatAdd(self, expr):
        return " + ".join(self.parenthesize(a, PRECEDENCE["Add"]) for a in expr.args)

    def _print_HadamardProduct(self, expr):
        return " * ".join(self.parenthesize(a, PRECEDENCE["Mul"]) for a in expr.args)

    def _print_Transpose(self, expr):
        return f"{self.parenthesize(expr.arg, PRECEDENCE['Atom'], strict=True)}.mT"

