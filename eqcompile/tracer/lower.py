"""The pattern lowering: each aten node of one stage's section of the graph becomes a piece of a
sympy equation, by a handler per op; multi-node idioms (RMSNorm written out, rotate_half) are
matched through ``Partial`` values. A node no handler takes is lowered as itself when the table of
``ops/generic.py`` states it (``generic.py``), else stops the lowering with its op and module path:
never a guessed equation."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import sympy as sp
from sympy import HadamardProduct
from sympy.matrices.expressions.matexpr import MatrixSymbol

from ..errors import UnsupportedArchitecture
from ..ops import (GELU, ALiBi, Embed, GELUTanh, GroupedHeads, HeadRMSNorm, MergeHeads, PartialRoPE, ReLU,
                   RMSNorm, RoPE, Sigmoid, SiLU, Softmax, SplitHeads, Tanh, d_head, n_head, n_kv_head)
from ..ops.softcap import SoftCap
from .alibi import ALiBiPatterns
from .eager import EagerPatterns
from .generic import generic_value, lower_generically
from .idioms import gelu_tanh
from .interleaved import InterleavedRotary
from .moe import MoEPatterns
from .naming import Names, module_path, op_name
from .norms import NormPatterns
from .statics import positions_offset
from .values import Attended, Heads, Partial, Pieces, SplitRows, Static, Stream, Tokens, Weight

IDENTITY = {"dropout", "alias", "contiguous", "clone", "detach", "lift_fresh_copy"}
PARTS = {"slice", "chunk", "split", "split_with_sizes", "_assert_tensor_metadata"}  # a fused projection's users: folded
SIN_TERMS = {"rotate_half": "sin", "rotate_every_two": "sin_pairs"}  # the rotated half's table
ACTIVATIONS = {"silu": SiLU, "relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid}


class StageLowering(NormPatterns, ALiBiPatterns, EagerPatterns, MoEPatterns, InterleavedRotary):
    """Lowers one section of the graph into a stage's equations (``names`` collects them)."""

    def __init__(self, context, names: Names, values: dict):
        self.context, self.names, self.values = context, names, values
        self.generic_values: dict = {}  # a node a pattern took part-way -> its generic lowering

    def lower(self, nodes, output) -> MatrixSymbol:
        for node in nodes:
            if node in self.context.static:
                continue
            args = [self.value(a) for a in node.args]
            kwargs = {k: self.value(v) for k, v in node.kwargs.items()}
            result = next((result for handler in self._handlers(op_name(node))
                           if (result := handler(self, node, *args, **kwargs)) is not NotImplemented), NotImplemented)
            if result is NotImplemented:  # no pattern: the op as itself, if the table states it
                result = lower_generically(self, node)
            if result is None:
                self.refuse(node)
            if isinstance(result, Stream) and node is not output and self.context.fan_out(node) > 1 \
                    and not all(op_name(user) in PARTS for user in node.users):
                result = Stream(self.names.materialize(result.expr))
            self.values[node] = result
        final = self.values.get(output)
        if isinstance(final, Partial):  # a pattern begun at the very end (Granite's logits / s): the op as itself
            final = generic_value(self, output)
        if not isinstance(final, Stream):
            raise UnsupportedArchitecture(f"the stage ending at {module_path(output)} does not end in a matrix")
        return final.expr

    @classmethod
    def _handlers(cls, op: str) -> list:
        """The op's handlers, this class's first, then those of the pattern classes it extends."""
        return [vars(klass)["_" + op] for klass in cls.__mro__ if "_" + op in vars(klass)]

    def value(self, arg):
        import torch.fx

        if isinstance(arg, torch.fx.Node):
            return Static(arg) if arg in self.context.static else self.values[arg]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        return arg

    def refuse(self, node):
        args = ", ".join(type(self.value(a)).__name__ for a in node.args if not isinstance(a, (int, float)))
        raise UnsupportedArchitecture(
            f"cannot lower aten op {getattr(node.target, '__name__', node.target)} ({args}) at {module_path(node)}: "
            "no pattern matches it, nor the table of ops lowered generically")

    # plumbing --------------------------------------------------------------------------------
    def _identity(self, node, x, *rest, **kwargs):
        if op_name(node) == "dropout" and rest[1:2] == (True,):
            return NotImplemented  # dropout in training mode
        return x

    _dropout = _alias = _contiguous = _clone = _detach = _identity

    def _to(self, node, x, *args, **kwargs):
        import torch

        dtype = kwargs.get("dtype", next((a for a in args if isinstance(a, torch.dtype)), torch.float32))
        kept = isinstance(x, (Stream, Heads, SplitRows, Partial, Weight))  # Cohere casts its gain: a no-op here
        return x if dtype == torch.float32 and kept else NotImplemented

    _type_as = _to

    def _getitem(self, node, pieces, index):
        return pieces.items[index] if isinstance(pieces, Pieces) else NotImplemented

    # embeddings and affine maps --------------------------------------------------------------
    def _embedding(self, node, weight, indices, *rest):
        if not isinstance(weight, Weight):
            return NotImplemented
        if isinstance(indices, Tokens):
            return Stream(Embed(self.names.weight(weight, "E"), indices.symbol))
        n = 7
        offset = positions_offset(self.context.evaluate(indices.node, n), n) if isinstance(indices, Static) else None
        if offset is None:
            return NotImplemented
        return Stream(Embed(self.names.weight(weight, "P", offset), self.names.positions()))

    def _linear(self, node, x, weight, bias=None):
        if not isinstance(x, Stream) or not isinstance(weight, Weight):
            return NotImplemented
        return Stream(self.names.linear(self.names.named_input(x.expr), weight, bias, node))

    def _addmm(self, node, bias, x, weight, beta=1, alpha=1):  # GPT-2's Conv1D: b + X W, W stored [in, out]
        if not (isinstance(x, Stream) and isinstance(weight, Weight) and isinstance(bias, Weight)) or \
                (beta, alpha) != (1, 1):
            return NotImplemented
        return Stream(self.names.linear(self.names.named_input(x.expr), weight, bias, node, stored_transposed=False))

    def _numpy_T(self, node, weight):
        return Partial("transposed", (weight,)) if isinstance(weight, Weight) else NotImplemented

    def _matmul(self, node, x, y):  # x @ W.T, as Falcon writes its projections
        if isinstance(y, Partial) and y.kind == "transposed":
            return self._linear(node, x, y.parts[0])
        return NotImplemented

    # RMSNorm, written out: x * rsqrt(mean(x^2) + eps) * gain ----------------------------------
    def _pow(self, node, x, exponent):
        return Partial("square", (x,)) if isinstance(x, (Stream, SplitRows)) and exponent == 2 else NotImplemented

    def _mean(self, node, x, dims, keepdim=False, **kwargs):
        if isinstance(x, Partial) and x.kind == "square" and list(dims) in ([-1], [2]) and keepdim:
            return Partial("mean_square", x.parts)
        return NotImplemented

    def _rsqrt(self, node, x):
        return Partial("inverse_rms", x.parts) if isinstance(x, Partial) and x.kind == "mean_square_eps" \
            else NotImplemented

    # elementwise ------------------------------------------------------------------------------
    def _add(self, node, a, b, alpha=1):
        if isinstance(a, Partial) and a.kind == "mean_square" and isinstance(b, (int, float)):
            return Partial("mean_square_eps", (*a.parts, b))
        if isinstance(a, Stream) and isinstance(b, Stream) and a.expr.shape == b.expr.shape:  # a residual
            terms = [t for x in (a, b) for t in (x.expr.args if isinstance(x.expr, sp.MatAdd) else (x.expr,))]
            terms.sort(key=lambda term: not self.names.is_stream(term))
            return Stream(sp.MatAdd(*terms, evaluate=False))
        if isinstance(a, Partial) and isinstance(b, Partial) and {a.kind, b.kind} == {"rotation"}:
            (view, kinds) = a.parts[0], {a.parts[1], b.parts[1]}
            if b.parts[0] == view and kinds == {"cos", "sin"}:
                if view.whole:
                    rotated = self.context.rotated(RoPE(view.base, self.names.frequencies(view.width),
                                                        self.names.positions()), whole=True)
                    return Heads(rotated, view.heads, view.width, 0, view.width)
                return Partial("rotated", (view,))
            if b.parts[0] == view and kinds == {"cos_pairs", "sin_pairs"}:  # GPT-J's rotate_every_two
                return self.interleaved(view)
        return NotImplemented

    def _mul(self, node, a, b):
        for x, y in ((a, b), (b, a)):
            if isinstance(y, Partial) and y.kind == "inverse_rms" and y.parts[0] == x:
                return Partial("normalized", y.parts)
            if isinstance(x, Weight) and isinstance(y, Partial) and y.kind == "normalized":
                return self._rms_norm(node, x, *y.parts)
            if isinstance(y, Static) and isinstance(x, (Heads, Partial, SplitRows)):
                x = x.as_heads() if isinstance(x, SplitRows) else x
                view = x if isinstance(x, Heads) else x.parts[0] if x.kind in SIN_TERMS else None
                if view is None:
                    continue
                kind = self.context.rotary_kind(y.node, view.stop - view.start)
                if kind in (("cos", "cos_pairs") if isinstance(x, Heads) else (SIN_TERMS[x.kind],)):
                    return Partial("rotation", (view, kind))
            if isinstance(x, Stream) and isinstance(y, (int, float)):
                return Stream(sp.Float(y, 17) * x.expr) if y != 1 else x
        if isinstance(a, Stream) and isinstance(b, Stream) and a.expr.shape == b.expr.shape:
            return Stream(gelu_tanh(a.expr, b.expr) or HadamardProduct(a.expr, b.expr))
        return NotImplemented

    def _rms_norm(self, node, weight: Weight, x, eps):
        gain, eps = self.names.norm_weights(weight, None, node)[0], self.names.epsilon(eps)
        if isinstance(x, Stream):
            return Stream(RMSNorm(x.expr, gain, eps))
        return SplitRows(HeadRMSNorm(x.base, gain, eps, d_head), x.heads, x.width)  # each head on its own

    def _neg(self, node, x):
        odd = isinstance(x, Partial) and x.kind == "odd"  # rotate_every_two's -x[..., 1::2]
        return Partial("negated", (x,)) if isinstance(x, Heads) or odd else NotImplemented

    def _cat(self, node, items, dim=0):
        if dim not in (-1, 3) or len(items) != 2:
            return NotImplemented
        first, second = items
        if isinstance(second, Heads) and second.start == second.stop:  # x[..., d:] of a head d wide: empty
            return first
        if isinstance(first, Partial) and first.kind == "negated" and isinstance(second, Heads):
            upper = first.parts[0]  # rotate_half(v) = [-v_upper, v_lower]
            if upper.base == second.base and second.stop == upper.start and \
                    upper.stop - upper.start == second.stop - second.start:
                return Partial("rotate_half", (Heads(second.base, second.heads, second.width, second.start,
                                                     upper.stop),))
        if isinstance(first, Partial) and first.kind == "rotated" and isinstance(second, Heads):
            view = first.parts[0]
            if view.base == second.base and view.start == 0 and second.start == view.stop and \
                    second.stop == view.width:
                frequencies = self.names.frequencies(view.stop, partial=True)
                rotated = self.context.rotated(PartialRoPE(view.base, frequencies, self.names.positions(), d_head),
                                               whole=False)
                return Heads(rotated, view.heads, view.width, 0, view.width)
        if isinstance(first, Partial) and first.kind == "rotated_pairs" and isinstance(second, Heads):
            return self.interleaved_with_rest(first, second)
        return NotImplemented

    def _gelu(self, node, x, approximate="none"):
        if not isinstance(x, Stream):
            return NotImplemented
        return Stream((GELUTanh if approximate == "tanh" else GELU)(x.expr))

    def _activation(self, node, x):
        return Stream(ACTIVATIONS[op_name(node)](x.expr)) if isinstance(x, Stream) else NotImplemented

    _silu = _relu = _tanh = _sigmoid = _activation
    _add_ = _add

    # heads -------------------------------------------------------------------------------------
    # transformers' repeat_kv: x[:, :, None].expand(1, kv, r, n, w).reshape(1, kv r, n, w)
    def _unsqueeze(self, node, x, dim):
        if isinstance(x, Stream) and dim == 1:  # GPT-BigCode's multi-query [1, 1, n, w]: one head of it all
            width = int(node.meta["val"].shape[-1])
            return Heads(x.expr, 1, width, 0, width)
        return Partial("unsqueezed", (x,)) if isinstance(x, Heads) and x.whole and dim == 2 else NotImplemented

    def _expand(self, node, x, shape, **kwargs):
        if isinstance(x, Partial) and x.kind == "unsqueezed" and len(shape) == 5:
            return Partial("repeated", (x.parts[0], int(node.meta["val"].shape[2])))
        return NotImplemented

    def _view(self, node, x, shape):
        before, after = tuple(node.args[0].meta["val"].shape), tuple(node.meta["val"].shape)
        if before == after or (isinstance(x, Stream) and {len(before), len(after)} <= {2, 3}
                               and before[-1] == after[-1]):  # [1, n, w] <-> [n, w]: the same rows
            return x
        if isinstance(x, Partial) and x.kind == "repeated" and len(after) == 4:
            view, times = x.parts
            return replace(view, repeat=view.repeat * times)
        if isinstance(x, Stream) and len(after) == 4 and len(before) == 3:
            return SplitRows(x.expr, int(after[2]), int(after[3]))
        if isinstance(x, Heads) and x.rows_first and x.whole and len(after) == 4 and \
                after[2] * after[3] == x.heads * x.width:  # CodeGen: a group of heads' part, into its heads
            return SplitRows(x.base, int(after[2]), int(after[3]))
        if isinstance(x, Heads) and x.heads == 1 and x.whole and len(after) == 4 and before[1] == 1:
            return SplitRows(x.base, int(after[2]), int(after[3]))  # [1, 1, n, w] -> [1, n, heads, w / heads]
        if isinstance(x, Attended) and x.transposed and len(after) == 3:
            return Stream(self.names.materialize(MergeHeads(x.expr, n_head), "z"))
        return NotImplemented

    _reshape = _unsafe_view = _view

    def _permute(self, node, x, order):
        return self._transpose(node, x, 1, 2) if list(order) == [0, 2, 1, 3] else NotImplemented

    def _transpose(self, node, x, first, second):
        if {first, second} != {1, 2}:
            return NotImplemented
        if isinstance(x, SplitRows):
            return Heads(x.base, x.heads, x.width, 0, x.width)
        if isinstance(x, Heads) and x.rows_first and x.whole:  # rotated before the heads moved forward (GPT-J)
            return Heads(x.base, x.heads, x.width, 0, x.width)
        if isinstance(x, Attended) and not x.transposed:
            return Attended(x.expr, x.heads, True)
        return NotImplemented

    def _chunk(self, node, x, chunks, dim=0):
        if not isinstance(x, (Heads, Stream)):
            return NotImplemented
        rank = len(node.args[0].meta["val"].shape)
        width = x.stop - x.start if isinstance(x, Heads) else int(node.args[0].meta["val"].shape[-1])
        if dim not in (-1, rank - 1) or width % chunks:
            return NotImplemented
        size = width // chunks
        return Pieces(tuple(self._columns(node, x, i * size, (i + 1) * size) for i in range(chunks)))

    def _split_with_sizes(self, node, x, sizes, dim=0):
        if dim not in (-1, len(node.args[0].meta["val"].shape) - 1):
            return NotImplemented
        bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        return Pieces(tuple(self._columns(node, x, a, b) for a, b in zip(bounds, bounds[1:])))

    def _split(self, node, x, size, dim=0):
        width = x.stop - x.start if isinstance(x, Heads) else int(node.args[0].meta["val"].shape[-1])
        return self._split_with_sizes(node, x, [min(size, width - start) for start in range(0, width, size)], dim)

    def _index(self, node, x, indices):
        """Falcon's key and value heads out of the fused projection: x[:, :, [k]]."""
        if not isinstance(x, SplitRows) or len(indices) != 3 or indices[:2] != [None, None] \
                or not isinstance(indices[2], Static):
            return NotImplemented
        chosen = self.context.evaluate(indices[2].node, 7).reshape(-1) % x.heads
        if not np.array_equal(chosen, np.arange(chosen[0], chosen[0] + chosen.size)):
            return NotImplemented
        return self._head_range(x, int(chosen[0]), int(chosen[0]) + chosen.size)

    def _head_range(self, x: SplitRows, first: int, last: int):
        folded = self.names.fold(x.base, (x.heads * x.width, first * x.width, last * x.width))
        return NotImplemented if folded is None else SplitRows(folded, last - first, x.width)

    def _slice(self, node, x, dim=0, start=None, end=None, step=1):
        rank = len(node.args[0].meta["val"].shape)
        if isinstance(x, SplitRows) and dim == 2 and step == 1:  # a range of heads
            first, last = slice(start, end).indices(x.heads)[:2]
            return self._head_range(x, first, last)
        if dim in (-1, rank - 1) and step == 2:
            return self.pairs_part(x, start, end)
        if dim not in (-1, rank - 1) or step != 1:
            return NotImplemented
        width = x.stop - x.start if isinstance(x, Heads) else int(node.args[0].meta["val"].shape[-1])
        return self._columns(node, x, start or 0, width if end is None else min(end, width), fold=False)

    def _columns(self, node, x, start: int, stop: int, fold: bool = True):
        """Features start:stop of every head (of a stream's rows): a fused projection's part becomes
        a projection of its own."""
        if isinstance(x, SplitRows):  # [1, n, heads, w] before the transpose (GPT-J rotates there)
            x = x.as_heads()
        if isinstance(x, Heads):
            part = x.part(start, stop)
            return self.names.fold_heads(part) if fold else part
        if isinstance(x, Stream) and (start, stop) == (0, int(node.args[0].meta["val"].shape[-1])):
            return x
        if isinstance(x, Stream):
            width = int(node.args[0].meta["val"].shape[-1])
            folded = self.names.fold(x.expr, (width, start, stop))
            return NotImplemented if folded is None else Stream(folded)
        return NotImplemented

    def _scaled_dot_product_attention(self, node, q, k, v, mask=None, dropout=0.0, is_causal=False, scale=None,
                                      enable_gqa=False):
        if not all(isinstance(x, Heads) and x.whole for x in (q, k, v)) or dropout:
            return NotImplemented
        if not all(x.heads * x.repeat == q.heads or x.heads == 1 for x in (k, v)) and not enable_gqa:
            return NotImplemented  # (one key/value head is broadcast to all: multi-query attention)
        return self.attention(q, k, v, 1 / math.sqrt(q.width) if scale is None else scale, mask, is_causal)

    def attention(self, q: Heads, k: Heads, v: Heads, scale: float, mask, is_causal: bool, cap=None, alibi=False):
        """softmax(mask(cap(ALiBi(c Q Kᵀ)))) V over the heads, keys and values cached: sdpa's and the
        written-out form."""
        queries, keys, values = (self.names.materialize(x.base, name) for x, name in ((q, "q"), (k, "k"), (v, "v")))
        self.names.cache(keys, values)
        if q.heads == k.heads:
            keys, values = SplitHeads(keys, n_head), SplitHeads(values, n_head)
        else:
            groups = self.context.constant(n_kv_head, k.heads)
            keys, values = (GroupedHeads(x, groups, n_head) for x in (keys, values))
        scores = scale_factor(scale, q.width) * SplitHeads(queries, n_head) * keys.T
        scores = ALiBi(scores, n_head) if alibi else scores
        masked = self.context.mask(self.names, scores if cap is None else SoftCap(scores, cap), mask, is_causal)
        if masked is NotImplemented:
            return NotImplemented
        weights = self.names.materialize(Softmax(masked), "a")
        return Attended(weights * values, q.heads)


def scale_factor(scale: float, width: int) -> sp.Expr:
    """The scores' scale: 1/sqrt(d_head), 1/sqrt(s) for another whole s (Gemma's query_pre_attn_scalar)."""
    if math.isclose(scale, 1 / math.sqrt(width), rel_tol=1e-12):
        return sp.Integer(1) / sp.sqrt(d_head)
    square = round(scale ** -2)
    return sp.Integer(1) / sp.sqrt(square) if math.isclose(scale, square ** -0.5, rel_tol=1e-12) else sp.Float(scale, 17)
