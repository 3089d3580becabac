"""Issue 17 on the tracer's models: ``--jax`` for every traced architecture of tests/test_trace.py,
tests/test_trace_gemma.py and tests/test_trace_archs.py, against transformers and the numpy module
from the same compile.

The JAX module pads each input to its length bucket and keeps a fixed-size cache, so a traced
architecture's own ops (partial and interleaved rotary, per-head norms, soft caps, per-layer windows
and rotary bases, experts chosen per token, ALiBi) each meet padding and a cache here. Tolerances as
for the numpy module: 1e-4 absolute and 1e-5 relative to the logits' scale; greedy and seeded
sampled tokens identical."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
jax = pytest.importorskip("jax")

import test_trace  # noqa: E402
import test_trace_archs  # noqa: E402
import test_trace_gemma  # noqa: E402

import eqcompile  # noqa: E402
from eqcompile.emit.python import import_module  # noqa: E402
from eqcompile.verify import compare  # noqa: E402

ATOL, RTOL = 1e-4, 1e-5
DEFAULT_RUN = ("gptj",)  # interleaved rotary; gpt_neox and gemma2 have --jax cells in tests/test_matrix.py
CASES = [  # (model type, the module that makes its checkpoint, its test lengths)
    *((name, test_trace, test_trace.LENGTHS) for name in test_trace.ARCHITECTURES),
    *((name, test_trace_gemma, test_trace_gemma.LENGTHS) for name in test_trace_gemma.ARCHITECTURES),
    *((name, test_trace_archs, test_trace.LENGTHS) for name in test_trace_archs.ARCHITECTURES)]


@pytest.mark.parametrize("name, source, lengths", [
    pytest.param(*case, id=case[0], marks=() if case[0] in DEFAULT_RUN else pytest.mark.slow) for case in CASES])
def test_traced_jax_module_matches_transformers_and_numpy(tmp_path, name, source, lengths):
    folder = source.make_checkpoint(tmp_path / "ckpt", name)
    path = eqcompile.compile(folder).to_jax(tmp_path / "out")
    jax_module = import_module(path, f"jax_traced_{name}")
    numpy_module = import_module(path.with_name("model.py"), f"np_traced_{name}")
    vocab = test_trace.SMALL["vocab_size"]
    rng = np.random.default_rng(1)
    for length in lengths:
        tokens = rng.integers(0, vocab, length)
        logits = np.asarray(jax_module.forward(tokens))
        assert logits.dtype == np.float32
        for reference in (test_trace.transformers_logits(folder, tokens), numpy_module.forward(tokens)):
            max_abs, max_rel, ok = compare(logits, reference, ATOL, RTOL)
            assert ok, (name, length, max_abs, max_rel)
    prompt = rng.integers(0, vocab, 4).tolist()
    for options in (dict(seed=0, temperature=0), dict(seed=3)):  # greedy, then seeded sampling
        assert jax_module.generate(prompt, 8, **options) == numpy_module.generate(prompt, 8, **options)
