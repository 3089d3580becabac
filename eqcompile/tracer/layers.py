"""Layers that differ only in a table of the sequence length (Gemma's sliding-window and global
layers: their mask, and in Gemma-3 their rotary base) are still one block: layer 0's section is
lowered once, and each static input that differs between layers becomes a constant with a layer
superscript (w^(l), b^(l)), its value per layer read off that layer's own table."""

from __future__ import annotations

import sympy as sp

from ..arch.common import layer, n_ctx
from ..errors import UnsupportedArchitecture
from ..ops import CausalMask, SlidingWindowMask, window
from ..ops.per_layer import layer_value
from ..ops.rope import rope_theta
from .interleaved import interleaved_kind, table_base
from .naming import module_path, op_name
from .rotary import RotaryScaling, read_scaling
from .statics import mask_kind, rotary_kind


def varying_statics(context, layers: list, signatures: list, shapes: list) -> dict:
    """Layer 0's static inputs that other layers replace by their own -> that input in every layer.
    ``shapes``: the signatures with every static input alike; any difference there refuses the model."""
    varying: dict = {}
    for index, (nodes, signature, shape) in enumerate(zip(layers, signatures, shapes)):
        if shape != shapes[0]:
            first = next((i for i, (a, b) in enumerate(zip(shape, shapes[0])) if a != b),
                         min(len(shape), len(shapes[0])) - 1)
            _refuse(index, nodes[first])
        for first, node, a, b in zip(layers[0], nodes, signatures[0], signature):
            if a != b:
                for x, y in zip(_flat((first.args, first.kwargs)), _flat((node.args, node.kwargs))):
                    if x is not y and x in context.static:
                        varying.setdefault(x, [x] * len(layers))[index] = y
    return varying


def _refuse(index: int, node):
    raise UnsupportedArchitecture(f"layer {index} differs from layer 0 at {op_name(node)} ({module_path(node)}) "
                                  "beyond a mask or rotary table: the layers cannot be stated as one block")


def _flat(value) -> list:
    if isinstance(value, dict):
        return _flat(list(value.values()))
    if isinstance(value, (list, tuple)):
        return [item for part in value for item in _flat(part)]
    return [value]


def layer_bases(config, count: int, default: float | None) -> list[float | None]:
    """The rotary base of each layer: per layer type where the config gives one (Gemma-3)."""
    params = getattr(config, "rope_parameters", None) or {}
    types = getattr(config, "layer_types", None) or []
    if len(types) == count and all(isinstance(params.get(kind), dict) for kind in types):
        return [float(params[kind]["rope_theta"]) for kind in types]  # one scaling for all (tracer/rotary.py)
    return [default] * count


class PerLayer:
    """The Context's side: evaluating a static input in each layer, and the constants it yields."""

    def per_layer(self, node) -> list:
        return self.varying.get(node, [node] * self.exported.layers)

    def mask(self, names, scores, mask, is_causal: bool):
        """Scores under the mask each layer uses: causal, a sliding window, or per layer either (w^(l) = ∞)."""
        from .values import Static

        if mask is None and is_causal:
            return CausalMask(scores)
        if not isinstance(mask, Static):
            return NotImplemented
        kinds = [mask_kind(lambda n, node=node: self.evaluator.array(node, n), window=self.window)
                 for node in self.per_layer(mask.node)]
        if all(kind == "causal" for kind, _ in kinds):
            return CausalMask(scores)
        if all(kind == "window" for kind, _ in kinds):
            return SlidingWindowMask(scores, names.window(kinds[0][1]))
        names.window(self.window)
        sizes = [self.window if kind == "window" else sp.oo for kind, _ in kinds]
        self._state("attention window", sizes, {self.window: "sliding-window", sp.oo: "global"})
        return SlidingWindowMask(scores, layer_value(window, sizes, layer))

    def rotary_kind(self, node, width: int) -> str | None:
        """"cos"/"sin" (half-split), "cos_pairs"/"sin_pairs" (interleaved) or None for a static table,
        the same in every layer (each with its own base where they differ: Gemma-3)."""
        scaling = self.rotary_scaling
        n = min(7, self.dims[n_ctx])  # GPT-J's table has n_ctx rows
        if self.rope_base is None:  # a base the config does not state (GPT-J's 10000)
            self.rope_base = table_base(self.evaluator.array(node, n), n, width)
        bases = layer_bases(self.config, self.exported.layers, self.rope_base)
        tables = [self.evaluator.array(each, n) for each in self.per_layer(node)]
        kinds = {rotary_kind(table, n, base, width, scaling) or interleaved_kind(table, n, base, width, scaling)
                 for table, base in zip(tables, bases)}
        if len(kinds) != 1:
            return None
        if node in self.varying:
            self.layer_bases = bases
        return kinds.pop()

    @property
    def rotary_scaling(self) -> RotaryScaling:
        return read_scaling(self.config)

    def rotated(self, rotation, whole: bool):
        """A rotary op's output as the model uses it: times YaRN's attention factor where it has one."""
        return self.rotary_scaling.scaled(rotation, whole, self.constant)

    def rope_base_expr(self):
        """The rotary base: b, or b^(l) when the layers' bases differ (Gemma-3's local and global layers)."""
        bases = getattr(self, "layer_bases", None)
        if bases and len(set(bases)) > 1:
            self._state("rotary base", bases, {})
            return layer_value(rope_theta, bases, layer)
        return self.constant(rope_theta, self.rope_base)

    def _state(self, what: str, values: list, kinds: dict):
        groups: dict = {}
        for index, value in enumerate(values, start=1):
            groups.setdefault(value, []).append(str(index))
        parts = [f"{'unbounded' if value == sp.oo else f'{value:g}'} in layer{'s' if len(ls) > 1 else ''} "
                 f"{', '.join(ls)}" + (f" ({kinds[value]} attention)" if value in kinds else "")
                 for value, ls in groups.items()]
        note = f"The {what} differs between layers: " + "; ".join(parts) + "."
        if note not in self.notes:
            self.notes.append(note)
