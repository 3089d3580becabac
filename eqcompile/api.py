"""The library API the CLI and notebooks share: ``compile(source)`` -> :class:`CompiledModel`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import arch
from .emit import appendix as appendix_emitter
from .emit import html as html_emitter
from .emit import latex as latex_emitter
from .emit.files import write_bytes, write_text
from .emit.pdf import build_pdf
from .emit.python import write_module
from .load import Checkpoint, load_checkpoint
from .program import Program


@dataclass
class CompiledModel:
    """A checkpoint lowered to equations. Symbolic until a numeric method is called."""

    checkpoint: Checkpoint
    program: Program

    def latex(self, level: str = "layer", unroll: bool = False, standalone: bool = False) -> str:
        """The model as LaTeX: a fragment (amsmath, amssymb), or a full document."""
        fragment = latex_emitter.render(self.program, level, unroll)
        return latex_emitter.document(self.program, fragment) if standalone else fragment

    def write_latex(self, path: str | Path, **options) -> Path:
        write_text(Path(path), self.latex(**options))
        return Path(path)

    def to_python(self, folder: str | Path) -> Path:
        """Write a numpy-only ``model.py`` and its ``weights.safetensors`` into ``folder``."""
        return write_module(self.program, self.checkpoint, Path(folder))

    def appendix(self, title: str | None = None, author: str = "", numbers: bool = False,
                 cost: appendix_emitter.Table | None = None,
                 decorate: latex_emitter.Decorate | None = None) -> appendix_emitter.Appendix:
        """The content of the PDF/HTML appendix. Reads every weight once, for the statistics.

        ``numbers`` adds the literal matrices (tiny models only); ``cost`` a cost summary table.
        """
        return appendix_emitter.build(self.checkpoint, self.program, title, author, numbers, decorate, cost)

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
        content = self.appendix(decorate=html_emitter.decorate, **options)
        write_text(Path(path), html_emitter.page(self.program, content))
        return Path(path)

    def _repr_latex_(self) -> str:
        """Jupyter shows the model as its composition (display math)."""
        return latex_emitter.composition(self.program).replace("align*", "aligned").join(("$$", "$$"))


def compile(source: str | Path) -> CompiledModel:
    """Load a checkpoint (file, folder, sharded index or cached hub id) and lower it to equations."""
    checkpoint = load_checkpoint(source)
    return CompiledModel(checkpoint, arch.lower(checkpoint))
