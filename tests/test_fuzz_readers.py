"""Every reader of a checkpoint's files, fuzzed below the command line (issue 20).

Each test calls the function the CLI calls for one file kind (``api.compile``'s loading and lowering,
the tokenizer loaders, the appendix's readers, the safetensors and GGUF header parsers) on a
generated file: a valid one with one to three parts replaced by JSON of the wrong kind, nested
thousands deep, integers thousands of digits long, lone surrogates and terminal escapes, or a
whole file of such text. Whatever it is, the reader returns, or raises an ``EqcompileError`` (the
CLI's one line and exit 2); anything else is an internal error, a bug.

    EQCOMPILE_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz_readers.py

runs the long search (one process; the default stays within a few seconds per reader). The CLI
itself (0.3 s an example) is exercised end to end on the special files only, at the bottom.
"""

from __future__ import annotations

import copy
import json
import os
import struct
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eqcompile import api
from eqcompile.arch import header_only
from eqcompile.cli import main
from eqcompile.emit.model_card import model_card, tokenizer_card
from eqcompile.emit.sampling import sampling
from eqcompile.emit.tokenizer_latex import tokenizer_latex
from eqcompile.emit.tokenizer_module import write_tokenizer
from eqcompile.errors import EqcompileError
from eqcompile.load import Checkpoint
from eqcompile.load.files import parse_json
from eqcompile.load.gguf import read_gguf
from eqcompile.load.safetensors_file import read_header
from eqcompile.load.sparse import write_sparse_checkpoint
from eqcompile.tokenizer import bytes_to_unicode, load_tokenizer

from test_gguf_metadata import KEYS_READ, base_metadata, base_tensors, gguf_bytes, values_of
from test_hostile_config import BERT, GPT2, LLAMA, MISTRAL, QWEN2, RAW_CONTROL
from test_hostile_tokenizer import bpe_spec

EXAMPLES = int(os.environ.get("EQCOMPILE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
MLP = {"model_type": "mlp", "activation": "relu"}
CONFIGS = {"gpt2": GPT2, "llama": LLAMA, "mistral": MISTRAL, "qwen2": QWEN2, "bert": BERT, "mlp": MLP}


# ----------------------------------------------------------------------------------- strategies

ESCAPES = ["\ud800", "x\udfff", "\x1b]0;OWNED\x07", "a\nb", "\x9b2J", "\0", "\\", '"', "$%{}\\input"]
HOSTILE_TEXT = st.one_of(st.text(st.characters(exclude_categories=()), max_size=12), st.sampled_from(ESCAPES))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**140, 2**140), st.floats(), HOSTILE_TEXT,
                    st.sampled_from([0, 1, -1, 2**31, 2**63, 2**64, 10**39, 10**40, 0.5, 1e-300, "", "gelu", "silu",
                                     "relu", "linear", "dynamic", "yarn", "BPE", "Split", "ByteLevel", "Sequence",
                                     "sliding_attention", "full_attention", "(a+)+$", "<s>", "a b"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(HOSTILE_TEXT, inner, max_size=3)),
                      max_leaves=5)
RAW = st.one_of(  # JSON text that no Python value prints as: what used to crash the readers
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.integers(1, 6000).map(lambda n: "-" + "1" * n),
    st.integers(1, 6000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 3000).map(lambda n: '{"a": ' * n + "0" + "}" * n),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0.0", "1E+2", '"\\ud800"',
                     '"x\\udfff"', '{"\\udc80": 1}', '["\\ud83d"]', '"\\u001b]0;OWNED\\u0007\\n"', '"\\u0000"',
                     "[1, 2", "{", '"unterminated', "tru", "01", "[,]", "", " ", "\ufeff{}"]),
)
HOSTILE = st.one_of(SCALARS.map(json.dumps), VALUES.map(json.dumps), VALUES.map(lambda v: json.dumps(v, ensure_ascii=False)),
                    RAW)


def _places(value, path=()):
    """Every place in a JSON value a hostile part can go; big objects (a vocabulary) by a few keys."""
    yield path
    if isinstance(value, dict):
        keys = list(value)
        for key in keys[:6] + keys[-2:] if len(keys) > 8 else keys:
            yield from _places(value[key], (*path, key))
    elif isinstance(value, list):
        for index in range(min(len(value), 4)):
            yield from _places(value[index], (*path, index))


