"""Summary statistics of a weight's numbers, for the appendix's symbol tables (an analysis: no emitter)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

STATISTICS_CHUNK = 1 << 20  # values converted to float64 at a time


@dataclass(frozen=True)
class Statistics:
    """Summary of a weight's numbers, computed in float64."""

    frobenius: float
    mean: float
    std: float  # population standard deviation
    min: float
    max: float

    @classmethod
    def of(cls, array: np.ndarray) -> Statistics | None:
        """One pass over ``array`` in float64 chunks (memory: one chunk), merged with Chan's formula."""
        flat = np.ravel(array)
        if flat.size == 0:
            return None
        count, mean, m2, squares = 0, 0.0, 0.0, 0.0  # m2: sum of squared deviations from the mean
        for start in range(0, flat.size, STATISTICS_CHUNK):
            chunk = flat[start:start + STATISTICS_CHUNK].astype(np.float64)
            chunk_squares = float(chunk @ chunk)
            chunk_mean = float(chunk.sum()) / chunk.size
            chunk_m2 = max(chunk_squares - chunk.size * chunk_mean * chunk_mean, 0.0)
            delta, total = chunk_mean - mean, count + chunk.size
            m2 += chunk_m2 + delta * delta * count * chunk.size / total
            mean += delta * chunk.size / total
            squares += chunk_squares
            count = total
        return cls(math.sqrt(squares), mean, math.sqrt(m2 / count), float(flat.min()), float(flat.max()))

    def values(self) -> tuple[float, ...]:
        """In the symbol table's column order."""
        return self.frobenius, self.mean, self.std, self.min, self.max
