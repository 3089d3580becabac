"""Megatron's placement over a device mesh, read off the equations, and what it puts on each device.

The JAX module places its weights by :func:`split_table` (``model_jax.SPLIT``); :func:`mesh_plan`
states from the shapes alone what that placement costs on a mesh of ``data`` x ``model`` devices
(``eqcompile stats MODEL --mesh 8x8``). An analysis: it reads the Program, never a weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from .ops import GroupedHeads, Linear, MergeHeads, SplitHeads
from .program import Program, Stage

Rules = dict[str, tuple[int, str]]  # weight -> (its axis split over "model", the count that axis holds)


def split_table(program: Program) -> dict[str, Rules]:
    """Megatron's placement, read off the equations: stage -> weight -> (axis, count), the axis of
    the weight split over the mesh's "model" axis and the count it holds (whole heads, d_ff, vocabulary).

    Column-parallel: the weights (and biases) of a matrix split into heads (Q, K, V), and those
    whose columns are d_ff (into the MLP). Row-parallel: the weight multiplying the merged heads
    (W_O), and those whose rows are d_ff (out of the MLP). The vocabulary axis of the embedding and
    unembedding is split too. Everything else is replicated.
    """
    named = {name: symbol for symbol, name in program.dim_python.items()}
    table = {}
    for stage in program.stages:
        params = {p.symbol: p.name for p in stage.params}
        rules = table.setdefault(stage.name, {})
        split_by, merged = _heads(stage)
        for eq in stage.equations:
            if eq.lhs in split_by:  # Q, K, V: whole heads' columns per device
                for symbol in eq.rhs.free_symbols & params.keys():
                    rules[params[symbol]] = (1, program.dim_python[split_by[eq.lhs]])
            for left, right in _products(eq.rhs):
                if left in merged and right in params:  # W_O: the rows of whole heads
                    rules[params[right]] = (0, program.dim_python[merged[left]])
        for symbol, name in params.items():
            for axis in (1, 0):
                for count in ("d_ff", "n_vocab"):
                    if name not in rules and named.get(count) in sp.sympify(symbol.shape[axis]).free_symbols:
                        rules[name] = (axis, count)
    order = [p.name for _, p in program.params]
    return {stage: dict(sorted(rules.items(), key=lambda rule: order.index(rule[0])))
            for stage, rules in table.items() if rules}


def _heads(stage: Stage) -> tuple[dict, dict]:
    """(an intermediate matrix -> the head count it is split into, a matrix of merged heads -> their count)."""
    split_by, merged = {}, {}
    for eq in stage.equations:
        for op in eq.rhs.atoms(SplitHeads, GroupedHeads):
            split_by[op.arg] = op.kv_heads if isinstance(op, GroupedHeads) else op.heads
        if isinstance(eq.rhs, MergeHeads):
            merged[eq.lhs] = eq.rhs.heads
    return split_by, merged


def _products(expr):
    """Every (x, W) multiplied as ``x W`` in an expression, plain or in a ``Linear``."""
    for linear in expr.atoms(Linear):
        yield linear.arg, linear.weight
    for product in expr.atoms(sp.MatMul):
        yield from zip(product.args, product.args[1:])


@dataclass(frozen=True)
class MeshPlan:
    """What ``split_table``'s placement puts on each device of a ``data`` x ``model`` mesh, in inference.

    The "data" axis holds whole copies of the weights, each serving its share of the batch: it
    needs no collective in inference. The "model" axis splits what divides; a split axis that is
    summed over (row-parallel W_O and W_out, a vocabulary-parallel lookup) costs one all-reduce of
    its output, d values per token.
    """

    data: int
    model: int
    dtype_bytes: int
    weight_bytes: int  # every weight once
    weight_bytes_per_device: int
    replicated: tuple[str, ...]  # stage.weight that split_table splits but this model axis cannot
    kv_cache_bytes_per_token: int  # per device, per token of a sequence its data group holds
    all_reduces_per_layer: int
    all_reduce_bytes_per_layer_per_token: int  # their payload (values reduced x bytes)
    ring_bytes_per_layer_per_token: int  # what each device sends for them in a ring: 2 (M - 1) / M x payload
    all_reduces_outside_layers: int  # per token: a vocabulary-parallel lookup
    all_reduce_bytes_outside_layers_per_token: int


def mesh_plan(program: Program, data: int, model: int, dtype_bytes: int) -> MeshPlan:
    """The placement's bytes on a ``data`` x ``model`` mesh, weights and activations of ``dtype_bytes``."""
    table, dims = split_table(program), program.dims
    total = per_device = 0
    replicated = []
    for binding in program.bindings():  # each weight once (a tied one where it is first used)
        rows, cols = program.numeric_shape(binding.param.symbol)
        total += rows * cols * dtype_bytes
        axis, count = table.get(binding.stage.name, {}).get(binding.param.name, (None, "1"))
        split = axis is not None and _value(program, count) % model == 0
        if axis is not None and not split and binding.layer in (None, 0):
            replicated.append(f"{binding.stage.name}.{binding.param.name}")
        per_device += rows * cols * dtype_bytes // (model if split else 1)
    kv_bytes = reduced_in_layers = reduces_in_layers = reduced_outside = reduces_outside = 0
    for stage in program.stages:
        layers = stage.layers or 1
        split_by, _ = _heads(stage)
        for symbol in stage.cached:
            heads = int(sp.sympify(split_by[symbol]).subs(dims))
            columns = int(sp.sympify(symbol.shape[1]).subs(dims))
            kv_bytes += layers * columns * dtype_bytes // (model if heads % model == 0 and model > 1 else 1)
        for width in _all_reduced(program, stage, table.get(stage.name, {}), model):
            if stage.layers:
                reduces_in_layers, reduced_in_layers = reduces_in_layers + 1, reduced_in_layers + width
            else:
                reduces_outside, reduced_outside = reduces_outside + 1, reduced_outside + width
    payload = reduced_in_layers * dtype_bytes
    return MeshPlan(data, model, dtype_bytes, total, per_device, tuple(replicated), kv_bytes,
                    reduces_in_layers, payload, 2 * (model - 1) * payload // model,
                    reduces_outside, reduced_outside * dtype_bytes)


def _all_reduced(program: Program, stage: Stage, rules: Rules, model: int):
    """The output width (values per token) of each split weight whose split axis is summed over:
    ``x W`` or a row lookup ``W[t]`` split on rows, ``x Wᵀ`` split on columns."""
    if model == 1:
        return
    transposed = {t.arg for eq in stage.equations for t in eq.rhs.atoms(sp.Transpose)}
    for param in stage.params:
        axis, count = rules.get(param.name, (None, "1"))
        if axis is None or _value(program, count) % model:
            continue
        rows, cols = program.numeric_shape(param.symbol)
        if rows > 1 and axis == (1 if param.symbol in transposed else 0):  # a bias row is never summed over
            yield rows if axis == 1 else cols


def _value(program: Program, count: str) -> int:
    """The value of a dimension named as in the emitted modules (``n_head``, ``d_ff``, ...)."""
    named = {name: symbol for symbol, name in program.dim_python.items()}
    return int(program.dims[named[count]]) if count in named else int(count)