@st.composite
def mutated(draw, base) -> str:
    """``base`` (a valid file's JSON) as text, with one to three parts replaced, removed or renamed."""
    value, raws = copy.deepcopy(base), {}
    for number in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_places(value))))
        if not path:
            return draw(HOSTILE)
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "replace", "remove", "rename", "wrap"]))
        if action == "remove":
            del parent[path[-1]]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(HOSTILE_TEXT)] = parent.pop(path[-1])
        elif action == "wrap":
            parent[path[-1]] = [parent[path[-1]]]
        else:
            mark = f"__HOSTILE_{number}__"
            raws[mark] = draw(HOSTILE)
            parent[path[-1]] = mark
    text = json.dumps(value)
    for mark, raw in raws.items():
        text = text.replace(json.dumps(mark), raw)
    return text


def typed_failure(work):
    """Run ``work()``: it returns, or raises an EqcompileError (exit 2); nothing else is allowed."""
    try:
        return work()
    except EqcompileError:
        return None


def fresh(root: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=root))


# ------------------------------------------------------------------------- JSON and config.json

@FUZZ
@given(text=HOSTILE)
def test_fuzz_the_json_reader(text):
    typed_failure(lambda: parse_json(text, "x.json"))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """One tiny header-only checkpoint per family (their configs are rewritten per example)."""
    root = tmp_path_factory.mktemp("models")
    found = {name: header_only(root / name, config) for name, config in CONFIGS.items() if name not in ("bert", "mlp")}
    from test_hostile_config import make_model

    found["bert"] = make_model(root / "bert", BERT)
    found["mlp"] = write_sparse_checkpoint(root / "mlp", [("0.weight", (4, 2)), ("0.bias", (4,)),
                                                          ("2.weight", (2, 4)), ("2.bias", (2,))], MLP)
    return found


def without_model_type_changes(text: str, family: str) -> str:
    """The tracer (torch.export, seconds) takes any model_type no family writes: keep the family's."""
    try:
        config = json.loads(text)
    except (ValueError, RecursionError):
        return text
    if isinstance(config, dict) and "model_type" in config:
        return text.replace(json.dumps(config["model_type"]), json.dumps(CONFIGS[family]["model_type"]), 1) \
            if isinstance(config["model_type"], str) else text
    return text


def compile_and_describe(folder: Path):
    """What every command does with a config before emitting: load, lower, size, the model card."""
    compiled = api.compile(folder)
    compiled.stats()
    used = [binding.source.name for binding in compiled.program.bindings()]
    model_card(compiled.checkpoint, compiled.program, used)
    return compiled


@pytest.fixture(scope="module")
def scratch(models, tmp_path_factory) -> dict[str, Path]:
    """Per family, a folder of links to its weights whose config.json each example rewrites."""
    folders = {}
    for family, model in models.items():
        folders[family] = tmp_path_factory.mktemp(f"fuzz-{family}")
        os.link(model / "model.safetensors", folders[family] / "model.safetensors")
    return folders


