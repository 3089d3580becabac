"""GGUF files (llama.cpp's format) as a Checkpoint the Llama lowering reads unchanged.

The ``llama.*`` metadata becomes a Hugging Face style Llama config, the tensor names become Hugging
Face names (``blk.0.attn_q.weight`` -> ``model.layers.0.self_attn.q_proj.weight``), and each tensor
is dequantized to float32 only when a numeric stage reads it, by the ``gguf`` package (llama.cpp's
own Python reference). llama.cpp stores W_Q and W_K with each head's rows interleaved for its RoPE
layout; reading undoes that, so the numbers are laid out as in the original checkpoint.

The header (metadata and tensor table) is parsed here rather than with ``gguf.GGUFReader``, which
makes a numpy view per vocabulary string and takes seconds on a 49k-token vocabulary. Parsing it
ourselves also gives every defect a precise one-line message and never touches tensor data.
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, ConfigError, UnsupportedArchitecture
from .checkpoint import Checkpoint

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 used 32-bit counts and is long obsolete
DEFAULT_ALIGNMENT = 32
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9  # the other metadata value types
ARCHITECTURES = ("llama",)

FLOATS = ("F32", "F16", "BF16")  # read exactly (widened to float32)
# How each quantized format turns its stored integers back into weights: the LaTeX states it.
QUANTIZATION_MAPS = {
    "Q4_0": "Blocks of 32 weights share a float16 scale d; each weight is w = d*(q - 8) with a 4-bit q in 0..15",
    "Q4_1": "Blocks of 32 weights share a float16 scale d and minimum m; each weight is w = d*q + m with a 4-bit "
            "q in 0..15",
    "Q5_0": "Blocks of 32 weights share a float16 scale d; each weight is w = d*(q - 16) with a 5-bit q in 0..31",
    "Q5_1": "Blocks of 32 weights share a float16 scale d and minimum m; each weight is w = d*q + m with a 5-bit "
            "q in 0..31",
    "Q8_0": "Blocks of 32 weights share a float16 scale d; each weight is w = d*q with an 8-bit q in -128..127",
    "Q2_K": "Super-blocks of 256 weights (16 blocks j of 16) share float16 scales d and d_min, each block 4-bit "
            "scales s_j and m_j; each weight is w = d*s_j*q - d_min*m_j with a 2-bit q in 0..3",
    "Q3_K": "Super-blocks of 256 weights (16 blocks j of 16) share a float16 scale d, each block a 6-bit scale "
            "s_j; each weight is w = d*(s_j - 32)*q with a 3-bit q in -4..3",
    "Q4_K": "Super-blocks of 256 weights (8 blocks j of 32) share float16 scales d and d_min, each block 6-bit "
            "scales s_j and m_j; each weight is w = d*s_j*q - d_min*m_j with a 4-bit q in 0..15",
    "Q5_K": "Super-blocks of 256 weights (8 blocks j of 32) share float16 scales d and d_min, each block 6-bit "
            "scales s_j and m_j; each weight is w = d*s_j*q - d_min*m_j with a 5-bit q in 0..31",
    "Q6_K": "Super-blocks of 256 weights (16 blocks j of 16) share a float16 scale d, each block an 8-bit scale "
            "s_j; each weight is w = d*s_j*(q - 32) with a 6-bit q in 0..63",
}

GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


@dataclass(frozen=True)
class GGUFTokenizer:
    """The tokenizer a GGUF file carries in its ``tokenizer.ggml.*`` metadata, as raw data."""

    model: str  # "gpt2" (byte-level BPE), "llama" (SentencePiece), ...
    pre: str | None  # llama.cpp's name for the pre-tokenizer (the split regex), e.g. "smollm"
    tokens: list[str]  # token id -> token text
    merges: list[str]  # BPE merges "left right", highest priority first (empty for SentencePiece)
    token_types: list[int]  # 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    scores: list[float]  # SentencePiece scores (empty for BPE)
    bos_id: int | None
    eos_id: int | None
    unknown_id: int | None
    padding_id: int | None
    add_bos_token: bool | None
    add_eos_token: bool | None
    chat_template: str | None


@dataclass(frozen=True)
class GGUFTensor:
    """One GGUF tensor under its Hugging Face name; :meth:`read` dequantizes it."""

    name: str  # Hugging Face name
    gguf_name: str
    dtype: str  # ggml type: F32, F16, BF16, Q4_1, Q8_0, Q4_K, ...
    shape: tuple[int, ...]  # Hugging Face order, e.g. [out, in]; GGUF lists dimensions reversed
    path: Path
    start: int  # absolute byte offset of the data in the file
    nbytes: int
    interleaved_heads: int | None = None  # W_Q, W_K: llama.cpp interleaved each head's rows for RoPE

    def read(self) -> np.ndarray:
        """The float32 values: dequantized, rows of W_Q/W_K put back in Hugging Face order."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        if not math.prod(self.shape):
            return np.zeros(self.shape, dtype=np.float32)
        raw = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.start, shape=(self.nbytes,))
        rows = math.prod(self.shape[:-1])
        weights = dequantize(raw.reshape(rows, self.nbytes // rows), GGMLQuantizationType[self.dtype])
        weights = np.asarray(weights, dtype=np.float32).reshape(self.shape)
        if self.interleaved_heads:
            heads = self.interleaved_heads
            weights = weights.reshape(heads, self.shape[0] // heads // 2, 2, *self.shape[1:]) \
                .swapaxes(1, 2).reshape(self.shape)
        return np.ascontiguousarray(weights)


def load_gguf(source: str, path: Path) -> Checkpoint:
    """A Llama-architecture GGUF file as a Checkpoint with an HF-style config and HF tensor names."""
    metadata, entries = _read_header(path)
    architecture = metadata.get("general.architecture")
    if architecture not in ARCHITECTURES:
        raise UnsupportedArchitecture(f"{path.name}: unsupported GGUF architecture {str(architecture)!r} "
                                      f"(supported: {', '.join(ARCHITECTURES)})")
    names = {entry[0] for entry in entries}
    config = _llama_config(path, metadata, names)
    tensors: dict[str, GGUFTensor] = {}
    interleaved = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    for gguf_name, dtype, shape, start, nbytes in entries:
        name = _hf_name(path, gguf_name)
        block = BLOCK_TENSOR.fullmatch(gguf_name)
        heads = interleaved.get(block[2]) if block else None
        tensors[name] = GGUFTensor(name, gguf_name, dtype, shape, path, start, nbytes, heads)
    general = {key: str(value) for key, value in metadata.items()
               if key.startswith("general.") and not isinstance(value, list)}
    return Checkpoint(source, [path], tensors, config, path.parent, general, _tokenizer(metadata))


def _hf_name(path: Path, gguf_name: str) -> str:
    stem, _, kind = gguf_name.rpartition(".")
    if stem in GLOBAL_NAMES and kind == "weight":
        return f"{GLOBAL_NAMES[stem]}.weight"
    block = BLOCK_TENSOR.fullmatch(gguf_name)
    if block and block[2] in BLOCK_NAMES:
        return f"model.layers.{block[1]}.{BLOCK_NAMES[block[2]]}.{block[3]}"
    if gguf_name == "rope_freqs.weight":
        raise UnsupportedArchitecture(f"{path.name}: per-frequency RoPE factors (rope_freqs.weight, as in "
                                      "Llama 3.1 GGUF files) are not supported")
    raise UnsupportedArchitecture(f"{path.name}: tensor {gguf_name!r} has no counterpart in a Llama model")


def _llama_config(path: Path, metadata: dict, names: set[str]) -> dict:
    """The ``llama.*`` metadata as the config.json transformers would write for the same model."""
    def value(key, default=None):
        found = metadata.get(f"llama.{key}", default)
        if found is None:
            raise ConfigError(f"{path.name}: GGUF metadata lacks llama.{key}")
        return found

    hidden, heads = value("embedding_length"), value("attention.head_count")
    head_dim = value("attention.key_length", hidden // heads if isinstance(heads, int) and heads else None)
    if value("attention.value_length", head_dim) != head_dim:
        raise ConfigError(f"{path.name}: key and value heads of different widths are not a Llama model")
    if value("rope.dimension_count", head_dim) != head_dim:
        raise ConfigError(f"{path.name}: RoPE on {value('rope.dimension_count')} of {head_dim} head features "
                          "(partial rotary) is not supported")
    tokens = metadata.get("tokenizer.ggml.tokens")
    config = {
        "model_type": "llama",
        "vocab_size": value("vocab_size", len(tokens) if tokens else None),
        "hidden_size": hidden,
        "intermediate_size": value("feed_forward_length"),
        "num_hidden_layers": value("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": value("attention.head_count_kv", heads),
        "head_dim": head_dim,
        "max_position_embeddings": value("context_length"),
        "rms_norm_eps": value("attention.layer_norm_rms_epsilon"),
        "rope_theta": value("rope.freq_base", 10000.0),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "mlp_bias": "blk.0.ffn_up.bias" in names,
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
    }
    scaling = value("rope.scaling.type", "none")
    if scaling != "none":  # the lowering accepts the types it supports and names them otherwise
        config["rope_scaling"] = {"rope_type": scaling, "factor": value("rope.scaling.factor", 1.0)}
        if "llama.rope.scaling.original_context_length" in metadata:
            original = value("rope.scaling.original_context_length")
            config["rope_scaling"]["original_max_position_embeddings"] = original
    return config


def _tokenizer(metadata: dict) -> GGUFTokenizer | None:
    if "tokenizer.ggml.tokens" not in metadata:
        return None

    def field(key, default=None):
        return metadata.get(f"tokenizer.ggml.{key}", default)

    return GGUFTokenizer(
        model=field("model", ""), pre=field("pre"), tokens=field("tokens"), merges=field("merges", []),
        token_types=field("token_type", []), scores=field("scores", []), bos_id=field("bos_token_id"),
        eos_id=field("eos_token_id"), unknown_id=field("unknown_token_id"), padding_id=field("padding_token_id"),
        add_bos_token=field("add_bos_token"), add_eos_token=field("add_eos_token"),
        chat_template=metadata.get("tokenizer.chat_template"))


# ---------------------------------------------------------------------------------------- header

class _Cursor:
    """Reads the header's little-endian values in order; running past the end is a truncated file."""

    def __init__(self, buffer, name: str):
        self.buffer, self.offset, self.name = buffer, 0, name

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if end > len(self.buffer):
            raise CheckpointError(f"{self.name}: file is truncated (its header runs past byte {len(self.buffer)})")
        chunk = self.buffer[self.offset:end]
        self.offset = end
        return chunk

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.scalar("<Q"))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.name}: not a GGUF file (a header string is not UTF-8)") from None

    def value(self, kind: int):
        if kind in SCALARS:
            return self.scalar(SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            item, count = self.scalar("<I"), self.scalar("<Q")
            if item in SCALARS:
                raw = self.take(count * struct.calcsize(SCALARS[item]))
                return np.frombuffer(raw, dtype=SCALARS[item]).tolist()
            return [self.value(item) for _ in range(count)]
        raise CheckpointError(f"{self.name}: not a GGUF file (unknown metadata value type {kind})")


def _read_header(path: Path) -> tuple[dict, list[tuple[str, str, tuple[int, ...], int, int]]]:
    """The metadata, and per tensor (name, ggml type, shape in HF order, data offset, byte count)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        with open(path, "rb") as f:
            size = path.stat().st_size
            if size < 24:
                raise CheckpointError(f"{path.name}: not a GGUF file (shorter than its 24-byte preamble)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
                cursor = _Cursor(buffer, path.name)
                if cursor.take(4) != MAGIC:
                    raise CheckpointError(f"{path.name}: not a GGUF file (it does not start with 'GGUF')")
                version = cursor.scalar("<I")
                if version not in VERSIONS:
                    raise CheckpointError(f"{path.name}: GGUF version {version} is not supported "
                                          f"(supported: {', '.join(map(str, VERSIONS))}; little-endian)")
                tensor_count, metadata_count = cursor.scalar("<Q"), cursor.scalar("<Q")
                metadata = {}
                for _ in range(metadata_count):
                    key = cursor.string()
                    metadata[key] = cursor.value(cursor.scalar("<I"))
                table = []
                for _ in range(tensor_count):
                    name = cursor.string()
                    dims = [cursor.scalar("<Q") for _ in range(cursor.scalar("<I"))]
                    table.append((name, dims, cursor.scalar("<I"), cursor.scalar("<Q")))
                header_end = cursor.offset
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise CheckpointError(f"{path.name}: general.alignment {alignment!r} is not a power of two")
    data_start = -(-header_end // alignment) * alignment
    entries = []
    for name, dims, type_id, offset in table:
        try:
            dtype = GGMLQuantizationType(type_id)
        except ValueError:
            raise CheckpointError(f"{path.name}: tensor {name!r} has unknown ggml type {type_id}") from None
        if dtype.name not in FLOATS and dtype.name not in QUANTIZATION_MAPS:
            raise CheckpointError(f"{path.name}: tensor {name!r} is stored as {dtype.name}, which eqcompile "
                                  f"does not read (it reads {', '.join([*FLOATS, *QUANTIZATION_MAPS])})")
        block, block_bytes = GGML_QUANT_SIZES[dtype]
        if not 1 <= len(dims) <= 4 or dims[0] % block:
            raise CheckpointError(f"{path.name}: tensor {name!r} has shape {dims}, not whole {dtype.name} "
                                  f"blocks of {block}")
        nbytes = math.prod(dims) // block * block_bytes
        start = data_start + offset
        if start + nbytes > size:
            raise CheckpointError(f"{path.name}: file is truncated (tensor {name!r} ends at byte "
                                  f"{start + nbytes}, the file has {size})")
        entries.append((name, dtype.name, tuple(reversed(dims)), start, nbytes))
    return metadata, entries
