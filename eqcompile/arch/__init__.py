"""Model families. Each module here defines ``FAMILY``; adding a family means adding one module.

``family_of(checkpoint)`` picks the family from ``config.json``'s ``model_type`` or, for a bare
safetensors file, from its tensor names (``eqcompile.frontend`` falls back to the tracer above it).
``open_checkpoint(source)`` loads a checkpoint and, for a GGUF file, has the family its
``general.architecture`` names convert it to Hugging Face names and a config.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np

from ..errors import ConfigError, UnsupportedArchitecture
from ..load import Checkpoint, load_checkpoint
from ..load.sparse import write_sparse_checkpoint
from ..program import Program


def random_tokens(program: Program, rng: np.random.Generator, length: int) -> np.ndarray:
    """``length`` token ids drawn uniformly from the vocabulary: verify's input to a language model."""
    return rng.integers(0, program.vocab, size=length)


class Recognises(Protocol):
    """Whether a checkpoint with no config.json is this family's, from its tensor names."""

    def __call__(self, checkpoint: Checkpoint) -> bool: ...


class Lower(Protocol):
    """The checkpoint's equations (reads names and shapes, never weight data)."""

    def __call__(self, checkpoint: Checkpoint) -> Program: ...


class Reference(Protocol):
    """The ground truth verify compares with: the reference library's forward in ``dtype``."""

    def __call__(self, checkpoint: Checkpoint, dtype: str = "float32") -> Callable[..., np.ndarray]: ...


class SampleInput(Protocol):
    """verify's random input of forward() for a given length (tokens: the sequence length)."""

    def __call__(self, program: Program, rng: np.random.Generator, length: int) -> np.ndarray: ...


class ExpectedTensors(Protocol):
    """(name, shape) of every tensor a config.json implies: header-only checkpoints (:func:`header_only`)."""

    def __call__(self, config: dict) -> Iterable[tuple[str, tuple[int, ...]]]: ...


class FromGGUF(Protocol):
    """A GGUF checkpoint (the file's names, no config) with this family's names and config."""

    def __call__(self, checkpoint: Checkpoint) -> Checkpoint: ...


@dataclass(frozen=True)
class Family:
    """What every family module provides, as ``FAMILY``. Each function must take exactly the
    parameters its protocol states (names, order and defaults): callers such as ``verify --exact``
    rely on them, and a family that drifts is refused when it is defined, not when a user hits it.
    """

    name: str
    model_types: tuple[str, ...]  # config.json "model_type" values this family lowers
    recognises: Recognises
    lower: Lower
    reference: Reference
    sample_input: SampleInput = random_tokens
    settings: tuple[str, ...] = ()  # config keys the command line may set (e.g. "activation")
    tensors: ExpectedTensors | None = None
    gguf_architectures: tuple[str, ...] = ()  # GGUF "general.architecture" values from_gguf converts
    from_gguf: FromGGUF | None = None

    def __post_init__(self):
        for field, protocol in PROTOCOLS.items():
            function = getattr(self, field)
            if function is not None and _parameters(function) != _parameters(protocol.__call__)[1:]:
                raise TypeError(f"family {self.name!r}: {field} takes {_parameters(function)}, the "
                                f"{protocol.__name__} protocol states {_parameters(protocol.__call__)[1:]}")


PROTOCOLS = {"recognises": Recognises, "lower": Lower, "reference": Reference, "sample_input": SampleInput,
             "tensors": ExpectedTensors, "from_gguf": FromGGUF}


def _parameters(function) -> list[tuple[str, object]]:
    """(name, default) of each parameter: what a caller may rely on."""
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


def families() -> list[Family]:
    """Every family module in this package, discovered (not listed by hand)."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if isinstance(getattr(module, "FAMILY", None), Family):
            found.append(module.FAMILY)
    return found


def family_named(model_type) -> Family:
    """The hand-written family that lowers config.json's ``model_type``."""
    for family in families():
        if model_type in family.model_types:
            return family
    raise UnsupportedArchitecture(f"unsupported architecture {str(model_type)!r} (supported: {supported_types()})")


def is_written(model_type) -> bool:
    """Whether a hand-written family lowers ``model_type`` (else the tracer may: eqcompile.frontend)."""
    return any(model_type in family.model_types for family in families())


def supported_types() -> str:
    return ", ".join(t for f in families() for t in f.model_types)


def family_of(checkpoint: Checkpoint) -> Family:
    if checkpoint.config is not None and "model_type" in checkpoint.config:
        return family_named(checkpoint.config["model_type"])
    for family in families():
        if family.recognises(checkpoint):
            return family
    raise UnsupportedArchitecture(
        "cannot tell the architecture: no config.json with a model_type, and the tensor names "
        f"match no supported family (supported: {supported_types()})")


def open_checkpoint(source: str | Path) -> Checkpoint:
    """:func:`~eqcompile.load.load_checkpoint`, then a GGUF file converted by its family."""
    return converted(load_checkpoint(source))


def converted(checkpoint: Checkpoint) -> Checkpoint:
    """A GGUF checkpoint under Hugging Face names with a config; any other checkpoint unchanged."""
    if checkpoint.format != "gguf":
        return checkpoint
    architecture = checkpoint.file_metadata.get("general.architecture")
    known = [f for f in families() if f.from_gguf is not None]
    for family in known:
        if architecture in family.gguf_architectures:
            return family.from_gguf(checkpoint)
    supported = ", ".join(a for f in known for a in f.gguf_architectures)
    raise UnsupportedArchitecture(f"{checkpoint.files[0].name}: unsupported GGUF architecture "
                                  f"{str(architecture)!r} (supported: {supported})")


def header_only(folder: Path, config: dict, dtype: str = "F32") -> Path:
    """The checkpoint ``config`` (a config.json's contents) describes, its data a hole (load/sparse.py)."""
    family = family_named(config.get("model_type"))
    if family.tensors is None:
        raise ConfigError(f"{family.name} models cannot be made from a config alone")
    return write_sparse_checkpoint(folder, family.tensors(config), config, dtype)


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