@pytest.mark.parametrize("family", CONFIGS)
@FUZZ
@given(data=st.data())
def test_fuzz_config_json(scratch, family, data):
    folder = scratch[family]
    text = without_model_type_changes(data.draw(mutated(CONFIGS[family]), label="config.json"), family)
    (folder / "config.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    typed_failure(lambda: compile_and_describe(folder))


# --------------------------------------------------------------------------- generation_config.json

GENERATION = {"bos_token_id": 0, "eos_token_id": 1, "do_sample": True, "temperature": 0.7, "top_k": 40,
              "top_p": 0.9, "max_new_tokens": 20, "transformers_version": "4.44.0"}


@pytest.fixture(scope="module")
def gpt2_compiled(models):
    return api.compile(models["gpt2"])


@FUZZ
@given(text=mutated(GENERATION))
def test_fuzz_generation_config(gpt2_compiled, tmp_path_factory, text):
    """The appendix (--pdf, --tex, --html) states the sampling generation_config.json asks for."""
    folder = tmp_path_factory.mktemp("gen")
    (folder / "generation_config.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    checkpoint = replace(gpt2_compiled.checkpoint, folder=folder)
    typed_failure(lambda: sampling(checkpoint, gpt2_compiled.program))


# ------------------------------------------------------------------- tokenizer.json, vocab + merges

def use_tokenizer(folder: Path, trust: bool):
    """What --python and --latex do with a folder's tokenizer: load, write tokenizer.py, state it, run it."""
    tokenizer = load_tokenizer(folder, trust)
    tokenizer_card(Checkpoint("m", [], {}, None, folder))  # the appendix's summary of tokenizer.json
    if tokenizer is None:
        return
    write_tokenizer(tokenizer, folder / "out")
    tokenizer_latex(tokenizer)
    for text in ["ab ab a b", "<s>x ab\n", "héllo 12 \x1b"]:
        tokenizer.decode(tokenizer.encode(text))


@FUZZ
@given(text=mutated(bpe_spec()), trust=st.booleans())
def test_fuzz_tokenizer_json(tmp_path_factory, text, trust):
    folder = tmp_path_factory.mktemp("tok")
    (folder / "tokenizer.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    typed_failure(lambda: use_tokenizer(folder, trust))


VOCAB = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())} | {"ab": 256, "Ġa": 257}
MERGES = st.one_of(
    st.lists(st.sampled_from(["a b", "Ġ a", "#version: 0.2", "", "a", "a b c", "ab b", "\x1b b", "a \ud800"]) |
             HOSTILE_TEXT, max_size=5).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
)


@FUZZ
@given(vocab=mutated(VOCAB), merges=MERGES)
def test_fuzz_vocab_json_and_merges_txt(tmp_path_factory, vocab, merges):
    folder = tmp_path_factory.mktemp("vm")
    (folder / "vocab.json").write_text(vocab, encoding="utf-8", errors="surrogatepass")
    (folder / "merges.txt").write_bytes(merges)
    typed_failure(lambda: use_tokenizer(folder, False))


# -------------------------------------------------------------------------------- the shard index

@FUZZ
@given(text=st.deferred(lambda: mutated(INDEX)))
def test_fuzz_shard_index(models, tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("index")
    os.link(models["gpt2"] / "model.safetensors", folder / "model-00001-of-00001.safetensors")
    os.link(models["gpt2"] / "config.json", folder / "config.json")
    (folder / "model.safetensors.index.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    typed_failure(lambda: api.compile(folder).stats())


INDEX = {"metadata": {"total_size": 1000}, "weight_map": {
    name: "model-00001-of-00001.safetensors" for name in ["wte.weight", "wpe.weight", "h.0.ln_1.weight",
                                                          "h.0.attn.c_attn.weight", "ln_f.bias"]}}


# -------------------------------------------------------------------------- the safetensors header

SAFETENSORS = {"__metadata__": {"format": "pt"},
               "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
               "b": {"dtype": "BF16", "shape": [4], "data_offsets": [16, 24]}}


@FUZZ
@given(text=mutated(SAFETENSORS), data=st.binary(max_size=48))
def test_fuzz_safetensors_header(tmp_path_factory, text, data):
    path = tmp_path_factory.mktemp("st") / "m.safetensors"
    body = text.encode("utf-8", "surrogatepass")
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)

    def read_all():
        tensors, _ = read_header(path)
        for tensor in tensors.values():
            tensor.read()

    typed_failure(read_all)


# ----------------------------------------------------------------------------------- GGUF metadata

ALL_TYPES = st.integers(0, 12).flatmap(lambda kind: values_of(kind).map(lambda value: (kind, value)))


def use_gguf(path: Path):
    """What the commands do with a GGUF file before emitting: load, convert, lower, its tokenizer."""
    compiled = api.compile(path)
    compiled.stats()
    tokenizer = compiled.tokenizer
    if tokenizer is not None:
        tokenizer.decode(tokenizer.encode("ab a<s>"))


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(KEYS_READ), ALL_TYPES, min_size=1, max_size=3),
       removed=st.sets(st.sampled_from(KEYS_READ), max_size=2))
def test_fuzz_gguf_metadata_of_every_type(tmp_path_factory, changes, removed):
    metadata = {key: value for key, value in {**base_metadata(), **changes}.items() if key not in removed}
    path = tmp_path_factory.mktemp("gguf") / "model.gguf"
    path.write_bytes(gguf_bytes(metadata, base_tensors()))
    typed_failure(lambda: use_gguf(path))


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 2000), st.binary(min_size=1, max_size=9),
                                st.sampled_from(["overwrite", "insert", "cut"])), min_size=1, max_size=3))
def test_fuzz_gguf_bytes(tmp_path_factory, edits):
    """The header's counts, lengths, types and offsets overwritten, shifted or cut at random places."""
    raw = bytearray(gguf_bytes(base_metadata(), base_tensors()))
    for at, chunk, how in edits:
        at %= len(raw)
        if how == "overwrite":
            raw[at:at + len(chunk)] = chunk
        elif how == "insert":
            raw[at:at] = chunk
        else:
            del raw[at:at + len(chunk)]
    path = tmp_path_factory.mktemp("ggufb") / "model.gguf"
    path.write_bytes(bytes(raw))

    def read_all():
        for tensor in read_gguf("m", path).tensors.values():
            tensor.read()
        use_gguf(path)

    typed_failure(read_all)


# ------------------------------------------------------------ the CLI end to end on special files

def special(path: Path, kind: str) -> None:
    """Make ``path`` a FIFO, a symbolic link to /dev/zero, or a folder."""
    if path.exists() or path.is_symlink():
        path.unlink()
    {"fifo": os.mkfifo, "zero": lambda p: p.symlink_to("/dev/zero"), "folder": Path.mkdir}[kind](path)


