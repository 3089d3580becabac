"""Hostile GGUF metadata and tensor tables (issue 20): every key typed, every count bounded, no overlap.

The files are written byte by byte here (not with the gguf package's writer, which refuses most of
these defects), from a tiny valid Llama: each test changes one key or one table entry.
"""

from __future__ import annotations

import os
import re
import struct
import time

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eqcompile
from eqcompile.cli import main
from eqcompile.errors import EqcompileError

# EQCOMPILE_FUZZ_EXAMPLES=20000 python -m pytest tests/test_gguf_metadata.py -k fuzz  runs a longer search
FUZZ = settings(max_examples=int(os.environ.get("EQCOMPILE_FUZZ_EXAMPLES", "60")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALARS = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q",
           I64: "<q", F64: "<d"}
D, FF, VOCAB = 8, 16, 8
TOKENS = ["a", "b", "c", "d", "ab", "<s>", "</s>", "x"]


def base_metadata() -> dict[str, tuple[int, object]]:
    """key -> (GGUF type, value); an array value is (item type, items)."""
    llama = {"block_count": 1, "context_length": 16, "embedding_length": D, "feed_forward_length": FF,
             "attention.head_count": 2, "attention.head_count_kv": 2}
    return {
        "general.architecture": (STRING, "llama"), "general.alignment": (U32, 32),
        **{f"llama.{key}": (U32, value) for key, value in llama.items()},
        "llama.attention.layer_norm_rms_epsilon": (F32, 1e-5), "llama.rope.freq_base": (F32, 10000.0),
        "tokenizer.ggml.model": (STRING, "gpt2"), "tokenizer.ggml.pre": (STRING, "gpt2"),
        "tokenizer.ggml.tokens": (ARRAY, (STRING, TOKENS)), "tokenizer.ggml.merges": (ARRAY, (STRING, ["a b"])),
        "tokenizer.ggml.token_type": (ARRAY, (I32, [1, 1, 1, 1, 1, 3, 3, 1])),
        "tokenizer.ggml.bos_token_id": (U32, 5), "tokenizer.ggml.eos_token_id": (U32, 6),
        "tokenizer.ggml.add_bos_token": (BOOL, False),
    }


def base_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (VOCAB, D), "output_norm.weight": (D,), "blk.0.attn_norm.weight": (D,),
              "blk.0.attn_q.weight": (D, D), "blk.0.attn_k.weight": (D, D), "blk.0.attn_v.weight": (D, D),
              "blk.0.attn_output.weight": (D, D), "blk.0.ffn_norm.weight": (D,), "blk.0.ffn_gate.weight": (FF, D),
              "blk.0.ffn_up.weight": (FF, D), "blk.0.ffn_down.weight": (D, FF)}
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def encode(kind: int, value) -> bytes:
    if kind in SCALARS:
        return struct.pack(SCALARS[kind], value)
    if kind == STRING:
        raw = value.encode("utf-8") if isinstance(value, str) else value
        return struct.pack("<Q", len(raw)) + raw
    if isinstance(value, bytes):  # an array written out already
        return value
    item, items = value
    return struct.pack("<IQ", item, len(items)) + b"".join(encode(item, v) for v in items)


def gguf_bytes(metadata: dict, tensors, offsets: dict[str, int] | None = None) -> bytes:
    """A version-3 GGUF file: F32 tensors (a dict, or (name, array) pairs to repeat a name) at 32-byte
    aligned offsets, or at the ``offsets`` given."""
    tensors = list(tensors.items() if isinstance(tensors, dict) else tensors)
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    header += b"".join(encode(STRING, key) + struct.pack("<I", kind) + encode(kind, value)
                       for key, (kind, value) in metadata.items())
    data, table = b"", b""
    for name, array in tensors:
        data += b"\0" * (-len(data) % 32)
        offset = offsets.get(name, len(data)) if offsets else len(data)
        dims = tuple(reversed(array.shape))
        table += encode(STRING, name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, 0, offset)
        data += array.tobytes()
    head = header + table
    return head + b"\0" * (-len(head) % 32) + data


def write(tmp_path, metadata=None, tensors=None, **options):
    path = tmp_path / "model.gguf"
    path.write_bytes(gguf_bytes(metadata or base_metadata(), tensors or base_tensors(), **options))
    return path


def run_cli(*args):
    started = time.perf_counter()
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result, time.perf_counter() - started


def assert_one_line_refusal(result, seconds, *words):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.stderr.count("\n") == 1 and result.stdout == "", result.stderr
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", result.stderr), result.stderr
    assert all(word in result.stderr for word in words), result.stderr
    assert seconds < 10


