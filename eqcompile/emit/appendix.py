"""The appendix: a model stated in full for a paper (PDF, TeX) or a screen (HTML).

One content model, :class:`Appendix`, feeds both formats. Its equations come from the LaTeX emitter
(:mod:`.latex`); its numeric parts (the symbol table's statistics, the literal matrices of
``--numbers``) read the checkpoint one tensor at a time, here and never in ``--latex``. Strings from
the checkpoint stay plain text in the content model: each template escapes them for its format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, ConfigError
from ..load import Checkpoint
from ..load.files import read_json
from ..program import Binding, Program
from .latex import (Decorate, EquationLine, OpBlock, StageBlock, composition_lines, number_latex, op_blocks,
                    printer_for, stage_blocks)
from .python import parameter_value
from .templates import render_template

PACKAGES = ("amsmath", "amssymb", "array", "tabularx", "longtable", "booktabs", "breqn")  # breqn last
NUMBERS_LIMIT = 10_000  # --numbers prints every weight; past this an appendix becomes a phone book
MATRIX_ROWS, MATRIX_COLUMNS = 24, 8
STATISTICS_CHUNK = 1 << 20  # values converted to float64 at a time  # --numbers prints a weight in pieces that fit a page's width


@dataclass(frozen=True)
class Statistics:
    """Summary of a weight's numbers, computed in float64."""

    frobenius: float
    mean: float
    std: float  # population standard deviation
    min: float
    max: float

    @classmethod
    def of(cls, array: np.ndarray) -> Statistics | None:
        """One pass over ``array`` in float64 chunks (memory: one chunk), merged with Chan's formula."""
        flat = np.ravel(array)
        if flat.size == 0:
            return None
        count, mean, m2, squares = 0, 0.0, 0.0, 0.0  # m2: sum of squared deviations from the mean
        for start in range(0, flat.size, STATISTICS_CHUNK):
            chunk = flat[start:start + STATISTICS_CHUNK].astype(np.float64)
            chunk_squares = float(chunk @ chunk)
            chunk_mean = float(chunk.sum()) / chunk.size
            chunk_m2 = max(chunk_squares - chunk.size * chunk_mean * chunk_mean, 0.0)
            delta, total = chunk_mean - mean, count + chunk.size
            m2 += chunk_m2 + delta * delta * count * chunk.size / total
            mean += delta * chunk.size / total
            squares += chunk_squares
            count = total
        return cls(math.sqrt(squares), mean, math.sqrt(m2 / count), float(flat.min()), float(flat.max()))

    def values(self) -> tuple[float, ...]:
        """In the symbol table's column order."""
        return self.frobenius, self.mean, self.std, self.min, self.max


@dataclass(frozen=True)
class SymbolRow:
    """One weight of the equations bound to one layer: a row of the symbol table."""

    key: str  # its key in the emitted module's weights ("block.0.W_Q"): unique, safe in HTML ids
    name: str  # the parameter's name in the equations' code ("W_Q")
    latex: str  # "W_Q^{(1)}"
    shape: tuple[int, ...]
    source: str  # the tensor, with its slice or transpose: "h.0.attn.c_attn.weight[..., 0:48]"
    dtype: str  # the stored dtype (safetensors tag: F32, F16, BF16, ...)
    group: str  # "Embedding", "Transformer block 3", ...
    statistics: Statistics | None


@dataclass(frozen=True)
class MatrixPiece:
    """``--numbers``: at most MATRIX_ROWS x MATRIX_COLUMNS entries of a weight, as 10^exponent times
    entries rounded to three decimals (a common factor keeps the columns narrow)."""

    label: str  # "W_Q^{(1)}", or with 1-based ranges when the weight is cut into pieces
    exponent: int
    rows: list[list[str]]


@dataclass(frozen=True)
class Table:
    """A plain table (header and rows of text), e.g. the cost summary of ``stats``."""

    caption: str
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class CardRow:
    label: str
    value: str  # plain text, escaped by the template
    code: bool = False  # typeset as code (names, paths, digests) with places to break lines


@dataclass
class Appendix:
    """Everything an appendix says, in the order it says it."""

    title: str
    author: str
    card: list[CardRow]
    notes: list[str]
    composition: list[str]  # LaTeX lines aligned at "&"
    stages: list[StageBlock]  # each stage; a repeated one for a generic layer, then layer by layer
    tokenizer: list[CardRow]
    sampling: list[EquationLine]
    sampling_notes: list[str]
    ops: list[OpBlock]
    symbols: list[SymbolRow]
    unused: list[str]  # tensors of the file that no equation uses
    dims: list[tuple[str, str]]  # (LaTeX of a dimension, LaTeX of its value)
    layers: int  # L, the number of repeated blocks (0 when nothing repeats)
    cost: Table | None = None
    matrices: list[MatrixPiece] | None = None


