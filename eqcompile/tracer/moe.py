"""Mixture-of-experts layers (Mixtral): the router's top-k choice and the experts' fused weights,
lowered into one :class:`~eqcompile.ops.MixtureOfExperts` whose experts are bound to the
checkpoint's own per-expert tensors."""

from __future__ import annotations

import re

import sympy as sp

from ..errors import UnsupportedArchitecture
from ..ops import Linear
from ..ops.moe import MixtureOfExperts, n_experts, top_k
from .values import Partial, Pieces, Stream, Weight


def stacked_names(model, names: dict[str, str]) -> dict[str, tuple[tuple[str, ...], ...]]:
    """The model's fused experts' parameters -> per expert, the checkpoint tensors stacked into it.

    transformers builds ``mlp.experts.gate_up_proj`` [E, 2F, D] out of each expert's ``w1`` and
    ``w3`` (its conversion rules: MergeModulelist over experts, then Concatenate); ``names`` maps
    the checkpoint's tensors, renamed as transformers renames them, to their stored names."""
    from transformers.conversion_mapping import get_model_conversion_mapping

    rules = [(rule.source_patterns, rule.target_patterns[0]) for rule in get_model_conversion_mapping(model)
             if type(rule).__name__ == "WeightConverter" and len(rule.target_patterns) == 1]
    found = {}
    for parameter, _ in model.named_parameters():
        if parameter in names:
            continue
        for sources, target in rules:
            if not parameter.endswith(target):
                continue
            stem = parameter[:-len(target)]
            patterns = [re.compile(re.escape(stem + source).replace(r"\*", r"(\d+)") + "$") for source in sources]
            experts: dict[int, list[str]] = {}
            for renamed, stored in names.items():
                for position, pattern in enumerate(patterns):
                    match = pattern.match(renamed)
                    if match:
                        experts.setdefault(int(match.group(1)), [""] * len(patterns))[position] = stored
            if experts and sorted(experts) == list(range(len(experts))) and all(all(p) for p in experts.values()):
                found[parameter] = tuple(tuple(experts[e]) for e in range(len(experts)))
    return found


PASSING = {"unsqueeze", "squeeze", "view", "reshape"}  # shape plumbing between the steps below


