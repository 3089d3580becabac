"""``eqcompile diff A B``: what changed between two checkpoints, as mathematics.

The pipeline, wired in :func:`compare`:

1. load both checkpoints (headers only) and lower each to its Program;
2. the structural diff (:mod:`.structure`): config, dimensions, equations, parameters, tensor names;
3. the parametric diff (:mod:`.delta`), a pair at a time on each of a pool of worker threads (numpy
   releases the interpreter's lock in its loops and BLAS): each parameter of the equations (W_Q of
   layer 3, a slice of ``c_attn``) against the same symbol and layer in B, then every raw tensor
   outside the equations by name. Bit-identical sources are recognised by comparing their bytes
   first, without reading them as numbers; the others are streamed in blocks, so the two models are
   never in memory, only a few blocks of a pair per thread.

``ModelDiff.seconds`` says where the time went: the structural diff, comparing bytes, the moments
(which include reading the changed tensors) and the spectra, summed over the threads.

Rendering (text, JSON, LaTeX) is in :mod:`.render`.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from .. import arch, frontend
from ..errors import CheckpointError, EqcompileError
from ..load import Checkpoint, TensorInfo
from ..program import Program
from ..progress import progress_bar
from .clock import Clock
from .delta import IDENTICAL, Delta, as_matrix, measure
from .spectrum import FAST, FULL, Setting
from .structure import Slot, StructureDiff, compare_programs, compare_tensors, slots

__all__ = ["FAST", "FULL", "ModelDiff", "WeightDiff", "compare"]

SIDES = ("before", "after")
COMPARE_CHUNK = 1 << 20  # bytes read at a time from each file when comparing two tensors' bytes


@dataclass(frozen=True)
class WeightDiff:
    """One compared pair: a parameter (symbol and layer) or a raw tensor outside the equations."""

    label: str  # "W_Q^(3)", or the tensor's name
    slot: Slot | None  # A's parameter; None for a raw tensor
    sources: tuple[str, str]  # where the numbers come from in A and in B
    shape: tuple[int, ...]  # the parameter's shape in the equations, or the tensor's stored shape
    dtypes: tuple[str, str]  # storage dtypes in A and B
    delta: Delta


@dataclass
class ModelDiff:
    before: str  # the two inputs, as the user named them
    after: str
    programs: tuple[Program | None, Program | None]  # None: that side could not be lowered
    structure: StructureDiff
    parameters: list[WeightDiff]  # in the model's order
    tensors: list[WeightDiff]  # raw tensors that are not the source of a compared parameter
    seconds: dict[str, float] = field(default_factory=dict)  # by phase, summed over worker threads

    @property
    def identical(self) -> bool:
        return not self.structure.changed and all(
            w.delta.form == IDENTICAL for w in self.parameters + self.tensors)

    @property
    def changed_weights(self) -> list[WeightDiff]:
        """Changed parameters and tensors, largest relative change first."""
        changed = [w for w in self.parameters + self.tensors if w.delta.form != IDENTICAL]
        return sorted(changed, key=lambda w: -w.delta.relative)


def compare(before: str | Path, after: str | Path, spectra: Setting = FAST, workers: int | None = None) -> ModelDiff:
    """Diff two checkpoints (anything :func:`~eqcompile.load.load_checkpoint` accepts).

    ``spectra``: :data:`FAST` (the default) or :data:`FULL` (see :mod:`.spectrum`); ``workers``:
    threads comparing pairs (default: one per CPU, each with one BLAS thread: two workers each calling
    a BLAS that starts threads of its own oversubscribe the cores, measured thirty times slower on a
    busy machine).
    """
    clock = Clock()
    workers = workers or os.cpu_count() or 1
    with clock("structure"):
        checkpoints = (arch.open_checkpoint(before), arch.open_checkpoint(after))
        lowered = [_lower(checkpoint, side) for checkpoint, side in zip(checkpoints, "AB")]
        programs = (lowered[0][0], lowered[1][0])
        slot_maps = [slots(p) if p is not None else {} for p in programs]
        digests = _Digests(checkpoints)
        pairs = [(slot_maps[0][key], slot_maps[1][key]) for key in slot_maps[0]
                 if key in slot_maps[1] and slot_maps[0][key].shape == slot_maps[1][key].shape]
        tensors = compare_tensors(*checkpoints, digests.of, [(a.source.name, b.source.name) for a, b in pairs])
        structure = compare_programs(*programs, *slot_maps, raw_configs=tuple(c.config for c in checkpoints),
                                     tensors=tensors, notes=[note for _, note in lowered if note])
        covered = [{s.source.name for s in slot_map.values()} for slot_map in slot_maps]
        raw_names = [name for name, info in checkpoints[0].tensors.items()
                     if name in checkpoints[1].tensors and info.shape == checkpoints[1].tensors[name].shape
                     and not (name in covered[0] and name in covered[1])]
    sources = list(dict.fromkeys([(a.source.name, b.source.name) for a, b in pairs] + [(n, n) for n in raw_names]))
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        with clock("same bytes"):
            same = dict(zip(sources, pool.map(lambda names: same_bytes(checkpoints[0].tensors[names[0]],
                                                                       checkpoints[1].tensors[names[1]]), sources)))
        work = [partial(_compare_slots, checkpoints, same, a, b, spectra, clock) for a, b in pairs]
        work += [partial(_compare_tensors, checkpoints, same, name, spectra, clock) for name in raw_names]
        compared = list(progress_bar(pool.map(lambda task: task(), work), "comparing", total=len(work)))
    return ModelDiff(str(before), str(after), programs, structure,
                     parameters=[w for w in compared if w.slot is not None],
                     tensors=[w for w in compared if w.slot is None], seconds=clock.seconds)



def _lower(checkpoint: Checkpoint, side: str) -> tuple[Program | None, str]:
    """The Program, or None and why: the tensors can still be compared by name."""
    try:
        return frontend.lower(checkpoint), ""
    except EqcompileError as e:
        return None, f"{side} has no equations ({e}); its tensors are compared by name"


class _Digests:
    """SHA-256 of each tensor's stored bytes (with its dtype and shape), computed once."""

    def __init__(self, checkpoints: tuple[Checkpoint, Checkpoint]):
        self.checkpoints = dict(zip(SIDES, checkpoints))
        self.cache: dict[tuple[str, str], tuple] = {}

    def of(self, side: str, name: str) -> tuple:
        if (side, name) not in self.cache:
            self.cache[side, name] = _digest(self.checkpoints[side].tensors[name])
        return self.cache[side, name]