def build(checkpoint: Checkpoint, program: Program, title: str | None = None, author: str = "",
          numbers: bool = False, decorate: Decorate | None = None, cost: Table | None = None) -> Appendix:
    """The appendix of a compiled model. Reads every weight once (statistics); ``numbers`` prints them.

    ``decorate`` wraps each weight's symbol in the equations (the HTML viewer makes them hoverable);
    ``cost`` is a program-level cost summary to include as it is.
    """
    bindings = program.bindings()
    if numbers:
        count = sum(math.prod(program.numeric_shape(b.param.symbol)) for b in bindings)
        if count > NUMBERS_LIMIT:
            raise ConfigError(f"--numbers prints every weight, and this model has {count:,} numbers "
                              f"(the limit is {NUMBERS_LIMIT:,}); leave --numbers out for a model this size")
    used = list(dict.fromkeys(b.source.name for b in bindings))
    stages = []
    for stage in program.stages:
        stages += stage_blocks(program, stage, unroll=False, decorate=decorate)
        if stage.layers:
            stages += stage_blocks(program, stage, unroll=True, decorate=decorate)
    printer = printer_for(program)
    sampling, sampling_notes = _sampling(checkpoint, program)
    return Appendix(
        title=title or f"{program.title} as equations",
        author=author,
        card=_card(checkpoint, program, used),
        notes=list(program.notes),
        composition=composition_lines(program),
        stages=stages,
        tokenizer=_tokenizer(checkpoint),
        sampling=sampling,
        sampling_notes=sampling_notes,
        ops=op_blocks(program),
        symbols=[_symbol_row(checkpoint, program, b) for b in bindings],
        unused=[name for name in checkpoint.tensors if name not in set(used)],
        dims=[(printer._print(symbol), number_latex(value)) for symbol, value in program.dims.items()],
        layers=program.layers,
        cost=cost,
        matrices=[piece for b in bindings for piece in _matrix_pieces(checkpoint, program, b)] if numbers else None,
    )


def tex(appendix: Appendix, fragment: bool = False) -> str:
    """The appendix as a LaTeX document, or as a fragment to ``\\input`` (it needs ``PACKAGES``)."""
    return render_template("appendix.tex.j2", appendix=appendix, fragment=fragment, packages=PACKAGES,
                           decimal=decimal_latex, rows=MATRIX_ROWS, columns=MATRIX_COLUMNS)


def _card(checkpoint: Checkpoint, program: Program, used: list[str]) -> list[CardRow]:
    files = checkpoint.files
    digest_label = f"sha256 of {files[0].name}" if len(files) == 1 else \
        f"sha256 of the {len(files)} files, in order"
    rows = [CardRow("Family", program.family), CardRow("Source", program.source, code=True),
            CardRow("Weight files", ", ".join(f.name for f in files), code=True),
            CardRow(digest_label, checkpoint.sha256(), code=True),
            CardRow("Stored dtype", ", ".join(sorted({checkpoint.tensors[n].dtype for n in used}))),
            CardRow("Parameters", f"{sum(math.prod(checkpoint.shape(n)) for n in used):,}")]
    if program.takes_tokens:  # a vector-input model (an MLP) has neither
        rows += [CardRow("Context", f"{program.max_seq:,} tokens"), CardRow("Vocabulary", f"{program.vocab:,}")]
    config = checkpoint.config or {}
    for key in ("model_type", "architectures"):
        if key in config:
            value = config[key]
            rows.append(CardRow(f"config.json {key}", ", ".join(map(str, value)) if isinstance(value, list)
                                else str(value), code=True))
    rows += [CardRow(f"metadata {key}", value, code=True) for key, value in checkpoint.metadata.items()]
    return rows


def _symbol_row(checkpoint: Checkpoint, program: Program, binding: Binding) -> SymbolRow:
    stage = binding.stage
    group = stage.title if binding.layer is None else f"{stage.title} {binding.layer + 1}"
    value = parameter_value(checkpoint, program, binding.param, binding.layer)  # one tensor at a time
    return SymbolRow(binding.key, binding.param.name, binding.latex, value.shape, binding.source.describe(),
                     checkpoint.tensors[binding.source.name].dtype, group, Statistics.of(value))


