"""GGUF files (llama.cpp's format): the file's own tensor names, its metadata typed, lazy tensors.

This module knows the format only. What ``llama.*`` metadata and ``blk.0.attn_q.weight`` mean is the
family's business (``arch/llama_gguf.py`` turns them into a Hugging Face config and names). Each
tensor is dequantized to float32 only when a numeric stage reads it, by the ``gguf`` package
(llama.cpp's own Python reference).

The header (metadata and tensor table) is parsed here rather than with ``gguf.GGUFReader``, which
makes a numpy view per vocabulary string and takes seconds on a 49k-token vocabulary. Parsing it
ourselves also gives every defect a precise one-line message and never touches tensor data: every
count and length is checked against the bytes left in the file before anything is allocated.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from ..errors import CheckpointError, ConfigError
from .base import Checkpoint, EmbeddedTokenizer
from .files import regular_file

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 used 32-bit counts and is long obsolete
DEFAULT_ALIGNMENT = 32
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9  # the other metadata value types
TYPE_NAMES = {0: "UINT8", 1: "INT8", 2: "UINT16", 3: "INT16", 4: "UINT32", 5: "INT32", 6: "FLOAT32", 7: "BOOL",
              8: "STRING", 9: "ARRAY", 10: "UINT64", 11: "INT64", 12: "FLOAT64"}
INTEGERS = frozenset({0, 1, 2, 3, 4, 5, 10, 11})
KINDS = {"integer": INTEGERS, "number": INTEGERS | {6, 12}, "boolean": frozenset({7}), "string": frozenset({STRING})}
MAX_ARRAY_DEPTH = 8  # arrays of arrays: no key anyone reads nests at all; 3,000 levels overflowed the stack
SMALLEST_VALUE = {STRING: 8, ARRAY: 12}  # bytes: a string's length, an array's item type and count

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



@dataclass(frozen=True)
class GGUFMetadata(Mapping):
    """Every metadata key with its value, and the GGUF type it was stored as, for typed reads."""

    file: str  # the file's name, for messages
    stored: dict[str, object]  # key -> value
    types: dict[str, tuple[int, ...]]  # key -> (value type,), or (ARRAY, item type)

    def __getitem__(self, key: str) -> object:
        return self.stored[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.stored)

    def __len__(self) -> int:
        return len(self.stored)

    def typed(self, key: str, kind: str, default=None):
        """The value of ``key`` if stored as ``kind`` ("integer", "number", "boolean", "string", or
        "array of" one of those); ``default`` when absent; a one-line error naming both otherwise."""
        if key not in self.stored:
            return default
        stored, base = self.types[key], kind.removeprefix("array of ")
        if kind.startswith("array of "):
            fits = stored[0] == ARRAY and len(stored) == 2 and stored[1] in KINDS[base]
        else:
            fits = stored[0] in KINDS[base]
        if not fits:
            found = f"an array of {TYPE_NAMES.get(stored[1], stored[1])}" if stored[0] == ARRAY and len(stored) == 2 \
                else f"a {TYPE_NAMES[stored[0]]}"
            raise ConfigError(f"{self.file}: GGUF metadata {key} is {found}, expected {kind}")
        return self.stored[key]


@dataclass(frozen=True)
class GGUFTensor:
    """One GGUF tensor under the file's own name; :meth:`read` dequantizes it."""

    name: str  # as stored, e.g. "blk.0.attn_q.weight"
    dtype: str  # ggml type: F32, F16, BF16, Q4_1, Q8_0, Q4_K, ...
    shape: tuple[int, ...]  # row-major order, e.g. [out, in]; GGUF lists dimensions reversed
    path: Path
    start: int  # absolute byte offset of the data in the file
    nbytes: int

    def read(self) -> np.ndarray:
        """The float32 values, dequantized."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        if not math.prod(self.shape):
            return np.zeros(self.shape, dtype=np.float32)
        raw = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.start, shape=(self.nbytes,))
        rows = math.prod(self.shape[:-1])
        weights = dequantize(raw.reshape(rows, self.nbytes // rows), GGMLQuantizationType[self.dtype])
        return np.ascontiguousarray(np.asarray(weights, dtype=np.float32).reshape(self.shape))


def read_gguf(source: str, path: Path) -> Checkpoint:
    """A GGUF file as a Checkpoint: tensors under the file's names, no config (its family builds one)."""
    metadata, entries = _read_header(path)
    tensors = {name: GGUFTensor(name, dtype, shape, path, start, nbytes)
               for name, dtype, shape, start, nbytes in entries}
    general = {key: str(value) for key, value in metadata.items()
               if key.startswith("general.") and not isinstance(value, list)}
    return Checkpoint(source, [path], tensors, None, path.parent, general, _tokenizer(metadata), "gguf", metadata)