def test_the_handwritten_file_compiles(tmp_path):
    """The base file is valid, so each test below fails for its one defect."""
    result, _ = run_cli(write(tmp_path), "--latex")
    assert result.exit_code == 0, result.output
    compiled = eqcompile.compile(tmp_path / "model.gguf")
    assert compiled.program.layers == 1 and compiled.tokenizer is not None


WRONG_TYPES = {  # key -> (its GGUF type, value), and the type the key needs
    "llama.embedding_length": ((STRING, "8"), "integer"),
    "llama.attention.head_count": ((STRING, "2"), "integer"),
    "llama.feed_forward_length": ((ARRAY, (U32, [16])), "integer"),
    "llama.attention.layer_norm_rms_epsilon": ((STRING, "1e-5"), "number"),
    "tokenizer.ggml.pre": ((ARRAY, (STRING, ["gpt2"])), "string"),
    "tokenizer.ggml.merges": ((ARRAY, (U32, [1, 2])), "array of string"),
    "tokenizer.ggml.tokens": ((STRING, "abcd"), "array of string"),
    "tokenizer.ggml.bos_token_id": ((STRING, "<s>"), "integer"),
    "general.alignment": ((F32, 32.0), "integer"),
}


@pytest.mark.parametrize("key", WRONG_TYPES)
def test_a_value_of_the_wrong_type_is_named_with_its_expected_type(tmp_path, key):
    stored, expected = WRONG_TYPES[key]
    metadata = {**base_metadata(), key: stored}
    result, seconds = run_cli(write(tmp_path, metadata), "--latex")
    assert_one_line_refusal(result, seconds, key, f"expected {expected}")


def test_embedding_length_as_an_array_names_the_key(tmp_path):
    metadata = {**base_metadata(), "llama.embedding_length": (ARRAY, (U32, [8, 8]))}
    result, seconds = run_cli(write(tmp_path, metadata), "--latex")
    assert_one_line_refusal(result, seconds, "llama.embedding_length", "an array of UINT32", "expected integer")


def test_a_string_bos_token_does_not_crash_verify(tmp_path):
    metadata = {**base_metadata(), "tokenizer.ggml.bos_token_id": (STRING, "<s>")}
    result, seconds = run_cli("verify", write(tmp_path, metadata))
    assert_one_line_refusal(result, seconds, "tokenizer.ggml.bos_token_id", "expected integer")


def test_verify_passes_on_the_handwritten_file(tmp_path):
    pytest.importorskip("torch")  # verify runs the reference implementation
    pytest.importorskip("transformers")
    result, _ = run_cli("verify", write(tmp_path))
    assert result.exit_code == 0, result.output


def test_a_300kb_general_name_is_named_before_tex_runs(tmp_path):
    """pdflatex failed on it ("Unable to read an entire line"), reported as exit 1."""
    metadata = {**base_metadata(), "general.name": (STRING, "n" * 300_000)}
    result, seconds = run_cli(write(tmp_path, metadata), "--tex", tmp_path / "a.tex")
    assert_one_line_refusal(result, seconds, "metadata general.name:", "more than TeX reads on one line")
    assert not (tmp_path / "a.tex").exists()


def deep_array(depth: int) -> tuple[int, bytes]:
    """An array of arrays ``depth`` levels deep, innermost holding one UINT8 (bytes: no recursion)."""
    return ARRAY, struct.pack("<IQ", ARRAY, 1) * (depth - 1) + struct.pack("<IQB", U8, 1, 1)


def test_arrays_nested_thousands_deep_are_refused(tmp_path):
    """3,000 levels in a 36 KB file overflowed the stack."""
    metadata = {**base_metadata(), "general.deep": deep_array(3000)}
    path = write(tmp_path, metadata)
    assert path.stat().st_size < 64_000
    result, seconds = run_cli(path, "--latex")
    assert_one_line_refusal(result, seconds, "general.deep", "nests arrays deeper than")


def test_shallow_nested_arrays_are_read(tmp_path):
    metadata = {**base_metadata(), "general.nested": deep_array(3)}
    assert run_cli(write(tmp_path, metadata), "--latex")[0].exit_code == 0


@pytest.mark.parametrize("count_offset, what", [(0, "strings"), (1, "arrays"), (2, "UINT64s")])
def test_array_counts_beyond_the_file_are_refused_before_allocating(tmp_path, count_offset, what):
    """An array claims 2^40 items in a file of a few KB: refused at once, nothing allocated."""
    item = (STRING, ARRAY, U64)[count_offset]
    raw = gguf_bytes({**base_metadata(), "general.big": (ARRAY, (item, []))}, base_tensors())
    marker = encode(STRING, "general.big") + struct.pack("<II", ARRAY, item)
    at = raw.index(marker) + len(marker)
    path = tmp_path / "big.gguf"
    path.write_bytes(raw[:at] + struct.pack("<Q", 1 << 40) + raw[at + 8:])
    result, seconds = run_cli(path, "--latex")
    assert_one_line_refusal(result, seconds, "truncated")


