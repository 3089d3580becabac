"""The LaTeX emitter: a sympy ``LatexPrinter`` plus the three levels of detail.

* ``model``: the network as one composition f = U ∘ B^(L) ∘ … ∘ B^(1) ∘ E;
* ``layer``: every stage's equations (the block once, for a generic layer l, or unrolled), with a
  symbol table of shapes and source tensors;
* ``index``: each op used, defined element by element.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Callable

from sympy.matrices.expressions.matexpr import MatrixSymbol
from sympy.printing.latex import LatexPrinter
from sympy.printing.precedence import PRECEDENCE

from ..composition import Space
from ..ops import SplitHeads, is_per_head, n_head, ops_used_by
from ..program import Fold, FoldedRef, Param, Program, Stage, TensorRef
from .circuit_form import attention_circuits, logit_paths
from .numbers import latex_number
from .templates import render_template
from .text import tex_escape

class Level(StrEnum):
    """How much ``--latex`` writes out."""

    MODEL = "model"  # the composition of the stages
    LAYER = "layer"  # every stage's equations, the block once for layer (l)
    INDEX = "index"  # and each op's definition in index notation


LEVELS = tuple(level.value for level in Level)  # the command line's choices
PACKAGES = ("amsmath", "amssymb")  # what a fragment needs from the including document


class EquationPrinter(LatexPrinter):
    """sympy's LaTeX printer with the field's conventions: ᵀ as ⊤, ⊙ elementwise, sums in written order."""

    _default_settings = {**LatexPrinter._default_settings, "order": "none"}

    def _print_Transpose(self, expr):
        inner = self._print(expr.arg)
        if isinstance(expr.arg, (MatrixSymbol, SplitHeads)):
            return rf"{{{inner}}}^{{\top}}"
        return rf"\left({inner}\right)^{{\top}}"

    def _print_HadamardProduct(self, expr):
        return r" \odot ".join(self.parenthesize(a, PRECEDENCE["Mul"]) for a in expr.args)


# (parameter, layer as written, its LaTeX) -> the LaTeX to print, e.g. wrapped for hovering in HTML
Decorate = Callable[[Param, str, str], str]


@dataclass(frozen=True)
class EquationLine:
    lhs: str
    rhs: str
    scope: str = ""  # a range the equation holds over, e.g. "h = 1, \dots, n_{\mathrm{head}}"


@dataclass(frozen=True)
class StageBlock:
    """A stage's equations, for a generic layer (l), one layer, or a stage applied once."""

    stage: str  # the stage's name, "block"
    title: str  # plain text: "Transformer block"
    symbol: str  # LaTeX of the map in the composition, "B^{(3)}"; "" for a stage applied once
    scope: str  # LaTeX of the layers it stands for, "l = 1, \dots, L"; "" otherwise
    layer: int | None  # 1-based layer of an unrolled block
    lines: list[EquationLine]


@dataclass(frozen=True)
class OpBlock:
    """An op's definition in index notation."""

    name: str
    description: str  # plain text, the first line of its docstring
    lines: list[EquationLine]
    description_latex: str = ""  # the same as LaTeX prose, its math in math mode


def printer_for(program: Program, stage: Stage | None = None, layer: str = "l",
                decorate: Decorate | None = None) -> EquationPrinter:
    names = {symbol: text for symbol, text in program.dim_latex.items()}
    if stage is not None:
        names.update(stage.latex_names(layer))
        if decorate is not None:
            for p in stage.params:
                names[p.symbol] = decorate(p, layer, names[p.symbol])
    return EquationPrinter({"symbol_names": names})


