"""Functions a model's code writes out op by op, recognised in the sympy expression they lowered
to (each step first lowered on its own, generically where no pattern took it) and replaced by the
op that states them: GPT-2's and GPT-J's ``gelu_new``, 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))).
The generic steps a match absorbs vanish from the equations, so they are not listed as lowered
generically."""

from __future__ import annotations

import math

import sympy as sp

from ..ops import GELUTanh, Tanh
from ..ops.generic import AtenOp


def _scaled(expr, factor: float):
    """X when ``expr`` is ``factor X`` (to float32's precision), else None."""
    if isinstance(expr, sp.MatMul) and len(expr.args) == 2 and expr.args[0].is_Number and \
            math.isclose(float(expr.args[0]), factor, rel_tol=1e-6):
        return expr.args[1]
    return None


def _is_number(expr, value: float) -> bool:
    return expr.is_Number and float(expr) == value


def gelu_tanh(a, b):
    """GELUTanh(X) when ``a ∘ b`` (elementwise) is 0.5 X ∘ (1 + tanh(√(2/π) (X + 0.044715 X³))), else None."""
    for half, gate in ((a, b), (b, a)):
        x = _scaled(half, 0.5)
        if x is None or not (isinstance(gate, AtenOp) and gate.name == "add" and len(gate.operands) == 2):
            continue
        tanh, one = sorted(gate.operands, key=lambda o: o.is_Number)
        inner = _scaled(tanh.arg, math.sqrt(2 / math.pi)) if isinstance(tanh, Tanh) and _is_number(one, 1) else None
        if not isinstance(inner, sp.MatAdd) or len(inner.args) != 2 or x not in inner.args:
            continue
        cube = _scaled(next(t for t in inner.args if t != x), 0.044715)
        if isinstance(cube, AtenOp) and cube.name == "pow" and cube.operands[0] == x and \
                _is_number(cube.operands[1], 3):
            return GELUTanh(x)
    return None
