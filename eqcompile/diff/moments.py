"""One pass over a pair of tensors: every sum the statistics of ΔW = W' − W need, in float64.

Both tensors are read in row blocks that fit the processor's cache, converted to float64 (the
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

BLOCK_ELEMENTS = 1 << 15  # elements per streamed block: 256 KiB per float64 row
A, B, D, D2 = range(4)  # rows of the block buffer


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


def moments(before: np.ndarray, after: np.ndarray, roundoff) -> Moments:
    """One pass: the sums, max |Δ|, the largest change in rounding units, and bit identity.

    ``roundoff``: (u, smallest subnormal) of the narrower storage dtype, or (None, None).
    """
    unit, subnormal = roundoff
    sums = Moments(rounding_units=0.0 if unit is not None else None)
    width = min(block_rows(before), before.shape[0]) * before.shape[1]
    stack = np.empty((4, width))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _, a, b in blocks(before, after):
            if sums.same_bits:
                sums.same_bits = a.dtype == b.dtype and np.array_equal(_bits(a), _bits(b))
            if a.size:
                _accumulate(sums, a, b, stack, unit, subnormal)
    return sums


def _accumulate(sums: Moments, a: np.ndarray, b: np.ndarray, stack: np.ndarray, unit: float | None,
                subnormal: float | None) -> None:
    """Add one block to ``sums``, in place in ``stack`` (four float64 rows of a block each)."""
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
    sums.d1 += float(d.sum())
    sums.d3 += float(np.dot(squares, d))
    sums.d4 += float(np.dot(squares, squares))
    magnitude = np.abs(d, out=d)
    sums.max_abs = max(sums.max_abs, float(magnitude.max()))
    if unit is not None:  # |Δ| / (u max(|W|, |W'|) + smallest subnormal), reusing the rows
        allowed = np.maximum(np.abs(w, out=w), np.abs(w_new, out=w_new), out=w)
        allowed *= unit
        allowed += subnormal
        sums.rounding_units = max(sums.rounding_units, float(np.divide(magnitude, allowed, out=w_new).max()))


def _bits(array: np.ndarray) -> np.ndarray:
    return array.view(np.dtype(f"u{array.dtype.itemsize}")) if array.dtype.kind in "fc" else array
