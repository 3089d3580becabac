"""Header-only checkpoints: a model's shapes without its numbers, for sizing and benchmarks.

The safetensors header describes every tensor and the file is truncated to its full size, so the
data region is a hole: it takes no disk space, and reading it gives zeros. Symbolic work
(``--latex``, ``stats``) reads only the header, so it runs on such a file as on the real model.
Which tensors a config implies is its family's business (``arch.header_only``).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Iterable

from .safetensors_file import DTYPES


def write_sparse_checkpoint(folder: Path, tensors: Iterable[tuple[str, tuple[int, ...]]], config: dict,
                            dtype: str = "F32") -> Path:
    """``folder/model.safetensors`` (header + hole) and ``folder/config.json``; returns ``folder``."""
    header, offset = {}, 0
    for name, shape in tensors:
        size = math.prod(shape) * DTYPES[dtype][1]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns data to 8 bytes
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder
