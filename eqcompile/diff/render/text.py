"""The report as a text table (the default, escaped for the terminal) and as JSON."""

from __future__ import annotations

import json
import math
import re

from ...terminal import terminal_text
from .. import ModelDiff, WeightDiff
from ..delta import IDENTICAL
from ..structure import Slot, StageDiff
from .common import config_value, form_text, layers_text, unchanged, verdict

TEXT_LIST_LIMIT = 10  # names shown per list in the text report (--json lists them all)
# what json.dumps leaves raw that a terminal acts on (DEL, C1 controls, separators) or cannot encode
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def text(diff: ModelDiff) -> str:
    families = [p.family if p else "no equations" for p in diff.programs]
    lines = ["eqcompile diff", f"  A: {diff.before} ({families[0]})", f"  B: {diff.after} ({families[1]})",
             f"Result: {verdict(diff)}", ""]
    lines += [f"Note: {note}" for note in diff.structure.notes]
    lines += _structure_text(diff)
    changed = diff.changed_weights
    if changed:
        lines += ["", "Changed weights, largest relative change first", *_table(changed)]
    lines += _unchanged_text(diff)
    return "\n".join(map(terminal_text, lines)).rstrip() + "\n"  # names from the files, escaped


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:TEXT_LIST_LIMIT])
    more = len(names) - TEXT_LIST_LIMIT
    return shown + (f", … ({more} more; --json lists all)" if more > 0 else "")


def _slot_groups(slots: list[Slot]) -> str:
    """Parameters grouped by layer: "W_U; layer 3: gamma_1, beta_1, …"."""
    groups: dict[int | None, list[str]] = {}
    for slot in slots:
        groups.setdefault(slot.layer, []).append(slot.symbol)
    return "; ".join(", ".join(symbols) if layer is None else f"layer {layer}: {', '.join(symbols)}"
                     for layer, symbols in groups.items())


def _structure_text(diff: ModelDiff) -> list[str]:
    s = diff.structure
    lines = ["Structure"]
    if not s.changed:
        return lines + ["  the same equations, dimensions, parameters and tensor names"]
    if s.families[0] != s.families[1]:
        lines.append(f"  family: {s.families[0]} → {s.families[1]}")
    lines += [f"  config {c.name}: {config_value(c.before)} → {config_value(c.after)}" for c in s.config]
    lines += [f"  dimension {c.name}: {config_value(c.before)} → {config_value(c.after)}" for c in s.dimensions]
    for stage in s.stages:
        lines += _stage_text(stage)
    for label, slots in (("added", s.params_added), ("removed", s.params_removed)):
        if slots:
            lines.append(f"  parameters {label} ({len(slots)}): {_slot_groups(slots)}")
    lines += [f"  parameter {a.label} reshaped: {_shape(a.shape)} → {_shape(b.shape)}" for a, b in s.params_reshaped]
    t = s.tensors
    for label, names in (("added", t.added), ("removed", t.removed)):
        if names:
            lines.append(f"  tensors {label} ({len(names)}): {_names(names)}")
    if t.renamed:
        lines.append(f"  tensors renamed ({len(t.renamed)}): " + _names(
            [f"{r.before} → {r.after}" + ("" if r.same_data else " (same role, data changed)") for r in t.renamed]))
    if t.reshaped:
        lines.append(f"  tensors reshaped ({len(t.reshaped)}): "
                     + _names([f"{c.name} {_shape(c.before)} → {_shape(c.after)}" for c in t.reshaped]))
    if t.retyped:
        lines.append(f"  tensors stored in another dtype ({len(t.retyped)}): "
                     + _names([f"{c.name} {c.before} → {c.after}" for c in t.retyped]))
    return lines


def _shape(shape) -> str:
    return "×".join(map(str, shape)) or "scalar"


def _stage_text(stage: StageDiff) -> list[str]:
    old, new = stage.layers
    title = f"  stage {stage.name}"
    if stage.before is None or stage.after is None:
        return [f"{title}: only in {'B' if stage.before is None else 'A'}"]
    lines = [title + (f": L = {old} → {new}" if old != new else ":")]
    for change in stage.equations:
        if change.before is not None:
            lines.append(f"    A: {change.lhs} = {change.before.rhs}")
        if change.after is not None:
            lines.append(f"    B: {change.lhs} = {change.after.rhs}")
    return lines


def _table(weights: list[WeightDiff]) -> list[str]:
    header = ["weight", "form", "‖ΔW‖/‖W‖", "‖ΔW‖_F", "max|Δ|", "cos", "rank", "rank99", "stable", "source (A)"]
    rows = [header] + [_row(w) for w in weights]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return ["  " + "  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]).rstrip()
            for row in rows]


