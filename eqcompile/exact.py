"""Exact semantics: the equation evaluated in arbitrary precision, and how far floating point strays.

The exact value runs the emitted module's own code (one source of truth) over mpmath numbers:
weights are the checkpoint's numbers taken exactly, constants such as sqrt(2/pi) and epsilon are
computed or parsed in mpmath, and every elementwise function (exp, tanh, erf, ...) is mpmath's.
"""

from __future__ import annotations

import math
import tempfile
import types
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import mpmath
import numpy as np

from . import frontend
from .api import CompiledModel
from .progress import progress_bar
from .emit.python import import_module
from .errors import TooLarge

DEFAULT_DIGITS = 40
SECONDS_PER_OPERATION = 3e-6  # one mpmath operation at 40 digits on these machines (measured)
TIME_LIMIT = 600  # seconds; beyond the estimate, --exact is refused unless forced
RUNS = 3  # repeated runs per implementation, to tell whether it is deterministic


@dataclass(frozen=True)
class Deviation:
    implementation: str
    max_abs: float  # max |implementation - exact|
    max_rel: float  # max_abs / max |exact|
    bits: float  # agreeing bits: -log2(max_rel), capped at 53 where it is exact
    argmax_agrees: float  # fraction of outputs (positions) whose argmax equals the exact one's
    deterministic: bool  # RUNS runs gave bit-identical outputs


def exact_module(path: Path, digits: int):
    """Import the emitted module at ``path`` again, rebound to compute with mpmath numbers."""
    module = import_module(path, f"eqcompile_exact_{abs(hash(str(path)))}")
    mpmath.mp.dps = digits
    unary = {name: np.frompyfunc(getattr(mpmath, name), 1, 1) for name in ("exp", "sqrt", "tanh", "erf")}
    numpy = types.SimpleNamespace(**{name: getattr(np, name) for name in dir(np) if not name.startswith("__")})
    for name, function in unary.items():
        setattr(numpy, name, function)
    numpy.maximum = np.frompyfunc(lambda a, b: a if a > b else b, 2, 1)
    numpy.asarray = _exact_asarray  # an input vector is taken exactly, not rounded to float32
    module.np, module.math = numpy, mpmath  # math.sqrt(2 / math.pi) becomes exact too
    if hasattr(module, "erf"):  # the emitted float erf is a Chebyshev fit: use the real one
        module.erf = unary["erf"]
    if hasattr(module, "eps"):
        module.eps = mpmath.mpf(repr(module.eps))  # the config's decimal, not its binary neighbour
    exact = np.frompyfunc(lambda value: mpmath.mpf(float(value)), 1, 1)
    module.WEIGHTS = _map_arrays(module.WEIGHTS, lambda array: exact(np.asarray(array)))
    return module


def _exact_asarray(value, dtype=None, **options):
    if dtype is not None and np.issubdtype(np.dtype(dtype), np.floating):
        convert = np.frompyfunc(lambda v: v if isinstance(v, mpmath.mpf) else mpmath.mpf(float(v)), 1, 1)
        return convert(np.asarray(value, dtype=object, **options))
    return np.asarray(value, dtype=dtype, **options)


def _map_arrays(tree, function):
    if isinstance(tree, dict):
        return {key: _map_arrays(value, function) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_map_arrays(value, function) for value in tree]
    return function(tree)


def estimate_seconds(model: CompiledModel, seq: int) -> float:
    return model.stats(seq).operations_total * SECONDS_PER_OPERATION


def deviations(model: CompiledModel, seq: int, digits: int = DEFAULT_DIGITS, seed: int = 0,
               force: bool = False) -> list[Deviation]:
    """Each available implementation against the exact value, on the same random input.

    For the circuit form the exact value is the original (unfolded) equation's, and the first row,
    ``circuits exact``, is the folded equation evaluated exactly from its weights folded in float64:
    the folding is an identity when the two agree to float64's rounding of those weights."""
    seconds = estimate_seconds(model, seq)
    if seconds > TIME_LIMIT and not force:
        raise TooLarge(f"the exact evaluation would take about {seconds / 60:,.0f} minutes "
                       f"({model.stats(seq).operations_total:,} operations at ~{SECONDS_PER_OPERATION * 1e6:g} µs); "
                       "use a shorter --seq or pass --force")
    family = frontend.family_of(model.checkpoint)
    inputs = family.sample_input(model.program, np.random.default_rng(seed), seq)
    with tempfile.TemporaryDirectory(prefix="eqcompile-exact-") as folder:
        single = model.to_python(Path(folder) / "float32")
        double = model.to_python(Path(folder) / "float64", dtype="float64")
        implementations: dict[str, Callable] = {
            "numpy float32": import_module(single, "eqcompile_exact_f32").forward,
            "numpy float64": import_module(double, "eqcompile_exact_f64").forward,
        }
        if model.program.form == "circuits":  # the exact value is the original equation's; the folded one is measured
            original = replace(model, program=frontend.lower(model.checkpoint))
            single = original.to_python(Path(folder) / "original")
            folded = _run_exact(exact_module(double, digits), inputs)  # weights folded in float64
            implementations = {"circuits exact": lambda _: folded, **implementations}
        exact = _run_exact(exact_module(single, digits), inputs)
        implementations.update(_references(model))
        return [_deviation(name, forward, inputs, exact) for name, forward in implementations.items()]


def _run_exact(module, inputs) -> np.ndarray:
    """``module.forward(inputs)``, with a progress bar over the stage calls (mpmath is slow)."""
    names = list(module.PARAMETERS)
    calls = sum(len(module.WEIGHTS[name]) if name in module.REPEATED else 1 for name in names)
    bar = progress_bar(range(calls), "exact")
    ticks = iter(bar)
    for name in names:
        stage = getattr(module, name)

        def counted(*args, _stage=stage, **kwargs):
            next(ticks, None)
            return _stage(*args, **kwargs)

        setattr(module, name, counted)
    try:
        return module.forward(inputs)
    finally:
        bar.close()


def _references(model: CompiledModel) -> dict[str, Callable]:
    try:
        import torch  # noqa: F401
    except ImportError:
        return {}
    reference = frontend.family_of(model.checkpoint).reference
    return {f"torch {dtype}": reference(model.checkpoint, dtype=dtype) for dtype in ("float32", "bfloat16")}


def _deviation(name: str, forward: Callable, inputs, exact: np.ndarray) -> Deviation:
    outputs = [np.asarray(forward(inputs)) for _ in range(RUNS)]
    deterministic = all(np.array_equal(outputs[0], other) for other in outputs[1:])
    output = outputs[0].reshape(exact.shape)
    errors = np.frompyfunc(lambda e, v: abs(e - mpmath.mpf(float(v))), 2, 1)(exact, output)
    scale = max(abs(value) for value in exact.flat)
    max_abs = max(errors.flat)
    max_rel = float(max_abs / scale) if scale else float(max_abs)
    bits = 53.0 if max_rel == 0 else min(53.0, -math.log2(max_rel))
    agree = _argmax_agreement(exact, output)
    return Deviation(name, float(max_abs), max_rel, bits, agree, deterministic)


def _argmax_agreement(exact: np.ndarray, output: np.ndarray) -> float:
    rows_exact = exact.reshape(-1, exact.shape[-1]) if exact.ndim > 1 else exact.reshape(1, -1)
    rows_out = output.reshape(rows_exact.shape)
    hits = [max(range(len(e)), key=lambda j: e[j]) == int(np.argmax(o)) for e, o in zip(rows_exact, rows_out)]
    return sum(hits) / len(hits)
