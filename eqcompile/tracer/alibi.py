"""Patterns of attention with linear biases (BLOOM, MPT: no sdpa, exported written out). BLOOM
splits its fused projection per head ([1, n, heads, 3, w], one ``select`` each for q, k, v), folds
the heads into the batch ([heads, n, w]) and adds the bias in ``baddbmm(alibi, Q, Kᵀ)``; MPT adds
it to the scores. The bias, a table of the sequence length, is evaluated and must be
m_h (j - i) up to a constant per row of scores (which the softmax cancels) with the slopes of
``ops/alibi.py``. StageLowering extends this class ahead of EagerPatterns."""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedArchitecture
from ..ops.alibi import alibi_slopes
from .naming import module_path
from .statics import mask_kind
from .values import Attended, Heads, Partial, SplitRows, Static, Stream

SCORES = ("scores", "weights", "masked")  # attention's partial kinds a reshape of the batch passes through


def _shape(node, position: int = 0) -> tuple:
    return tuple(node.args[position].meta["val"].shape)


def _without_leading_ones(shape: tuple) -> tuple:
    return tuple(shape[next((k for k, size in enumerate(shape) if size != 1), len(shape)):])


class ALiBiPatterns:
    """Handlers for BLOOM's and MPT's attention (``self`` is a StageLowering)."""

    def _view(self, node, x, shape):
        before, after = _shape(node), tuple(node.meta["val"].shape)
        if isinstance(x, Stream) and len(before) == 3 and len(after) == 5:  # [1, n, heads, parts, w]
            return Partial("fused_heads", (x, int(after[2]), int(after[3]), int(after[4])))
        passes = isinstance(x, (Heads, Attended)) or (isinstance(x, Partial) and x.kind in SCORES)
        if passes and _without_leading_ones(before) == _without_leading_ones(after):  # heads in the batch or not
            return x
        return NotImplemented

    _reshape = _view

    def _select(self, node, x, dim, index):
        """One of q, k, v out of [1, n, heads, 3, w]: entries index w:(index + 1) w of every 3 w."""
        if not (isinstance(x, Partial) and x.kind == "fused_heads" and dim in (3, -2)):
            return NotImplemented
        stream, heads, parts, width = x.parts
        folded = self.names.fold(stream.expr, (parts * width, index * width, (index + 1) * width))
        return NotImplemented if folded is None else SplitRows(folded, heads, width)

    def _transpose(self, node, x, first, second):  # Kᵀ as transpose(-1, -2), the heads in the batch or not
        rank = len(_shape(node))
        if isinstance(x, Heads) and x.whole and {first % rank, second % rank} == {rank - 2, rank - 1}:
            return Partial("keys", (x,))
        return NotImplemented

    def _baddbmm(self, node, bias, q, k, beta=1.0, alpha=1.0):
        """alibi + alpha Q Kᵀ (BLOOM)."""
        if not (isinstance(bias, Static) and isinstance(q, Heads) and q.whole and isinstance(k, Partial)
                and k.kind == "keys" and beta == 1.0):
            return NotImplemented
        self.check_alibi(bias, q.heads)
        return Partial("scores", (q, k.parts[0], float(alpha), None, True))

    def _add(self, node, a, b, alpha=1):  # scores + alibi (MPT); a mask's add is EagerPatterns'
        if isinstance(a, Partial) and a.kind == "scores" and isinstance(b, Static) and not a.parts[4] \
                and self.is_alibi(b, a.parts[0].heads):
            return Partial("scores", (*a.parts[:4], True))
        return NotImplemented

    def _masked_fill(self, node, x, mask, value):
        """MPT's scores.masked_fill(mask, min): ``mask`` hides the keys, and must hide the future ones."""
        if not (isinstance(x, Partial) and x.kind == "scores" and isinstance(mask, Static) and value < -1e30):
            return NotImplemented
        mask_kind(lambda n: ~self.context.evaluate(mask.node, n).astype(bool))  # refuses any other mask
        return Partial("masked", (x, "causal"))

    def _bmm(self, node, x, y):  # the heads in the batch: matmul's patterns
        return next((result for handler in self._handlers("matmul")
                     if (result := handler(self, node, x, y)) is not NotImplemented), NotImplemented)

    def is_alibi(self, bias: Static, heads: int) -> bool:
        """Whether the table is m_h (j - i) + c_{h,i} for the slopes m_h, at two lengths."""
        for n in (5, 9):
            value = np.asarray(self.context.evaluate(bias.node, n), dtype=np.float64)
            if value.size not in (heads * n, heads * n * n):
                return False
            value = np.broadcast_to(value.reshape(heads, -1, n), (heads, n, n))
            linear = alibi_slopes(heads)[:, None, None] * np.arange(n)[None, None, :]
            if not np.allclose(value - value[:, :, :1], linear, rtol=1e-6, atol=1e-6):
                return False
        return True

    def check_alibi(self, bias: Static, heads: int):
        if not self.is_alibi(bias, heads):
            raise UnsupportedArchitecture(f"the attention bias at {module_path(bias.node)} is not ALiBi's "
                                          f"m_h (j - i) with slopes 2^(-8h/{heads})")
