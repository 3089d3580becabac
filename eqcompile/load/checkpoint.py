"""Resolve what the user named into a ``Checkpoint``: config, tokenizer files, lazy tensors.

File formats only: :data:`READERS` maps a weight file's suffix (or, for other names, its first
bytes) to its reader. What a GGUF file's names and metadata mean is its family's business (arch/).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from ..errors import CheckpointError
from .base import Checkpoint
from .gguf import MAGIC as GGUF_MAGIC
from .gguf import read_gguf
from .files import read_json, shown
from .safetensors_file import TensorInfo, read_header

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
INDEX_NAME = "model.safetensors.index.json"
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # config.json files are a few KB; 1,000 class labels are 40 KB


def load_checkpoint(source: str | Path) -> Checkpoint:
    """Open a ``.safetensors`` or ``.gguf`` file, a model folder, a sharded index, or a cached hub id."""
    text = str(source)
    path = Path(source).expanduser()
    if path.exists():
        name = path.resolve().name  # what the outputs call it: the file or folder, never where it sits
    elif HUB_ID.match(text) and not text.startswith((".", "/")):
        path, name = _from_hub_cache(text), text
    else:
        raise CheckpointError(f"no such file or folder: {text}")
    if path.is_dir():
        return _from_folder(name, path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path.name}: pickle-based checkpoints are never loaded (they can run code); convert "
            "it to safetensors first, e.g. with transformers: "
            "model.save_pretrained(dir, safe_serialization=True)")
    if path.name.endswith(".index.json"):
        return _from_index(name, path)
    return _reader_for(path)(name, path)


def _from_safetensors(source: str, path: Path) -> Checkpoint:
    return _from_files(source, [path], path.parent)


READERS: dict[str, Callable[[str, Path], Checkpoint]] = {".gguf": read_gguf, ".safetensors": _from_safetensors}
MAGIC = {GGUF_MAGIC: read_gguf}  # first bytes -> reader, for a file whose suffix names no format


def _reader_for(path: Path) -> Callable[[str, Path], Checkpoint]:
    if path.suffix.lower() in READERS:
        return READERS[path.suffix.lower()]
    start = b""
    if path.is_file():  # never open a FIFO or a device to sniff it
        try:
            with open(path, "rb") as f:
                start = f.read(4)
        except OSError:
            pass  # the safetensors reader reports it
    return MAGIC.get(start, _from_safetensors)


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
    weight_map = _weight_map(index_path)
    shards = dict.fromkeys(weight_map.values())  # each once, in order (a list check per shard is quadratic)
    for shard in shards:
        # judged by its name, not by resolving it: a hub cache's shards are symlinks into its blobs/
        if shard.startswith("/") or ".." in shard.split("/"):
            raise CheckpointError(f"{index_path.name}: shard {shown(shard)} lies outside the model folder")
    checkpoint = _from_files(source, [folder / shard for shard in shards], folder)
    missing = sorted(set(weight_map) - set(checkpoint.tensors))
    if missing:
        raise CheckpointError(f"{index_path.name}: tensor {missing[0]!r} is not in its shard")
    return checkpoint


def _weight_map(index_path: Path) -> dict[str, str]:
    """The index's tensor name -> shard file name, checked: a non-empty object of strings."""
    index = read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path.name}: not a valid sharded index (no weight_map object "
                              "naming at least one tensor)")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise CheckpointError(f"{index_path.name}: weight_map[{name!r}] must be a shard's file name, "
                                  f"got {shown(shard)}")
    return weight_map


def _from_files(source: str, files: list[Path], folder: Path) -> Checkpoint:
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[str, str] = {}
    for path in files:
        if not path.exists() and not path.is_symlink():  # a FIFO or a dangling link: read_header says which
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
    if not path.exists() and not path.is_symlink():  # a dangling link is an error, not "no config"
        return None
    config = read_json(path, MAX_CONFIG_BYTES)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path.name}: must hold a JSON object")
    return config