def _tokenizer(metadata: GGUFMetadata) -> EmbeddedTokenizer | None:
    if "tokenizer.ggml.tokens" not in metadata:
        return None

    def field(key, kind, default=None):
        return metadata.typed(f"tokenizer.ggml.{key}", kind, default)

    return EmbeddedTokenizer(
        model=field("model", "string", ""), pre=field("pre", "string"), tokens=field("tokens", "array of string"),
        merges=field("merges", "array of string", []), token_types=field("token_type", "array of integer", []),
        scores=field("scores", "array of number", []), bos_id=field("bos_token_id", "integer"),
        eos_id=field("eos_token_id", "integer"), unknown_id=field("unknown_token_id", "integer"),
        padding_id=field("padding_token_id", "integer"), add_bos_token=field("add_bos_token", "boolean"),
        add_eos_token=field("add_eos_token", "boolean"),
        chat_template=metadata.typed("tokenizer.chat_template", "string"))


# ---------------------------------------------------------------------------------------- header

class _Cursor:
    """Reads the header's little-endian values in order; running past the end is a truncated file."""

    def __init__(self, buffer, name: str):
        self.buffer, self.offset, self.name = buffer, 0, name

    def truncated(self) -> CheckpointError:
        return CheckpointError(f"{self.name}: file is truncated (its header runs past byte {len(self.buffer)})")

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if end > len(self.buffer):
            raise self.truncated()
        chunk = self.buffer[self.offset:end]
        self.offset = end
        return chunk

    def count(self, fmt: str, smallest: int) -> int:
        """A count of items of at least ``smallest`` bytes each, refused unless the file can hold them."""
        found = self.scalar(fmt)
        if found * smallest > len(self.buffer) - self.offset:
            raise self.truncated()
        return found

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.scalar("<Q"))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.name}: not a GGUF file (a header string is not UTF-8)") from None

    def value(self, key: str, kind: int, depth: int = 0) -> tuple[object, tuple[int, ...]]:
        """(the value, its type: (kind,) or (ARRAY, item type))."""
        if kind in SCALARS:
            return self.scalar(SCALARS[kind]), (kind,)
        if kind == STRING:
            return self.string(), (kind,)
        if kind != ARRAY:
            raise CheckpointError(f"{self.name}: not a GGUF file (unknown metadata value type {kind})")
        if depth == MAX_ARRAY_DEPTH:
            raise CheckpointError(f"{self.name}: GGUF metadata {key} nests arrays deeper than {MAX_ARRAY_DEPTH}")
        item = self.scalar("<I")
        if item not in SCALARS and item not in SMALLEST_VALUE:
            raise CheckpointError(f"{self.name}: not a GGUF file (unknown metadata value type {item})")
        if item in SCALARS:
            raw = self.take(self.count("<Q", struct.calcsize(SCALARS[item])) * struct.calcsize(SCALARS[item]))
            return np.frombuffer(raw, dtype=SCALARS[item]).tolist(), (ARRAY, item)
        return [self.value(key, item, depth + 1)[0] for _ in range(self.count("<Q", SMALLEST_VALUE[item]))], \
            (ARRAY, item)


def _read_header(path: Path) -> tuple[GGUFMetadata, list[tuple[str, str, tuple[int, ...], int, int]]]:
    """The metadata, and per tensor (name, ggml type, shape in row-major order, data offset, byte count)."""
    size = regular_file(path).st_size
    try:
        with open(path, "rb") as f:
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
                tensor_count = cursor.count("<Q", 8 + 4 + 4 + 8)  # name, dims, type, offset
                values, types = {}, {}
                for _ in range(cursor.count("<Q", 8 + 4)):  # a key's length, a value's type
                    key = cursor.string()
                    values[key], types[key] = cursor.value(key, cursor.scalar("<I"))
                table = []
                for _ in range(tensor_count):
                    name = cursor.string()
                    dims = [cursor.scalar("<Q") for _ in range(cursor.count("<I", 8))]
                    table.append((name, dims, cursor.scalar("<I"), cursor.scalar("<Q")))
                header_end = cursor.offset
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    metadata = GGUFMetadata(path.name, values, types)
    return metadata, _tensor_entries(path, size, table, header_end, metadata)


def _tensor_entries(path: Path, size: int, table: list, header_end: int, metadata: GGUFMetadata) -> list:
    """Each tensor's (name, ggml type, shape, start, byte count), checked against the file and each other."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    alignment = metadata.typed("general.alignment", "integer", DEFAULT_ALIGNMENT)
    if alignment <= 0 or alignment & (alignment - 1):
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
    _check_distinct(path, entries)
    return entries


def _check_distinct(path: Path, entries: list) -> None:
    """No name twice, and no two tensors sharing bytes (as the safetensors format requires)."""
    names = set()
    for name, *_ in entries:
        if name in names:
            raise CheckpointError(f"{path.name}: tensor {name!r} appears twice")
        names.add(name)
    stored = sorted((start, start + nbytes, name) for name, _, _, start, nbytes in entries if nbytes)
    for (_, end, first), (start, _, second) in zip(stored, stored[1:]):
        if start < end:
            raise CheckpointError(f"{path.name}: tensors {first!r} and {second!r} overlap in the file")
