"""The library API the CLI and notebooks share: ``compile(source)`` -> :class:`CompiledModel`."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from . import arch, frontend
from .circuits import Circuits, measure
from .emit import appendix as appendix_emitter
from .emit.circuit_tables import CircuitFigures, circuit_figures
from .emit import html as html_emitter
from .emit import latex as latex_emitter
from .emit.expanded import PACKAGES as EXPANSION_PACKAGES
from .emit.expanded import expansion_latex, expansion_python
from .expand import Expansion, expand
from .fold import fold
from .emit.files import write_bytes, write_text
from .emit.pdf import build_pdf
from .emit.python import write_module, write_source_only
from .emit.tokenizer_latex import tokenizer_latex
from .errors import ConfigError, EqcompileError, TooLarge
from .load import Checkpoint
from .program import Program
from .sharding import MeshPlan, mesh_plan
from .stats import Stats, stats
from .tokenizer import Tokenizer, checkpoint_tokenizer
from .tracer.module import MAX_LENGTH, trace_module

EXPANSION_LIMIT = 200_000  # scalar operations; beyond this --expand needs --force
FORMS = ("standard", "circuits")  # the checkpoint's own weights, or its norms folded (eqcompile.fold)


@dataclass
class CompiledModel:
    """A checkpoint lowered to equations. Symbolic until a numeric method is called."""

    checkpoint: Checkpoint
    program: Program
    trust_tokenizer_pattern: bool = False  # run a pre-tokenizer regex of no known family

    def latex(self, level: str = "layer", unroll: bool = False, standalone: bool = False,
              expand: bool = False, seq: int | None = None, force: bool = False, train: bool = False) -> str:
        """The model as LaTeX: a fragment (amsmath, amssymb), or a full document.

        ``expand=True`` writes the literal equation instead: every weight substituted (numeric);
        ``train=True`` adds the loss, the backward equations and the update rules (``eqcompile.train``).
        """
        if expand and train:
            raise EqcompileError("--train states the backward pass of the equations: drop --expand")
        if expand:
            fragment, packages = expansion_latex(self.expand(seq, force)), EXPANSION_PACKAGES
        else:
            tokenizer = tokenizer_latex(self.tokenizer) if self.tokenizer is not None else ""
            fragment = latex_emitter.render(self.program, level, unroll, tokenizer)
            if train:
                from .train.latex import training_latex

                fragment += "\n" + training_latex(self.program)
            packages = latex_emitter.PACKAGES
        return latex_emitter.document(self.program, fragment, packages) if standalone else fragment

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The checkpoint's tokenizer (its GGUF metadata or its folder's files), if eqcompile supports it."""
        return self._tokenizer[0]

    @cached_property
    def _tokenizer(self) -> tuple[Tokenizer | None, str]:
        """(the tokenizer or None, why there is none when the checkpoint has an unsupported one).

        A malformed tokenizer file (CheckpointError) or an untrusted regex (UntrustedInput) is
        refused, not skipped: the user should know the checkpoint is not what it says.
        """
        try:
            return checkpoint_tokenizer(self.checkpoint, self.trust_tokenizer_pattern), ""
        except ConfigError as e:
            return None, str(e)

    def stats(self, seq: int | None = None) -> Stats:
        """Size of the equation, counted analytically (no expansion is built)."""
        return stats(self.program, self.weight_bytes(), seq)

    def circuits(self, top: int = 8) -> Circuits:
        """Each head's QK/OV singular values, ranks, copying score, and the composition scores (numeric),
        on the stored weights: the circuit form's program is lowered again without its folding."""
        stored = frontend.lower(self.checkpoint) if self.program.form == "circuits" else self.program
        return measure(stored, self.checkpoint, top)

    def _circuit_figures(self) -> CircuitFigures | None:
        """The circuit form's per-head table for the appendix (every family fold accepts has heads)."""
        return circuit_figures(self.circuits()) if self.program.form == "circuits" else None

    def mesh_plan(self, data: int, model: int, dtype_bytes: int = 4) -> MeshPlan:
        """What the JAX module's placement puts on each device of a ``data`` x ``model`` mesh (shapes only)."""
        return mesh_plan(self.program, data, model, dtype_bytes)

    def weight_bytes(self) -> float:
        """Bytes per stored weight in the checkpoint's dominant storage format.

        Measured from the file (bytes over elements), so quantized GGUF formats count too: Q8_0
        stores 34 bytes per 32 weights, Q4_1 20 bytes per 32.
        """
        stored: dict[str, list[int]] = {}  # storage format -> [bytes, elements]
        for info in self.checkpoint.tensors.values():
            totals = stored.setdefault(info.dtype, [0, 0])
            totals[0] += info.nbytes
            totals[1] += math.prod(info.shape)
        nbytes, elements = max(stored.values(), key=lambda totals: totals[1])
        return nbytes / elements

    def expand(self, seq: int | None = None, force: bool = False) -> Expansion:
        """The literal expansion (numeric); refused beyond EXPANSION_LIMIT operations unless forced."""
        size = self.stats(seq)
        if size.operations_total > EXPANSION_LIMIT and not force:
            raise TooLarge(
                f"the literal equation would have {size.operations_total:,} scalar operations "
                f"(~{size.latex_chars:,} characters of LaTeX, ~{size.pages:,.0f} pages); the limit is "
                f"{EXPANSION_LIMIT:,}: pass --force to build it anyway")
        return expand(self.program, self.checkpoint, seq)

    def write_latex(self, path: str | Path, **options) -> Path:
        write_text(Path(path), self.latex(**options))
        return Path(path)

    def to_python(self, folder: str | Path, expand: bool = False, seq: int | None = None,
                  force: bool = False, dtype: str = "float32", train: bool = False) -> Path:
        """Write a numpy-only ``model.py`` and its ``weights.safetensors`` into ``folder``.

        ``expand=True`` writes the literal equation as a pure-Python ``model.py`` (math only);
        ``train=True`` adds the loss, its gradient and the SGD and AdamW steps (``eqcompile.train``).
        """
        if expand and train:
            raise EqcompileError("--train writes the numpy module's training functions: drop --expand")
        if expand:
            return write_source_only(Path(folder), expansion_python(self.expand(seq, force)))
        tokenizer, unsupported = self._tokenizer
        if unsupported:
            warnings.warn(f"model.py gets no encode/decode: {unsupported}", stacklevel=2)
        return write_module(self.program, self.checkpoint, Path(folder), dtype, tokenizer, train)

    def to_jax(self, folder: str | Path, dtype: str = "float32") -> Path:
        """Write ``model_jax.py`` (jitted, shardable; needs the ``jax`` extra) beside ``to_python``'s
        files; ``dtype="bfloat16"``: its weights and activations in bfloat16."""
        from .emit.jax import write_jax_module

        return write_jax_module(self.program, self.checkpoint, Path(folder), self.tokenizer, dtype)

    def appendix(self, title: str | None = None, author: str = "", numbers: bool = False,
                 cost: appendix_emitter.Table | None = None,
                 decorate: latex_emitter.Decorate | None = None, unroll: bool = False,
                 train: bool = False) -> appendix_emitter.Appendix:
        """The content of the PDF/HTML appendix. Reads every weight once, for the statistics.

        ``numbers`` adds the literal matrices (tiny models only); ``cost`` a cost summary table;
        ``unroll`` writes every layer's equations and weights out rather than the block once;
        ``train`` adds the loss, the backward equations and the updates (``eqcompile.train``).
        """
        training = None
        if train:
            from .train.latex import training_blocks

            training = training_blocks(self.program)  # refuses an encoder before any weight is read
        return appendix_emitter.build(self.checkpoint, self.program, title, author, numbers, decorate, cost, unroll,
                                      training, self._circuit_figures())

    def tex(self, path: str | Path, fragment: bool = False, **options) -> Path:
        """Write the appendix as a LaTeX document, or as an ``\\input``-able fragment."""
        write_text(Path(path), appendix_emitter.tex(self.appendix(**options), fragment))
        return Path(path)

    def pdf(self, path: str | Path, engine: str = "pdflatex", **options) -> Path:
        """Write the appendix as a PDF, typeset by TeX (latexmk, no shell escape)."""
        write_bytes(Path(path), build_pdf(appendix_emitter.tex(self.appendix(**options)), engine).pdf)
        return Path(path)

    def html(self, path: str | Path, **options) -> Path:
        """Write the appendix as one self-contained HTML page (KaTeX inlined; opens offline)."""
        # a screen folds each layer away (<details>), so the page always has them all
        content = self.appendix(decorate=html_emitter.decorate, unroll=True, **options)
        write_text(Path(path), html_emitter.page(self.program, content))
        return Path(path)

    def _repr_latex_(self) -> str:
        """Jupyter shows the model as its composition (display math)."""
        return latex_emitter.composition(self.program).replace("align*", "aligned").join(("$$", "$$"))