def render(program: Program, level: Level | str = Level.LAYER, unroll: bool = False, tokenizer: str = "") -> str:
    """A LaTeX fragment (needs amsmath and amssymb) stating the program at ``level``.

    ``tokenizer``: the tokenizer's definition (``eqcompile.emit.tokenizer_latex``), stated
    first at the layer level, since the map starts with it.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}")
    level = Level(level)
    parts = [f"% eqcompile: {program.family} model, level {level}\n% needs: "
             + ", ".join(PACKAGES) + "\n" + _notes(program)]
    if level == Level.MODEL:
        parts.append(composition(program))
    elif level == Level.LAYER:
        parts.append(composition(program))
        if tokenizer:
            parts.append(tokenizer)
        for stage in program.stages:
            parts.append(_stage_equations(program, stage, unroll))
            if stage.layers and program.form == "circuits":
                parts += [rf"\paragraph{{{block.title}.}} {block.prose_latex}" + "\n" + align(block.lines)
                          for block in circuit_blocks(program)]
        if program.interface == "causal_lm":
            parts.append(GENERATION)
        parts.append(symbol_table(program))
    else:
        parts.append(op_definitions(program))
    return "\n".join(parts)


def _notes(program: Program) -> str:
    return "".join(rf"\noindent\emph{{Note:}} {tex_escape(note)}\par" + "\n" for note in program.notes)


GENERATION = r"""\paragraph{Generation.} The state after $i$ tokens holds, for every layer, the rows of
$K^{(l)}$ and $V^{(l)}$ of positions $1, \dots, i$ (causal attention never changes them); $u$ is a
uniform draw from a seeded generator, $T$ the temperature.
\begin{align*}
s_i &= \bigl(i,\ (K^{(l)}_{1:i},\, V^{(l)}_{1:i})_{l=1}^{L}\bigr), \qquad s_0 = (0, \varnothing) \\
\operatorname{step}(s_i, t_{i+1}, u) &= \bigl(s_{i+1},\ F^{-1}\bigl(u;\ \operatorname{softmax}(Z_{i+1} / T)\bigr)\bigr) \\
F^{-1}(u; \pi) &= \min\Bigl\{v : \sum_{w \le v} \pi_w > u\Bigr\}, \qquad u \sim \mathcal{U}[0, 1)
\end{align*}
where $Z_{i+1}$ is the last row of the logits $Z$ of $t_1, \dots, t_{i+1}$. Top-$k$ (top-$p$) sampling
first sets $\pi_w = 0$ outside the $k$ most likely tokens (outside the most likely tokens whose
mass reaches $p$) and renormalises; $T = 0$ means $\arg\max_v Z_{i+1, v}$.
"""


def composition(program: Program) -> str:
    """f_θ = U ∘ B^(L) ∘ … ∘ B^(1) ∘ E, with each map's domain and codomain."""
    return "\\begin{align*}\n" + " \\\\\n".join(composition_lines(program)) + "\n\\end{align*}\n"


def composition_lines(program: Program) -> list[str]:
    """The lines of :func:`composition`, aligned at ``&``: f_θ, then each map's signature."""
    printer = printer_for(program)
    head = rf"f_\theta &= {printer.doprint(program.composition())}"
    if program.layers:
        head += rf", \qquad L = {program.layers}"
    return [head, *(rf"{printer.doprint(stage_map)} &: {printer.doprint(signature)}"
                    for stage_map, signature in program.signatures())]


def _stage_equations(program: Program, stage: Stage, unroll: bool) -> str:
    out = []
    for block in stage_blocks(program, stage, unroll):
        title = block.title
        if block.symbol:
            title += f" ${block.symbol}$"
        if block.scope:
            title += f", for ${block.scope}$"
        out.append(rf"\paragraph{{{title}.}}" + "\n" + align(block.lines))
    return "".join(out)


def align(lines: list[EquationLine]) -> str:
    """An ``align*`` environment, aligned at the equals signs."""
    rows = [rf"{line.lhs} &= {line.rhs}" + (rf", \quad {line.scope}" if line.scope else "") for line in lines]
    return "\\begin{align*}\n" + " \\\\\n".join(rows) + "\n\\end{align*}\n"


def stage_blocks(program: Program, stage: Stage, unroll: bool,
                 decorate: Decorate | None = None) -> list[StageBlock]:
    """The stage's equations: once (for a generic layer l when repeated), or once per layer."""
    layers = list(range(1, stage.layers + 1)) if (stage.layers and unroll) else [None]
    blocks = []
    for layer in layers:
        printer = printer_for(program, stage, str(layer or "l"), decorate)
        symbol = rf"{stage.letter}^{{({layer or 'l'})}}" if stage.layers else ""
        scope = r"l = 1, \dots, L" if stage.layers and layer is None else ""
        heads = [eq for eq in stage.equations if is_per_head(eq.rhs)]
        lines = [EquationLine(printer._print(eq.lhs), printer._print(eq.rhs), _scope(program, printer, eq, heads, stage.equations))
                 for eq in stage.equations]
        blocks.append(StageBlock(stage.name, stage.title, symbol, scope, layer, lines))
    return blocks


@dataclass(frozen=True)
class TrainingBlocks:
    """The training section of ``--train`` (made by ``eqcompile.train.latex``): loss, backward, updates."""

    stages: list[StageBlock]  # the loss, then each stage's backward from the last stage to the first
    updates_intro: str  # LaTeX prose, its math in $…$
    updates: list[EquationLine]  # SGD and AdamW
    updates_note: str  # LaTeX prose
    ops: list[str]  # each vector-Jacobian product's summary, LaTeX prose


