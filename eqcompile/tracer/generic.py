"""The fallback below the patterns: an aten op of :data:`~eqcompile.ops.generic.ATEN` that no
pattern took is lowered as itself (an :class:`~eqcompile.ops.generic.AtenOp`), when its operands
are matrices of the stream's rows, [d] weights or numbers and its other arguments are the defaults the
table assumes. Every such op is recorded with its module path, for the notes and stderr."""

from __future__ import annotations

import sympy as sp

from ..ops.generic import ATEN, AtenOp, arity
from .naming import module_path, op_name
from .values import Partial, Stream, Weight

DEFAULTS = {"alpha": 1, "rounding_mode": None, "dtype": None, "memory_format": None}  # arguments that must be so
REDUCTION_ARGUMENTS = ("dim", "keepdim")


def _bound(node) -> dict | None:
    """The node's arguments by their names in the op's schema, defaults filled in."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return None
    bound = {}
    for position, argument in enumerate(schema.arguments):
        if position < len(node.args):
            bound[argument.name] = node.args[position]
        elif argument.name in node.kwargs:
            bound[argument.name] = node.kwargs[argument.name]
        elif argument.has_default_value():
            bound[argument.name] = argument.default_value
    return bound


def _operand_names(name: str, bound: dict) -> tuple[str, list[str]] | None:
    """(the table's op, the schema's names of its operands in order), or None when the other
    arguments ask for something the table does not state (a sum over another axis, alpha != 1)."""
    if ATEN[name].reduces:
        rank = len(bound["self"].meta["val"].shape)
        dims = bound.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        if [d % rank for d in dims] != [rank - 1] or not bound.get("keepdim"):
            return None
        return name, ["self"]
    if name == "clamp" and (bound.get("min") is None) != (bound.get("max") is None):
        name = "clamp_max" if bound.get("min") is None else "clamp_min"
        return name, ["self", "max" if name == "clamp_max" else "min"]
    if any(bound.get(key, default) != default for key, default in DEFAULTS.items()):
        return None
    names = [key for key in bound if key not in DEFAULTS and key not in REDUCTION_ARGUMENTS]
    return (name, names) if len(names) == arity(name) else None


def lower_generically(lowering, node) -> Stream | None:
    """``node`` as an AtenOp of its operands, or None (then the caller refuses it, naming it)."""
    import torch.fx

    name = op_name(node)
    bound = _bound(node) if name in ATEN else None
    chosen = _operand_names(name, bound) if bound is not None else None
    if chosen is None:
        return None
    name, names = chosen
    operands = []
    for key in names:
        value = bound[key]
        if isinstance(value, torch.fx.Node):
            value = lowering.value(value)
            if isinstance(value, Partial):  # a pattern begun (x^2 for an RMSNorm) that this op ends otherwise
                value = generic_value(lowering, bound[key])
        operand = _operand(lowering, value, node)
        if operand is None:
            return None
        operands.append(operand)
    if not any(getattr(o, "is_Matrix", False) for o in operands):
        return None
    op = AtenOp(name, *operands)
    lowering.context.generic.setdefault(op, module_path(node))
    return Stream(op)


def generic_value(lowering, node):
    """A node a pattern took part-way, lowered generically instead (None if it cannot be)."""
    memo = lowering.generic_values
    if node not in memo:
        memo[node] = lower_generically(lowering, node)
    return memo[node]


def _operand(lowering, value, node):
    if isinstance(value, Stream):
        return value.expr
    if isinstance(value, Weight) and len(value.shape) == 1:  # a [d] vector, read as a row [1, d]
        return lowering.names.parameter(value, node)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return sp.Integer(value) if isinstance(value, int) else sp.Float(value, 17)


def generic_listing(generic: dict, equations) -> str:
    """Each op lowered generically that the equations still hold (an idiom may have absorbed some,
    tracer/idioms.py), and where: its first module path, and how many more places."""
    found: dict[str, list[str]] = {}
    for eq in equations:
        for op in sp.preorder_traversal(eq.rhs):
            if isinstance(op, AtenOp):  # as recorded, or with a matrix named midway put back (naming.py)
                path = generic.get(op) or next(path for known, path in generic.items() if known.name == op.name)
                found.setdefault(op.name, []).append(path)
    return "; ".join(f"{name} at {paths[0]}" + (f" and {len(paths) - 1} more" if len(paths) > 1 else "")
                     for name, paths in found.items())
