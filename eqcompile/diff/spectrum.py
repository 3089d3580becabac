"""Singular values of ΔW = W' − W without forming ΔW: streamed over row blocks of both tensors.

Two settings (:class:`Setting`), chosen by ``eqcompile diff --full-spectrum``:

* ``FAST`` (the default): the whole spectrum (float64 Gram matrix) up to a smaller side of 256;
  above, the top 32 singular values by a randomized subspace iteration in float32 (one power
  iteration: three products with 40 columns, the first (:class:`Sketch`) during the moments' pass,
  so two passes of its own).
  Ranks below 32 (a merged LoRA) are exact; σ_1 is within 2e-3 on a decaying spectrum and, on a
  flat one (noise), a lower bound within 15% (9-13% measured), so the stable rank reads high there
  (tests/test_diff.py, against numpy's SVD).
* ``FULL``: the whole spectrum up to a smaller side of 1024; above, the top 64 in float64 with two
  power iterations (σ_1 to 1e-8 on a decaying spectrum): what ``eqcompile diff`` computed before
  the fast setting. Eigenvalues of a 768 × 768 Gram matrix per matrix make it tens of times slower.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from .moments import Moments, block_rows, blocks

ENERGY = 0.99  # rank_99: components holding this share of ‖ΔW‖_F²
EPS32 = float(np.finfo(np.float32).eps)
GRAM_BLOCK_ELEMENTS = 1 << 18  # elements per row block of ΔWᵀΔW: 2 MiB in float64


@dataclass(frozen=True)
class Setting:
    """How much of the spectrum to compute, and in which precision."""

    exact_max_side: int  # the whole spectrum up to this smaller side
    rank: int  # singular values a randomized SVD resolves above it
    oversampling: int
    power_iterations: int
    dtype: type  # of the randomized sketch's products
    block_elements: int  # per row block of a randomized product with ΔW
    classic: bool  # Halko et al. as before: QR, a last pass σ(QᵀΔW) along the long side; see below


FAST = Setting(exact_max_side=256, rank=32, oversampling=8, power_iterations=1, dtype=np.float32,
               block_elements=1 << 18, classic=False)
FULL = Setting(exact_max_side=1024, rank=64, oversampling=10, power_iterations=2, dtype=np.float64,
               block_elements=1 << 18, classic=True)


@dataclass(frozen=True)
class Spectrum:
    """Singular values of ΔW, summarised."""

    method: str  # "exact" (eigenvalues of the float64 Gram matrix) or "randomized"
    top: float  # σ_1 = ‖ΔW‖_2
    numerical_rank: int  # σ_i above the float rounding floor; a lower bound when == computed
    rank_99: int | None  # fewest components with 99% of ‖ΔW‖_F²; None: more than `computed`
    stable_rank: float  # ‖ΔW‖_F² / ‖ΔW‖_2²
    computed: int  # singular values known: all of them (exact), or the sketch's (randomized)

    @property
    def rank_is_bound(self) -> bool:
        return self.method == "randomized" and self.numerical_rank >= self.computed


class Sketch:
    """ΔW Ω, the randomized SVD's first product, built from row blocks of both tensors as another
    pass (the moments') streams them, so that the spectrum needs one pass less."""

    def __init__(self, shape: tuple[int, int], setting: Setting, seed: int):
        rows, cols = shape
        self.dtype = setting.dtype
        self.right = random_test_matrix(cols, setting, seed)
        self.product = np.empty((rows, self.right.shape[1]), self.dtype)
        self.seconds = 0.0  # spent here: the spectrum's share of the pass
        self._buffer = np.empty(0, self.dtype)

    @classmethod
    def of(cls, shape: tuple[int, int], setting: Setting, seed: int) -> Sketch | None:
        """A sketch where :func:`spectrum` would take the randomized path without transposing; else None."""
        return cls(shape, setting, seed) if min(shape) > setting.exact_max_side and not setting.classic else None

    def add(self, start: int, a: np.ndarray, b: np.ndarray) -> None:
        """Rows ``start:start + len(a)`` of ΔW Ω, from those rows of both tensors as stored."""
        began = time.perf_counter()
        if self._buffer.size < a.size:
            self._buffer = np.empty(a.size, self.dtype)
        d = np.subtract(b, a, out=self._buffer[:a.size].reshape(a.shape), dtype=self.dtype, casting="unsafe")
        np.matmul(d, self.right, out=self.product[start:start + len(d)])
        self.seconds += time.perf_counter() - began


def random_test_matrix(cols: int, setting: Setting, seed: int) -> np.ndarray:
    """Ω [cols, rank + oversampling], standard normal from ``seed``: the same whether the first
    product is taken by a :class:`Sketch` or by :func:`randomized_singular_values` itself."""
    width = min(cols, setting.rank + setting.oversampling)
    return np.random.default_rng(seed).standard_normal((cols, width)).astype(setting.dtype)


def spectrum(before: np.ndarray, after: np.ndarray, sums: Moments, unit: float, seed: int,
             setting: Setting = FAST, sketch: Sketch | None = None) -> Spectrum:
    """Singular values of ΔW: exact for a small side, randomized above, summarised.

    ``sketch``: ΔW Ω already computed (:meth:`Sketch.of` with the same shape, setting and seed).
    """
    rows, cols = before.shape
    if min(rows, cols) <= setting.exact_max_side:
        if rows < cols:  # the Gram matrix of the smaller side; σ(ΔWᵀ) = σ(ΔW)
            before, after = before.T, after.T
        values, method = gram_singular_values(before, after), "exact"
    else:
        values, method = randomized_singular_values(before, after, setting, seed, sketch), "randomized"
    top = float(values[0])
    # σ below this is float rounding: numpy's default for float32 data, or the rounding of the stored
    # values themselves (u |W'_ij| per element has a spectral norm near u rms(W') (√m + √n))
    floor = max(max(rows, cols) * EPS32 * top,
                2 * unit * math.sqrt(sums.bb / (rows * cols)) * (math.sqrt(rows) + math.sqrt(cols)))
    energy = np.cumsum(values.astype(np.float64) ** 2)
    reached = np.nonzero(energy >= ENERGY * sums.dd)[0]
    return Spectrum(method=method, top=top, numerical_rank=int(np.count_nonzero(values > floor)),
                    rank_99=int(reached[0]) + 1 if reached.size else None,
                    stable_rank=sums.dd / top**2 if top else 0.0, computed=len(values))


def _delta_blocks(before: np.ndarray, after: np.ndarray, dtype, elements: int):
    """Row blocks of ΔW in ``dtype`` (both converted before the subtraction), each overwriting the last."""
    buffer = np.empty(min(block_rows(before, elements), before.shape[0]) * before.shape[1], dtype)
    for start, a, b in blocks(before, after, elements):
        # float64: exact (both converted first); float32: one rounding, far below the sketch's error
        yield start, np.subtract(b, a, out=buffer[:a.size].reshape(a.shape), dtype=dtype, casting="unsafe")


def gram_singular_values(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """All singular values, as square roots of the eigenvalues of ΔWᵀΔW (float64, streamed).

    Resolves σ_i down to about 1e-8 σ_1, far below the float32 rounding floor.
    """
    gram = np.zeros((before.shape[1],) * 2)
    for _, d in _delta_blocks(before, after, np.float64, GRAM_BLOCK_ELEMENTS):
        gram += d.T @ d
    return _gram_singular_values(gram)


def randomized_singular_values(before: np.ndarray, after: np.ndarray, setting: Setting, seed: int,
                               sketch: Sketch | None = None) -> np.ndarray:
    """The top singular values by a randomized subspace iteration (Halko, Martinsson & Tropp 2011).

    ΔW is never formed: each product with it streams the row blocks of both tensors. V = Ω is
    random; ``power_iterations`` times, the right subspace is refined through V = orth(ΔWᵀ orth(ΔW V));
    the values are those of ΔW V (Rayleigh–Ritz, 1 + 2q passes over the tensors as stored, orth by
    :func:`orthonormal`), or, ``classic``, those of Qᵀ ΔW, Q = orth(ΔW V) by QR, along the long side
    (one pass more; LAPACK's QR of a tall, thin matrix costs 6-15x the Gram matrix's eigenvectors).
    ``sketch`` holds the first product, ΔW Ω, when another pass has computed it.
    """
    if setting.classic and before.shape[0] < before.shape[1]:  # σ(ΔWᵀ) = σ(ΔW)
        before, after = before.T, after.T
    rows, cols = before.shape
    dtype = setting.dtype

    def times(right: np.ndarray) -> np.ndarray:  # ΔW @ right
        out = np.empty((rows, right.shape[1]), dtype)
        for start, d in _delta_blocks(before, after, dtype, setting.block_elements):
            np.matmul(d, right, out=out[start:start + len(d)])
        return out

    def transposed_times(left: np.ndarray) -> np.ndarray:  # ΔWᵀ @ left
        out = np.zeros((cols, left.shape[1]), dtype)
        for start, d in _delta_blocks(before, after, dtype, setting.block_elements):
            out += d.T @ left[start:start + len(d)]
        return out

    def orth(matrix: np.ndarray) -> np.ndarray:
        return np.linalg.qr(matrix)[0] if setting.classic else orthonormal(matrix)

    product = times(random_test_matrix(cols, setting, seed)) if sketch is None else sketch.product
    width = product.shape[1]
    for _ in range(setting.power_iterations):
        right = orth(transposed_times(orth(product)))
        product = times(right)
    if setting.classic:
        product = transposed_times(orth(product))
    values = np.linalg.svd(product, compute_uv=False) if setting.classic else gram_values(product)
    values = np.concatenate([values, np.zeros(width - len(values), values.dtype)])  # directions dropped by orth
    return values[:min(setting.rank, len(values))]


def gram_values(matrix: np.ndarray) -> np.ndarray:
    """Singular values of a tall, thin matrix from its float64 Gram matrix's eigenvalues, largest first:
    resolved down to 1e-8 of the largest, and 2.6x (3072 rows, 40 columns) to 8x (50257 rows) less CPU
    than LAPACK's float32 SVD of the matrix itself."""
    wide = matrix.astype(np.float64)
    return _gram_singular_values(wide.T @ wide)


def _gram_singular_values(gram: np.ndarray) -> np.ndarray:
    """σ of a matrix from its Gram matrix ΔᵀΔ: square roots of the eigenvalues, largest first (rounding's
    negative eigenvalues taken as 0)."""
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1], 0, None))


def orthonormal(matrix: np.ndarray, drop: float = 1e-10) -> np.ndarray:
    """Orthonormal columns spanning ``matrix``'s, from the eigenvectors of its float64 Gram matrix.

    Directions whose eigenvalue is under ``drop`` times the largest (singular values under 1e-5 of
    the largest, below every rounding floor of :func:`spectrum`) are left out: their eigenvectors are
    too inaccurate to keep the basis orthogonal. A singular value of ΔW in them counts as zero.
    """
    wide = matrix.astype(np.float64)
    eigenvalues, vectors = np.linalg.eigh(wide.T @ wide)
    keep = eigenvalues > drop * max(eigenvalues[-1], 0.0)
    return (wide @ (vectors[:, keep] / np.sqrt(eigenvalues[keep]))).astype(matrix.dtype)
