"""The appendix: a model stated in full for a paper (PDF, TeX) or a screen (HTML).

One content model, :class:`Appendix`, feeds both formats, and says each thing once: a repeated
block's equations for a generic layer (l), its weights' statistics as one table (layers as rows),
and every layer written out only when asked (``unroll``). Its equations come from the LaTeX
emitter (:mod:`.latex`); the model card (:mod:`.model_card`), the sampling map (:mod:`.sampling`)
and the symbol tables (:mod:`.symbols`, which reads the checkpoint one tensor at a time) each have
their own module. Strings from the checkpoint stay plain text here: each template escapes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError, TeXInputError
from ..load import Checkpoint
from ..program import Program
from ..weight_statistics import Statistics  # noqa: F401  (re-exported: the appendix's statistics)
from .circuit_tables import CircuitFigures
from .latex import (CircuitBlock, Decorate, EquationLine, OpBlock, StageBlock, TrainingBlocks, circuit_blocks, composition_lines, dimension_latex, op_blocks,
                    printer_for, source_latex, stage_blocks)
from .model_card import CardRow, model_card, tokenizer_card
from .numbers import latex_number
from .sampling import sampling
from .symbols import (MATRIX_COLUMNS, MATRIX_ROWS, LayerRow, LayerTable, LayerTensors, MatrixPiece, SymbolRow,
                      generic_rows, layer_tables, layer_tensors, matrix_pieces, symbol_row)
from .templates import render_template
from .text import tex_code, tex_escape

PACKAGES = ("amsmath", "amssymb", "array", "tabularx", "longtable", "booktabs", "breqn")  # breqn last
NUMBERS_LIMIT = 10_000  # --numbers prints every weight; past this an appendix becomes a phone book
# characters of one string once typeset: pdflatex reads a line of at most 200,000 bytes (TeX Live's
# buf_size), and a string shares its line with the markup around it
TEX_STRING_LIMIT = 100_000
__all__ = ["Appendix", "CardRow", "LayerRow", "LayerTable", "LayerTensors", "MatrixPiece", "PACKAGES", "Statistics",
           "SymbolRow", "Table", "build", "tex", "MATRIX_ROWS", "MATRIX_COLUMNS", "NUMBERS_LIMIT"]


@dataclass(frozen=True)
class Table:
    """A plain table (header and rows of text), e.g. the cost summary of ``stats``."""

    caption: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class Appendix:
    """Everything an appendix says, in the order it says it."""

    title: str
    author: str
    card: list[CardRow]
    notes: list[str]
    composition: list[str]  # LaTeX lines aligned at "&"
    stages: list[StageBlock]  # each stage; a repeated one for a generic layer, then (unroll) layer by layer
    tokenizer: list[CardRow]
    sampling: list[EquationLine]
    sampling_notes: list[str]
    ops: list[OpBlock]
    symbols: list[SymbolRow]  # every weight bound to its layer
    unused: list[str]  # tensors of the file that no equation uses
    dims: list[tuple[str, str]]  # (LaTeX of a dimension, LaTeX of its value)
    layers: int  # L, the number of repeated blocks (0 when nothing repeats)
    unroll: bool = False  # every layer written out (equations and symbol rows) rather than said once
    generic_symbols: list[SymbolRow] | None = None  # the symbol table said once (layer (l) for a block)
    layer_tables: list[LayerTable] | None = None  # a repeated block's statistics, layers as rows
    layer_tensors: list[LayerTensors] | None = None  # each layer's source tensors
    layer_notes: dict[str, str] | None = None  # LaTeX per repeated stage's name: what differs between layers
    cost: Table | None = None
    matrices: list[MatrixPiece] | None = None
    circuits: list[CircuitBlock] | None = None  # --form circuits: the attention head by head, the logits' paths
    training: TrainingBlocks | None = None  # --train: the loss, the backward stages, SGD and AdamW
    circuit_figures: CircuitFigures | None = None  # --form circuits: each head's figures (stored weights)


def build(checkpoint: Checkpoint, program: Program, title: str | None = None, author: str = "",
          numbers: bool = False, decorate: Decorate | None = None, cost: Table | None = None,
          unroll: bool = False, training: TrainingBlocks | None = None,
          circuit_figures: CircuitFigures | None = None) -> Appendix:
    """The appendix of a compiled model. Reads every weight once (statistics); ``numbers`` prints them.

    ``decorate`` wraps each weight's symbol in the equations (the HTML viewer makes them hoverable);
    ``cost`` is a program-level cost summary to include as it is; ``unroll`` writes every layer out;
    ``training`` is the section ``eqcompile.train.latex.training_blocks`` makes, included as it is.
    ``circuit_figures`` (each head's, on the stored weights) are tabulated beside the circuit form's equations.
    """
    bindings = program.bindings()
    if numbers:
        count = sum(math.prod(program.numeric_shape(b.param.symbol)) for b in bindings)
        if count > NUMBERS_LIMIT:
            raise ConfigError(f"--numbers prints every weight, and this model has {count:,} numbers "
                              f"(the limit is {NUMBERS_LIMIT:,}); leave --numbers out for a model this size")
    used = list(dict.fromkeys(name for b in bindings for name in b.source.tensors))  # folded: all it reads
    stages = []
    for stage in program.stages:
        stages += stage_blocks(program, stage, unroll=False, decorate=decorate)
        if stage.layers and unroll:
            stages += stage_blocks(program, stage, unroll=True, decorate=decorate)
    printer = printer_for(program)
    sampling_lines, sampling_notes = sampling(checkpoint, program)
    symbols = [symbol_row(checkpoint, program, b) for b in bindings]
    return Appendix(
        title=title or f"{program.title} as equations",
        author=author,
        card=model_card(checkpoint, program, used),
        notes=list(program.notes),
        composition=composition_lines(program),
        stages=stages,
        tokenizer=tokenizer_card(checkpoint),
        sampling=sampling_lines,
        sampling_notes=sampling_notes,
        ops=op_blocks(program),
        symbols=symbols,
        unused=[name for name in checkpoint.tensors if name not in set(used)],
        dims=[(printer._print(symbol), dimension_latex(value)) for symbol, value in program.dims.items()],
        layers=program.layers,
        unroll=unroll,
        generic_symbols=None if unroll else generic_rows(program, symbols),
        layer_tables=None if unroll else layer_tables(program, symbols),
        layer_tensors=None if unroll else layer_tensors(program, symbols),
        layer_notes=None if unroll else _layer_notes(program),
        cost=cost,
        matrices=[piece for b in bindings for piece in matrix_pieces(checkpoint, program, b)] if numbers else None,
        circuits=circuit_blocks(program, decorate) if program.form == "circuits" else None,
        training=training,
        circuit_figures=circuit_figures,
    )


def _layer_notes(program: Program) -> dict[str, str]:
    """What differs between the layers of each repeated stage: its weights, and the layer symbols it uses."""
    notes = {}
    for stage in program.stages:
        if not stage.layers:
            continue
        printer = printer_for(program, stage)
        symbols = ", ".join(f"${printer._print(s)}$" for s in stage.layer_symbols)
        varies = f"its weights and {symbols}, which the equations use," if symbols else "its weights"
        notes[stage.name] = (rf"Every layer $l = 1, \dots, {stage.layers}$ applies these equations; from layer to "
                             rf"layer only {varies} differ. The symbols section states each weight once, for "
                             rf"layer $l$, with its statistics layer by layer.")
    return notes


def tex(appendix: Appendix, fragment: bool = False) -> str:
    """The appendix as a LaTeX document, or as a fragment to ``\\input`` (it needs ``PACKAGES``).

    Raises :class:`TeXInputError` naming the key of a string too long for TeX to read.
    """
    for key, typeset in _typeset_strings(appendix):
        if len(typeset) > TEX_STRING_LIMIT:
            raise TeXInputError(f"{key}: {len(typeset):,} characters once typeset, more than TeX reads on one "
                                f"line (the limit is {TEX_STRING_LIMIT:,}); a PDF or TeX appendix cannot hold it")
    return render_template("appendix.tex.j2", appendix=appendix, fragment=fragment, packages=PACKAGES,
                           number=latex_number, source=lambda row: source_latex(row.ref, tex_code, row.stored_name),
                           rows=MATRIX_ROWS, columns=MATRIX_COLUMNS)


def _typeset_strings(appendix: Appendix):
    """(key, its LaTeX) for each string from the input or the user that the document typesets."""
    yield "--title", tex_escape(appendix.title)
    yield "--author", tex_escape(appendix.author)
    for row in appendix.card + appendix.tokenizer:
        yield row.label, tex_code(row.value) if row.code else tex_escape(row.value)
    for note in appendix.notes:
        yield "a note", tex_escape(note)
    for name in appendix.unused + [row.ref.name for row in appendix.symbols]:
        yield "tensor name", tex_code(name)
