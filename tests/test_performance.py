"""What keeps eqcompile fast, checked by what it does rather than by timing (timings: benchmarks/).

Symbolic work reads headers only and imports no more than it needs; the emitted module stays
float32 and its KV cache appends in place without ever changing what a held state sees.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import eqcompile
from eqcompile.cli import main
from eqcompile.emit.python import import_module
from eqcompile.load import safetensors_file

from conftest import ROOT, make_gpt2, make_sparse_gpt2, make_sparse_llama
from llama_models import make_llama


def test_a_sparse_checkpoint_takes_no_disk_and_symbolic_work_reads_no_data(tmp_path, monkeypatch):
    folder = make_sparse_gpt2(tmp_path / "gpt2-96", n_layer=96)
    file = folder / "model.safetensors"
    assert file.stat().st_size > 96 * 7_000_000 * 4  # the full size of the weights ...
    assert file.stat().st_blocks * 512 < 1_000_000  # ... none of it on disk

    def no_reading(*args, **kwargs):
        raise AssertionError("symbolic work read tensor data")

    monkeypatch.setattr(safetensors_file, "read_tensor", no_reading)
    monkeypatch.setattr(np, "memmap", no_reading)
    for args in ([str(folder), "--latex"], ["stats", str(folder)], [str(folder), "--latex", "--level", "index"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    assert eqcompile.compile(folder).stats().parameters == 96 * 7_087_872 + 50257 * 768 + 1024 * 768 + 2 * 768


def test_a_llama_70b_header_compiles_without_its_weights(tmp_path):
    """Llama-2-70B's shapes (GQA 64/8): 69B parameters counted, 138 GB described, nothing on disk."""
    folder = make_sparse_llama(tmp_path / "70b", n_layer=80, width=8192, heads=64, kv_heads=8, ffn=28672)
    assert (folder / "model.safetensors").stat().st_blocks * 512 < 1_000_000
    model = eqcompile.compile(folder)
    assert model.stats().parameters == 68_976_648_192
    assert r"\operatorname{RoPE}" in model.latex()


def test_the_command_line_imports_neither_the_reference_nor_unused_renderers(tmp_path):
    """sympy is the floor of every command; torch, transformers, latexify and jinja2 are not paid."""
    folder = make_sparse_gpt2(tmp_path / "gpt2", n_layer=2, n_embd=64)
    probe = ("import sys; from eqcompile.cli import main\n"
             "try: main(sys.argv[1:], prog_name='eqcompile')\n"
             "except SystemExit: pass\n"
             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for args in ([str(folder), "--latex"], ["stats", str(folder)]):
        run = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, env=env,
                             timeout=120)
        assert run.returncode == 0, run.stderr
        imported = set(run.stderr.split())
        assert "sympy" in imported and "eqcompile" in imported
        assert not imported & {"torch", "transformers", "latexify", "jinja2", "matplotlib"}, args


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def module(request, tmp_path_factory):
    """A GPT-2, and a Llama with grouped-query attention (its cache holds rotated keys)."""
    folder = tmp_path_factory.mktemp(request.param) / "ckpt"
    if request.param == "gpt2":
        make_gpt2(folder, n_positions=40, vocab_size=30, n_layer=2)
    else:
        make_llama(folder, max_position_embeddings=40, vocab_size=30, num_key_value_heads=1)
    return import_module(eqcompile.compile(folder).to_python(folder.parent / "out"), f"perf_{request.param}")


def test_everything_stays_float32(module):
    state, logits = module.advance(module.init_state(), [1, 2, 3])
    state, more = module.advance(state, [4])
    assert logits.dtype == more.dtype == np.float32
    for cache in state.caches:
        assert {rows.data.dtype for rows in cache.rows.values()} == {np.dtype(np.float32)}
    for stage in module.WEIGHTS.values():
        for params in stage if isinstance(stage, list) else [stage]:
            assert all(value.dtype == np.float32 for value in params.values())


def test_branching_states_stay_valid(module):
    """Extend one state twice (the second copies), then extend each branch: all equal forward."""
    m = module
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    base, _ = m.advance(m.init_state(), tokens[:3])
    first, first_logits = m.advance(base, tokens[3:5])  # appends in place after base's rows
    second, second_logits = m.advance(base, [7, 7])  # base is no longer the latest: copies
    first_more, first_more_logits = m.advance(first, tokens[5:])
    second_more, second_more_logits = m.advance(second, [8])
    np.testing.assert_allclose(first_logits, m.forward(tokens[:5])[3:], atol=1e-5, rtol=0)
    np.testing.assert_allclose(second_logits, m.forward(tokens[:3] + [7, 7])[3:], atol=1e-5, rtol=0)
    np.testing.assert_allclose(first_more_logits, m.forward(tokens)[5:], atol=1e-5, rtol=0)
    np.testing.assert_allclose(second_more_logits, m.forward(tokens[:3] + [7, 7, 8])[5:], atol=1e-5, rtol=0)
    again, again_logits = m.advance(base, tokens[3:5])  # the oldest state still gives the same
    np.testing.assert_array_equal(again_logits, first_logits)


def test_generation_appends_in_place(module):
    """The cache grows to twice what it holds: a generation reallocates a few times, not per token."""
    m = module
    states = [m.init_state()]  # all kept alive, so the arrays' ids are distinct
    for token in range(39):
        states.append(m.advance(states[-1], [token % 30])[0])
    name = next(iter(states[-1].caches[0].rows))
    buffers = {id(state.caches[0].rows[name].data) for state in states[1:]}
    assert len(buffers) == 5  # rows 1 (the first, as computed), then 4, 10, 22 and 40 (the context)
