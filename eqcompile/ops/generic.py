"""An aten op no pattern of the tracer matched, kept as what it is: a function named after the op,
applied to its operands, with its numpy meaning from one table (:data:`ATEN`).

Elementwise ops broadcast their operands as numpy does ([n, d] with [n, 1] or [1, d]); reductions
act over the last axis and keep it ([n, d] -> [n, 1]). The tracer lists every op it lowered so
("lowered generically: ...") in the notes and on stderr.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from ..errors import UnsupportedArchitecture
from .base import MatrixOp, ops


@dataclass(frozen=True)
class Meaning:
    numpy: str  # a numpy expression of the operands {0}, {1}, ... (the emitted module imports numpy as np)
    reduces: bool = False  # over the last axis, keeping it


ATEN: dict[str, Meaning] = {  # aten op -> its numpy meaning
    "exp": Meaning("np.exp({0})"), "log": Meaning("np.log({0})"), "log1p": Meaning("np.log1p({0})"),
    "expm1": Meaning("np.expm1({0})"), "sin": Meaning("np.sin({0})"), "cos": Meaning("np.cos({0})"),
    "tanh": Meaning("np.tanh({0})"), "sigmoid": Meaning("1 / (1 + np.exp(-({0})))"),
    "abs": Meaning("np.abs({0})"), "neg": Meaning("-({0})"), "sign": Meaning("np.sign({0})"),
    "sqrt": Meaning("np.sqrt({0})"), "rsqrt": Meaning("1 / np.sqrt({0})"), "square": Meaning("np.square({0})"),
    "reciprocal": Meaning("1 / ({0})"), "pow": Meaning("np.power({0}, {1})"),
    "add": Meaning("({0} + {1})"), "sub": Meaning("({0} - {1})"), "rsub": Meaning("({1} - {0})"),
    "mul": Meaning("({0} * {1})"), "div": Meaning("({0} / {1})"),
    "maximum": Meaning("np.maximum({0}, {1})"), "minimum": Meaning("np.minimum({0}, {1})"),
    "clamp": Meaning("np.clip({0}, {1}, {2})"), "clamp_min": Meaning("np.maximum({0}, {1})"),
    "clamp_max": Meaning("np.minimum({0}, {1})"),
    "mean": Meaning("np.mean({0}, axis=-1, keepdims=True)", reduces=True),
    "sum": Meaning("np.sum({0}, axis=-1, keepdims=True)", reduces=True),
    "amax": Meaning("np.max({0}, axis=-1, keepdims=True)", reduces=True),
    "amin": Meaning("np.min({0}, axis=-1, keepdims=True)", reduces=True),
}


def arity(name: str) -> int:
    """How many operands the op's numpy meaning takes."""
    template = ATEN[name].numpy
    return max(int(piece.split("}")[0]) for piece in template.split("{")[1:]) + 1


class AtenOp(MatrixOp):
    """An aten op applied as torch defines it (elementwise, or reduced over the last axis)."""

    summary_latex = (r"An aten op no pattern matched, kept under its own name: elementwise on broadcast operands, "
                     r"or reduced over the last axis; the emitted module computes it as numpy does.")

    def __new__(cls, name, *operands):
        return super().__new__(cls, sp.Symbol(str(name)), *operands)

    @property
    def name(self) -> str:
        return self.args[0].name

    @property
    def operands(self) -> tuple:
        return self.args[1:]

    @property
    def shape(self):
        matrices = [a for a in self.operands if getattr(a, "is_Matrix", False)]
        rows = next((r for r in (a.shape[0] for a in matrices) if r != 1), 1)
        cols = next((c for c in (a.shape[1] for a in matrices) if c != 1), 1)
        return (rows, 1) if ATEN[self.name].reduces else (rows, cols)

    def _latex(self, printer):
        inside = ", ".join(printer._print(a) for a in self.operands)
        name = self.name.replace("_", r"\_")
        return rf"\operatorname{{{name}}}\left({inside}\right)"

    def _numpycode(self, printer):
        return ATEN[self.name].numpy.format(*(printer._print(a) for a in self.operands))

    def explicit(self, ev):
        raise UnsupportedArchitecture(f"--expand does not expand the aten op {self.name} (lowered generically)")

    def cost(self, ev):  # one operation of its own kind per entry it writes (a reduction: per entry it reads)
        rows, cols = ev.size(self.operands[0]) if ATEN[self.name].reduces else ev.size(self)
        return sum((ev.cost(a) for a in self.operands if getattr(a, "is_Matrix", False)), ops()) + \
            ops(**{self.name: rows * cols})

    @classmethod
    def definition_latex(cls, printer):  # one line for every op of the table: what ATEN[op] computes
        return [(r"\operatorname{op}\left(X\right)_{ij}",
                 r"f\left(X_{ij}\right)\ \text{(elementwise), or}\ f\left(X_{i1}, \dots, X_{im}\right)"
                 r"\ \text{(a reduction over the last axis)}")]
