"""The Program: what a model computes, as ordered sympy equations with symbols bound to tensors.

Every emitter (LaTeX, Python, stats, ...) reads only this. A transformer is a recurrence over
layers, so a repeated stage (the block) is stated once for a generic layer (l) and bound to each
layer's tensors by formatting ``{layer}`` in its parameter's tensor names.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from string import Template
from typing import TYPE_CHECKING

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from .composition import Arrow, Compose, Iterated, Space, StageMap

if TYPE_CHECKING:
    from .load import Checkpoint



def select_part(array, rows, columns, transpose, blocks):  # a TensorRef's part of a stored tensor
    if rows:
        array = array[rows[0]:rows[1]]
    if columns:
        array = array[..., columns[0]:columns[1]]
    if transpose:
        array = array.T
    if blocks:  # entries start:stop of every width along the last axis
        width, start, stop = blocks
        grouped = array.reshape(*array.shape[:-1], array.shape[-1] // width, width)
        array = grouped[..., start:stop].reshape(*array.shape[:-1], -1)
    return array


class Interface(StrEnum):
    """What the emitted ``forward`` takes and returns (templates/forward_<interface>.py.j2)."""

    CAUSAL_LM = "causal_lm"  # token ids [n] -> next-token logits [n, n_vocab]
    ENCODER = "encoder"  # token ids (and a padding mask, token types) -> hidden states [n, d]
    VECTOR = "vector"  # a real vector x -> a real vector y (an MLP)
    ROWS = "rows"  # real rows x [n, d_model] -> outputs [n, k] (an nn.Module traced on real inputs)

@dataclass(frozen=True)
class TensorRef:
    """Where a parameter's numbers come from: a checkpoint tensor, possibly sliced or transposed.

    ``columns`` slices the last axis (e.g. W_Q out of GPT-2's fused ``c_attn``); ``transpose``
    turns a stored ``[out, in]`` matrix into the ``[in, out]`` that ``X W`` needs; ``blocks`` then
    keeps entries start:stop of every ``width`` along the last axis (a traced model's fused
    per-head ``[q_h k_h v_h]`` projection, e.g. GPT-NeoX's ``query_key_value``).
    """

    name: str  # may contain "{layer}" (0-based) for block parameters
    columns: tuple[int, int] | None = None
    transpose: bool = False
    blocks: tuple[int, int, int] | None = None  # (width, start, stop), applied after the transpose
    rows: tuple[int, int] | None = None  # rows start:stop of the stored tensor, taken first (OPT's positions)

    def for_layer(self, layer: int | None) -> TensorRef:
        if layer is None:
            return self
        return replace(self, name=self.name.replace("{layer}", str(layer)))

    def select(self, array):
        """The parameter's numbers out of the stored tensor's (an array with ``[...]`` and ``.T``)."""
        return select_part(array, self.rows, self.columns, self.transpose, self.blocks)

    def read(self, checkpoint: Checkpoint, transpose: bool = True) -> np.ndarray:
        """The parameter's numbers (float32): the stored tensor through :meth:`select`; with
        ``transpose=False`` laid out as the file stores them (diff compares them so)."""
        array = self.select(checkpoint.tensor(self.name))
        return array.T if self.transpose and not transpose else array

    def describe(self, stored_name: str | None = None) -> str:
        """The source as text, under ``stored_name`` when the file stores it under another name (GGUF)."""
        text = stored_name or self.name
        if self.rows:
            text += f"[{self.rows[0]}:{self.rows[1]}]"
        if self.columns:
            text += f"[..., {self.columns[0]}:{self.columns[1]}]"
        text += "ᵀ" if self.transpose else ""
        if self.blocks:
            width, start, stop = self.blocks
            text += f" (entries {start}:{stop} of every {width})"
        return text


    @property
    def tensors(self) -> tuple[str, ...]:
        """The stored tensors the parameter's numbers come from."""
        return (self.name,)


class Fold(StrEnum):
    """How a folded parameter is computed from others (``X W`` orientation, float64)."""

    GAIN = "gain"  # diag(γ) W: a norm's gain moved into the weight that reads the norm
    SHIFT = "shift"  # β W + b: a norm's shift pushed through that weight into its bias
    CENTRE = "centre"  # W − (row means) 1ᵀ: a weight writing to a stream the next LayerNorm centres


@dataclass(frozen=True)
class FoldedRef:
    """A parameter derived from stored tensors by a :class:`Fold` (the circuit form's weights).

    ``inputs`` are the weight first (its tensor names the parameter's dtype), then the gain γ, or
    the shift β and optionally the bias b. Symbolic work only describes it; :meth:`read` computes it.
    """

    fold: Fold
    inputs: tuple[TensorRef | FoldedRef, ...]

    @property
    def name(self) -> str:
        return self.inputs[0].name

    @property
    def tensors(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for ref in self.inputs for name in ref.tensors))

    def for_layer(self, layer: int | None) -> FoldedRef:
        return replace(self, inputs=tuple(ref.for_layer(layer) for ref in self.inputs))

    def read(self, checkpoint: Checkpoint, transpose: bool = True) -> np.ndarray:
        """The folded numbers, in float64 from the stored ones (cast by the caller)."""
        weight, *rest = (np.asarray(ref.read(checkpoint), dtype=np.float64) for ref in self.inputs)
        if self.fold == Fold.GAIN:
            return rest[0].reshape(-1, 1) * weight
        if self.fold == Fold.SHIFT:
            shifted = rest[0].reshape(1, -1) @ weight
            return shifted + rest[1].reshape(shifted.shape) if len(rest) > 1 else shifted
        return weight - weight.mean(axis=-1, keepdims=True)

    def describe(self, stored_name: str | None = None) -> str:
        weight, *rest = (ref.describe() for ref in self.inputs)
        if self.fold == Fold.GAIN:
            return f"diag({rest[0]}) {weight}"
        if self.fold == Fold.SHIFT:
            return " + ".join([f"{rest[0]} {weight}", *rest[1:]])
        return f"centre({weight})"


@dataclass(frozen=True)
class Param:
    """A weight of the equations: its symbol (a Python identifier), LaTeX name and source tensor."""

    symbol: MatrixSymbol
    latex: str  # a string.Template: $l is replaced by the layer ("l" or a number)
    source: TensorRef | FoldedRef
    key: str  # its name in the emitted module's weight file, e.g. "block.{layer}.W_Q"

    @property
    def name(self) -> str:
        return self.symbol.name

    def latex_at(self, layer: str) -> str:
        """Its LaTeX with the layer written as ``layer`` ("l" or a 1-based number)."""
        return Template(self.latex).substitute(_layer_fill(layer))


@dataclass(frozen=True)
class Equation:
    lhs: MatrixSymbol
    rhs: sp.Basic


@dataclass
class Stage:
    """One function of the composition f = U ∘ B^(L) ∘ ... ∘ B^(1) ∘ E."""

    name: str  # the Python function's name: "embedding", "block", "unembedding"
    title: str  # the LaTeX section title
    letter: str  # its name in the composition: "E", "B", "U"
    input: MatrixSymbol
    equations: list[Equation]
    params: list[Param]
    locals_latex: dict[str, str]  # LaTeX templates of the input and intermediate symbols
    layers: int | None = None  # None: applied once; L: applied L times with superscript (l)
    layer_symbols: tuple[sp.Symbol, ...] = ()  # scalar symbols that depend on the layer (e.g. l)
    extra_inputs: tuple[MatrixSymbol, ...] = ()  # inputs besides the stream (e.g. a padding mask)
    cached: tuple[MatrixSymbol, ...] = ()  # rows kept across generation steps (keys and values)

    @property
    def output(self) -> MatrixSymbol:
        return self.equations[-1].lhs

    def latex_names(self, layer: str) -> dict[sp.Basic, str]:
        """LaTeX for every symbol of this stage, with the layer written as ``layer``."""
        names = {p.symbol: p.latex_at(layer) for p in self.params}
        fill = _layer_fill(layer)
        for eq in [Equation(s, s) for s in (self.input, *self.extra_inputs)] + self.equations:
            template = self.locals_latex.get(eq.lhs.name, eq.lhs.name)
            names[eq.lhs] = Template(template).substitute(fill)
        return names


def _layer_fill(layer: str) -> dict[str, str]:
    if layer.isdigit():
        number = int(layer)
        return {"l": layer, "next": str(number + 1), "half": f"{number}.5", "prev": str(number - 1)}
    return {"l": layer, "next": f"{layer}+1", "half": rf"{layer}+\frac{{1}}{{2}}", "prev": f"{layer}-1"}


@dataclass
class Program:
    """A whole model: its stages in order, the dimensions they use, and where it came from."""

    family: str
    stages: list[Stage]
    dims: dict[sp.Symbol, int | float]  # values of the size/constant symbols (d, n_head, eps, ...)
    dim_latex: dict[sp.Symbol, str]
    dim_python: dict[sp.Symbol, str]
    input_symbol: MatrixSymbol  # what forward() takes: token ids t, or a vector x
    seq: sp.Symbol | None  # the sequence length n (set by the input); None for a fixed-size input
    max_seq: int  # the longest input verify may draw (1 for a single vector)
    vocab: int  # token ids lie in [0, vocab); 0 when forward() takes no tokens
    positions: MatrixSymbol | None = None  # token positions p = (0, ..., n-1), an input of known value
    # extra inputs the literal expansion (--expand) holds at one value in every entry, the value
    # forward() takes when they are not given (e.g. bert's attention mask 1: no padding)
    input_defaults: dict[MatrixSymbol, int] = field(default_factory=dict)
    interface: Interface = Interface.CAUSAL_LM  # the emitted forward(): templates/forward_<interface>.py.j2
    source: str = ""
    notes: list[str] = field(default_factory=list)  # stated assumptions (e.g. inferred config)
    config: dict = field(default_factory=dict)  # the family's parsed config, for the model card
    form: str = "standard"  # "circuits": norms folded into the weights (eqcompile.fold)

    def composition(self) -> Compose:
        """f_θ as its stages composed, the last applied first: U ∘ B^(L) ∘ … ∘ B^(1) ∘ E."""
        return Compose(*(Iterated(stage.letter, sp.Symbol("L")) if stage.layers else StageMap(stage.letter)
                         for stage in reversed(self.stages)))

    def signatures(self) -> list[tuple[StageMap, Arrow]]:
        """Each stage's map (B^(l) for a repeated one) with its domain and codomain."""
        def space(symbol, tokens=False):
            return Space(*symbol.shape, tokens=tokens)

        return [(StageMap(stage.letter, sp.Symbol("l") if stage.layers else None),
                 Arrow(space(stage.input, stage.input == self.input_symbol and self.takes_tokens),
                       space(stage.output)))
                for stage in self.stages]

    @property
    def layers(self) -> int:
        """L, how many times the repeated stage (the block) is applied; 0 when no stage repeats."""
        return next((stage.layers for stage in self.stages if stage.layers), 0)

    @property
    def title(self) -> str:
        """"The qwen2 model": named by config.json's model_type where it has one, else the family."""
        return f"The {self.config.get('model_type') or self.family} model"

    @property
    def takes_tokens(self) -> bool:
        """Whether forward() takes token ids (the other interfaces take real numbers)."""
        return self.interface not in (Interface.VECTOR, Interface.ROWS)

    @property
    def params(self) -> list[tuple[Stage, Param]]:
        return [(stage, p) for stage in self.stages for p in stage.params]

    def bindings(self) -> list[Binding]:
        """Every parameter bound to each layer that uses it, in order, each weight key once."""
        found: dict[str, Binding] = {}
        for stage in self.stages:
            for layer in range(stage.layers) if stage.layers else [None]:
                for p in stage.params:
                    binding = Binding(stage, p, layer)
                    found.setdefault(binding.key, binding)
        return list(found.values())

    def numeric_shape(self, symbol: MatrixSymbol) -> tuple[int, ...]:
        """A symbol's shape with the dimensions' values put in."""
        return tuple(int(sp.sympify(s).subs(self.dims)) for s in symbol.shape)


@dataclass(frozen=True)
class Binding:
    """A parameter bound to one layer's tensor: what one key of the emitted weight file holds."""

    stage: Stage
    param: Param
    layer: int | None  # 0-based, as in tensor names; None for a stage applied once

    @property
    def key(self) -> str:
        return self.param.key if self.layer is None else self.param.key.format(layer=self.layer)

    @property
    def source(self) -> TensorRef | FoldedRef:
        return self.param.source.for_layer(self.layer)

    @property
    def latex(self) -> str:
        return self.param.latex_at("l" if self.layer is None else str(self.layer + 1))

    def read(self, checkpoint: Checkpoint, program: Program, dtype=np.float32) -> np.ndarray:
        """The numbers this key holds (numeric stages only): sliced, transposed (or folded), in
        ``dtype`` and the parameter's shape. The one place a parameter's numbers are fetched.

        A stored tensor is read as float32 and widened exactly; a folded one is computed in
        float64 and rounded once, to ``dtype``."""
        array = self.source.read(checkpoint)
        if isinstance(self.source, TensorRef):
            array = np.asarray(array, dtype=np.float32)
        array = array.reshape(program.numeric_shape(self.param.symbol))
        return np.ascontiguousarray(array, dtype=dtype)
