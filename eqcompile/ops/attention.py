"""The pieces of multi-head attention: head split/concat, causal mask, row softmax.

A block states attention for one generic head h, ``softmax(mask(Q_h K_h^T / sqrt(d_head))) V_h``,
and concatenates the heads. The numpy meaning of ``SplitHeads`` is a reshape to
``[n_head, n, d_head]``, so the same printed expression runs all heads at once with no loop.
The emitted module runs causal attention's two equations as one call, ``causal_attention``
(:func:`fuse_causal_attention`), which for long inputs never holds the n × m scores.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .base import MatrixOp, add, i, j, k, m, mul, n, operator, ops, subscripted

head = sp.Symbol("h", integer=True, positive=True)
n_head = sp.Symbol("n_head", integer=True, positive=True)
d_head = sp.Symbol("d_head", integer=True, positive=True)


def softmax(s):  # [..., n, m] -> [..., n, m], over the last axis (m keys)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def causal_mask(s):  # [..., n, m]: query i (the last n of m positions) attends to keys j <= i
    n, m = s.shape[-2:]
    future = np.arange(m) > np.arange(m - n, m)[:, None]  # [n, m]: key j comes after query i
    return np.where(future, -np.inf, s)


def causal_attention(q, k, v, block=64):  # q [n_head, n, d_head], k, v [n_kv_head, m, d_head] -> [n_head, n, d_head]
    """softmax(causal_mask(q kᵀ)) v per head; query heads share key/value heads in groups of consecutive heads.

    Each group's queries are stacked into one product with its one key/value head (never
    repeated). Inputs of more than ``block`` tokens go ``block`` keys at a time (the same values to
    float32 rounding); one token, the last position, sees every key and needs no mask.
    """
    kv_heads, n, m = k.shape[0], q.shape[1], k.shape[1]
    if n > block:
        out = blocked_causal_attention(q.reshape(kv_heads, -1, n, q.shape[-1]), k[:, None], v[:, None], block)
        return out.reshape(-1, n, v.shape[-1])
    q = q.reshape(kv_heads, -1, q.shape[-1])  # [n_kv_head, group * n, d_head]: the group's queries stacked
    s = (q @ k.mT).reshape(kv_heads, -1, n, m)  # [n_kv_head, group, n, m]
    a = softmax(causal_mask(s) if n > 1 else s).reshape(kv_heads, -1, m)  # [n_kv_head, group * n, m]
    return (a @ v).reshape(-1, n, v.shape[-1])


def blocked_causal_attention(q, k, v, block):  # [..., n, d_head], [..., m, d_head] x 2 -> [..., n, d_head]
    """causal_attention ``block`` keys at a time, with the online softmax: the n × m scores are never held.

    Each query row keeps its running maximum score ``top``, the sum of exp(score - top) (``total``)
    and of exp(score - top) v (``out``), rescaled when ``top`` grows. The queries before a block see
    none of it and are skipped (the masked half is never computed); only blocks on the diagonal
    are masked.
    """
    n, m = q.shape[-2], k.shape[-2]
    positions, keys = np.arange(m - n, m)[:, None], np.arange(m)  # the queries are the last n positions
    out = np.zeros(q.shape[:-1] + v.shape[-1:], dtype=q.dtype)  # [..., n, d_head]
    top = np.full(q.shape[:-1] + (1,), -np.inf, dtype=q.dtype)  # [..., n, 1]
    total = np.zeros(q.shape[:-1] + (1,), dtype=q.dtype)  # [..., n, 1]
    for start in range(0, m, block):
        first = max(0, start - (m - n))  # the first query that sees key `start`; earlier ones see none of the block
        keys_here, rows = slice(start, start + block), (..., slice(first, None), slice(None))
        s = q[rows] @ k[..., keys_here, :].mT  # [..., n - first, block]
        if start + block > m - n + first + 1:  # some key comes after the first query: mask the future
            s = np.where(keys[keys_here] > positions[first:], -np.inf, s)
        row_max = np.maximum(top[rows], s.max(axis=-1, keepdims=True))
        rescale = np.exp(top[rows] - row_max)
        s -= row_max
        np.exp(s, out=s)
        total[rows] *= rescale
        total[rows] += s.sum(axis=-1, keepdims=True)
        out[rows] *= rescale
        out[rows] += s @ v[..., keys_here, :]
        top[rows] = row_max
    out /= total
    return out


def split_heads(x, n_head):  # [n, n_head * d_head] -> [n_head, n, d_head]
    return x.reshape(x.shape[0], n_head, -1).swapaxes(0, 1)


def merge_heads(x):  # [n_head, n, d_head] -> [n, n_head * d_head]
    return x.swapaxes(0, 1).reshape(x.shape[1], -1)


class Softmax(MatrixOp):
    """Row-wise softmax: each row becomes a probability distribution."""

    numpy_functions = (softmax,)

    def _latex(self, printer):
        return operator(printer, "softmax", self.arg)

    def _numpycode(self, printer):
        return self._call(printer, "softmax", self.arg)

    def vjp(self, grad, output):
        """S̄ = A ⊙ (G − (G ⊙ A) 1 1ᵀ), from the output A."""
        from .backward import SoftmaxGrad

        return [(self.arg, SoftmaxGrad(output, grad))]

    def explicit(self, ev):  # masked (-oo) entries have probability 0 and cost nothing
        scores = ev.value(self.arg)
        out = sp.zeros(scores.rows, scores.cols)
        for r in range(scores.rows):
            visible = [c for c in range(scores.cols) if scores[r, c] != -sp.oo]
            exps = {c: ev.name("e", sp.exp(scores[r, c], evaluate=False), r, c) for c in visible}
            total = ev.name("D", add(*exps.values()), r)
            for c in visible:
                out[r, c] = mul(exps[c], sp.Pow(total, -1, evaluate=False))
        return out

    def cost(self, ev):
        rows, cols = ev.size(self.arg)
        visible = self.arg.kept(ev) if hasattr(self.arg, "kept") else rows * cols
        return ev.cost(self.arg) + ops(exp=visible, add=visible - rows, div=visible)

    @classmethod
    def definition(cls):
        S = MatrixSymbol("S", m, n)
        return [(cls(S)[i, j], sp.exp(S[i, j]) / sp.Sum(sp.exp(S[i, k]), (k, 1, n)))]


class CausalMask(MatrixOp):
    """Causal mask: position i sees positions j up to i; later scores become minus infinity."""

    summary_latex = r"Causal mask: position $i$ sees positions $j$ up to $i$; later scores become $-\infty$."

    numpy_functions = (causal_mask,)

    def _latex(self, printer):
        return operator(printer, "mask", self.arg)

    def _numpycode(self, printer):
        return self._call(printer, "causal_mask", self.arg)

    def vjp(self, grad, output):
        """S̄ = G: a masked score is the constant −∞, and the softmax after the mask already gives it a
        zero gradient (its probability is 0), so G is zero there."""
        return [(self.arg, grad)]

    @staticmethod
    def visible(rows: int, cols: int) -> int:
        """How many (i, j) with j <= i: the entries the mask keeps (row i keeps min(cols, i + 1))."""
        full = min(rows, cols)  # rows 0 .. full-1 keep 1 .. full entries; later rows keep all cols
        return full * (full + 1) // 2 + (rows - full) * cols

    def explicit(self, ev):
        scores = ev.value(self.arg)
        return sp.Matrix(scores.rows, scores.cols, lambda r, c: scores[r, c] if c <= r else -sp.oo)

    def kept(self, ev) -> int:
        return self.visible(*ev.size(self))

    def cost(self, ev):
        return kept_cost(self, ev)

    @classmethod
    def definition(cls):
        S = MatrixSymbol("S", n, n)
        return [(cls(S)[i, j], sp.Piecewise((S[i, j], sp.Le(j, i)), (-sp.oo, True)))]


class SplitHeads(MatrixOp):
    """Head h's block of columns: d_head columns starting after (h - 1) d_head."""

    summary_latex = r"Head $h$'s block of columns: $d_{\mathrm{head}}$ columns starting after $(h - 1)\, d_{\mathrm{head}}$."

    numpy_functions = (split_heads,)

    @property
    def heads(self):
        return self.args[1]

    @property
    def shape(self):
        return (self.arg.shape[0], self.arg.shape[1] / self.heads)

    def _latex(self, printer):
        return subscripted(printer, self.arg, head)

    def _numpycode(self, printer):
        return self._call(printer, "split_heads", self.arg, self.heads)

    def vjp(self, grad, output):
        """X̄ = concat_h(G_h): each head's gradient back in its columns."""
        return [(self.arg, MergeHeads(grad, self.heads))]

    def explicit(self, ev):
        width = ev.size(self)[1]
        return ev.value(self.arg)[:, ev.head * width:(ev.head + 1) * width]

    def cost(self, ev):
        if not isinstance(self.arg, MatrixSymbol):
            raise NotImplementedError("heads are split from named matrices only")
        return ops()

    @classmethod
    def definition(cls):
        X = MatrixSymbol("X", n, n_head * d_head)
        return [(cls(X, n_head)[i, j], X[i, (head - 1) * d_head + j])]


