"""Resolve what the user named into a ``Checkpoint``: config, tokenizer files, lazy tensors."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..errors import CheckpointError
from .safetensors_file import TensorInfo, read_header

if TYPE_CHECKING:
    from .gguf import GGUFTokenizer

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
INDEX_NAME = "model.safetensors.index.json"


class StoredTensor(Protocol):
    """One tensor as its file's header describes it, and how to read its numbers."""

    name: str
    dtype: str  # the storage format: "F32", "BF16", ..., or a GGUF quantization such as "Q4_1"
    shape: tuple[int, ...]
    nbytes: int  # bytes the file stores it in (quantized formats: fewer than 4 per weight)

    def read(self) -> np.ndarray: ...


@dataclass
class Checkpoint:
    """A model on disk. Tensor data is read only through :meth:`tensor`, never by symbolic stages."""

    source: str  # what the user named
    files: list[Path]  # the weight file(s): safetensors, or one GGUF
    tensors: dict[str, StoredTensor]  # by name (a GGUF file's are renamed to Hugging Face names)
    config: dict | None  # config.json (for GGUF: built from the file's metadata), when present
    folder: Path | None = None  # where tokenizer/config files live
    metadata: dict[str, str] = field(default_factory=dict)
    tokenizer: GGUFTokenizer | None = None  # a tokenizer stored inside the weight file (GGUF)

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


def load_checkpoint(source: str | Path) -> Checkpoint:
    """Open a ``.safetensors`` or ``.gguf`` file, a model folder, a sharded index, or a cached hub id."""
    text = str(source)
    path = Path(source).expanduser()
    if not path.exists():
        if HUB_ID.match(text) and not text.startswith((".", "/")):
            path = _from_hub_cache(text)
        else:
            raise CheckpointError(f"no such file or folder: {text}")
    if path.is_dir():
        return _from_folder(text, path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path.name}: pickle-based checkpoints are never loaded (they can run code); convert "
            "it to safetensors first, e.g. with transformers: "
            "model.save_pretrained(dir, safe_serialization=True)")
    if path.name.endswith(".index.json"):
        return _from_index(text, path)
    if path.suffix.lower() == ".gguf":
        from .gguf import load_gguf

        return load_gguf(text, path)
    return _from_files(text, [path], path.parent)


def _from_hub_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{repo_id!r} is not a local path and is not in the Hugging Face cache "
            "(eqcompile never downloads; fetch it first with `hf download`)") from None
    except Exception as e:  # a malformed cache, an invalid id
        raise CheckpointError(f"cannot resolve {repo_id!r} from the Hugging Face cache: {e}") from None


def _from_folder(source: str, folder: Path) -> Checkpoint:
    if (folder / INDEX_NAME).exists():
        return _from_index(source, folder / INDEX_NAME)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        hint = f" (found {', '.join(pickles)}: pickle checkpoints are never loaded; convert to safetensors)" \
            if pickles else ""
        raise CheckpointError(f"{folder}: no .safetensors file in this folder{hint}")
    if len(files) > 1 and (folder / "model.safetensors").exists():
        files = [folder / "model.safetensors"]
    elif len(files) > 1:
        raise CheckpointError(f"{folder}: several .safetensors files and no {INDEX_NAME}; name one")
    return _from_files(source, files, folder)


def _from_index(source: str, index_path: Path) -> Checkpoint:
    folder = index_path.parent.resolve()
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{index_path.name}: not a valid sharded index (no weight_map object)") from None
    shards: list[Path] = []
    for shard in weight_map.values():
        # judged by its name, not by resolving it: a hub cache's shards are symlinks into its blobs/
        if Path(str(shard)).is_absolute() or ".." in Path(str(shard)).parts:
            raise CheckpointError(f"{index_path.name}: shard {shard!r} lies outside the model folder")
        shard_path = folder / str(shard)
        if shard_path not in shards:
            shards.append(shard_path)
    checkpoint = _from_files(source, shards, folder)
    missing = sorted(set(weight_map) - set(checkpoint.tensors))
    if missing:
        raise CheckpointError(f"{index_path.name}: tensor {missing[0]!r} is not in its shard")
    return checkpoint


def _from_files(source: str, files: list[Path], folder: Path) -> Checkpoint:
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[str, str] = {}
    for path in files:
        if not path.is_file():
            raise CheckpointError(f"missing file: {path}")
        found, meta = read_header(path)
        for name in found:
            if name in tensors:
                raise CheckpointError(f"tensor {name!r} appears in more than one shard")
        tensors.update(found)
        metadata.update(meta)
    if not tensors:
        raise CheckpointError(f"{files[0].name}: holds no tensors")
    return Checkpoint(source, files, tensors, _read_config(folder), folder, metadata)


def _read_config(folder: Path) -> dict | None:
    path = folder / "config.json"
    if not path.exists():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: must hold a JSON object")
    return config