def gguf_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.gguf").write_bytes(gguf_bytes(base_metadata(), base_tensors()))
    return folder / "model.gguf"


def index_model(folder: Path) -> Path:
    header_only(folder, GPT2)
    (folder / "model.safetensors").rename(folder / "shard.safetensors")
    names = [name for name, _ in read_header(folder / "shard.safetensors")[0].items()]
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(names, "shard.safetensors")}))
    return folder


def tokenizer_model(folder: Path, files: dict) -> Path:
    header_only(folder, GPT2)
    for name, content in files.items():
        (folder / name).write_text(content)
    return folder


SPECIAL_CASES = {  # file kind -> (make the model, the file made special, what the model is called)
    "config.json": (lambda f: header_only(f, GPT2), "config.json"),
    "generation_config.json": (lambda f: tokenizer_model(f, {"generation_config.json": "{}"}),
                               "generation_config.json"),
    "tokenizer.json": (lambda f: tokenizer_model(f, {"tokenizer.json": json.dumps(bpe_spec())}), "tokenizer.json"),
    "vocab.json": (lambda f: tokenizer_model(f, {"vocab.json": json.dumps(VOCAB), "merges.txt": "a b\n"}),
                   "vocab.json"),
    "merges.txt": (lambda f: tokenizer_model(f, {"vocab.json": json.dumps(VOCAB), "merges.txt": "a b\n"}),
                   "merges.txt"),
    "shard index": (index_model, "model.safetensors.index.json"),
    "a shard": (index_model, "shard.safetensors"),
    "model.safetensors": (lambda f: header_only(f, GPT2), "model.safetensors"),
    "model.gguf": (lambda f: gguf_model(f).parent, "model.gguf"),
}
COMMANDS = {  # the command that reads each kind of file, and verify
    "generation_config.json": ["--html", "{out}/m.html"], "tokenizer.json": ["--python", "{out}/py"],
    "vocab.json": ["--python", "{out}/py"], "merges.txt": ["--latex"],
}

VERIFY_READS = ("config.json", "shard index", "a shard", "model.safetensors", "model.gguf")


@pytest.mark.parametrize("kind", ["fifo", "zero", "folder"])
@pytest.mark.parametrize("case", SPECIAL_CASES)
def test_special_files_through_the_cli(tmp_path, case, kind):
    """A FIFO (reading it would wait for ever), /dev/zero (never ends), a folder: one line, exit 2."""
    make, name = SPECIAL_CASES[case]
    folder = make(tmp_path / "m")
    special(folder / name, kind)
    target = folder / "model.gguf" if case == "model.gguf" and kind != "folder" else folder
    for command in [COMMANDS.get(case, ["--latex"]), *([["verify", "--seq", "1"]] if case in VERIFY_READS else [])]:
        args = [a.format(out=tmp_path) for a in command]
        args = [*args[:1], str(target), *args[1:]] if args[0] == "verify" else [str(target), *args]
        started = time.perf_counter()
        result = CliRunner().invoke(main, args)
        assert time.perf_counter() - started < 10
        assert result.exit_code == 2, (args, result.output)
        err = result.stderr
        assert err.startswith("eqcompile: error:") and err.count("\n") == 1 and not RAW_CONTROL.search(err), err
        assert "not a regular file" in err or "no .safetensors file" in err or "missing file" in err, err
        assert not list(tmp_path.glob("py/*")) and not (tmp_path / "m.html").exists()


def test_every_base_file_is_valid(models, gpt2_compiled, tmp_path):
    """Each fuzz test starts from a file its reader accepts, so a refusal is the mutation's doing."""
    for family in CONFIGS:
        assert compile_and_describe(models[family]).program.family == family
    (tmp_path / "generation_config.json").write_text(json.dumps(GENERATION))
    assert sampling(replace(gpt2_compiled.checkpoint, folder=tmp_path), gpt2_compiled.program)[0]
    (tmp_path / "tokenizer.json").write_text(json.dumps(bpe_spec()))
    use_tokenizer(tmp_path, False)
    assert (tmp_path / "out" / "tokenizer.py").exists()
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "vocab.json").write_text(json.dumps(VOCAB))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\nĠ a\n")
    assert load_tokenizer(tmp_path).encode("ab a") == [256, 257]
    index = index_model(tmp_path / "index")
    (index / "model.safetensors.index.json").write_text(json.dumps(INDEX).replace("model-00001-of-00001",
                                                                                   "shard"))
    assert api.compile(index).program.family == "gpt2"
    path = tmp_path / "m.safetensors"
    body = json.dumps(SAFETENSORS).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + bytes(24))
    assert sorted(read_header(path)[0]) == ["a", "b"]
    use_gguf(gguf_model(tmp_path / "gguf"))
