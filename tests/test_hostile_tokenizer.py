"""Hostile tokenizer files (issue 20): each defect is one line and exit 2, never an internal error,
a huge allocation or a regex that backtracks for ever; stale tokenizer outputs do not survive."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eqcompile
from eqcompile.cli import main
from eqcompile.emit.python import import_module
from eqcompile.errors import EqcompileError
from eqcompile.tokenizer import LLAMA3_PATTERN, QWEN2_PATTERN, bytes_to_unicode, from_gguf

from conftest import SAMPLE

# EQCOMPILE_FUZZ_EXAMPLES=20000 python -m pytest tests/test_hostile_tokenizer.py -k fuzz  searches longer
FUZZ = settings(max_examples=int(os.environ.get("EQCOMPILE_FUZZ_EXAMPLES", "25")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SECONDS = 10  # the bound on any one run


def bpe_spec() -> dict:
    """A small valid byte-level BPE tokenizer.json: a Llama-3 Split, ByteLevel, a BOS template."""
    vocab = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())} | {"ab": 256, "Ġa": 257}
    return {
        "version": "1.0", "truncation": None, "padding": None, "normalizer": None,
        "added_tokens": [{"id": 258, "content": "<s>", "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True}],
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [258], "tokens": ["<s>"]}}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [["a", "b"], ["Ġ", "a"]]},
    }


def checkpoint(folder: Path, files: dict[str, str | bytes]) -> Path:
    """The sample's weights and config, with the given tokenizer files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ["model.safetensors", "config.json"]:
        shutil.copy(SAMPLE / name, folder / name)
    for name, content in files.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return folder


def run(folder: Path, *options: str):
    start = time.perf_counter()
    result = CliRunner().invoke(main, [str(folder), *options])
    assert time.perf_counter() - start < SECONDS, options
    return result


def assert_refused(folder: Path, out: Path, names: str):
    """Both --python and --latex: exit 2, one line naming ``names``, no control character, no output."""
    for options, written in [(["--python", str(out / "py")], out / "py" / "model.py"),
                             (["--latex", "-o", str(out / "m.tex")], out / "m.tex")]:
        result = run(folder, *options)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("eqcompile: error:") and result.output.count("\n") == 1, result.output
        assert names in result.output and "\x1b" not in result.output, result.output
        assert not written.exists()


def mutated(change) -> str:
    spec = bpe_spec()
    change(spec)
    return json.dumps(spec)


FINDINGS = {  # issue 20's tokenizer findings: (tokenizer.json, the key the error must name)
    "model as a string": (lambda s: s.update(model="BPE"), "model is a string, expected an object"),
    "pre_tokenizer as a string": (lambda s: s.update(pre_tokenizer="ByteLevel"), "pre_tokenizer is a string"),
    "normalizer as a string": (lambda s: s.update(normalizer="NFC"), "normalizer is a string"),
    "added token without id": (lambda s: s["added_tokens"][0].pop("id"), "added_tokens[0].id is null"),
    "Split without pattern": (lambda s: s["pre_tokenizer"]["pretokenizers"][0].pop("pattern"),
                              "pattern is null, expected {\"Regex\""),
    "post-processor names a missing special token": (lambda s: s["post_processor"]["special_tokens"].clear(),
                                                     "names the special token '<s>'"),
    "vocab id as a string": (lambda s: s["model"]["vocab"].update(ab="256"), "model.vocab['ab'] is a string"),
    "an id far beyond the vocabulary": (lambda s: s["model"]["vocab"].update(far=200_000_000),
                                        "model.vocab['far'] is 200000000, expected a token id from 0 to 259"),
    "an id of 10^12": (lambda s: s["model"]["vocab"].update(far=10**12), "model.vocab['far'] is 1000000000000"),
    "a post-processor id beyond the vocabulary": (
        lambda s: s["post_processor"]["special_tokens"]["<s>"].update(ids=[10**9]), "ids[0] is 1000000000"),
    "merge symbols outside the byte alphabet": (
        lambda s: (s["model"]["vocab"].update({"a\n": 259, "a\nb": 260}), s["model"]["merges"].append(["a\n", "b"])),
        "holds '\\n', expected only byte-level BPE's 256 byte symbols"),
    "an ESC and newline in model.type": (lambda s: s["model"].update(type="X\x1b]0;OWNED\x07\nY"),
                                         "tokenizer model 'X\\x1b]0;OWNED\\x07\\nY'"),
}


