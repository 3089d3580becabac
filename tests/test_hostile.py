"""Hostile and broken inputs: fuzzed headers, injection through names and paths, atomic outputs."""

from __future__ import annotations

import ast
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eqcompile
from eqcompile.cli import main
from eqcompile.errors import EqcompileError

from conftest import ROOT, SAMPLE, compile_tex, make_gpt2, make_sparse_gpt2, pdflatex_available

# EQCOMPILE_FUZZ_EXAMPLES=20000 python -m pytest tests/test_hostile.py -k fuzz  runs a longer, CI-free search
FUZZ = settings(max_examples=int(os.environ.get("EQCOMPILE_FUZZ_EXAMPLES", "150")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def write_file(path: Path, header: object, data: bytes = b"", raw_header: bytes | None = None) -> Path:
    body = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def assert_clean_failure(path: Path, out: Path):
    """Exit 2, one line naming the problem, no traceback, no output; no hang (timing is benchmarked)."""
    start = time.perf_counter()
    result = CliRunner().invoke(main, [str(path), "--latex", "-o", str(out)])
    assert time.perf_counter() - start < 20
    assert result.exit_code == 2, result.output
    assert result.output.startswith("eqcompile: error:") and result.output.count("\n") == 1
    assert not out.exists()


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(tmp_path, data):
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    assert_clean_failure(path, tmp_path / "out.tex")


entry = st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from(["F32", "F16", "BF16", "I64", "F8", "", "f32"]), st.integers(), st.none()),
    "shape": st.one_of(st.lists(st.integers(-3, 2**40), max_size=4), st.text(max_size=3), st.none()),
    "data_offsets": st.one_of(st.lists(st.integers(-5, 2**62), min_size=0, max_size=3), st.none()),
})


@FUZZ
@given(st.dictionaries(st.text(max_size=30), entry, max_size=6), st.binary(max_size=64))
def test_fuzzed_headers(tmp_path, header, data):
    assert_clean_failure(write_file(tmp_path / "m.safetensors", header, data), tmp_path / "out.tex")


@pytest.mark.parametrize("length", [0, 2**63 - 1, 2**64 - 1, 10**9])
def test_header_lengths_that_cannot_be(tmp_path, length):
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", length) + b"{}")
    assert_clean_failure(path, tmp_path / "out.tex")


def test_duplicate_names_in_json_keep_one_and_still_fail_cleanly(tmp_path):
    raw = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'
    assert_clean_failure(write_file(tmp_path / "m.safetensors", None, b"\0" * 8, raw_header=raw), tmp_path / "o.tex")