def _digest(info: TensorInfo) -> tuple:
    sha = hashlib.sha256()
    with open(info.path, "rb") as f:
        f.seek(info.start)
        remaining = info.nbytes
        while remaining:
            chunk = f.read(min(remaining, 1 << 20))
            if not chunk:
                raise CheckpointError(f"{info.path.name}: file is truncated (tensor {info.name!r})")
            sha.update(chunk)
            remaining -= len(chunk)
    return info.dtype, info.shape, sha.hexdigest()


def same_bytes(a: TensorInfo, b: TensorInfo) -> bool:
    """Whether two tensors have the same dtype, shape and stored bytes (stops at the first difference)."""
    if (a.dtype, a.shape, a.nbytes) != (b.dtype, b.shape, b.nbytes):
        return False
    left, right = bytearray(min(a.nbytes, COMPARE_CHUNK)), bytearray(min(a.nbytes, COMPARE_CHUNK))
    with open(a.path, "rb") as first, open(b.path, "rb") as second:
        first.seek(a.start)
        second.seek(b.start)
        for offset in range(0, a.nbytes, COMPARE_CHUNK):
            size = min(COMPARE_CHUNK, a.nbytes - offset)
            for f, buffer, info in ((first, left, a), (second, right, b)):
                if f.readinto(memoryview(buffer)[:size]) != size:
                    raise CheckpointError(f"{info.path.name}: file is truncated (tensor {info.name!r})")
            if (left != right) if size == len(left) else (left[:size] != right[:size]):
                return False
    return True


def _compare_slots(checkpoints, same: dict, a: Slot, b: Slot, spectra: Setting, clock: Clock) -> WeightDiff:
    infos = (checkpoints[0].tensors[a.source.name], checkpoints[1].tensors[b.source.name])
    dtypes = (infos[0].dtype, infos[1].dtype)
    same_slice = (a.source.columns, a.source.transpose) == (b.source.columns, b.source.transpose)
    if same_slice and same[a.source.name, b.source.name]:
        delta = Delta.unchanged(int(np.prod(a.shape)))
    else:
        # as stored: sliced, not transposed (no statistic depends on the orientation)
        old, new = (as_matrix(side.source.read(checkpoint, transpose=False))
                    for side, checkpoint in zip((a, b), checkpoints))
        if a.source.transpose != b.source.transpose:
            new = new.T
        delta = measure(old, new, dtypes, setting=spectra, clock=clock)
    return WeightDiff(a.label, a, (a.source.describe(), b.source.describe()), a.shape, dtypes, delta)


def _compare_tensors(checkpoints, same: dict, name: str, spectra: Setting, clock: Clock) -> WeightDiff:
    infos = (checkpoints[0].tensors[name], checkpoints[1].tensors[name])
    dtypes = (infos[0].dtype, infos[1].dtype)
    if same[name, name]:
        delta = Delta.unchanged(int(np.prod(infos[0].shape)))
    else:
        delta = measure(as_matrix(checkpoints[0].tensor(name)), as_matrix(checkpoints[1].tensor(name)), dtypes,
                        setting=spectra, clock=clock)
    return WeightDiff(name, None, (name, name), infos[0].shape, dtypes, delta)
