"""The report as a LaTeX document: each changed weight as W' = W + ΔW, with its statistics."""

from __future__ import annotations

import re

from ...emit.latex import printer_for
from ...emit.numbers import latex_number
from ...emit.templates import render_template
from ...emit.text import tex_code, tex_escape
from .. import ModelDiff, WeightDiff
from ..delta import IDENTICAL, Form, matrix_shape, narrower
from ..structure import Slot, StageDiff
from .common import config_value, layers_text, unchanged, verdict


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
        rows = "".join(f"{tex_code(c.name)} & {tex_code(config_value(c.before))} & {tex_code(config_value(c.after))} \\\\\n"
                       for c in s.config)
        parts.append("\\paragraph{Configuration.}\n\\begin{longtable}{lll}\n\\hline\nkey & A & B \\\\\n\\hline\n"
                     + rows + "\\hline\n\\end{longtable}")
    if s.dimensions:
        parts.append(r"\paragraph{Dimensions.} " + ", ".join(
            rf"${c.latex}$: {tex_escape(config_value(c.before))} $\to$ {tex_escape(config_value(c.after))}" for c in s.dimensions) + ".")
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
    if d.form in (Form.CAST, Form.ROUNDING):  # rounded to the narrower dtype
        lines = [rf"{new} &= \operatorname{{fl}}_{{\text{{{narrow}}}}}\left({name}\right)"]
    elif d.form == Form.SCALE:
        lines = [rf"{new} &= c\, {name}, \quad c = {tex_number(d.scale, 7)}"]
    else:
        lines = [rf"{new} &= {name} + {delta}"]
    if d.form == Form.LOW_RANK:
        rows, cols = matrix_shape(weight.shape)
        rank = d.spectrum.numerical_rank
        lines.append(rf"{delta} &= B A, \quad B \in \mathbb{{R}}^{{{rows} \times {rank}}},\ "
                     rf"A \in \mathbb{{R}}^{{{rank} \times {cols}}}")
    elif d.form == Form.NOISE:
        lines.append(rf"\left({delta}\right)_{{ij}} &\sim \mathcal{{N}}\left(0, \sigma^2\right), \quad "
                     rf"\sigma = {tex_number(d.rms)}")
    stats = [rf"$\lVert {delta} \rVert_F = {tex_number(d.norm)}$",
             rf"$\lVert {delta} \rVert_F / \lVert {name} \rVert_F = {tex_number(d.relative)}$",
             rf"$\max_{{ij}} \lvert ({delta})_{{ij}} \rvert = {tex_number(d.max_abs)}$"]
    if d.cosine is not None:
        stats.append(rf"$\cos({name}, {new}) = {d.cosine:.6f}$")
    if d.form in (Form.CAST, Form.ROUNDING) and d.rounding_units is not None:
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
    if d.form == Form.CAST:
        return rf"cast {tex_escape(weight.dtypes[0])} $\to$ {tex_escape(weight.dtypes[1])}"
    if d.form == Form.SCALE:
        return f"uniform scale, $c = {tex_number(d.scale, 7)}$"
    if d.form == Form.LOW_RANK:
        return f"low-rank update, $r = {d.spectrum.numerical_rank}$"
    if d.form == Form.NOISE:
        return rf"noise, $\sigma = {tex_number(d.rms)}$"
    return {Form.DENSE: "dense update", Form.ROUNDING: "rounding"}[d.form]


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
    return layers_text(layers).replace("–", "--")
