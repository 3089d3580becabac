"""The library API the CLI and notebooks share: ``compile(source)`` -> :class:`CompiledModel`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import arch
from .emit import latex as latex_emitter
from .emit.files import write_text
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

    def _repr_latex_(self) -> str:
        """Jupyter shows the model as its composition (display math)."""
        return latex_emitter.composition(self.program).replace("align*", "aligned").join(("$$", "$$"))


def compile(source: str | Path, activation: str | None = None) -> CompiledModel:
    """Load a checkpoint (file, folder, sharded index or cached hub id) and lower it to equations.

    ``activation`` sets an mlp model's activation over its config.json's (or supplies it).
    """
    settings = {"activation": activation} if activation is not None else {}
    checkpoint = arch.with_settings(load_checkpoint(source), settings)
    return CompiledModel(checkpoint, arch.lower(checkpoint))