@pytest.mark.parametrize("name", FINDINGS)
def test_tokenizer_json_findings_are_one_line(tmp_path, name):
    change, names = FINDINGS[name]
    folder = checkpoint(tmp_path / "ckpt", {"tokenizer.json": mutated(change)})
    if name == "an ESC and newline in model.type":  # unsupported, not malformed: to_python warns and goes on
        with pytest.warns(UserWarning) as caught:
            eqcompile.compile(folder).to_python(tmp_path / "py")
        message = str(caught[0].message)
        assert names in message and "\x1b" not in message and "\n" not in message, message
        return
    assert_refused(folder, tmp_path / "out", names)


def test_the_valid_spec_matches_tokenizers(tmp_path):
    """The base of the mutations is a tokenizer tokenizers reads, and ours agrees with it."""
    tokenizers = pytest.importorskip("tokenizers")
    folder = checkpoint(tmp_path / "ckpt", {"tokenizer.json": json.dumps(bpe_spec())})
    reference = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    module = import_module(eqcompile.compile(folder).to_python(tmp_path / "py"), "hostile_base")
    for text in ["ab ab a b", "<s>x ab", "12345 héllo\n\n  x"]:
        assert module.encode(text) == reference.encode(text).ids


def test_a_lone_surrogate_in_a_token(tmp_path):
    raw = mutated(lambda s: s["model"]["vocab"].update(far=259)).replace('"far"', '"f\\udcffar"')
    assert_refused(checkpoint(tmp_path / "ckpt", {"tokenizer.json": raw}), tmp_path / "out", "lone surrogate")


def test_vocab_json_as_a_list(tmp_path):
    folder = checkpoint(tmp_path / "ckpt", {"vocab.json": '["a", "b"]', "merges.txt": "#version: 0.2\n"})
    assert_refused(folder, tmp_path / "out", "vocab.json is a list, expected an object of token -> id")


@pytest.mark.parametrize("file, text, names", [  # each was a RecursionError or ValueError: exit 1
    ("tokenizer.json", '{"model": ' + "[" * 5000 + "]" * 5000 + "}", "tokenizer.json: JSON nested 5001 levels deep"),
    ("tokenizer.json", '{"model": {"type": "BPE", "vocab": {"a": 1' + "0" * 5000 + "}}}",
     "tokenizer.json: model.vocab.a is an integer of 5001 digits"),
    ("vocab.json", "[" * 5000 + "]" * 5000, "vocab.json: JSON nested 5000 levels deep"),
    ("vocab.json", '{"a": 0, "b": 1' + "0" * 5000 + "}", "vocab.json: b is an integer of 5001 digits"),
])
def test_deep_nesting_and_huge_integers_in_tokenizer_files(tmp_path, file, text, names):
    files = {file: text} if file == "tokenizer.json" else {file: text, "merges.txt": "a b\n"}
    assert_refused(checkpoint(tmp_path / "ckpt", files), tmp_path / "out", names)


def test_a_far_vocabulary_id_is_refused_within_bounds(tmp_path):
    """One entry {"far": 200000000} in a 10 KB file: 24 s, 6.4 GB and a 1 GB tokenizer_data.json before."""
    from test_hostile_config import assert_refused_within_bounds

    folder = checkpoint(tmp_path / "ckpt", {"tokenizer.json": mutated(lambda s: s["model"]["vocab"].update(
        far=200_000_000))})
    assert_refused_within_bounds(folder, "--python", tmp_path / "py", mentions="model.vocab['far'] is 200000000")
    assert not (tmp_path / "py").exists()


