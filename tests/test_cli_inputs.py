"""The command line on bad and good inputs: one-line errors, exit codes, and no stray output files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_gpt2
from test_load import BAD_INPUTS

from eqcompile.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_gpt2(tmp_path_factory.mktemp("cli") / "tiny")


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="eqcompile")


def assert_one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)  # not a crash
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("eqcompile: error:"), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_to_latex_is_one_line_and_writes_nothing(tmp_path, case):
    (tmp_path / "in").mkdir()
    model = BAD_INPUTS[case](tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    result = run(model, "--latex", "-o", out / "out.tex")
    assert_one_line_error(result)
    assert files_in(out) == []  # neither out.tex nor a temp file beside it


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_to_python_is_one_line_and_writes_nothing(tmp_path, case):
    (tmp_path / "in").mkdir()
    model = BAD_INPUTS[case](tmp_path / "in")
    outdir = tmp_path / "outdir"
    result = run(model, "--python", outdir)
    assert_one_line_error(result)
    assert not outdir.exists() or files_in(outdir) == []


def test_bad_input_as_a_real_process(tmp_path):
    (tmp_path / "in").mkdir()
    model = BAD_INPUTS["header not JSON"](tmp_path / "in")
    env = {**os.environ, "PYTHONWARNINGS": ""}
    done = subprocess.run([sys.executable, "-m", "eqcompile", str(model), "--latex", "-o", "out.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.strip()
    assert done.stderr.startswith("eqcompile: error:") and "not JSON" in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "out.tex").exists()


def test_missing_model_is_one_line(tmp_path):
    line = assert_one_line_error(run(tmp_path / "absent.safetensors", "--latex"))
    assert "absent.safetensors" in line


def test_no_output_option_is_a_clear_error(tiny):
    result = run(tiny)
    line = assert_one_line_error(result)
    assert "--latex" in line and "--python" in line
    assert result.stdout == ""


# ------------------------------------------------------------------------------------- good runs

def test_latex_to_a_file(tiny, tmp_path):
    target = tmp_path / "f.tex"
    result = run(tiny, "--latex", "-o", target)
    assert result.exit_code == 0, result.stderr
    text = target.read_text()
    assert r"\begin{align*}" in text
    assert result.stdout == ""  # the equations go to the file, the note to stderr


def test_latex_to_stdout(tiny):
    result = run(tiny, "--latex", "--level", "model")
    assert result.exit_code == 0, result.stderr
    assert r"\begin{align*}" in result.stdout and r"\end{align*}" in result.stdout


def test_python_writes_module_and_weights(tiny, tmp_path):
    result = run(tiny, "--python", tmp_path / "d")
    assert result.exit_code == 0, result.stderr
    assert files_in(tmp_path / "d") == ["model.py", "weights.safetensors"]
    assert "def forward" in (tmp_path / "d" / "model.py").read_text()


def test_existing_latex_file_is_replaced_atomically(tiny, tmp_path):
    target = tmp_path / "f.tex"
    target.write_text("old contents\n")
    with open(target) as old:  # an atomic replace is a rename: the old file object keeps its text
        result = run(tiny, "--latex", "-o", target)
        assert result.exit_code == 0, result.stderr
        assert old.read() == "old contents\n"
    assert r"\begin{align*}" in target.read_text()
    assert files_in(tmp_path) == ["f.tex"]  # no leftover .tmp files
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


# ---------------------------------------------------------------------------------------- verify

def test_verify_tiny_model(tiny):
    result = run("verify", tiny)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    rows = [line for line in result.stdout.splitlines() if line.rstrip().endswith("ok")]
    assert [int(row.split()[0]) for row in rows] == [1, 7, 16]  # default lengths; 16 = the context
    assert "FAIL" not in result.stdout


def test_verify_beyond_context_is_an_input_error(tiny):
    line = assert_one_line_error(run("verify", tiny, "--seq", "1000"))
    assert "1000" in line and "16" in line


# ------------------------------------------------------------------------------------------ help

@pytest.mark.parametrize("args", [[], ["compile"], ["verify"]], ids=["main", "compile", "verify"])
def test_help(args):
    result = run(*args, "--help")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: eqcompile")
    assert "--help" in result.stdout
    if args == ["compile"]:
        assert "--latex" in result.stdout and "--python" in result.stdout
    if args == ["verify"]:
        assert "--seq" in result.stdout
