"""The circuit form's attention (``--form circuits``): each head as a QK and an OV circuit.

Read off a folded Program (``eqcompile.fold``): its block normalises only, so a head's scores and
output are bilinear in the normalised stream X̂, and the attention update is

    X^(l+½) = X^(l) + Σ_h A^(l,h) X̂^(l) W_OV^(l,h) + 1 b'^(l),   W_OV = W_V^h W_O^h,

with ``A^(l,h)`` the softmax of ``X̂ W_QK^(l,h) X̂ᵀ`` (``W_QK = W_Q^h W_K^hᵀ``) plus the terms the
biases bring. Rows of A sum to one, so b_V reaches the stream as the constant ``b_V^h W_O^h``;
score terms constant along a row (from b_K without RoPE) cancel in the softmax and are left out.
With RoPE, ``W_QK`` depends on the distance between the positions: ``W_Q^h R_Θ(p_i − p_j) W_K^hᵀ``.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from ..ops import GroupedHeads, RMSScale, RoPE, Softmax, Standardise, d_head, n_head
from ..program import Program, Stage

n, d = sp.Symbol("n", integer=True, positive=True), sp.Symbol("d", integer=True, positive=True)


def _symbols(grouped: bool) -> dict[str, tuple[MatrixSymbol, str]]:
    """Each per-head symbol with its LaTeX; a grouped-query head h reads key/value head g(h)."""
    kv = "l,g(h)" if grouped else "l,h"
    table = {"A": ((n, n), "A^{(l,h)}"), "W_QK": ((d, d), r"W_{QK}^{(l,h)}"), "W_OV": ((d, d), r"W_{OV}^{(l,h)}"),
             "W_Q": ((d, d_head), "W_Q^{(l,h)}"), "W_K": ((d, d_head), f"W_K^{{({kv})}}"),
             "W_V": ((d, d_head), f"W_V^{{({kv})}}"), "W_O": ((d_head, d), "W_O^{(l,h)}"),
             "b_Q": ((1, d_head), "b_Q^{(l,h)}"), "b_K": ((1, d_head), f"b_K^{{({kv})}}"),
             "b_V": ((1, d_head), f"b_V^{{({kv})}}"), "b_O": ((1, d), "b_O^{(l)}"), "b_prime": ((1, d), "{b'}^{(l)}"),
             "S": ((n, n), "S^{(l,h)}"), "one": ((n, 1), r"\mathbf{1}")}
    return {name: (MatrixSymbol(f"circuit_{name}", *shape), latex) for name, (shape, latex) in table.items()}


PLAIN = ("Each head h as a QK circuit (where it attends) and an OV circuit (what it moves), on the folded "
         "weights; query head h reads columns of W_Q and rows of W_O of its own.")


@dataclass(frozen=True)
class Circuits:
    """What the circuit form says of the attention: prose (LaTeX, and plain for a screen) and equations."""

    prose_latex: str
    prose: str
    lines: list[tuple[str, str]]  # (lhs, rhs) LaTeX, aligned at "="


def attention_circuits(program: Program, printer) -> Circuits:
    """The attention update of the folded block, head by head; ``printer`` knows the block's symbols."""
    block = next(stage for stage in program.stages if stage.layers)
    scores_eq = next(eq for eq in block.equations if isinstance(eq.rhs, Softmax))
    mask = scores_eq.rhs.arg
    scale, _ = mask.args[0].as_coeff_mmul()
    grouped = any(eq.rhs.has(GroupedHeads) for eq in block.equations)
    rotary = any(eq.rhs.has(RoPE) for eq in block.equations)
    have = {p.name for p in block.params}
    s = _symbols(grouped)
    printer._settings["symbol_names"].update({symbol: latex for symbol, latex in s.values()})
    sym = {name: symbol for name, (symbol, _) in s.items()}
    x, xh = block.input, _normed(block)
    T = sp.Transpose

    def tex(expr) -> str:
        return printer._print(expr)

    update = rf"{tex(x)} + \sum_{{h=1}}^{{{tex(n_head)}}} {tex(sym['A'] * xh * sym['W_OV'])}"
    if have & {"b_V", "b_O"}:
        update += rf" + \mathbf{{1}} {tex(sym['b_prime'])}"
    mid = next(eq.lhs for eq in block.equations if eq.rhs.has(x) and eq.lhs != xh and eq.rhs != x
               and not eq.rhs.has(xh))
    lines = [(tex(mid), update)]
    if rotary:
        lines.append((tex(sym["A"]), tex(Softmax(type(mask)(scale * sym["S"], *mask.args[1:])))))
        query = tex(xh) + "_{i}" + " W_Q^{(l,h)}" + (r" + b_Q^{(l,h)}" if "b_Q" in have else "")
        key = tex(xh) + "_{j}" + f" {s['W_K'][1]}" + (f" + {s['b_K'][1]}" if "b_K" in have else "")
        rotation = r"R_{\Theta}\left(p_i - p_j\right)"
        if have & {"b_Q", "b_K"}:
            lines.append(("S^{(l,h)}_{ij}", rf"\left({query}\right) {rotation} \left({key}\right)^{{\top}}"))
        else:
            lines.append(("S^{(l,h)}_{ij}", rf"{tex(xh)}_{{i}} W_{{QK}}^{{(l,h)}}\left(p_i - p_j\right) "
                                                         rf"{{{tex(xh)}_{{j}}}}^{{\top}}"))
        lines.append((r"W_{QK}^{(l,h)}\left(\Delta\right)",
                                  rf"W_Q^{{(l,h)}} R_{{\Theta}}\left(\Delta\right) {{{s['W_K'][1]}}}^{{\top}}"))
    else:
        scores = xh * sym["W_QK"] * T(xh)
        if "b_Q" in have:
            scores = sp.MatAdd(scores, sym["one"] * sym["b_Q"] * T(sym["W_K"]) * T(xh), evaluate=False)
        lines.append((tex(sym["A"]), tex(Softmax(type(mask)(sp.MatMul(scale, scores), *mask.args[1:])))))
        lines.append((tex(sym["W_QK"]), tex(sym["W_Q"] * T(sym["W_K"]))))
    lines.append((tex(sym["W_OV"]), tex(sym["W_V"] * sym["W_O"])))
    if have & {"b_V", "b_O"}:
        terms = [rf"\sum_{{h=1}}^{{{tex(n_head)}}} {tex(sym['b_V'] * sym['W_O'])}"] if "b_V" in have else []
        lines.append((tex(sym["b_prime"]), " + ".join(terms + [tex(sym["b_O"])] * ("b_O" in have))))
    prose = _prose(grouped, rotary, have)
    return Circuits(prose, PLAIN, lines)