def decimal_latex(value: float, digits: int = 3) -> str:
    """A number as math to ``digits`` significant digits; a power of ten only below 0.001 or from 10^6."""
    if value == 0 or not math.isfinite(value):
        return {math.inf: r"\infty", -math.inf: r"-\infty"}.get(value, "0" if value == 0 else r"\mathrm{NaN}")
    exponent = math.floor(math.log10(abs(value)))
    if -3 <= exponent < 6:
        return f"{value:.{max(digits - 1 - exponent, 0)}f}"
    mantissa, _, power = f"{value:.{digits - 1}e}".partition("e")
    return rf"{mantissa} \times 10^{{{int(power)}}}"


def _matrix_pieces(checkpoint: Checkpoint, program: Program, binding: Binding) -> list[MatrixPiece]:
    value = parameter_value(checkpoint, program, binding.param, binding.layer)
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


def _read_json(path: Path):
    """A JSON file from the model folder, or None when absent or unreadable (it is optional);
    read through the bounded reader (size, nesting, integer length)."""
    if not path.exists():
        return None
    try:
        return read_json(path)
    except CheckpointError:
        return None


def _type_of(part) -> str:
    return str(part.get("type", "?")) if isinstance(part, dict) else "none"


def _tokenizer(checkpoint: Checkpoint) -> list[CardRow]:
    """What tokenizer.json says about the map from strings to token ids, when the folder has one."""
    if checkpoint.folder is None:
        return []
    data = _read_json(checkpoint.folder / "tokenizer.json")
    if not isinstance(data, dict):
        return []
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    vocab = model.get("vocab")
    added = data.get("added_tokens") if isinstance(data.get("added_tokens"), list) else []
    rows = [CardRow("File", "tokenizer.json", code=True), CardRow("Model", _type_of(model))]
    if isinstance(vocab, (dict, list)):
        rows.append(CardRow("Vocabulary entries", f"{len(vocab):,}"))
    if isinstance(model.get("merges"), list):
        rows.append(CardRow("Merges", f"{len(model['merges']):,}"))
    rows += [CardRow("Normalizer", _type_of(data.get("normalizer"))),
             CardRow("Pre-tokenizer", _type_of(data.get("pre_tokenizer"))),
             CardRow("Decoder", _type_of(data.get("decoder"))),
             CardRow("Added tokens", f"{len(added):,}")]
    return rows


def _config_number(config: dict, key: str, default: float, low: float, high: float) -> float | None:
    value = config.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        return None
    return value


def _sampling(checkpoint: Checkpoint, program: Program) -> tuple[list[EquationLine], list[str]]:
    """The next-token map that generation_config.json asks for (transformers' defaults otherwise)."""
    if program.interface != "causal_lm" or checkpoint.folder is None:
        return [], []
    config = _read_json(checkpoint.folder / "generation_config.json")
    if not isinstance(config, dict):
        return [], []
    last = program.stages[-1]
    logits = printer_for(program, last)._print(last.output)
    row = rf"{{{logits}}}_{{n,v}}"
    if config.get("do_sample") is not True:
        return [EquationLine("t_{n+1}", rf"\operatorname*{{arg\,max}}_{{v \in \mathcal{{V}}}} {row}")], \
            ["Greedy decoding (generation_config.json does not set do_sample)."]
    temperature = _config_number(config, "temperature", 1.0, 1e-6, 1e6)
    top_k = _config_number(config, "top_k", 50, 0, 1e12)
    top_p = _config_number(config, "top_p", 1.0, 0.0, 1.0)
    if temperature is None or top_k is None or top_p is None:
        return [], ["generation_config.json sets sampling values eqcompile cannot read."]
    lines = [EquationLine(r"p(v \mid t_1, \dots, t_n)",
                          rf"\frac{{\exp\left({row} / T\right)}}{{\sum_{{u \in \mathcal{{S}}}} "
                          rf"\exp\left({{{logits}}}_{{n,u}} / T\right)}}, \quad v \in \mathcal{{S}}"),
             EquationLine("t_{n+1}", r"\sim p(\cdot \mid t_1, \dots, t_n)")]
    notes = [f"Sampling with temperature T = {temperature:g}."]
    if top_k:
        notes.append(f"S is restricted to the {int(top_k)} most probable tokens (top-k).")
    if top_p < 1:
        notes.append(f"S is the smallest set of most probable tokens whose probability reaches {top_p:g} (top-p).")
    if not top_k and top_p >= 1:
        notes.append("S is the whole vocabulary V.")
    return lines, notes
