"""A constant that differs between layers (Gemma's sliding-window and global layers: the window,
the rotary base): one symbol with a layer superscript, its value for layer l read from a table."""

from __future__ import annotations

import sympy as sp


class LayerValue(sp.Function):
    """``LayerValue(name, table, l)``: entry l (1-based) of ``table``; written ``name^{(l)}``."""

    @classmethod
    def eval(cls, name, table, layer):
        if layer.is_Integer:
            return table[int(layer) - 1]
        return None

    @property
    def table(self) -> tuple:
        return tuple(self.args[1])

    def _latex(self, printer, exp=None):
        text = rf"{{{printer._print(self.args[0])}^{{({printer._print(self.args[2])})}}}}"  # braced: a base too
        return rf"\left({text}\right)^{{{printer._print(exp)}}}" if exp is not None else text

    def _numpycode(self, printer):  # the emitted block takes the layer l (1-based)
        values = ", ".join("math.inf" if v == sp.oo else printer._print(v) for v in self.table)
        return f"({values},)[{printer._print(self.args[2])} - 1]"


def layer_value(name: sp.Symbol, values, layer: sp.Symbol):
    """``name`` for layer l: the one value when every layer has it, else the per-layer table."""
    values = tuple(sp.sympify(v) for v in values)
    if len(set(values)) == 1:
        return values[0]
    return LayerValue(name, sp.Tuple(*values), layer)
