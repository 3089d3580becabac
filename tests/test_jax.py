"""The JAX module (``--jax``) computes what transformers and the numpy module compute.

Tolerances as the numpy module's (float32): max |error| <= 1e-4 and max |error| / max |reference|
<= 1e-5 against transformers; sharded against unsharded 1e-5 relative. Generation: greedy and
seeded sampling give the numpy module's tokens exactly. Each compile costs seconds on a loaded
machine, so the default run uses few lengths (buckets) and one mesh; the rest is marked slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

import eqcompile
from eqcompile.cli import main
from eqcompile.sharding import split_table
from eqcompile.emit.python import import_module
from eqcompile.verify import compare

from conftest import ROOT, SAMPLE, make_gpt2, reference_logits
from llama_models import make_llama, reference_logits as llama_reference_logits


def emit_both(folder, out):
    """(model_jax, model) written from one compile."""
    pytest.importorskip("jax")
    path = eqcompile.compile(folder).to_jax(out)
    tag = abs(hash(str(out)))
    return import_module(path, f"jax_{tag}"), import_module(path.with_name("model.py"), f"np_{tag}")


def assert_matches(jax_module, numpy_module, reference, tokens):
    logits = jax_module.forward(tokens)
    assert logits.dtype == np.float32 and logits.shape == (len(tokens), jax_module.n_vocab)
    max_abs, max_rel, _ = compare(logits, reference(tokens))
    assert max_abs <= 1e-4 and max_rel <= 1e-5, (len(tokens), max_abs, max_rel)
    max_abs, max_rel, _ = compare(logits, numpy_module.forward(tokens))
    assert max_abs <= 1e-4 and max_rel <= 1e-5, (len(tokens), max_abs, max_rel)


def test_gpt2_matches_transformers_and_numpy(tmp_path):
    folder = make_gpt2(tmp_path / "ckpt")
    jax_module, numpy_module = emit_both(folder, tmp_path / "out")
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, 13)  # padded to 16 (n_ctx): one compile
    assert_matches(jax_module, numpy_module, lambda t: reference_logits(folder, t), tokens)
    with pytest.raises(ValueError):
        jax_module.forward([50])
    with pytest.raises(ValueError):
        jax_module.forward(list(range(17)))


def test_llama_gqa_matches_and_generates_the_numpy_modules_tokens(tmp_path):
    folder = make_llama(tmp_path / "ckpt", num_attention_heads=4, num_key_value_heads=2, hidden_size=16)
    jax_module, numpy_module = emit_both(folder, tmp_path / "out")
    tokens = np.random.default_rng(1).integers(0, 50, 7)
    assert_matches(jax_module, numpy_module, lambda t: llama_reference_logits(folder, t), tokens)
    prompt = [3, 1, 4]
    for options in (dict(temperature=0), dict(temperature=1.0), dict(temperature=0.8, top_k=10, top_p=0.9)):
        expected = numpy_module.generate(prompt, 10, seed=7, **options)
        assert jax_module.generate(prompt, 10, seed=7, **options) == expected, options
    assert len(set(numpy_module.generate(prompt, 10, seed=7))) > 1  # the sampled run is not a constant
    # advance is pure (an old state extends again) and cached logits equal a whole forward's
    state, first = jax_module.advance(jax_module.init_state(), tokens[:2])  # the compiles made above
    _, rest = jax_module.advance(state, tokens[2:])
    _, again = jax_module.advance(state, tokens[2:])
    np.testing.assert_allclose(np.concatenate([first, rest]), jax_module.forward(tokens), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(rest, again)


def test_split_table_is_megatrons_placement(tmp_path):
    """Column-parallel into heads and MLP, row-parallel out; KV weights by their own head count."""
    gpt2 = split_table(eqcompile.compile(SAMPLE).program)
    assert gpt2["block"] == {"W_Q": (1, "n_head"), "b_Q": (1, "n_head"), "W_K": (1, "n_head"),
                             "b_K": (1, "n_head"), "W_V": (1, "n_head"), "b_V": (1, "n_head"),
                             "W_O": (0, "n_head"), "W_in": (1, "d_ff"), "b_in": (1, "d_ff"),
                             "W_out": (0, "d_ff")}
    assert gpt2["embedding"] == {"W_E": (0, "n_vocab")}
    llama = split_table(eqcompile.compile(make_llama(tmp_path / "ckpt", num_key_value_heads=1)).program)
    assert llama["block"] == {"W_Q": (1, "n_head"), "W_K": (1, "n_kv_head"), "W_V": (1, "n_kv_head"),
                              "W_O": (0, "n_head"), "W_gate": (1, "d_ff"), "W_up": (1, "d_ff"),
                              "W_down": (0, "d_ff")}
    assert llama["unembedding"] == {"W_U": (1, "n_vocab")}


def test_cli_writes_model_jax(tmp_path):
    pytest.importorskip("jax")
    result = CliRunner().invoke(main, [str(SAMPLE), "--jax", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"model_jax.py", "model.py", "weights.safetensors"}


def test_cli_without_jax_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jax" else find_spec(name, *a))
    result = CliRunner().invoke(main, [str(SAMPLE), "--jax", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and 'eqcompile[jax]' in result.output
    assert not (tmp_path / "out").exists()


SHARDING = """
import re, sys, numpy as np, jax
from jax.sharding import Mesh
sys.path.insert(0, {root!r})
from eqcompile.emit.python import import_module

