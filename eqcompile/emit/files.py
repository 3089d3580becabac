"""Writing outputs safely: temp file then rename, so a failure never leaves half a file, and a
folder of outputs replaced as one set (:func:`output_set`)."""

from __future__ import annotations

import json
import os
import signal
import shutil
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import EqcompileError


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
def output_set(folder: Path, owned: Iterable[str]):
    """A staging folder beside ``folder``; what the block writes there replaces, as one set, the
    files named in ``owned`` (eqcompile's outputs) that ``folder`` held.

    Nothing reaches ``folder`` unless the block succeeds, so a failure leaves the previous set as
    it was; and no owned file of an earlier run survives beside the new ones (a tokenizer the model
    lost, weights a ``--expand`` module does not read). A folder holding nothing but eqcompile's
    files is swapped for the staging folder in one step (Linux's RENAME_EXCHANGE): a reader sees
    the old set or the new, never a mix. Files that are not eqcompile's are never removed: a folder
    that holds some keeps them, and eqcompile's own are replaced there file by file (see
    :func:`_replace_in_place`).
    """
    folder = Path(folder)
    if folder.is_symlink() and folder.is_dir():
        folder = folder.resolve()  # the folder the user linked to is where the outputs go
    if folder.exists() and not folder.is_dir():
        raise EqcompileError(f"{folder} is not a folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield staging
        owned = frozenset(owned)
        with _signals_held():  # a few renames: SIGINT or SIGTERM waits for them, never splits them
            _publish(staging, folder, owned)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, folder: Path, owned: frozenset[str]) -> None:
    mode = folder.stat().st_mode & 0o7777 if folder.is_dir() else 0o777 & ~_umask()
    os.chmod(staging, mode)  # mkdtemp made it private
    if not os.path.lexists(folder):
        try:
            os.rename(staging, folder)
            return
        except OSError:  # another writer made it meanwhile
            pass
    ours = all(entry in owned for entry in os.listdir(folder)) and not _holds_cwd(folder)
    if ours and _exchange(staging, folder):
        for entry in os.listdir(staging):  # staging now holds the previous set
            if entry not in owned:  # a file someone put there while we wrote: theirs, so kept
                os.rename(staging / entry, folder / entry)
        return
    _replace_in_place(staging, folder, owned)


def _replace_in_place(staging: Path, folder: Path, owned: frozenset[str]) -> None:
    """Move the new set into ``folder`` beside files that are not eqcompile's, and the previous set
    aside; on any failure, the previous set is put back as it was."""
    aside = Path(tempfile.mkdtemp(prefix=".previous.", dir=staging))
    new = [entry for entry in os.listdir(staging) if staging / entry != aside]
    moved, placed = [], []
    try:
        for name in sorted(owned):
            if os.path.lexists(folder / name):  # a symlink goes aside, never its target
                os.rename(folder / name, aside / name)
                moved.append(name)
        for name in new:
            os.rename(staging / name, folder / name)
            placed.append(name)
    except BaseException:
        for name in placed:
            os.rename(folder / name, staging / name)
        for name in moved:
            os.rename(aside / name, folder / name)
        raise


def _exchange(first: Path, second: Path) -> bool:
    """Swap two folders in one step (Linux's renameat2 RENAME_EXCHANGE); False if it cannot."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None).renameat2
    except (OSError, AttributeError):
        return False
    here, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE
    # any refusal (an old kernel or a filesystem without it, a mount point) leaves both as they were
    return renameat2(here, os.fsencode(first), here, os.fsencode(second), exchange) == 0


def _holds_cwd(folder: Path) -> bool:
    """Whether the process works inside ``folder`` (swapping it would leave the shell in a removed folder)."""
    return Path.cwd().resolve().is_relative_to(folder.resolve())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def _signals_held():
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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