def compile(source: str | Path, activation: str | None = None, pooling: str | None = None,
            trust_tokenizer_pattern: bool = False, form: str = "standard") -> CompiledModel:
    """Load a checkpoint (file, folder, sharded index or cached hub id) and lower it to equations.

    ``activation`` sets an mlp model's activation over its config.json's (or supplies it);
    ``pooling="mean"`` ends an encoder (bert) with mean pooling: a sentence embedding;
    ``trust_tokenizer_pattern`` accepts a pre-tokenizer regex of no known family (see
    :mod:`eqcompile.tokenizer.pattern`), which the emitted tokenizer would otherwise never run;
    ``form="circuits"``: the norms' gains and shifts folded into the weights (:mod:`eqcompile.fold`).
    """
    given = {"activation": activation, "pooling": pooling}
    settings = {key: value for key, value in given.items() if value is not None}
    checkpoint = arch.with_settings(arch.open_checkpoint(source), settings)
    program = frontend.lower(checkpoint)
    if form not in FORMS:
        raise ConfigError(f"unknown form {form!r} (choose {', '.join(FORMS)})")
    return CompiledModel(checkpoint, fold(program) if form == "circuits" else program, trust_tokenizer_pattern)


def trace(module, example_inputs, max_length: int = MAX_LENGTH) -> CompiledModel:
    """A torch ``nn.Module`` of one's own as a :class:`CompiledModel`, as :func:`compile` gives
    for a checkpoint (needs the ``trace`` extra).

    ``example_inputs``: one tensor, token ids ``[1, n]`` (the module returns logits ``[1, n, vocab]``:
    a causal language model, with generation) or real rows ``[n, d]`` (the emitted ``forward(x)``
    takes ``[n, d]``); n >= 2, traced as a length of 2 to ``max_length``. The weights are copied
    out of the module now, into memory: training it further changes nothing compiled.
    """
    return CompiledModel(*trace_module(module, example_inputs, max_length))