assert len(jax.devices()) == 8
module = import_module({path!r}, "model_jax")
tokens = np.random.default_rng(0).integers(0, module.n_vocab, size=(8, 7))
unsharded = module.forward_batch(tokens)
if {check_forward!r}:
    assert np.abs(unsharded[3] - module.forward(tokens[3])).max() <= 1e-5 * np.abs(unsharded).max()
for shape in {meshes!r}:
    mesh = Mesh(np.array(jax.devices()).reshape(shape), ("data", "model"))
    weights = module.shard(mesh)
    sharded = module.forward_batch(tokens, weights)
    error = np.abs(sharded - unsharded).max() / np.abs(unsharded).max()
    assert error <= 1e-5, (shape, error)
    specs = {{name: str(a.sharding.spec) for name, a in weights["block"][0].items()}}
    compiled = module.run_batch.lower(weights, module.on_data_axis(np.zeros((8, 8), np.int32), weights)).compile()
    reduces = len(re.findall(r"= \\S+ all-reduce(?:-start)?\\(", compiled.as_text()))
    print(shape, error, specs, "all-reduces", reduces)
"""


def run_sharded(path, meshes, check_forward=True):
    """The sharding check in a fresh process with 8 forced host devices; its output."""
    code = SHARDING.format(root=str(ROOT), path=str(path), meshes=meshes, check_forward=check_forward)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_gqa_sharded_matches_unsharded(tmp_path):
    """8 heads, 2 KV heads on a 2 x 4 mesh: Q and O split by whole heads, K and V replicated."""
    pytest.importorskip("jax")
    folder = make_llama(tmp_path / "ckpt", hidden_size=16, intermediate_size=32, num_attention_heads=8,
                        num_key_value_heads=2, vocab_size=64)
    compiled = eqcompile.compile(folder)
    out = run_sharded(compiled.to_jax(tmp_path / "out"), [(2, 4)], check_forward=False)
    assert "'W_Q': \"P(None, 'model')\"" in out and "'W_O': \"P('model',)\"" in out, out
    assert "'W_K': 'P()'" in out and "'W_V': 'P()'" in out, out
    assert_all_reduces_as_planned(compiled, out)


def assert_all_reduces_as_planned(compiled, out):
    """The all-reduces XLA compiled for each mesh are those ``stats --mesh`` counts: per layer and
    outside the layers (a vocabulary-parallel lookup). On a 1-device model axis: none."""
    for line in out.splitlines():
        data, model = map(int, line[1:line.index(")")].split(","))
        plan = compiled.mesh_plan(data, model)
        expected = plan.all_reduces_per_layer * compiled.program.layers + plan.all_reduces_outside_layers
        assert int(line.rsplit(" ", 1)[1]) == expected, (line, plan)
        assert (expected > 0) == (model > 1), line


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "gpt2-three-heads", "llama-gqa"])
def test_sharded_matches_unsharded_on_every_mesh(tmp_path, family):
    pytest.importorskip("jax")
    if family == "llama-gqa":
        folder = make_llama(tmp_path / "ckpt", hidden_size=16, intermediate_size=32, num_attention_heads=8,
                            num_key_value_heads=2, vocab_size=64)
    else:
        folder = make_gpt2(tmp_path / "ckpt", n_embd=24 if family == "gpt2" else 12,
                           n_head=8 if family == "gpt2" else 3, vocab_size=64)
    compiled = eqcompile.compile(folder)
    assert_all_reduces_as_planned(compiled, run_sharded(compiled.to_jax(tmp_path / "out"), [(1, 8), (2, 4), (8, 1)]))


def test_strict_placement_names_a_head_count_that_does_not_divide(tmp_path):
    jax_module, _ = emit_both(make_gpt2(tmp_path / "ckpt"), tmp_path / "out")  # 3 heads
    from jax.sharding import PartitionSpec

    assert jax_module.placement("block", "W_Q", 8) == PartitionSpec()  # the stated fallback: replicated
    assert jax_module.placement("block", "W_Q", 3) == PartitionSpec(None, "model")
    assert jax_module.placement("block", "W_O", 3) == PartitionSpec("model")
    with pytest.raises(ValueError, match="block.W_Q: 3 does not split over 8"):
        jax_module.placement("block", "W_Q", 8, strict=True)


def test_verify_backend_jax(tmp_path):
    pytest.importorskip("jax")
    folder = make_gpt2(tmp_path / "ckpt")
    result = CliRunner().invoke(main, ["verify", str(folder), "--backend", "jax", "--seq", "9"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].split()[0] == "9" and result.output.rstrip().endswith("ok")


@pytest.mark.slow
def test_sliding_window_matches_transformers(tmp_path):
    folder = make_llama(tmp_path / "ckpt", model_type="mistral", sliding_window=4, num_key_value_heads=1)
    jax_module, numpy_module = emit_both(folder, tmp_path / "out")
    tokens = np.arange(11) * 5 % 50  # longer than the window
    assert_matches(jax_module, numpy_module, lambda t: llama_reference_logits(folder, t), tokens)
    assert jax_module.generate([1, 2, 3], 8, seed=1) == numpy_module.generate([1, 2, 3], 8, seed=1)


FROM_FILE = """
import re, sys, numpy as np, jax
from jax.sharding import Mesh
sys.path.insert(0, {root!r})
from eqcompile.emit.python import import_module