class MergeHeads(MatrixOp):
    """Concatenation of the heads' outputs side by side (the inverse of the head split)."""

    numpy_functions = (merge_heads,)

    @property
    def heads(self):
        return self.args[1]

    @property
    def shape(self):
        return (self.arg.shape[0], self.arg.shape[1] * self.heads)

    def _latex(self, printer):
        return (rf"\operatorname{{concat}}_{{{printer._print(head)}=1}}^{{{printer._print(self.heads)}}}"
                rf"\left({printer._print(self.arg)}\right)")

    def _numpycode(self, printer):
        return self._call(printer, "merge_heads", self.arg)

    def vjp(self, grad, output):
        """Ȳ_h = G_h: head h's columns of G."""
        return [(self.arg, SplitHeads(grad, self.heads))]

    def explicit(self, ev):
        return sp.Matrix.hstack(*ev.each_head(self.arg))

    def cost(self, ev):
        return ev.cost(self.arg) * ev.number(self.heads)

    @classmethod
    def definition(cls):
        Y = MatrixSymbol("Y", n, d_head)
        return [(cls(Y, n_head)[i, (head - 1) * d_head + j], SplitHeads(Y, 1)[i, j])]


def kept_cost(mask, ev):
    """A mask's cost: masked scores are never computed, so only the kept ones count."""
    rows, cols = ev.size(mask.arg)
    return ops(**{kind: count * mask.kept(ev) // (rows * cols) for kind, count in ev.cost(mask.arg).items()})


def is_per_head(expr) -> bool:
    """True for an expression stated for one generic head h (it splits heads, does not merge)."""
    return expr.has(SplitHeads) and not isinstance(expr, MergeHeads)


def padding_mask(s, mask):  # [..., n, n] with mask [1, n]: key j is seen only where mask_j = 1
    return np.where(mask > 0, s, -np.inf)


class PaddingMask(MatrixOp):
    """Padding mask: no position attends to a padded key j (mask m_j = 0); its score becomes minus infinity."""

    summary_latex = r"Padding mask: no position attends to a padded key $j$ (mask $m_j = 0$); its score becomes $-\infty$."

    numpy_functions = (padding_mask,)

    @property
    def mask(self):
        return self.args[1]

    def _latex(self, printer):
        return rf"\operatorname{{mask}}_{{{printer._print(self.mask)}}}\left({printer._print(self.arg)}\right)"

    def _numpycode(self, printer):
        return self._call(printer, "padding_mask", self.arg, self.mask)

    def explicit(self, ev):
        """Scores of padded keys become minus infinity; the mask is known (``Program.input_defaults``)."""
        scores, mask = ev.value(self.arg), ev.value(self.mask)
        if not all(entry.is_Integer for entry in mask):
            raise NotImplementedError("a padding mask is expanded for a known mask only")
        return sp.Matrix(scores.rows, scores.cols, lambda r, c: scores[r, c] if mask[0, c] != 0 else -sp.oo)

    def cost(self, ev):  # counted for an input without padding: every score is kept, none is changed
        return ev.cost(self.arg)

    @classmethod
    def definition(cls):
        S, mask = MatrixSymbol("S", n, n), MatrixSymbol("m", 1, n)
        return [(cls(S, mask)[i, j], sp.Piecewise((S[i, j], sp.Eq(sp.IndexedBase("m")[j], 1)), (-sp.oo, True)))]


class CausalAttention(MatrixOp):
    """``softmax(mask(Q_h K_hᵀ)) V_h`` as one call: how the emitted module runs a causal block's
    ``A`` and ``Z`` equations (:func:`fuse_causal_attention`); never part of a Program, so it has
    no LaTeX or definition of its own (those of ``Softmax``, ``CausalMask`` and ``MatMul`` hold).

    Arguments: the scaled queries ``SplitHeads(q, n_head)``, and the keys and values split into
    their own heads (n_kv_head of them with grouped-query attention, shared by ``causal_attention``).
    """

    numpy_functions = (softmax, causal_mask, causal_attention, blocked_causal_attention)

    def _numpycode(self, printer):
        return self._call(printer, "causal_attention", *self.args)


def fuse_causal_attention(equations: list) -> list:
    """``A = softmax(mask(S Kᵀ))`` then ``Z = concat(A V)`` as one ``Z = concat(CausalAttention(S, K, V))``.

    For the emitted module only: ``A`` is dropped where no later equation reads it. Grouped
    keys/values ``GroupedHeads(x, n_kv_head, n_head)`` are passed as ``SplitHeads(x, n_kv_head)``.
    """
    fused, merged = [], None
    for index, eq in enumerate(equations):
        following = equations[index + 1:index + 2]
        if (following and _attention_weights(eq) and _weights_times_values(following[0], eq.lhs)
                and not any(later.rhs.has(eq.lhs) for later in equations[index + 2:])):
            merged = following[0]
            *queries, keys = eq.rhs.arg.arg.args
            own_heads = [SplitHeads(x.args[0], x.args[1]) for x in (keys.arg, merged.rhs.arg.args[1])]
            attention = CausalAttention(sp.MatMul(*queries), *own_heads)
            fused.append(dataclasses.replace(merged, rhs=MergeHeads(attention, merged.rhs.heads)))
        elif eq is not merged:
            fused.append(eq)
    return fused


def _attention_weights(eq) -> bool:  # A = softmax(causal_mask(scale Q_h K_hᵀ))
    rhs = eq.rhs
    return (isinstance(rhs, Softmax) and isinstance(rhs.arg, CausalMask) and isinstance(rhs.arg.arg, sp.MatMul)
            and isinstance(rhs.arg.arg.args[-1], sp.Transpose))


def _weights_times_values(eq, weights) -> bool:  # Z = concat_h(A V_h)
    rhs = eq.rhs
    return (isinstance(rhs, MergeHeads) and isinstance(rhs.arg, sp.MatMul) and len(rhs.arg.args) == 2
            and rhs.arg.args[0] == weights)
