"""The model as a composition of maps, f_θ = U ∘ B^(L) ∘ … ∘ B^(1) ∘ E, as sympy objects.

Each object prints itself (``_latex`` for LaTeX, ``_sympystr`` for the plain text of model.py's
docstring), so every printer states the composition the same way; nothing here reads weights.
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.precedence import PRECEDENCE


class StageMap(sp.Expr):
    """One stage as a map: its letter, with a layer superscript when it repeats (``B^{(l)}``)."""

    def __new__(cls, letter: str, layer=None):
        args = (sp.Symbol(letter),) + (() if layer is None else (sp.sympify(layer),))
        return super().__new__(cls, *args)

    @property
    def letter(self) -> sp.Symbol:
        return self.args[0]

    @property
    def layer(self):
        return self.args[1] if len(self.args) > 1 else None

    def _latex(self, printer):
        letter = printer._print(self.letter)
        return letter if self.layer is None else rf"{letter}^{{({printer._print(self.layer)})}}"

    def _sympystr(self, printer):
        letter = printer._print(self.letter)
        return letter if self.layer is None else f"{letter}^({printer._print(self.layer)})"


class Iterated(sp.Expr):
    """A repeated stage applied ``count`` times, its own layer index on each: B^(L) ∘ … ∘ B^(1)."""

    def __new__(cls, letter: str, count):
        return super().__new__(cls, sp.Symbol(letter), sp.sympify(count))

    def _latex(self, printer):
        letter, count = (printer._print(a) for a in self.args)
        return rf"{letter}^{{({count})}} \circ \cdots \circ {letter}^{{(1)}}"

    def _sympystr(self, printer):
        letter, count = (printer._print(a) for a in self.args)
        return f"{letter}^({count}) ∘ … ∘ {letter}^(1)"


class Compose(sp.Expr):
    """Maps composed, the last applied first: ``Compose(U, B, E)(x) = U(B(E(x)))``."""

    precedence = PRECEDENCE["Mul"]

    def __new__(cls, *maps):
        return super().__new__(cls, *maps)

    def _latex(self, printer):
        return r" \circ ".join(printer._print(m) for m in self.args)

    def _sympystr(self, printer):
        return " ∘ ".join(printer._print(m) for m in self.args)


class Space(sp.Expr):
    """Where a map's input or output lives: ℝ^{rows×cols}, ℝ^{rows} (a column), or 𝒱^{n} (token ids)."""

    def __new__(cls, rows, cols, tokens: bool = False):
        return super().__new__(cls, sp.sympify(rows), sp.sympify(cols), sp.true if tokens else sp.false)

    def _latex(self, printer):
        rows, cols, tokens = self.args
        if tokens:
            return rf"\mathcal{{V}}^{{{printer._print(rows)}}}"
        if cols == 1:
            return rf"\mathbb{{R}}^{{{printer._print(rows)}}}"
        return rf"\mathbb{{R}}^{{{printer._print(rows)} \times {printer._print(cols)}}}"


class Arrow(sp.Expr):
    """A map's signature, ``domain → codomain``."""

    def __new__(cls, domain: Space, codomain: Space):
        return super().__new__(cls, domain, codomain)

    def _latex(self, printer):
        return rf"{printer._print(self.args[0])} \to {printer._print(self.args[1])}"