def rss(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

module = import_module({path!r}, "model_jax")  # reads no weight
mesh = Mesh(np.array(jax.devices()).reshape(1, 8), ("data", "model"))
before = rss("VmRSS")
weights = module.load_sharded(mesh)
arrays = {{id(a): a for a in jax.tree.leaves(weights)}}.values()  # a tied weight once
placed = sum(s.data.nbytes for a in arrays for s in a.addressable_shards)  # what the 8 devices hold
beyond = rss("VmHWM") - before - placed  # the host memory the loading held beyond them, at its peak
tokens = np.random.default_rng(0).integers(0, module.n_vocab, size=(8, 7))
sharded = module.forward_batch(tokens, weights)
unsharded = module.forward_batch(tokens)  # the default weights, read whole
error = np.abs(sharded - unsharded).max() / np.abs(unsharded).max()
specs = {{name: str(a.sharding.spec) for name, a in weights["block"][0].items()}}
print(error, beyond, specs)
"""


def test_shards_are_read_from_the_file_without_the_whole_tensors(tmp_path):
    """load_sharded builds each device's shard from the file: on a 1 x 8 mesh it equals the unsharded
    forward (1e-5 relative) and, at its peak, holds less than 1/8 of the weights beyond what the devices
    keep (reading each tensor whole first, as load_weights does, would hold all of it: 30 MB here)."""
    pytest.importorskip("jax")
    folder = make_gpt2(tmp_path / "ckpt", n_embd=256, n_head=8, n_layer=8, vocab_size=4096, n_positions=32)
    path = eqcompile.compile(folder).to_jax(tmp_path / "out")
    whole = path.with_name("weights.safetensors").stat().st_size
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    code = FROM_FILE.format(root=str(ROOT), path=str(path))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    error, beyond, specs = done.stdout.strip().split(" ", 2)
    assert float(error) <= 1e-5, done.stdout
    assert int(beyond) < whole / 8, (int(beyond), whole)
    assert "'W_in': \"P(None, 'model')\"" in specs and "'W_out': \"P('model',)\"" in specs, specs