def _normed(block: Stage) -> MatrixSymbol:
    """X̂^(l): the first equation's output, the normalised stream the heads read."""
    return next(eq.lhs for eq in block.equations if eq.rhs.has(block.input))


def _prose(grouped: bool, rotary: bool, have: set[str]) -> str:
    text = (r"Head $h$ reads columns $(h-1)\,d_{\mathrm{head}}+1$ to $h\,d_{\mathrm{head}}$ of $W_Q^{(l)}$"
            + (r" (and of $b_Q^{(l)}$)" if "b_Q" in have else "") + r", and $W_O^{(l,h)}$ is the same rows of $W_O^{(l)}$")
    text += (r"; it reads key and value head $g(h) = \lceil h\, n_{\mathrm{kv}} / n_{\mathrm{head}} \rceil$"
             if grouped else "")
    text += (r". $R_{\Theta}(\Delta)$ is RoPE's rotation at position $\Delta$ (block-diagonal, the pairs RoPE turns), "
             r"so $R_{\Theta}(p_i) R_{\Theta}(p_j)^{\top} = R_{\Theta}(p_i - p_j)$" if rotary else "")
    text += (r". The softmax cancels the score terms that are constant along a row (those with $b_K$), "
             "so they are left out" if "b_K" in have and not rotary else "")
    text += ". Rows of $A^{(l,h)}$ sum to one, so a value bias reaches the stream as a constant" if "b_V" in have else ""
    return text + "."