@dataclass(frozen=True)
class CircuitBlock:
    """The circuit form's attention, head by head (``--form circuits``)."""

    title: str
    prose_latex: str  # its math in $…$
    prose: str  # plain text
    lines: list[EquationLine]


def circuit_blocks(program: Program, decorate: Decorate | None = None) -> list[CircuitBlock]:
    """The folded block's attention as a sum over heads of QK and OV circuits, and for an attention-only
    model of one or two layers the logits as a sum over paths (:mod:`.circuit_form`)."""
    block = next(stage for stage in program.stages if stage.layers)
    found = [("Attention as circuits", attention_circuits(program, printer_for(program, block, "l", decorate))),
             ("The logits as paths", logit_paths(program))]
    return [CircuitBlock(title, circuits.prose_latex, circuits.prose,
                         [EquationLine(lhs, rhs) for lhs, rhs in circuits.lines])
            for title, circuits in found if circuits is not None]


def _scope(program: Program, printer, eq, heads, stage_equations) -> str:
    """What an equation ranges over: the heads (stated once, on the last per-head line), positions."""
    if heads and eq is heads[-1]:
        return rf"h = 1, \dots, {printer._print(n_head)}"
    if program.positions is not None and eq is next(
            (e for e in stage_equations if e.rhs.has(program.positions)), None):  # stated once
        return r"p = (0, 1, \dots, n - 1)"
    return ""


def symbol_table(program: Program) -> str:
    """Every parameter with its shape and source tensor, then the dimensions' values."""
    rows = []
    seen = set()
    for stage, param in program.params:
        if param.key in seen:
            continue
        seen.add(param.key)
        printer = printer_for(program, stage)
        source = source_latex(param.source, tex_escape)
        rows.append(rf"${printer._print(param.symbol)}$ & ${printer.doprint(Space(*param.symbol.shape))}$ & \texttt{{{source}}} \\")
    printer = printer_for(program)
    dims = [rf"${printer._print(symbol)} = {dimension_latex(value)}$" for symbol, value in program.dims.items()]
    return ("\\paragraph{Symbols.}\n\\begin{tabular}{lll}\n\\hline\nsymbol & shape & source tensor \\\\\n"
            "\\hline\n" + "\n".join(rows) + "\n\\hline\n\\end{tabular}\n\n"
            + r"\paragraph{Dimensions.} " + ", ".join(dims) + ".\n")


def source_latex(ref: TensorRef | FoldedRef, escape: Callable[[str], str], stored_name: str | None = None) -> str:
    """A weight's source tensor as text (``escape`` typesets the name; ``stored_name`` is the file's
    own, where it differs): a generic layer's index as math ($l - 1$), the transpose as math
    ($^\\top$), since text fonts have no ``ᵀ``."""
    if isinstance(ref, FoldedRef):  # the circuit form's weights: the fold, over the tensors' own names
        weight, *rest = (source_latex(part, escape) for part in ref.inputs)
        if ref.fold == Fold.CENTRE:
            return f"centre({weight})"
        return f"diag({rest[0]}) {weight}" if ref.fold == Fold.GAIN else " + ".join([f"{rest[0]} {weight}", *rest[1:]])
    name = replace(ref, transpose=False).describe(stored_name)
    return "$l{-}1$".join(escape(part) for part in name.split("{layer}")) + (r"$^{\top}$" if ref.transpose else "")


def dimension_latex(value) -> str:
    """A dimension or constant as math: integers as they are, floats to 6 digits with a power of 10."""
    return latex_number(value, digits=6, positional=(-4, 6), trim=True)


def op_definitions(program: Program) -> str:
    """Each op the program uses, in index notation."""
    return "\n".join(rf"\paragraph{{{block.name}.}} {block.description_latex}" + "\n" + align(block.lines)
                     for block in op_blocks(program))


def op_blocks(program: Program) -> list[OpBlock]:
    """The definitions of the ops the program uses, in ``OPS`` order."""
    printer = EquationPrinter({"symbol_names": dict(program.dim_latex)})
    blocks = []
    for op in ops_used_by(program):
        lines = [EquationLine(lhs, rhs) for lhs, rhs in op.definition_latex(printer)]
        description = (op.__doc__ or op.__name__).strip().splitlines()[0]
        blocks.append(OpBlock(op.__name__, description, lines, op.summary_latex or tex_escape(description)))
    return blocks


def document(program: Program, fragment: str, packages=PACKAGES) -> str:
    """A standalone article around a fragment (``--standalone``)."""
    return render_template("document.tex.j2", packages=packages, body=fragment,
                           title=f"{program.title} as equations", source=program.source)
