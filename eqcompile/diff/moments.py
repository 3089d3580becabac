"""One pass over a pair of tensors: every sum the statistics of ΔW = W' − W need, in float64.

Both tensors are read in row blocks that fit the processor's last-level cache (larger blocks than
its L2 cost less in all: some twenty numpy calls per block), converted to float64 (the
difference of two float32 numbers is exact in float64) into four rows of one reused buffer
``[W, W', ΔW, ΔW∘ΔW]``, and every sum is taken from those rows, so memory stays a few blocks
whatever the tensors' size and each byte is read once. (One product of the rows with their own
transpose would give all the sums at once, but BLAS runs that 5 × n × 5 product some four times
slower than six dot products.) The maxima (max |Δ|, the largest change in rounding units) are the
same elementwise float64 values whatever the blocking; the sums differ from another blocking's in
the last bits only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BLOCK_ELEMENTS = 1 << 17  # elements per streamed block: 1 MiB per float64 row
A, B, D, D2 = range(4)  # rows of the block buffer
NARROW = {np.dtype(np.float32), np.dtype(np.float16)}  # values whose rounding test can skip a pass


@dataclass
class Moments:
    """Sums of one pass over both tensors, accumulated in float64."""

    aa: float = 0.0  # ‖W‖²
    bb: float = 0.0  # ‖W'‖²
    ab: float = 0.0  # ⟨W, W'⟩
    dd: float = 0.0  # ‖ΔW‖²
    d1: float = 0.0  # Σ Δ, Σ Δ³, Σ Δ⁴ (for the kurtosis)
    d3: float = 0.0
    d4: float = 0.0
    max_abs: float = 0.0
    rounding_units: float | None = None
    same_bits: bool = True

    def kurtosis(self, count: int) -> float | None:
        """E[(Δ − μ)⁴] / E[(Δ − μ)²]², from the raw moments."""
        if not count:
            return None
        mean = self.d1 / count
        m2 = self.dd / count - mean**2
        m4 = self.d4 / count - 4 * mean * self.d3 / count + 6 * mean**2 * self.dd / count - 3 * mean**4
        return m4 / m2**2 if m2 > 0 and math.isfinite(m4) else None

def block_rows(matrix: np.ndarray, elements: int = BLOCK_ELEMENTS) -> int:
    return max(1, elements // max(1, matrix.shape[1]))


def blocks(before: np.ndarray, after: np.ndarray, elements: int = BLOCK_ELEMENTS):
    """Row blocks of both matrices as they are stored (float32 or integers)."""
    rows = block_rows(before, elements)
    for start in range(0, before.shape[0], rows):
        yield start, np.asarray(before[start:start + rows]), np.asarray(after[start:start + rows])


def moments(before: np.ndarray, after: np.ndarray, roundoff, sketch=None) -> Moments:
    """One pass: the sums, max |Δ|, the largest change in rounding units, and bit identity.

    ``roundoff``: (u, smallest subnormal) of the narrower storage dtype, or (None, None).
    ``sketch``: given each row block of ΔW while it is in cache, ``sketch.add(start, before, after)``
    (the first product of a randomized SVD, :class:`~.spectrum.Sketch`).
    """
    unit, subnormal = roundoff
    sums = Moments(rounding_units=0.0 if unit is not None else None)
    width = min(block_rows(before), before.shape[0]) * before.shape[1]
    stack = np.empty((4, width))
    ones = np.ones(width)
    offset = subnormal / unit if unit is not None and {before.dtype, after.dtype} <= NARROW else None
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for start, a, b in blocks(before, after):
            if sums.same_bits:
                sums.same_bits = a.dtype == b.dtype and np.array_equal(_bits(a), _bits(b))
            if a.size:
                if sketch is not None:
                    sketch.add(start, a, b)
                _accumulate(sums, a, b, stack, ones, unit, subnormal, offset)
    return sums


def _accumulate(sums: Moments, a: np.ndarray, b: np.ndarray, stack: np.ndarray, ones: np.ndarray,
                unit: float | None, subnormal: float | None, offset: float | None) -> None:
    """Add one block to ``sums``, in place in ``stack`` (four float64 rows of a block each).

    Every sum is a BLAS dot product (Σ Δ against ``ones``), and |Δ| is never written: max |Δ| is
    max(max Δ, −min Δ), and the ratio's maximum that of Δ / allowed, both exact.
    ``offset``: subnormal / u, for float32 and float16 values. Then |Δ| / (u max + subnormal) is
    taken as (|Δ| / (max + offset)) / u, one pass fewer and the same float64 value bit for bit: u is
    a power of two and every intermediate stays normal, so scaling by it commutes with rounding.
    """
    rows = stack[:, :a.size]
    w, w_new = rows[A], rows[B]
    np.copyto(w.reshape(a.shape), a, casting="unsafe")
    np.copyto(w_new.reshape(b.shape), b, casting="unsafe")
    d = np.subtract(w_new, w, out=rows[D])
    squares = np.multiply(d, d, out=rows[D2])
    sums.aa += float(np.dot(w, w))
    sums.bb += float(np.dot(w_new, w_new))
    sums.ab += float(np.dot(w, w_new))
    sums.dd += float(np.dot(d, d))
    sums.d1 += float(np.dot(d, ones[:a.size]))
    sums.d3 += float(np.dot(squares, d))
    sums.d4 += float(np.dot(squares, squares))
    sums.max_abs = _larger_magnitude(sums.max_abs, d)
    if unit is not None:  # |Δ| / (u max(|W|, |W'|) + smallest subnormal), reusing the rows
        allowed = np.maximum(np.abs(w, out=w), np.abs(w_new, out=w_new), out=w)
        if offset is None:
            allowed *= unit
            allowed += subnormal
        else:
            allowed += offset
        ratio = np.divide(d, allowed, out=w_new)
        if offset is None:
            sums.rounding_units = _larger_magnitude(sums.rounding_units, ratio)
        else:
            sums.rounding_units = _larger_magnitude(sums.rounding_units * unit, ratio) / unit


def _larger_magnitude(known: float, values: np.ndarray) -> float:
    """max(known, max |values|), from the largest and the smallest value (NaN as :func:`_larger`)."""
    return _larger(_larger(known, float(values.max())), -float(values.min()))


def _larger(known: float, found: float) -> float:
    """The larger; NaN once either is NaN (Python's max keeps its first argument against a NaN, so a
    NaN would count or not by where the block boundaries fall)."""
    return found if found > known or math.isnan(found) else known


def _bits(array: np.ndarray) -> np.ndarray:
    return array.view(np.dtype(f"u{array.dtype.itemsize}")) if array.dtype.kind in "fc" else array