PATHS_PROSE = (r"An attention-only model's logits are a sum over paths through the heads. $X^{{(0)}} = T W_E{words}$ "
               r"is the embedding ($T${rows} one-hot rows), $X^{{(k)}}$ the stream after block $k$, and "
               r"$D^{{(k)}}$ the diagonal matrix of the normalisation's row scales of $X^{{(k)}}$ "
               r"($\hat{{X}} = D^{{(k)}} X^{{(k)}}$ exactly{centred}); block $l$ reads $X^{{(l-1)}}$, so its heads "
               r"weigh the rows they read by $\tilde{{A}}^{{(l,h)}} = A^{{(l,h)}} D^{{(l-1)}}$. Each path's token "
               r"matrix is named: the direct path $W_E W_U$, head $(l,h)$'s $W_E W_{{OV}}^{{(l,h)}} W_U$, and "
               r"for two layers the virtual head $W_E W_{{OV}}^{{(1,h)}} W_{{OV}}^{{(2,h')}} W_U$ ($n_{{\mathrm{{vocab}}}} "
               r"\times n_{{\mathrm{{vocab}}}}$ each).")


def is_attention_only(program: Program) -> bool:
    """A folded program whose block is its attention alone (one normalisation, no MLP)."""
    block = next((stage for stage in program.stages if stage.layers), None)
    return block is not None and program.form == "circuits" and \
        sum(1 for eq in block.equations if isinstance(eq.rhs, (Standardise, RMSScale))) == 1  # no MLP's norm


def logit_paths(program: Program) -> Circuits | None:
    """Z as a sum over paths (direct, each head, each pair of heads), for attention-only models of 1 or 2 layers."""
    if not is_attention_only(program) or program.layers > 2:
        return None
    positions = program.positions is not None
    layer_norm = any(eq.rhs.has(Standardise) for stage in program.stages for eq in stage.equations)  # centred
    heads = r"\sum_{h=1}^{n_{\mathrm{head}}}"
    last = program.layers
    biased = {p.name for stage in program.stages if stage.layers for p in stage.params} & {"b_V", "b_O"}
    terms = [(r"\mathrm{direct}", "X^{(0)} W_U")]
    terms += [(f"{l}", rf"{heads} \tilde{{A}}^{{({l},h)}} X^{{(0)}} W_{{OV}}^{{({l},h)}} W_U") for l in range(1, last + 1)]
    if last == 2:
        terms.append((r"\mathrm{virtual}", r"\sum_{h,h'} \tilde{A}^{(2,h')} \tilde{A}^{(1,h)} X^{(0)} W_{OV}^{(1,h)} "
                                          r"W_{OV}^{(2,h')} W_U"))
    if biased:
        bias_terms = [r"\mathbf{1} \left(" + " + ".join(f"{{b'}}^{{({l})}}" for l in range(1, last + 1)) + r"\right) W_U"]
        if last == 2:
            bias_terms.append(r"\sum_{h'} \tilde{A}^{(2,h')} \mathbf{1} {b'}^{(1)} W_{OV}^{(2,h')} W_U")
        terms.append((r"\mathrm{bias}", " + ".join(bias_terms)))
    unembedding = program.stages[-1]
    bias = r" + \mathbf{1} b_U" if any(p.name == "b_U" for p in unembedding.params) else ""
    paths = " + ".join(f"Z_{{{name}}}" for name, _ in terms)
    lines = [("Z", rf"D^{{({last})}} \left({paths}\right){bias}"), *((f"Z_{{{name}}}", term) for name, term in terms),
             (r"\tilde{A}^{(l,h)}", r"A^{(l,h)} D^{(l-1)}"),
             ("X^{(0)}", "T W_E + P W_P" if positions else "T W_E")]
    stats = r"\left(\sigma_i^2 + \varepsilon\right)^{-1/2}" if layer_norm else \
        r"\left(\tfrac{1}{d} \lVert x_i \rVert^2 + \varepsilon\right)^{-1/2}"
    lines.append(("D^{(k)}", rf"\operatorname{{diag}}_i {stats}, \quad x_i \text{{ row }} i \text{{ of }} X^{{(k)}}"))
    prose = PATHS_PROSE.format(words=" + P W_P" if positions else "", rows=", $P$" if positions else "",
                               centred=": every weight writing to the stream is centred" if layer_norm else "")
    return Circuits(prose, "The logits as a sum over paths: the direct path, one term per head, and for two "
                           "layers the virtual heads, each with its token matrix.", lines)
