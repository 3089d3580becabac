"""A :class:`~eqcompile.diff.ModelDiff` written out: a text table (default), JSON, or LaTeX.

Changed weights come first, largest relative change first; identical parameters are summarised
(whole layers, symbols identical in every layer) rather than listed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from ..emit.latex import printer_for
from ..emit.numbers import latex_number
from ..emit.templates import render_template
from ..emit.text import tex_code, tex_escape
from ..terminal import terminal_text
from . import ModelDiff, WeightDiff
from .delta import IDENTICAL, matrix_shape, narrower
from .structure import Slot, StageDiff

TEXT_LIST_LIMIT = 10  # names shown per list in the text report (--json lists them all)
# what json.dumps leaves raw that a terminal acts on (DEL, C1 controls, separators) or cannot encode
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


# ------------------------------------------------------------------------------------ shared

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
    if delta.form == "cast":
        return f"cast {weight.dtypes[0]}→{weight.dtypes[1]}" + (" (exact)" if delta.norm == 0 else "")
    if delta.form == "scale":
        return f"scale ×{delta.scale:.6g}"
    if delta.form == "low-rank":
        return f"low-rank r={delta.spectrum.numerical_rank}"
    if delta.form == "noise":
        return f"noise σ={delta.rms:.2g}"
    return delta.form


def _layers_text(layers: list[int]) -> str:
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


# -------------------------------------------------------------------------------------- text

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


def _value(value) -> str:
    return "absent" if value is None else json.dumps(value, default=str)


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
    lines += [f"  config {c.name}: {_value(c.before)} → {_value(c.after)}" for c in s.config]
    lines += [f"  dimension {c.name}: {_value(c.before)} → {_value(c.after)}" for c in s.dimensions]
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
    lines += [f"  {stage}: every parameter of {_layers_text(layers)}" for stage, layers in same.whole_layers]
    if same.every_layer:
        lines.append(f"  in every layer: {', '.join(s.symbol for s in same.every_layer)}")
    lines += [f"  {_layers_text(layers)}: {', '.join(s.symbol for s in slots)}" for slots, layers in same.some_layers]
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


# ------------------------------------------------------------------------------------- LaTeX

# a parameter's LaTeX name: base letter, optional subscript, optional superscript (the layer)
_NAME = re.compile(r"^(\\[A-Za-z]+|[A-Za-z])(_(?:\{(?:[^{}]|\{[^{}]*\})*\}|[A-Za-z0-9]))?(?:\^\{(.*)\})?$")


def primed(name: str) -> str:
    r"""W_Q^{(3)} -> W^{\prime (3)}_Q: the new value's symbol, written as the field writes W'."""
    match = _NAME.match(name)
    if not match:
        return rf"{{{name}}}^{{\prime}}"
    base, subscript, superscript = match.groups()
    return rf"{base}^{{\prime{' ' + superscript if superscript else ''}}}{subscript or ''}"


def tex_number(value: float | None, digits: int = 3) -> str:
    """A measurement as math: written out from 0.001 to below 10^4, with a power of ten otherwise."""
    return latex_number(value, digits, positional=(-3, 4), trim=True)


def latex(diff: ModelDiff) -> str:
    """A standalone document: the structural changes, then each changed weight as W' = W + ΔW."""
    changed = diff.changed_weights
    return render_template(
        "diff.tex.j2", before=diff.before, after=diff.after, verdict=verdict(diff), notes=diff.structure.notes,
        structure=_structure_latex(diff), weights=[_weight_latex(w) for w in changed],
        unchanged=_unchanged_latex(diff),
        identical_tensors=[tex_code(w.label) for w in diff.tensors if w.delta.form == IDENTICAL])


