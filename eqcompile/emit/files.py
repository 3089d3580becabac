"""Writing outputs safely: temp file then rename, so a failure never leaves half a file."""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

import numpy as np


@contextmanager
def atomic_output(path: Path, mode: str = "w"):
    """Open a temp file beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            yield f
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


@contextmanager
def staging_folder(folder: Path, owned: Iterable[str] = ()):
    """A temporary folder beside ``folder`` whose files move into it only if the block succeeds.

    Each file is renamed into place (atomic per file); on failure nothing of the run remains. The
    ``owned`` names the block did not write are then removed from ``folder``, so the folder holds
    this run's set of outputs and no file of an earlier run's (a tokenizer the model lost, say).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield staging
        folder.mkdir(exist_ok=True)
        written = sorted(staging.iterdir())
        for item in written:
            os.replace(item, folder / item.name)
        for stale in set(owned) - {item.name for item in written}:
            (folder / stale).unlink(missing_ok=True)  # a symlink goes, never its target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    with atomic_output(path) as f:
        f.write(text)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_output(path, "wb") as f:
        f.write(data)


SAFETENSORS_DTYPES = {"float32": ("F32", "<f4"), "float64": ("F64", "<f8")}


def write_safetensors(path: Path, entries: list[tuple[str, tuple[int, ...]]],
                      produce: Callable[[str], np.ndarray], progress: Iterable | None = None,
                      dtype: str = "float32") -> None:
    """Stream float tensors into a safetensors file, one at a time (memory: one tensor).

    ``entries`` gives names and shapes up front so the header is written first; ``produce(name)``
    returns each array when its turn comes.
    """
    tag, stored = SAFETENSORS_DTYPES[dtype]
    header, offset = {}, 0
    for name, shape in entries:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(stored).itemsize
        header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns data to 8 bytes
    with atomic_output(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in (progress if progress is not None else entries):
            array = np.ascontiguousarray(produce(name), dtype=stored)
            if array.shape != tuple(shape):
                raise AssertionError(f"{name}: produced shape {array.shape}, declared {tuple(shape)}")
            f.write(array.tobytes())


def progress_bar(items, description: str):
    """A progress bar on a terminal, nothing when stderr is piped."""
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="tensor", disable=not sys.stderr.isatty(), leave=False)
