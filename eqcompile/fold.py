"""The circuit form's weights: a Program with every norm's gain and shift folded into its readers.

A pre-norm block reads the stream only through ``LN(X) = X̂ diag(γ) + 1 β`` (RMSNorm: ``X̂ diag(γ)``),
with ``X̂`` the normalisation alone, and every reader is affine, so

    LN(X) W + 1 b = X̂ (diag(γ) W) + 1 (β W + b).

The folded Program normalises only (``Standardise``, ``RMSScale``) and binds each reader to
``diag(γ) W`` and ``β W + b`` (W_Q, W_K, W_V, W_in / W_gate, W_up, W_U; a tied W_U becomes its own
``diag(γ_f) W_Eᵀ``). Where the norms subtract the row mean (LayerNorm), every weight writing to
the stream (W_E, W_P, W_O, b_O, W_out, b_out) is centred: a writer's row mean is erased by the
next norm anyway, so centring changes no output. The numbers are derived references
(:class:`~eqcompile.program.FoldedRef`), computed only when a numeric stage reads them.

Post-norm models (BERT) are refused: their stream *is* a norm's output, so its gain cannot move.
"""

from __future__ import annotations

from dataclasses import replace

from sympy import MatAdd, Transpose
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .errors import UnsupportedArchitecture
from .ops import Embed, LayerNorm, Linear, RMSNorm, RMSScale, Standardise
from .program import Equation, Fold, FoldedRef, Param, Program, Stage

FOLDABLE = ("gpt2", "llama", "mistral", "qwen2")  # pre-norm families lowered by hand


def fold(program: Program) -> Program:
    """The same model with its norms' gains and shifts folded into the weights (and writers centred)."""
    if program.family == "bert":
        raise UnsupportedArchitecture(
            "--form circuits: bert is post-norm (each block's output is a LayerNorm's), so the norm's gain "
            "and shift are part of the residual stream and cannot be folded into the weights that read it")
    if program.family not in FOLDABLE:
        raise UnsupportedArchitecture(f"--form circuits supports {', '.join(FOLDABLE)} (pre-norm transformers), "
                                      f"not {program.family}")
    centre = any(isinstance(eq.rhs, LayerNorm) for stage in program.stages for eq in stage.equations)
    note = ("Circuit form: each norm is its normalisation alone; its gain and shift are folded into the "
            "weights that read it (their sources say how)"
            + ("; weights writing to the residual stream are centred (the next LayerNorm removes row means)."
               if centre else "."))
    return replace(program, stages=[_fold_stage(stage, centre) for stage in program.stages],
                   notes=[*program.notes, note], form="circuits")


def _fold_stage(stage: Stage, centre: bool) -> Stage:
    params = {p.symbol: p for p in stage.params}
    normed: dict[MatrixSymbol, tuple[Param, Param | None]] = {}  # normed symbol -> (gain, shift)
    replaced: dict[str, list[Param]] = {}  # an original parameter's name -> what takes its place
    equations = []
    for eq in stage.equations:
        rhs = eq.rhs
        if isinstance(rhs, (LayerNorm, RMSNorm)):
            gain, shift = params[rhs.args[1]], params[rhs.args[2]] if isinstance(rhs, LayerNorm) else None
            normed[eq.lhs] = (gain, shift)
            replaced.update({p.name: [] for p in (gain, shift) if p is not None})
            rhs = Standardise(rhs.arg, rhs.args[-1]) if shift else RMSScale(rhs.arg, rhs.args[-1])
        else:
            rhs = rhs.replace(lambda e: isinstance(e, Linear) and e.arg in normed,
                              lambda e: _fold_reader(e, normed[e.arg], params, replaced))
            if centre and isinstance(rhs, MatAdd):
                rhs = MatAdd(*(_centre_writer(term, params, replaced) for term in rhs.args), evaluate=False)
        equations.append(Equation(eq.lhs, rhs))
    new_params = [q for p in stage.params for q in replaced.get(p.name, [p])]
    names = dict(stage.locals_latex)
    for symbol in normed:
        source = next(eq.rhs.arg for eq in equations if eq.lhs == symbol)
        written = names.get(source.name, source.name)
        # "\hat{X}{}^{(l)}": amsmath's accent makes {\hat{X}^{(l)}}^{\top} a double superscript
        names[symbol.name] = r"\hat{X}{}" + written[1:] if written.startswith("X") else rf"\hat{{{written}}}"
    return replace(stage, equations=equations, params=list(dict.fromkeys(new_params)), locals_latex=names)


def _fold_reader(linear: Linear, norm: tuple[Param, Param | None], params, replaced) -> Linear:
    """``LN(X) W + 1 b`` as ``X̂ (diag(γ) W) + 1 (β W + b)``, binding the folded parameters."""
    gain, shift = norm
    weight = linear.weight
    if isinstance(weight, Transpose):  # a tied unembedding, W_Eᵀ: its own folded parameter W_U
        tied = params[weight.arg]
        source = replace(tied.source, transpose=not tied.source.transpose)
        original = Param(MatrixSymbol("W_U", *weight.shape), "W_U", source, "unembedding.W_U")
    else:
        original = params[weight]
    read = weight.arg.name if isinstance(weight, Transpose) else weight.name  # the stage's own parameter
    bias = params[linear.bias] if linear.bias is not None else None
    folded_weight = replace(original, source=FoldedRef(Fold.GAIN, (original.source, gain.source)))
    folded = [folded_weight]
    if shift is not None:
        extra = (bias.source,) if bias is not None else ()
        bias = replace(bias or _bias_for(original), source=FoldedRef(Fold.SHIFT, (original.source, shift.source,
                                                                                   *extra)))
    if bias is not None:
        folded.append(bias)
    replaced[read] = folded
    if linear.bias is not None:
        replaced[params[linear.bias].name] = []
    return Linear(linear.arg, folded_weight.symbol, *([bias.symbol] if bias is not None else []))


def _bias_for(weight: Param) -> Param:
    """A new bias for a weight that had none (GPT-2's W_U): b_U, keyed and written like its weight."""
    name = "b" + weight.name[1:]
    key = weight.key.rsplit(".", 1)[0] + "." + name
    return Param(MatrixSymbol(name, 1, weight.symbol.shape[1]), "b" + weight.latex[1:], weight.source, key)


def _centre_writer(term, params, replaced):
    """A term added to the stream with its weight (and bias) centred along the stream's width."""
    if isinstance(term, Embed) and isinstance(term.table, MatrixSymbol):
        return Embed(_centred(params[term.table], replaced).symbol, term.tokens)
    if isinstance(term, Linear) and isinstance(term.weight, MatrixSymbol):
        weight = _centred(params[term.weight], replaced)
        bias = [_centred(params[term.bias], replaced).symbol] if term.bias is not None else []
        return Linear(term.arg, weight.symbol, *bias)
    return term


def _centred(param: Param, replaced) -> Param:
    centred = replace(param, source=FoldedRef(Fold.CENTRE, (param.source,)))
    replaced[param.name] = [centred]
    return centred
