"""Patterns of attention written out (transformers' "eager" attention: matmul, scale, soft-cap,
mask, softmax, matmul) and of Gemma's other pieces: the embedding scaled by sqrt(d), RMSNorm's
gain stored as its offset from 1, and soft-capped logits. StageLowering extends this class: its
handlers run when StageLowering's own return NotImplemented."""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

from ..arch.common import d_model
from ..ops import HeadRMSNorm, RMSNorm, d_head
from ..ops.softcap import SoftCap, UnitOffset, attention_cap, final_cap
from .values import Heads, Partial, SplitRows, Static, Stream, Weight


class EagerPatterns:
    """Handlers for written-out attention and Gemma's scalings (``self`` is a StageLowering)."""

    def _to(self, node, x, *args, **kwargs):  # a norm's gain, read in float32
        import torch

        dtype = kwargs.get("dtype", next((a for a in args if isinstance(a, torch.dtype)), None))
        return x if isinstance(x, Weight) and dtype == torch.float32 else NotImplemented

    def _add(self, node, a, b, alpha=1):
        if isinstance(a, Weight) and b == 1.0:  # Gemma's gain 1 + w
            return Partial("unit_offset", (a,))
        if isinstance(a, Partial) and a.kind in ("scores", "capped") and isinstance(b, Static):
            return Partial("masked", (a, b))
        return NotImplemented

    def _mul(self, node, a, b):
        for x, y in ((a, b), (b, a)):
            if isinstance(x, Partial) and x.kind == "normalized" and isinstance(y, Partial) \
                    and y.kind == "unit_offset":
                return self._offset_rms_norm(node, y.parts[0], *x.parts)
            if isinstance(x, Stream) and isinstance(y, Static):  # the embedding times sqrt(d), as a tensor
                return self._scaled(x, y)
            if isinstance(x, Partial) and x.kind == "scores" and isinstance(y, float) and not x.parts[4]:
                q, k, factor, _, _ = x.parts
                return Partial("scores", (q, k, factor * y, None, False))
            if isinstance(x, Partial) and x.kind == "tanh" and isinstance(y, float) and x.parts[1] == y:
                return self._capped(x.parts[0], y)
        return NotImplemented

    def _div(self, node, x, divisor):
        if isinstance(x, (Stream, Partial)) and isinstance(divisor, float) and \
                (isinstance(x, Stream) or x.kind == "scores"):
            return Partial("divided", (x, divisor))
        return NotImplemented

    def _tanh(self, node, x):
        return Partial("tanh", x.parts) if isinstance(x, Partial) and x.kind == "divided" else NotImplemented

    def _capped(self, x, c: float):
        """c tanh(x / c): soft-capped attention scores, or soft-capped logits."""
        if isinstance(x, Stream):
            return Stream(SoftCap(x.expr, self.context.constant(final_cap, c)))
        q, k, factor, _, alibi = x.parts
        return Partial("capped", (q, k, factor, self.context.constant(attention_cap, c), alibi))

    def _scaled(self, x: Stream, factor: Static):
        value = self.context.evaluate(factor.node, 7)
        width = self.context.dims[d_model]
        if value.size != 1 or not np.isclose(float(value), math.sqrt(width), rtol=1e-6, atol=0):
            return NotImplemented
        return Stream(sp.sqrt(d_model) * x.expr)

    def _pow(self, node, x, exponent):  # Gemma-3's q/k norms, after the heads are split off
        return Partial("square", (x,)) if isinstance(x, Heads) and x.whole and exponent == 2 else NotImplemented

    def _offset_rms_norm(self, node, weight: Weight, x, eps):
        gain, eps = self.names.norm_weights(weight, None, node)[0], self.names.epsilon(eps)
        if isinstance(x, Stream):
            return Stream(RMSNorm(x.expr, UnitOffset(gain), eps))
        if isinstance(x, Heads):
            return Heads(HeadRMSNorm(x.base, UnitOffset(gain), eps, d_head), x.heads, x.width, 0, x.width)
        return SplitRows(HeadRMSNorm(x.base, UnitOffset(gain), eps, d_head), x.heads, x.width)

    # attention, written out --------------------------------------------------------------------
    def _transpose(self, node, x, first, second):  # K_h^T
        if {first, second} == {2, 3} and isinstance(x, Heads) and x.whole:
            return Partial("keys", (x,))
        return NotImplemented

    def _matmul(self, node, x, y):
        if isinstance(x, Heads) and x.whole and isinstance(y, Partial) and y.kind == "keys":
            return Partial("scores", (x, y.parts[0], 1.0, None, False))  # (q, k, scale, cap, ALiBi added)
        if isinstance(x, Partial) and x.kind == "weights" and isinstance(y, Heads) and y.whole:
            return self._attended(*x.parts, y)
        return NotImplemented

    def _softmax(self, node, x, dim, *rest):
        if isinstance(x, Partial) and x.kind == "masked" and dim in (-1, 3):
            return Partial("weights", x.parts)
        return NotImplemented

    def _attended(self, scores: Partial, mask: Static | str, v: Heads):
        q, k, scale, cap, alibi = scores.parts
        if not (k.heads * k.repeat == q.heads == v.heads * v.repeat):
            return NotImplemented
        causal = mask == "causal"  # checked already (MPT's masked_fill)
        return self.attention(q, k, v, scale, None if causal else mask, causal, cap, alibi)
