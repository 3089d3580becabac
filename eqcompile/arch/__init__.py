"""Model families. Each module here defines ``FAMILY``; adding a family means adding one module.

``lower(checkpoint)`` picks the family from ``config.json``'s ``model_type`` or, for a bare
safetensors file, from its tensor names, and returns the family's :class:`~eqcompile.program.Program`.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import numpy as np

from ..errors import ConfigError, UnsupportedArchitecture
from ..load import Checkpoint
from ..program import Program


def random_tokens(program: Program, rng: np.random.Generator, length: int) -> np.ndarray:
    """``length`` token ids drawn uniformly from the vocabulary: verify's input to a language model."""
    return rng.integers(0, program.vocab, size=length)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.json "model_type" values this family lowers
    recognises: Callable[[Checkpoint], bool]  # by tensor names, for files without config.json
    lower: Callable[[Checkpoint], Program]
    reference: Callable[..., Callable[[np.ndarray], np.ndarray]]  # (checkpoint, dtype=) -> torch forward
    # verify's random input of forward() for a given length (tokens: the sequence length)
    sample_input: Callable[[Program, np.random.Generator, int], np.ndarray] = random_tokens
    settings: tuple[str, ...] = ()  # config keys the command line may set (e.g. "activation")
    # (name, shape) of every tensor a config.json implies: header-only checkpoints (load/sparse.py)
    tensors: Callable[[dict], Iterable[tuple[str, tuple[int, ...]]]] | None = None


def families() -> list[Family]:
    """Every family module in this package, discovered (not listed by hand)."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if isinstance(getattr(module, "FAMILY", None), Family):
            found.append(module.FAMILY)
    return found


def family_named(model_type) -> Family:
    """The family that lowers config.json's ``model_type``; with none, the tracer (``eqcompile.trace``)."""
    for family in families():
        if model_type in family.model_types:
            return family
    from ..trace import TRACER

    return TRACER


def supported_types() -> str:
    return ", ".join(t for f in families() for t in f.model_types)


def family_of(checkpoint: Checkpoint) -> Family:
    if checkpoint.config is not None and "model_type" in checkpoint.config:
        return family_named(checkpoint.config["model_type"])
    known = families()
    supported = ", ".join(t for f in known for t in f.model_types)
    for family in known:
        if family.recognises(checkpoint):
            return family
    raise UnsupportedArchitecture(
        "cannot tell the architecture: no config.json with a model_type, and the tensor names "
        f"match no supported family (supported: {supported})")


def with_settings(checkpoint: Checkpoint, settings: dict) -> Checkpoint:
    """The checkpoint with command-line settings (e.g. ``--activation``) over its config.json's.

    The lowering and the reference both read the merged config, so they compute the same model.
    """
    if not settings:
        return checkpoint
    family = family_of(checkpoint)
    for key in settings:
        if key not in family.settings:
            takers = ", ".join(f.name for f in families() if key in f.settings)
            raise ConfigError(f"{family.name} models take no {key!r} setting (it applies to: {takers})")
    return replace(checkpoint, config={**(checkpoint.config or {}), **settings})


def lower(checkpoint: Checkpoint) -> Program:
    return family_of(checkpoint).lower(checkpoint)
