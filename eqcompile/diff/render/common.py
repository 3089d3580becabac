"""What the text, JSON and LaTeX reports share: the verdict, the grouping of unchanged
parameters, layer ranges, each change's form in words."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .. import ModelDiff, WeightDiff
from ..delta import IDENTICAL, Form
from ..structure import Slot


def verdict(diff: ModelDiff) -> str:
    if diff.identical:
        return "identical"
    changed = [w for w in diff.parameters if w.delta.form != IDENTICAL]
    parts = ["the structure differs"] if diff.structure.changed else []
    if diff.parameters:
        parts.append(f"{len(changed)} of {len(diff.parameters)} parameters changed")
    others = [w for w in diff.tensors if w.delta.form != IDENTICAL]
    if others:
        parts.append(f"{len(others)} other tensors changed")
    return "different: " + "; ".join(parts)


def form_text(weight: WeightDiff) -> str:
    delta = weight.delta
    if delta.form == Form.CAST:
        return f"cast {weight.dtypes[0]}→{weight.dtypes[1]}" + (" (exact)" if delta.norm == 0 else "")
    if delta.form == Form.SCALE:
        return f"scale ×{delta.scale:.6g}"
    if delta.form == Form.LOW_RANK:
        return f"low-rank r={delta.spectrum.numerical_rank}"
    if delta.form == Form.NOISE:
        return f"noise σ={delta.rms:.2g}"
    return delta.form


def layers_text(layers: list[int]) -> str:
    return f"layer{'s' if len(layers) > 1 else ''} {layer_ranges(layers)}"


def layer_ranges(layers: list[int]) -> str:
    """[1, 2, 3, 5] -> "1–3, 5"."""
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in runs)


@dataclass
class Unchanged:
    """Identical parameters, grouped so that unchanged layers are not repeated."""

    once: list[Slot]  # of stages applied once (embedding, unembedding)
    whole_layers: list[tuple[str, list[int]]]  # (stage, layers whose every parameter is identical)
    every_layer: list[Slot]  # one slot per symbol identical in every layer
    some_layers: list[tuple[list[Slot], list[int]]]  # other identical ones: symbols, their layers


def unchanged(diff: ModelDiff) -> Unchanged:
    found = Unchanged([], [], [], [])
    stages: dict[str, dict[int | None, list[WeightDiff]]] = {}
    for weight in diff.parameters:
        stages.setdefault(weight.slot.stage, {}).setdefault(weight.slot.layer, []).append(weight)
    for stage, by_layer in stages.items():
        found.once += [w.slot for w in by_layer.pop(None, []) if w.delta.form == IDENTICAL]
        if not by_layer:
            continue
        whole = [layer for layer, ws in by_layer.items() if all(w.delta.form == IDENTICAL for w in ws)]
        if whole:
            found.whole_layers.append((stage, whole))
        if len(whole) == len(by_layer):
            continue
        symbols: dict[str, tuple[Slot, list[int]]] = {}
        for layer, weights in by_layer.items():
            for w in weights:
                if w.delta.form == IDENTICAL:
                    symbols.setdefault(w.slot.symbol, (w.slot, []))[1].append(layer)
        by_layers: dict[tuple[int, ...], list[Slot]] = {}
        for slot, layers in symbols.values():
            if len(layers) == len(by_layer):
                found.every_layer.append(slot)
            elif rest := tuple(layer for layer in layers if layer not in whole):
                by_layers.setdefault(rest, []).append(slot)
        found.some_layers += [(slots, list(layers)) for layers, slots in by_layers.items()]
    return found


def config_value(value) -> str:
    """A config or dimension value as the reports show it (JSON; "absent" when a side lacks it)."""
    return "absent" if value is None else json.dumps(value, default=str)