def test_a_string_longer_than_the_file_is_refused(tmp_path):
    raw = gguf_bytes({**base_metadata(), "general.name": (STRING, "tiny")}, base_tensors())
    at = raw.index(encode(STRING, "tiny"))
    path = tmp_path / "long.gguf"
    path.write_bytes(raw[:at] + struct.pack("<Q", 1 << 62) + raw[at + 8:])
    result, seconds = run_cli(path, "--latex")
    assert_one_line_refusal(result, seconds, "truncated")


def test_a_metadata_count_beyond_the_file_is_refused(tmp_path):
    raw = gguf_bytes(base_metadata(), base_tensors())
    path = tmp_path / "count.gguf"
    path.write_bytes(raw[:16] + struct.pack("<Q", 1 << 50) + raw[24:])
    result, seconds = run_cli(path, "--latex")
    assert_one_line_refusal(result, seconds, "truncated")


def test_duplicate_tensors_are_refused(tmp_path):
    tensors = [*base_tensors().items(), ("blk.0.attn_norm.weight", np.ones(D, dtype=np.float32))]
    result, seconds = run_cli(write(tmp_path, tensors=tensors), "--latex")
    assert_one_line_refusal(result, seconds, "'blk.0.attn_norm.weight' appears twice")


def test_overlapping_tensors_are_refused(tmp_path):
    """Two tensors sharing bytes, as the safetensors format forbids; each alone is in bounds."""
    path = write(tmp_path, offsets={"blk.0.attn_k.weight": 0})
    result, seconds = run_cli(path, "--latex")
    assert_one_line_refusal(result, seconds, "overlap", "blk.0.attn_k.weight")


# ------------------------------------------------------------------------------------------- fuzz

KEYS_READ = [*base_metadata(), "llama.attention.key_length", "llama.attention.value_length", "llama.vocab_size",
             "llama.rope.dimension_count", "llama.rope.scaling.type", "llama.rope.scaling.factor",
             "llama.rope.scaling.original_context_length", "tokenizer.ggml.scores", "tokenizer.ggml.unknown_token_id",
             "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_eos_token", "tokenizer.chat_template"]
LIMITS = {U8: (0, 255), I8: (-128, 127), U16: (0, 2**16 - 1), I16: (-2**15, 2**15 - 1), U32: (0, 2**32 - 1),
          I32: (-2**31, 2**31 - 1), U64: (0, 2**64 - 1), I64: (-2**63, 2**63 - 1)}


def values_of(kind: int, depth: int = 0) -> st.SearchStrategy:
    """A value of GGUF type ``kind``: small numbers (the likely ones) as well as the extremes."""
    if kind in LIMITS:
        low, high = LIMITS[kind]
        return st.one_of(st.integers(max(low, -3), min(high, 64)), st.sampled_from([low, high]))
    if kind in (F32, F64):
        return st.floats(width=32 if kind == F32 else 64)
    if kind == BOOL:
        return st.booleans()
    if kind == STRING:
        return st.one_of(st.sampled_from(["", "gpt2", "llama", "none", "linear", "yarn", "a b", "<s>"]),
                         st.text(max_size=20))
    items = st.sampled_from([k for k in range(13) if depth < 2 or k != ARRAY])
    return items.flatmap(lambda item: st.lists(values_of(item, depth + 1), max_size=4).map(lambda v: (item, v)))


def typed_values() -> st.SearchStrategy:
    return st.integers(0, 12).flatmap(lambda kind: values_of(kind).map(lambda value: (kind, value)))


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(KEYS_READ), typed_values(), min_size=1, max_size=3))
def test_fuzz_metadata_of_every_type_for_every_key(tmp_path_factory, changes):
    """Any type for any key the reader uses: it compiles, or an EqcompileError in one line."""
    path = tmp_path_factory.mktemp("fuzz") / "model.gguf"
    path.write_bytes(gguf_bytes({**base_metadata(), **changes}, base_tensors()))
    try:
        compiled = eqcompile.compile(path)
        compiled.latex()
        compiled.tokenizer  # noqa: B018 (built lazily: its failures are a warning, never a crash)
    except EqcompileError as e:
        assert "\n" not in str(e)