@pytest.mark.parametrize("raw, names", [  # each was a ValueError (exit 1) or a name no terminal could print
    (b'{"a": {"dtype": "F32", "shape": [1' + b"0" * 5000 + b'], "data_offsets": [0, 4]}}',
     "a.shape[0] is an integer of 5001 digits"),
    (b'{"a\\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', "holds a lone surrogate"),
    (b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}", "JSON nested 5001 levels deep (the limit is 64), under the key 'a'"),
])
def test_unreadable_json_in_a_safetensors_header(tmp_path, raw, names):
    path = write_file(tmp_path / "m.safetensors", None, b"\0" * 8, raw_header=raw)
    result = CliRunner().invoke(main, [str(path), "--latex"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and names in result.output, result.output


def test_a_hundred_thousand_tiny_tensors(tmp_path):
    header = {f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(100_000)}
    assert_clean_failure(write_file(tmp_path / "m.safetensors", header, b"\0" * 100_000), tmp_path / "o.tex")


BAD_CONFIGS = {
    "zero width": {"n_embd": 0}, "negative heads": {"n_head": -2}, "heads do not divide": {"n_head": 5},
    "huge layers": {"n_layer": 10**12}, "missing vocab": {"vocab_size": None}, "string width": {"n_embd": "12"},
    "bool heads": {"n_head": True}, "eps out of range": {"layer_norm_epsilon": 2.0},
    "unknown activation": {"activation_function": "gelu_10"}, "flag not bool": {"scale_attn_weights": "yes"},
    "cross attention": {"add_cross_attention": True},
}


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_bad_configs(tmp_path, name):
    folder = make_gpt2(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    for key, value in BAD_CONFIGS[name].items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    assert_clean_failure(folder, tmp_path / "out.tex")


HOSTILE = "evil\\input{/etc/passwd}\\write18{touch MARK}\\immediate\\openout9=MARK2 $&#^_~%{}\n'\"\"\"__import__('os')"


def test_hostile_path_is_text_in_latex_and_a_literal_in_python(tmp_path):
    folder = tmp_path / HOSTILE.replace("/", "|").replace("\n", " ")
    folder.mkdir()
    for item in SAMPLE.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    model = eqcompile.compile(folder)
    source = model.to_python(tmp_path / "py").read_text()
    clean = eqcompile.compile(SAMPLE).to_python(tmp_path / "py_clean").read_text()
    tree, clean_tree = ast.parse(source), ast.parse(clean)
    assert [type(n).__name__ for n in ast.walk(tree)] == [type(n).__name__ for n in ast.walk(clean_tree)]
    namespace: dict = {}
    exec(compile(ast.Module([n for n in tree.body if isinstance(n, ast.Assign)
                             and getattr(n.targets[0], "id", "") == "SOURCE"], []), "m", "exec"), namespace)
    assert namespace["SOURCE"] == folder.name  # the folder's own name, not where it sits
    if not pdflatex_available():
        pytest.skip("pdflatex is not installed (CI installs it)")
    tex = tmp_path / "doc" / "doc.tex"
    tex.parent.mkdir()
    tex.write_text(model.latex(standalone=True))
    assert compile_tex(tex).returncode == 0
    assert not list(tex.parent.glob("MARK*"))
    text = subprocess.run(["pdftotext", str(tex.with_suffix(".pdf")), "-"], capture_output=True, text=True).stdout
    assert "write18" in text and "passwd" in text  # shown, not executed


def test_outputs_are_byte_identical_across_runs(tmp_path):
    runs = []
    for name in ("a", "b"):
        model = eqcompile.compile(SAMPLE)
        path = model.to_python(tmp_path / name)
        runs.append((model.latex(), model.latex(level="index"), path.read_bytes(),
                     path.with_name("weights.safetensors").read_bytes()))
    assert runs[0] == runs[1]


def test_sigterm_mid_write_leaves_the_previous_output(tmp_path):
    """A big (sparse, all-zero) checkpoint takes seconds to write; killing it keeps the old files."""
    folder = make_sparse_gpt2(tmp_path / "big")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.py").write_text("previous model\n")
    (out / "weights.safetensors").write_text("previous weights\n")
    process = subprocess.Popen([sys.executable, "-m", "eqcompile", str(folder), "--python", str(out)],
                               cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    staging = lambda: list(tmp_path.glob(".out.*.tmp/.weights*.tmp"))  # noqa: E731
    while time.time() < deadline and not staging():
        time.sleep(0.05)
    assert staging(), "the writer never started"
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0 and "Traceback" not in stderr
    assert (out / "model.py").read_text() == "previous model\n"
    assert (out / "weights.safetensors").read_text() == "previous weights\n"
    assert sorted(p.name for p in out.iterdir()) == ["model.py", "weights.safetensors"]
    assert not list(tmp_path.glob(".out.*"))  # the staging folder is gone too


def test_errors_never_leave_temp_files(tmp_path, monkeypatch):
    from eqcompile.program import Binding

    def broken(*args):
        raise EqcompileError("reading failed")

    monkeypatch.setattr(Binding, "read", broken)
    result = CliRunner().invoke(main, [str(SAMPLE), "--python", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert not any(p.is_file() for p in (tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True
    assert os.listdir(tmp_path / "out") == [] if (tmp_path / "out").exists() else True
