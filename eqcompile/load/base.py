"""What every reader returns: a :class:`Checkpoint`, its tensors as their file stores them.

The types only; the readers (``safetensors_file.py``, ``gguf.py``) fill them in and
``checkpoint.py`` picks the reader. Nothing here knows a model family.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol

import numpy as np


class StoredTensor(Protocol):
    """One tensor as its file's header describes it, and how to read its numbers."""

    name: str
    dtype: str  # the storage format: "F32", "BF16", ..., or a GGUF quantization such as "Q4_1"
    shape: tuple[int, ...]
    nbytes: int  # bytes the file stores it in (quantized formats: fewer than 4 per weight)

    def read(self) -> np.ndarray: ...


@dataclass(frozen=True)
class EmbeddedTokenizer:
    """A tokenizer stored inside the weight file (GGUF's ``tokenizer.ggml.*`` metadata), as raw data."""

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


@dataclass
class Checkpoint:
    """A model on disk. Tensor data is read only through :meth:`tensor`, never by symbolic stages."""

    source: str  # its name in every output: a hub id, or the file's or folder's own name (not its path)
    files: list[Path]  # the weight file(s): safetensors, or one GGUF
    tensors: dict[str, StoredTensor]  # by name (a GGUF file's: renamed by its family, arch/)
    config: dict | None  # config.json (for GGUF: built by its family from the file's metadata), when present
    folder: Path | None = None  # where tokenizer/config files live
    metadata: dict[str, str] = field(default_factory=dict)
    tokenizer: EmbeddedTokenizer | None = None  # a tokenizer stored inside the weight file (GGUF)
    format: str = "safetensors"  # the weight file's format: "safetensors" or "gguf"
    file_metadata: Mapping[str, object] = field(default_factory=dict)  # GGUF: every key, typed (load/gguf.py)
    stored_names: dict[str, str] = field(default_factory=dict)  # a renamed tensor's name in the file itself

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def tensor(self, name: str) -> np.ndarray:
        """Read one tensor as float32 (numeric stages only)."""
        return self.tensors[name].read()

    def sha256(self) -> str:
        """Digest of the weight file(s), in order; identifies the exact numbers an equation uses."""
        digest = hashlib.sha256()
        for path in self.files:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        return digest.hexdigest()