def _structure_latex(diff: ModelDiff) -> list[str]:
    s = diff.structure
    if not s.changed:
        return []
    parts = []
    if s.families[0] != s.families[1]:
        parts.append(rf"\paragraph{{Family.}} {tex_escape(s.families[0])} $\to$ {tex_escape(s.families[1])}.")
    if s.config:
        rows = "".join(f"{tex_code(c.name)} & {tex_code(_value(c.before))} & {tex_code(_value(c.after))} \\\\\n"
                       for c in s.config)
        parts.append("\\paragraph{Configuration.}\n\\begin{longtable}{lll}\n\\hline\nkey & A & B \\\\\n\\hline\n"
                     + rows + "\\hline\n\\end{longtable}")
    if s.dimensions:
        parts.append(r"\paragraph{Dimensions.} " + ", ".join(
            rf"${c.latex}$: {tex_escape(_value(c.before))} $\to$ {tex_escape(_value(c.after))}" for c in s.dimensions) + ".")
    parts += [_stage_latex(diff, stage) for stage in s.stages]
    for label, slots in (("added in B", s.params_added), ("removed in B", s.params_removed)):
        if slots:
            parts.append(rf"\paragraph{{Parameters {label}.}} " + _slots_latex(slots) + ".")
    if s.params_reshaped:
        parts.append(r"\paragraph{Parameters reshaped.} " + ", ".join(
            rf"${a.latex} \in \mathbb{{R}}^{{{_tex_shape(a.shape)}}} \to \mathbb{{R}}^{{{_tex_shape(b.shape)}}}$"
            for a, b in s.params_reshaped) + ".")
    parts += _tensors_latex(s.tensors)
    return parts


def _tex_shape(shape) -> str:
    return r" \times ".join(map(str, shape))


def _slots_latex(slots: list[Slot]) -> str:
    return ", ".join(f"${slot.latex}$" for slot in slots)


def _stage_latex(diff: ModelDiff, stage: StageDiff) -> str:
    title = tex_escape((stage.before or stage.after).title)
    old, new = stage.layers
    head = rf"\paragraph{{{title}.}} "
    if stage.before is None or stage.after is None:
        head += "Only in " + ("B" if stage.before is None else "A") + "."
        side = 1 if stage.before is None else 0
        equations = [(side, eq) for eq in (stage.after or stage.before).equations]
    else:
        if old != new:
            head += rf"Applied $L = {old}$ times in A, $L = {new}$ times in B. "
        head += "Changed equations:" if stage.equations else ""
        equations = [(side, eq) for change in stage.equations
                     for side, eq in ((0, change.before), (1, change.after)) if eq is not None]
    if not equations:
        return head
    lines = []
    for side, eq in equations:
        printer = printer_for(diff.programs[side], stage.after if side else stage.before)
        lines.append(rf"\text{{{'AB'[side]}:}}\quad {printer._print(eq.lhs)} &= {printer._print(eq.rhs)}")
    return head + "\n\\begin{align*}\n" + " \\\\\n".join(lines) + "\n\\end{align*}"


def _tensors_latex(tensors) -> list[str]:
    def names(items):
        return ", ".join(map(tex_code, items))

    parts = []
    for label, items in (("added in B", tensors.added), ("removed in B", tensors.removed)):
        if items:
            parts.append(rf"\paragraph{{Tensors {label}.}} {names(items)}.")
    rows = [(r.before, r"$\to$ " + tex_code(r.after) + ("" if r.same_data else " (same role)")) for r in tensors.renamed]
    rows += [(c.name, f"${_tex_shape(c.before)} \\to {_tex_shape(c.after)}$") for c in tensors.reshaped]
    rows += [(c.name, rf"{tex_escape(c.before)} $\to$ {tex_escape(c.after)}") for c in tensors.retyped]
    if rows:
        parts.append("\\paragraph{Tensors renamed, reshaped or stored in another dtype.}\n"
                     "\\begin{longtable}{ll}\n" + "".join(
                         f"{tex_code(name)} & {what} \\\\\n" for name, what in rows)
                     + "\\end{longtable}")
    return parts


def _weight_latex(weight: WeightDiff) -> dict:
    d = weight.delta
    name = weight.slot.latex if weight.slot else "W"
    new, delta = primed(name), rf"\Delta {name}"
    narrow = tex_escape(narrower(weight.dtypes) or "")
    if d.form in ("cast", "rounding"):  # rounded to the narrower dtype
        lines = [rf"{new} &= \operatorname{{fl}}_{{\text{{{narrow}}}}}\left({name}\right)"]
    elif d.form == "scale":
        lines = [rf"{new} &= c\, {name}, \quad c = {tex_number(d.scale, 7)}"]
    else:
        lines = [rf"{new} &= {name} + {delta}"]
    if d.form == "low-rank":
        rows, cols = matrix_shape(weight.shape)
        rank = d.spectrum.numerical_rank
        lines.append(rf"{delta} &= B A, \quad B \in \mathbb{{R}}^{{{rows} \times {rank}}},\ "
                     rf"A \in \mathbb{{R}}^{{{rank} \times {cols}}}")
    elif d.form == "noise":
        lines.append(rf"\left({delta}\right)_{{ij}} &\sim \mathcal{{N}}\left(0, \sigma^2\right), \quad "
                     rf"\sigma = {tex_number(d.rms)}")
    stats = [rf"$\lVert {delta} \rVert_F = {tex_number(d.norm)}$",
             rf"$\lVert {delta} \rVert_F / \lVert {name} \rVert_F = {tex_number(d.relative)}$",
             rf"$\max_{{ij}} \lvert ({delta})_{{ij}} \rvert = {tex_number(d.max_abs)}$"]
    if d.cosine is not None:
        stats.append(rf"$\cos({name}, {new}) = {d.cosine:.6f}$")
    if d.form in ("cast", "rounding") and d.rounding_units is not None:
        stats.append(rf"$\lvert ({delta})_{{ij}} \rvert \le {d.rounding_units:.3g}\, u \max(\lvert ({name})_{{ij}} "
                     rf"\rvert, \lvert ({new})_{{ij}} \rvert)$ with $u$ the unit roundoff of {narrow}")
    if d.spectrum is not None:
        s = d.spectrum
        method = "exact spectrum" if s.method == "exact" else f"randomized SVD, top {s.computed}"
        rank_99 = str(s.rank_99) if s.rank_99 is not None else rf"> {s.computed}"
        bound = r"\ge " if s.rank_is_bound else ""
        stats += [rf"numerical rank ${bound}{s.numerical_rank}$ ({method})",
                  rf"$\operatorname{{rank}}_{{99\%}} = {rank_99}$", rf"stable rank ${s.stable_rank:.3g}$"]
    return {"title": f"${name}$" if weight.slot else tex_code(weight.label),
            "form": _form_latex(weight), "equations": lines, "stats": ", ".join(stats),
            "sources": _sources_latex(weight.sources),
            "dtypes": r" $\to$ ".join(tex_escape(dtype) for dtype in dict.fromkeys(weight.dtypes))}


def _form_latex(weight: WeightDiff) -> str:
    d = weight.delta
    if d.form == "cast":
        return rf"cast {tex_escape(weight.dtypes[0])} $\to$ {tex_escape(weight.dtypes[1])}"
    if d.form == "scale":
        return f"uniform scale, $c = {tex_number(d.scale, 7)}$"
    if d.form == "low-rank":
        return f"low-rank update, $r = {d.spectrum.numerical_rank}$"
    if d.form == "noise":
        return rf"noise, $\sigma = {tex_number(d.rms)}$"
    return {"dense": "dense update", "rounding": "rounding"}[d.form]


def _sources_latex(sources: tuple[str, str]) -> str:
    if sources[0] == sources[1]:
        return tex_code(sources[0])
    return f"{tex_code(sources[0])} in A, {tex_code(sources[1])} in B"


def _unchanged_latex(diff: ModelDiff) -> list[str]:
    same = unchanged(diff)
    titles = {s.name: s.title for p in diff.programs if p for s in p.stages}
    parts = []
    if same.once:
        parts.append(_slots_latex(same.once))
    parts += [f"{tex_escape(titles.get(stage, stage))}: every parameter of {_tex_layers(layers)}"
              for stage, layers in same.whole_layers]
    if same.every_layer:
        parts.append("in every layer: " + ", ".join(f"${s.generic_latex}$" for s in same.every_layer))
    parts += [f"{_tex_layers(layers)}: " + ", ".join(f"${s.generic_latex}$" for s in slots)
              for slots, layers in same.some_layers]
    return parts


def _tex_layers(layers: list[int]) -> str:
    return _layers_text(layers).replace("–", "--")