class MoEPatterns:
    """Handlers for transformers' batched_mm experts (``self`` is a StageLowering): the router's
    softmax and top-k, each token repeated K times, the chosen experts' weights indexed, two batched
    products, the weighted sum over the K choices."""

    def _passing(self, node, x, *args, **kwargs):
        return x if isinstance(x, Partial) and x.kind.startswith("moe_") else NotImplemented

    _unsqueeze = _squeeze = _view = _reshape = _passing

    def _softmax(self, node, x, dim, *rest):
        if isinstance(x, Stream) and isinstance(x.expr, Linear) and x.expr.bias is None and dim in (-1, 1):
            return Partial("moe_router", (x.expr,))
        return NotImplemented

    def _topk(self, node, x, k, dim=-1, *rest):
        if isinstance(x, Partial) and x.kind == "moe_router" and dim in (-1, 1):
            return Pieces((Partial("moe_top_weights", (*x.parts, k)), Partial("moe_top_experts", (*x.parts, k))))
        return NotImplemented

    def _sum(self, node, x, dims, keepdim=False, **kwargs):
        if isinstance(x, Partial) and x.kind == "moe_top_weights" and list(dims) == [-1] and keepdim:
            return Partial("moe_top_sum", x.parts)
        if isinstance(x, Partial) and x.kind == "moe_weighted" and list(dims) == [1]:
            return Stream(self._mixture(*x.parts))
        return NotImplemented

    def _div_(self, node, x, total):
        if isinstance(x, Partial) and x.kind == "moe_top_weights" and isinstance(total, Partial) \
                and total.kind == "moe_top_sum" and total.parts == x.parts:
            return Partial("moe_routing", x.parts)  # the K weights renormalised
        return NotImplemented

    def _repeat_interleave(self, node, x, repeats, dim=None, **kwargs):
        return Partial("moe_tokens", (x.expr,)) if isinstance(x, Stream) and dim == 0 else NotImplemented

    def _index(self, node, x, indices):
        if isinstance(x, Weight) and x.tensor in self.context.exported.stacked and len(indices) == 1 \
                and isinstance(indices[0], Partial) and indices[0].kind == "moe_top_experts":
            return Partial("moe_chosen", (x,))
        return NotImplemented

    def _bmm(self, node, weights, x):
        if not (isinstance(weights, Partial) and weights.kind == "moe_chosen" and isinstance(x, Partial)):
            return NotImplemented
        if x.kind == "moe_tokens":
            return Partial("moe_expert_in", (weights.parts[0], x.parts[0]))
        if x.kind == "moe_expert_hidden":
            return Partial("moe_expert_out", (*x.parts, weights.parts[0]))
        return NotImplemented

    def _chunk(self, node, x, chunks, dim=0):
        if isinstance(x, Partial) and x.kind == "moe_expert_in" and chunks == 2 and dim == -1:
            return Pieces(tuple(Partial(f"moe_expert_{part}", x.parts) for part in ("gate", "up")))
        return NotImplemented

    def _silu(self, node, x):
        return Partial("moe_expert_act", x.parts) if isinstance(x, Partial) and x.kind == "moe_expert_gate" \
            else NotImplemented

    def _mul(self, node, a, b):
        for x, y in ((a, b), (b, a)):
            if isinstance(x, Partial) and x.kind == "moe_expert_act" and isinstance(y, Partial) \
                    and y.kind == "moe_expert_up" and x.parts == y.parts:
                return Partial("moe_expert_hidden", x.parts)
            if isinstance(x, Partial) and x.kind == "moe_expert_out" and isinstance(y, Partial) \
                    and y.kind == "moe_routing" and x.parts[1] == y.parts[0].arg:
                return Partial("moe_weighted", (*x.parts, *y.parts))
        return NotImplemented

    def _mixture(self, gate_up: Weight, tokens, down: Weight, router: Linear, k: int):
        """The op, its experts bound to the checkpoint's per-expert tensors (w1, w3; w2)."""
        stacked = self.context.exported.stacked
        fused, outputs = stacked[gate_up.tensor], stacked[down.tensor]
        if len(fused) != len(outputs) or any(len(parts) != 2 for parts in fused):
            raise UnsupportedArchitecture(f"the experts of {gate_up.tensor} are not gate and up projections")
        inner, width = gate_up.shape[1] // 2, gate_up.shape[2]
        experts = []
        for expert, ((gate, up), (out,)) in enumerate(zip(fused, outputs), start=1):
            experts.append(sp.Tuple(*(self._expert_weight(tensor, role, expert, shape) for tensor, role, shape in
                                      ((gate, "gate", (inner, width)), (up, "up", (inner, width)),
                                       (out, "down", (width, inner))))))
        weight = self.names.sources[router.weight][0]
        self.names.params.pop(router.weight)
        r = self.names._param("W_r", "W_{r}", weight, router.weight.shape[0], self.context.constant(
            n_experts, weight.shape[0]), transpose=True)
        return MixtureOfExperts(tokens, r, self.context.constant(top_k, k), sp.Tuple(*experts))

    def _expert_weight(self, tensor: str, role: str, expert: int, shape: tuple):
        self.context.templates.setdefault(tensor, _layer_template(self.context, tensor))
        rows, cols = (self.context.dim(size) for size in reversed(shape))
        return self.names._param(f"W_{role}_{expert}", rf"W_{{\mathrm{{{role}}},{expert}}}", Weight(tensor, shape),
                                 rows, cols, transpose=True)


def _layer_template(context, tensor: str) -> str:
    """A per-expert tensor of layer 0 with its layer number as ``{layer}``, checked in every layer."""
    stem = context.exported.layers_path.split(".")[-1]
    template = re.sub(rf"(^|\.){re.escape(stem)}\.0\.", rf"\1{stem}.{{layer}}.", tensor, count=1)
    known = {name for parts in context.exported.stacked.values() for expert in parts for name in expert}
    if "{layer}" not in template or any(template.format(layer=index) not in known
                                        for index in range(context.exported.layers)):
        raise UnsupportedArchitecture(f"cannot tell the layer number in the tensor name {tensor!r}")
    return template