def _row(weight: WeightDiff) -> list[str]:
    d, spectrum = weight.delta, weight.delta.spectrum
    rank = rank_99 = stable = "-"
    if spectrum is not None:
        rank = ("≥" if spectrum.rank_is_bound else "") + str(spectrum.numerical_rank)
        rank_99 = str(spectrum.rank_99) if spectrum.rank_99 is not None else f">{spectrum.computed}"
        stable = f"{spectrum.stable_rank:.3g}"
    cosine = "-" if d.cosine is None else f"{d.cosine:.6f}"
    return [weight.label, form_text(weight), f"{d.relative:.3g}", f"{d.norm:.3g}", f"{d.max_abs:.3g}", cosine,
            rank, rank_99, stable, weight.sources[0]]


def _unchanged_text(diff: ModelDiff) -> list[str]:
    same = unchanged(diff)
    lines = []
    if same.once:
        lines.append("  " + ", ".join(s.symbol for s in same.once))
    lines += [f"  {stage}: every parameter of {layers_text(layers)}" for stage, layers in same.whole_layers]
    if same.every_layer:
        lines.append(f"  in every layer: {', '.join(s.symbol for s in same.every_layer)}")
    lines += [f"  {layers_text(layers)}: {', '.join(s.symbol for s in slots)}" for slots, layers in same.some_layers]
    others = [w.label for w in diff.tensors if w.delta.form == IDENTICAL]
    if others:
        lines.append(f"  other tensors: {_names(others)}")
    return ["", "Identical", *lines] if lines else []


# -------------------------------------------------------------------------------------- JSON

def json_text(diff: ModelDiff) -> str:
    s = diff.structure
    t = s.tensors
    document = {
        "before": diff.before, "after": diff.after, "identical": diff.identical, "verdict": verdict(diff),
        "families": list(s.families), "notes": s.notes,
        "structure": {
            "config": [_change(c) for c in s.config],
            "dimensions": [_change(c) for c in s.dimensions],
            "stages": [{"name": st.name, "layers": list(st.layers),
                        "equations": [{"lhs": e.lhs, "before": _equation(e.before), "after": _equation(e.after)}
                                      for e in st.equations]} for st in s.stages],
            "parameters": {"added": [x.key for x in s.params_added], "removed": [x.key for x in s.params_removed],
                           "reshaped": [{"key": a.key, "before": list(a.shape), "after": list(b.shape)}
                                        for a, b in s.params_reshaped]},
            "tensors": {"added": t.added, "removed": t.removed,
                        "renamed": [{"before": r.before, "after": r.after, "same_data": r.same_data}
                                    for r in t.renamed],
                        "reshaped": [{"name": c.name, "before": list(c.before), "after": list(c.after)}
                                     for c in t.reshaped],
                        "dtype": [_change(c) for c in t.retyped]},
        },
        "parameters": [_weight(w) for w in diff.parameters],
        "tensors": [_weight(w) for w in diff.tensors],
    }
    text = json.dumps(document, indent=1, ensure_ascii=False, default=str)
    return _JSON_UNSAFE.sub(lambda match: f"\\u{ord(match[0]):04x}", text) + "\n"


def _change(change) -> dict:
    return {"name": change.name, "before": change.before, "after": change.after}


def _equation(equation) -> str | None:
    return None if equation is None else f"{equation.lhs} = {equation.rhs}"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _weight(weight: WeightDiff) -> dict:
    d, slot = weight.delta, weight.slot
    entry = {"label": weight.label, "key": slot.key if slot else None, "symbol": slot.symbol if slot else None,
             "layer": slot.layer if slot else None, "sources": list(weight.sources), "shape": list(weight.shape),
             "dtypes": list(weight.dtypes), "form": d.form, "summary": form_text(weight),
             "relative": _finite(d.relative)}
    for name in ("norm", "base_norm", "max_abs", "cosine", "rounding_units", "scale", "kurtosis", "rms"):
        entry[name] = _finite(getattr(d, name))
    spectrum = d.spectrum
    entry["spectrum"] = None if spectrum is None else {
        "method": spectrum.method, "top": spectrum.top, "numerical_rank": spectrum.numerical_rank,
        "rank_is_bound": spectrum.rank_is_bound, "rank_99": spectrum.rank_99,
        "stable_rank": spectrum.stable_rank, "computed": spectrum.computed}
    return entry
