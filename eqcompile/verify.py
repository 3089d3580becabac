"""Verification: the emitted module against the reference implementation, on the same inputs.

Errors are measured as ``max |emitted - reference|`` (absolute) and that divided by
``max |reference|`` (relative to the output's scale; elementwise ratios blow up near zero logits).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import frontend
from .api import CompiledModel
from .emit.python import import_module
from .errors import ReferenceUnavailable

ABS_TOLERANCE = 1e-4  # for up to REFERENCE_DEPTH blocks; more blocks get proportionally more
REL_TOLERANCE = 1e-5
REFERENCE_DEPTH = 12


@dataclass(frozen=True)
class Comparison:
    seq: int
    max_abs: float
    max_rel: float
    ok: bool


def compare(output: np.ndarray, expected: np.ndarray, atol: float = ABS_TOLERANCE,
            rtol: float = REL_TOLERANCE) -> tuple[float, float, bool]:
    """(max absolute error, error relative to the reference's scale, both within tolerance)."""
    max_abs = float(np.max(np.abs(output.astype(np.float64) - expected.astype(np.float64))))
    max_rel = max_abs / max(float(np.max(np.abs(expected))), np.finfo(np.float32).tiny)
    ok = output.shape == expected.shape and max_abs <= atol and max_rel <= rtol
    return max_abs, max_rel, ok


def absolute_tolerance(model: CompiledModel) -> float:
    """``ABS_TOLERANCE``, scaled up for models deeper than ``REFERENCE_DEPTH`` blocks.

    Both implementations round in float32 and each block adds its rounding to the residual
    stream, so their difference grows with depth: SmolLM2's 30 blocks on 64 random tokens differ
    by 1.3e-4 while transformers itself is 6.4e-5 from its own float64 run.
    """
    return ABS_TOLERANCE * max(1.0, model.program.layers / REFERENCE_DEPTH)


def reference_forward(model: CompiledModel):
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise ReferenceUnavailable(
            "verify needs the reference implementation: pip install 'eqcompile[test]' "
            "(torch==2.13.0 and transformers)") from None
    return frontend.family_of(model.checkpoint).reference(model.checkpoint)


def verify(model: CompiledModel, seqs: list[int], seed: int = 0, atol: float | None = None,
           rtol: float = REL_TOLERANCE, backend: str = "numpy") -> list[Comparison]:
    """Emit the module, run it and the reference on random inputs of each length, compare.

    The family draws the inputs: token ids for a language model, a vector for an MLP. ``atol``
    defaults to :func:`absolute_tolerance`. ``backend="jax"`` checks ``model_jax.py`` instead of ``model.py``.
    """
    atol = absolute_tolerance(model) if atol is None else atol
    reference = reference_forward(model)
    sample_input = frontend.family_of(model.checkpoint).sample_input
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="eqcompile-verify-") as folder:
        emitted = import_module(model.to_jax(Path(folder)) if backend == "jax" else model.to_python(Path(folder)))
        results = []
        for seq in seqs:
            inputs = sample_input(model.program, rng, seq)
            results.append(Comparison(seq, *compare(emitted.forward(inputs), reference(inputs), atol, rtol)))
    return results
