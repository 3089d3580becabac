"""LayerNorm in the forms the models write it: with gain and shift, without either (OLMo: it only
standardises), with a gain stored as its offset from 1 (Nemotron's 1 + w), without shift (MPT:
LN(X; γ, 0)), and within each head (Persimmon's query and key norms). StageLowering extends this
class ahead of the others."""

from __future__ import annotations

import sympy as sp

from ..ops import HeadLayerNorm, LayerNorm, Standardise, d_head
from ..ops.softcap import UnitOffset
from .values import Partial, SplitRows, Stream, Weight


class NormPatterns:
    """The layer_norm handler (``self`` is a StageLowering)."""

    def _layer_norm(self, node, x, shape, weight=None, bias=None, eps=1e-5, *rest):
        """LayerNorm; without gain and shift (OLMo) it standardises; a gain stored as its offset
        from 1 (Nemotron's 1 + w) or a missing shift (MPT) keep the LayerNorm, with (1 + γ) or 0."""
        if isinstance(x, SplitRows) and isinstance(weight, Weight) and isinstance(bias, Weight) \
                and list(shape) == [x.width]:  # each head on its own (Persimmon's q and k norms)
            gain, shift = self.names.norm_weights(weight, bias, node)
            return SplitRows(HeadLayerNorm(x.base, gain, shift, self.names.epsilon(eps), d_head), x.heads, x.width)
        if not isinstance(x, Stream):
            return NotImplemented
        if weight is None and bias is None:
            return Stream(Standardise(x.expr, self.names.epsilon(eps)))
        offset = isinstance(weight, Partial) and weight.kind == "unit_offset"
        weight = weight.parts[0] if offset else weight
        if not (isinstance(weight, Weight) and isinstance(bias, (Weight, type(None)))):
            return NotImplemented
        gain, shift = self.names.norm_weights(weight, bias, node)
        shift = sp.Integer(0) if shift is None else shift
        return Stream(LayerNorm(x.expr, UnitOffset(gain) if offset else gain, shift, self.names.epsilon(eps)))
