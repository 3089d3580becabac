"""A safetensors file opened lazily: the header is parsed and checked, data stays on disk.

We parse the header ourselves (it is 8 bytes of length + JSON) so that every defect gets a precise,
one-line message, and so that reading names, shapes and dtypes provably touches no tensor data.
Data is read on demand with ``np.memmap``; bfloat16, which numpy lacks, is widened bit-exactly.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .files import parse_json, regular_file

# safetensors dtype tag -> (numpy dtype of the stored bits, bytes per element)
DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 8), "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2),
    "I64": ("<i8", 8), "I32": ("<i4", 4), "I16": ("<i2", 2), "I8": ("i1", 1),
    "U8": ("u1", 1), "BOOL": ("?", 1),
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit
_LINKED = "; it is a symbolic link, and the file it points to is not a checkpoint"


@dataclass(frozen=True)
class TensorInfo:
    """What the header says about one tensor: enough for every symbolic stage."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    start: int  # absolute byte offset of the data in the file
    nbytes: int

    def read(self) -> np.ndarray:
        return read_tensor(self)


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate the header of ``path``; return its tensors and its ``__metadata__``."""
    size = regular_file(path).st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path.name}: not a safetensors file (shorter than 8 bytes)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len == 0 or header_len > MAX_HEADER_BYTES:  # not a length: never quote the bytes
                raise CheckpointError(f"{path.name}: not a safetensors file (it does not begin with a header "
                                      f"length){_LINKED if path.is_symlink() else ''}")
            if 8 + header_len > size:
                raise CheckpointError(f"{path.name}: not a safetensors file, or truncated (its header length, "
                                      f"{header_len:,} bytes, runs past the end of the {size:,}-byte file)")
            raw = f.read(header_len)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    try:  # bounded like every JSON a checkpoint brings: nesting, integer length, lone surrogates
        header = parse_json(raw.decode("utf-8"), f"{path.name}: not a safetensors file (header is not JSON)")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path.name}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path.name}: __metadata__ is not a JSON object")
    data_start = 8 + header_len
    tensors = {name: _tensor_info(path, name, entry, data_start, size) for name, entry in header.items()}
    _check_no_overlap(path, tensors)
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def _tensor_info(path: Path, name: str, entry: object, data_start: int, size: int) -> TensorInfo:
    def bad(problem: str) -> CheckpointError:
        return CheckpointError(f"{path.name}: tensor {name!r}: {problem}")

    if not isinstance(entry, dict):
        raise bad("header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:  # a list or object tag is unhashable
        raise bad(f"unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(_natural(s) for s in shape)):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(_natural(o) for o in offsets) and offsets[0] <= offsets[1]):
        raise bad(f"data_offsets {offsets!r} are not [begin, end]")
    nbytes = offsets[1] - offsets[0]
    expected = math.prod(shape) * DTYPES[dtype][1]
    if nbytes != expected:
        raise bad(f"holds {nbytes} bytes but shape {shape} x {dtype} needs {expected}")
    if data_start + offsets[1] > size:
        raise CheckpointError(
            f"{path.name}: file is truncated (tensor {name!r} ends at byte "
            f"{data_start + offsets[1]}, the file has {size})")
    return TensorInfo(name, dtype, tuple(shape), path, data_start + offsets[0], nbytes)


def _natural(value: object) -> bool:
    """A non-negative JSON integer (``true``/``false`` are Python ints, but not integers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_no_overlap(path: Path, tensors: dict[str, TensorInfo]) -> None:
    spans = sorted((t.start, t.start + t.nbytes, t.name) for t in tensors.values() if t.nbytes)
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise CheckpointError(f"{path.name}: tensors {first!r} and {second!r} overlap")


def read_tensor(info: TensorInfo) -> np.ndarray:
    """Read one tensor's data as a float32 (or integer) array. The only place data is read."""
    stored, _ = DTYPES[info.dtype]
    count = math.prod(info.shape)
    flat = np.memmap(info.path, dtype=stored, mode="r", offset=info.start, shape=(count,)) \
        if count else np.zeros(0, dtype=stored)
    array = flat.reshape(info.shape)
    if info.dtype == "BF16":  # bfloat16 is the top half of a float32: widening is exact
        widened = np.asarray(array).astype(np.uint32)
        widened <<= 16  # in place: one float32 copy of the tensor, not two
        return widened.view(np.float32)
    if array.dtype.kind == "f":
        return np.asarray(array, dtype=np.float32)
    return np.array(array)
