"""The appendix's symbol tables: each weight with its shape, dtype, source tensor and statistics.

A repeated stage's weights are stated once for the generic layer (l) (shape, dtype, the tensor name
with l - 1 in it), and their statistics as one table per stage, layers as rows and a group of
columns per symbol; ``--unroll`` lists every layer's weights row by row instead. The numbers are
read here, one tensor at a time, and never by ``--latex``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..load import Checkpoint
from ..program import Binding, Program, Stage, TensorRef
from ..weight_statistics import Statistics

MATRIX_ROWS, MATRIX_COLUMNS = 24, 8  # --numbers prints a weight in pieces that fit a page's width
SYMBOLS_PER_TABLE = 2  # five statistics per symbol: two symbols' columns fit an A4 page's width


@dataclass(frozen=True)
class SymbolRow:
    """One weight of the equations, bound to one layer or stated for the generic layer (l)."""

    key: str  # its key in the emitted module's weights ("block.0.W_Q"): unique, safe in HTML ids
    name: str  # the parameter's name in the equations' code ("W_Q")
    latex: str  # "W_Q^{(1)}"
    shape: tuple[int, ...]
    ref: TensorRef  # the tensor, with its slice or transpose (its name holds "{layer}" when generic)
    dtype: str  # the stored dtype (safetensors tag: F32, F16, BF16, ...); several joined when generic
    group: str  # "Embedding", "Transformer block 3", ...
    statistics: Statistics | None  # None for a generic row: its layers' statistics are in a LayerTable
    stored_name: str | None = None  # the tensor's name in the file, where it differs (GGUF: "blk.0.attn_q.weight")

    @property
    def name_in_file(self) -> str:
        return self.stored_name or self.ref.name

    @property
    def source(self) -> str:
        """The tensor as plain text: "h.0.attn.c_attn.weight[..., 0:48]ᵀ"."""
        return self.ref.describe(self.stored_name)


@dataclass(frozen=True)
class LayerRow:
    label: str  # LaTeX of the layer's map, "B^{(3)}"
    statistics: list[Statistics | None]  # one per symbol of its table


@dataclass(frozen=True)
class LayerTensors:
    label: str  # LaTeX of the layer's map, "B^{(3)}"
    names: list[str]  # the tensors this layer's weights are read from (a dtype beside those that vary)


@dataclass(frozen=True)
class LayerTable:
    """Statistics of some of a repeated stage's weights: a row per layer, columns per symbol."""

    title: str  # "Transformer block"
    symbols: list[str]  # LaTeX of each symbol for the generic layer, "W_Q^{(l)}"
    rows: list[LayerRow]


@dataclass(frozen=True)
class MatrixPiece:
    """``--numbers``: at most MATRIX_ROWS x MATRIX_COLUMNS entries of a weight, as 10^exponent times
    entries rounded to three decimals (a common factor keeps the columns narrow)."""

    label: str  # "W_Q^{(1)}", or with 1-based ranges when the weight is cut into pieces
    exponent: int
    rows: list[list[str]]


def symbol_row(checkpoint: Checkpoint, program: Program, binding: Binding) -> SymbolRow:
    """A bound weight's row, with the statistics of its numbers (read here)."""
    stage = binding.stage
    group = stage.title if binding.layer is None else f"{stage.title} {binding.layer + 1}"
    value = binding.read(checkpoint, program)  # one tensor at a time
    return SymbolRow(binding.key, binding.param.name, binding.latex, value.shape, binding.source,
                     checkpoint.tensors[binding.source.name].dtype, group, Statistics.of(value),
                     checkpoint.stored_names.get(binding.source.name))