def test_merges_txt_not_utf8(tmp_path):
    folder = checkpoint(tmp_path / "ckpt", {"vocab.json": '{"a": 0, "b": 1, "ab": 2}',
                                            "merges.txt": b"a b\n\xff\xfe\n"})
    assert_refused(folder, tmp_path / "out", "merges.txt: not UTF-8 text")


def test_a_fifo_named_tokenizer_json_is_refused_not_read(tmp_path):
    folder = checkpoint(tmp_path / "ckpt", {})
    os.mkfifo(folder / "tokenizer.json")
    assert_refused(folder, tmp_path / "out", "tokenizer.json: not a regular file")


# --- the pattern gate -------------------------------------------------------------------------------

def with_split(pattern: str) -> str:
    return mutated(lambda s: s["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=pattern))


def test_an_unknown_regex_is_refused_without_the_flag(tmp_path):
    """(a+)+$ backtracks exponentially: 0.86 s on 'a' * 24 + '!' before, doubling per character."""
    folder = checkpoint(tmp_path / "ckpt", {"tokenizer.json": with_split("(a+)+$")})
    assert_refused(folder, tmp_path / "out", "--trust-tokenizer-pattern")
    with pytest.raises(EqcompileError, match="none of the known pre-tokenizer patterns"):
        eqcompile.compile(folder).to_python(tmp_path / "api")
    assert not (tmp_path / "api").exists()


def test_an_unknown_regex_runs_when_trusted(tmp_path):
    folder = checkpoint(tmp_path / "ckpt", {"tokenizer.json": with_split(" ?[a-z]+")})
    result = run(folder, "--python", str(tmp_path / "py"), "--trust-tokenizer-pattern")
    assert result.exit_code == 0, result.output
    assert import_module(tmp_path / "py" / "model.py", "trusted_split").encode("ab cd")[0] == 258
    assert eqcompile.compile(folder, trust_tokenizer_pattern=True).tokenizer is not None


@pytest.mark.parametrize("pattern", [LLAMA3_PATTERN, QWEN2_PATTERN])
def test_known_family_patterns_pass_the_gate(tmp_path, pattern):
    folder = checkpoint(tmp_path / "ckpt", {"tokenizer.json": with_split(pattern)})
    assert run(folder, "--python", str(tmp_path / "py")).exit_code == 0
    data = json.loads((tmp_path / "py" / "tokenizer_data.json").read_text(encoding="utf-8"))
    assert [step["split"] for step in data["pre_tokenizer"] if "split" in step] == [pattern]


# --- stale outputs ------------------------------------------------------------------------------------

def test_a_model_without_tokenizer_removes_the_earlier_runs_tokenizer(tmp_path):
    out = tmp_path / "py"
    assert run(SAMPLE, "--python", str(out)).exit_code == 0
    assert (out / "tokenizer_data.json").exists() and (out / "tokenizer.py").exists()
    (out / "notes.txt").write_text("mine")
    assert run(checkpoint(tmp_path / "bare", {}), "--python", str(out)).exit_code == 0
    assert not (out / "tokenizer_data.json").exists() and not (out / "tokenizer.py").exists()
    assert (out / "notes.txt").read_text() == "mine"  # only eqcompile's own outputs are replaced
    assert not hasattr(import_module(out / "model.py", "stale_removed"), "encode")


# --- fuzz ---------------------------------------------------------------------------------------------

HOSTILE = st.one_of(  # raw JSON text
    st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                 | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8).map(json.dumps),
    st.integers(1, 6000).map(lambda n: "9" * n),  # over 4,300 digits: Python's int() refuses
    st.integers(60, 5000).map(lambda n: "[" * n + "]" * n),  # deep nesting
    st.sampled_from(['"\\ud800"', '"a\\udfffb"', '{"\\udc80": 1}', '"\\u001b]0;x\\u0007\\n"', '"(a+)+$"', '""',
                     '-1', '1e999', '"BPE"', '"Sequence"', '"Split"', '"ByteLevel"', '"TemplateProcessing"']),
)
MARK = "__HOSTILE__"
# where a hostile value goes: a path of keys and indexes into the valid spec
PATHS = [(), ("model",), ("model", "type"), ("model", "vocab"), ("model", "vocab", "ab"), ("model", "merges"),
         ("model", "merges", 0), ("model", "merges", 0, 1), ("model", "unk_token"), ("model", "ignore_merges"),
         ("normalizer",), ("decoder",), ("decoder", "type"), ("pre_tokenizer",), ("pre_tokenizer", "type"),
         ("pre_tokenizer", "pretokenizers"), ("pre_tokenizer", "pretokenizers", 0),
         ("pre_tokenizer", "pretokenizers", 0, "pattern"), ("pre_tokenizer", "pretokenizers", 0, "pattern", "Regex"),
         ("pre_tokenizer", "pretokenizers", 1, "add_prefix_space"), ("post_processor",), ("post_processor", "single"),
         ("post_processor", "single", 0), ("post_processor", "single", 0, "SpecialToken", "id"),
         ("post_processor", "special_tokens"), ("post_processor", "special_tokens", "<s>", "ids"),
         ("post_processor", "special_tokens", "<s>", "ids", 0), ("added_tokens",), ("added_tokens", 0),
         ("added_tokens", 0, "id"), ("added_tokens", 0, "content"), ("added_tokens", 0, "special")]


def with_hostile(path: tuple, raw: str) -> str:
    spec = bpe_spec()
    if not path:
        return raw
    target = spec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = MARK
    return json.dumps(spec).replace(json.dumps(MARK), raw)


def assert_clean(folder: Path, out: Path):
    """Both --python and --latex: exit 0, or exit 2 with one line; never 1 (an internal error)."""
    for options in (["--python", str(out / "py")], ["--latex", "-o", str(out / "m.tex")]):
        result = run(folder, *options)
        assert result.exit_code in (0, 2), result.output
        assert "\x1b" not in result.output
        if result.exit_code == 2:
            assert result.output.startswith("eqcompile: error:") and result.output.count("\n") == 1, result.output


@FUZZ
@given(st.sampled_from(PATHS), HOSTILE)
def test_fuzz_tokenizer_json(tmp_path, path, raw):
    folder = checkpoint(Path(tempfile.mkdtemp(dir=tmp_path)), {"tokenizer.json": with_hostile(path, raw)})
    assert_clean(folder, folder / "out")


@FUZZ
@given(HOSTILE, st.one_of(st.binary(max_size=40), st.lists(st.text(max_size=6), max_size=4).map(
    lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass"))))
def test_fuzz_vocab_json_and_merges_txt(tmp_path, vocab, merges):
    folder = checkpoint(Path(tempfile.mkdtemp(dir=tmp_path)), {"vocab.json": vocab, "merges.txt": merges})
    assert_clean(folder, folder / "out")


GGUF_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=4),
                           lambda inner: st.lists(inner, max_size=3), max_leaves=6)


@FUZZ
@given(st.fixed_dictionaries({"tokens": st.one_of(GGUF_VALUES, st.just(["a", "b", "ab"])),
                              "merges": st.one_of(GGUF_VALUES, st.just(["a b"])),
                              "pre": st.one_of(GGUF_VALUES, st.just("gpt2")),
                              "token_types": st.one_of(GGUF_VALUES, st.just([1, 1, 3])),
                              "bos_id": GGUF_VALUES, "add_bos": GGUF_VALUES}))
def test_fuzz_gguf_tokenizer_fields(fields):
    """GGUF metadata of any kind in each tokenizer.ggml field: a tokenizer or an EqcompileError."""
    try:
        from_gguf(**fields)
    except EqcompileError as e:
        assert "\n" not in str(e)
