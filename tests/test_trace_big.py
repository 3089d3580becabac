"""The tracer on big models: a 7B-shaped header-only checkpoint (its data a hole, load/sparse.py)
of an architecture with no hand-written family compiles to LaTeX within the budget, and a big
model is exported with two of its layers (tracer/truncate.py) only when its layers are alike."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import eqcompile  # noqa: E402
from eqcompile.emit.python import import_module  # noqa: E402
from eqcompile.load.sparse import write_sparse_checkpoint  # noqa: E402
from eqcompile.tracer import export  # noqa: E402
from eqcompile.tracer.truncate import fewer_layers  # noqa: E402
from eqcompile.verify import compare  # noqa: E402

PYTHIA_7B = dict(model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"], vocab_size=50432, hidden_size=4096,
                 num_hidden_layers=32, num_attention_heads=32, intermediate_size=16384, rotary_pct=0.25,
                 max_position_embeddings=2048, use_parallel_residual=True, tie_word_embeddings=False)
CPU_SECONDS, PEAK_BYTES = 15, 1.5e9


def header_only_checkpoint(folder: Path, config: dict) -> Path:
    """The tensors transformers' model for ``config`` has, in a safetensors header (bf16, no data)."""
    transformers.logging.set_verbosity_error()
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config))
    tensors = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
    return write_sparse_checkpoint(folder, tensors, config, "BF16")


# eqcompile's command line, then its own peak resident memory (kB) as the last word on stderr
WITH_PEAK = ("import atexit, re, runpy, sys; atexit.register(lambda: print(re.search(r'VmHWM:\\s+(\\d+) kB', "
             "open('/proc/self/status').read()).group(1), file=sys.__stderr__)); "
             "runpy.run_module('eqcompile', run_name='__main__')")


@pytest.mark.slow
def test_a_7b_header_only_gpt_neox_compiles_to_latex_within_budget(tmp_path):
    """Budget: 15 s and 1.5 GB. Measured as CPU time (user + system) of the command, since the
    wall time depends on what else the machine runs; both are in the failure message."""
    folder = header_only_checkpoint(tmp_path / "pythia-7b-shape", PYTHIA_7B)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # children of this process that ended before
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", WITH_PEAK, str(folder), "--latex"], capture_output=True, text=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
    peak = int(result.stderr.split()[-1]) * 1024  # the child's VmHWM: ru_maxrss would count the forked test process
    assert result.returncode == 0, result.stderr
    assert r"L = 32" in result.stdout and r"\operatorname{RoPE}" in result.stdout
    assert cpu < CPU_SECONDS and peak < PEAK_BYTES, (cpu, wall, peak)


@pytest.fixture(scope="module")
def three_layers(tmp_path_factory) -> Path:
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPTNeoXConfig(vocab_size=61, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                        intermediate_size=40, max_position_embeddings=32, rotary_pct=0.5,
                                        bos_token_id=None, eos_token_id=None)
    folder = tmp_path_factory.mktemp("neox3") / "ckpt"
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def test_a_model_exported_with_two_of_its_layers_computes_all_of_them(three_layers, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "ALLOCATE_BELOW", 0)  # as for a big model: unallocated, two layers exported
    compiled = eqcompile.compile(three_layers)
    assert compiled.program.layers == 3
    module = import_module(compiled.to_python(tmp_path), "neox_two_of_three")
    reference = transformers.AutoModelForCausalLM.from_pretrained(three_layers, dtype=torch.float32).eval()
    tokens = np.random.default_rng(0).integers(0, 61, 9)
    with torch.no_grad():
        expected = reference(torch.as_tensor(tokens)[None], use_cache=False).logits[0].numpy()
    max_abs, max_rel, ok = compare(module.forward(tokens), expected, 1e-4, 1e-5)
    assert ok, (max_abs, max_rel)


def test_layers_that_may_differ_are_all_exported():
    config = transformers.Qwen2Config(vocab_size=61, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                      intermediate_size=40, use_sliding_window=True, sliding_window=4,
                                      max_window_layers=1)  # layers 1 and 2 slide, layer 0 does not
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert fewer_layers(model, "model.layers", 3) is None
    alike = transformers.Qwen2Config(**{**config.to_dict(), "use_sliding_window": False, "layer_types": None})
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(alike)
    assert fewer_layers(model, "model.layers", 3)["num_hidden_layers"] == 2