def generic_rows(program: Program, rows: list[SymbolRow]) -> list[SymbolRow]:
    """The symbol table said once: a stage applied once row by row, a repeated one for layer (l)."""
    by_key = {row.key: row for row in rows}
    out, seen = [], set()
    for binding in program.bindings():
        stage, param = binding.stage, binding.param
        if not stage.layers:
            out.append(by_key[binding.key])
        elif param.key not in seen:
            seen.add(param.key)
            layers = [by_key[param.key.format(layer=layer)] for layer in range(stage.layers)]
            dtypes = ", ".join(sorted({row.dtype for row in layers}))
            out.append(SymbolRow(param.key, param.name, param.latex_at("l"), layers[0].shape, param.source,
                                 dtypes, stage.title, None, _generic_stored_name(layers)))
    return out


def _generic_stored_name(layers: list[SymbolRow]) -> str | None:
    """The file's own name for layer (l), with ``{layer}`` where the layer index goes: derived from
    layer 1's name and kept only if it gives every layer's name (else the rows keep their own)."""
    first = layers[0].stored_name
    if first is None or ".0." not in first:
        return None
    pattern = first.replace(".0.", ".{layer}.", 1)
    if all(row.stored_name == pattern.format(layer=layer) for layer, row in enumerate(layers)):
        return pattern
    return None


def layer_tables(program: Program, rows: list[SymbolRow]) -> list[LayerTable]:
    """Each repeated stage's statistics, layers as rows, SYMBOLS_PER_TABLE symbols per table."""
    by_key = {row.key: row for row in rows}
    tables = []
    for stage in program.stages:
        if not stage.layers:
            continue
        params = list({p.key: p for p in stage.params}.values())
        grid = [[by_key[p.key.format(layer=layer)] for p in params] for layer in range(stage.layers)]
        for start in range(0, len(params), SYMBOLS_PER_TABLE):
            part = slice(start, start + SYMBOLS_PER_TABLE)
            tables.append(LayerTable(stage.title, [p.latex_at("l") for p in params[part]],
                                     [LayerRow(_label(stage, layer), [row.statistics for row in grid[layer][part]])
                                      for layer in range(stage.layers)]))
    return tables


def layer_tensors(program: Program, rows: list[SymbolRow]) -> list[LayerTensors]:
    """Every layer's source tensors by name, each once: the generic row's pattern, filled in."""
    by_key = {row.key: row for row in rows}
    out = []
    for stage in program.stages:
        if not stage.layers:
            continue
        params = list({p.key: p for p in stage.params}.values())
        varying = {p.key for p in params
                   if len({by_key[p.key.format(layer=layer)].dtype for layer in range(stage.layers)}) > 1}
        for layer in range(stage.layers):
            names = {}
            for p in params:
                row = by_key[p.key.format(layer=layer)]
                name = row.name_in_file
                names.setdefault(name, f"{name} ({row.dtype})" if p.key in varying else name)
            out.append(LayerTensors(_label(stage, layer), list(names.values())))
    return out


def _label(stage: Stage, layer: int) -> str:
    return rf"{stage.letter}^{{({layer + 1})}}"


def matrix_pieces(checkpoint: Checkpoint, program: Program, binding: Binding) -> list[MatrixPiece]:
    """``--numbers``: a weight's values, cut into pieces that fit a page."""
    value = binding.read(checkpoint, program)
    rows, cols = value.shape
    pieces = []
    for top in range(0, rows, MATRIX_ROWS):
        for left in range(0, cols, MATRIX_COLUMNS):
            block = value[top:top + MATRIX_ROWS, left:left + MATRIX_COLUMNS].astype(np.float64)
            label = binding.latex
            if block.shape != value.shape:
                row_range = f"{top + 1}{{:}}{top + block.shape[0]}" if rows > 1 else "1"
                label = rf"\left[{label}\right]_{{{row_range},\, {left + 1}{{:}}{left + block.shape[1]}}}"
            largest = float(np.abs(block).max())
            exponent = math.floor(math.log10(largest)) if largest > 0 else 0
            pieces.append(MatrixPiece(label, exponent, [[f"{x:.3f}" for x in row] for row in block / 10.0**exponent]))
    return pieces
