"""How far one weight moved, and in what form: statistics of ΔW = W' − W for one pair of tensors.

Both tensors are streamed in row blocks converted to float64 (the difference of two float32 numbers
is exact in float64), so memory stays a few blocks whatever the tensors' size; with memmapped
inputs nothing else is allocated. Every statistic is invariant under transposition, so a
parameter stored ``[out, in]`` is measured as stored.

The form of the change is named by the first test that holds:

* ``identical``: the same bits;
* ``cast``: the storage dtypes differ and every element moved by at most one unit in the last place
  of the narrower dtype (``rounding``: the same, with equal dtypes);
* ``scale``: W' = c W up to the rounding of the stored values (‖W' − c W‖_F ≤ 2u ‖W'‖_F, u the unit
  roundoff of the narrower dtype) with c further from 1 than rounding;
* ``low-rank``: ΔW has numerical rank r below half its smaller side (a merged LoRA is ΔW = B A);
* ``noise``: ΔW looks i.i.d. Gaussian: its top singular value sits at the Marchenko–Pastur edge
  σ(√m + √n) of a random matrix with the same entry variance, and its kurtosis is 3 (within three
  standard errors; a few Adam steps, for contrast, give about 1.5);
* ``dense``: any other change (a full-rank update, e.g. training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

BLOCK_ELEMENTS = 1 << 18  # elements per streamed block: 2 MiB in float64
EXACT_MAX_SIDE = 1024  # the whole spectrum up to this smaller side; a randomized SVD above it
SKETCH_RANK = 64  # singular values a randomized SVD resolves
OVERSAMPLING = 10
POWER_ITERATIONS = 2
ENERGY = 0.99  # rank_99: components holding this share of ‖ΔW‖_F²
NOISE_EDGE = 1.15  # noise: σ_1 ≤ this × the Marchenko–Pastur edge (measured ≤ 1.05 for Gaussian)
NOISE_MIN_ELEMENTS = 64  # fewer elements cannot tell noise from a small update
EPS32 = float(np.finfo(np.float32).eps)
class Form(StrEnum):
    """What a change looks like; each report words it its own way (text, LaTeX), JSON by value."""

    IDENTICAL = "identical"
    CAST = "cast"  # stored in another dtype, values rounded to it
    ROUNDING = "rounding"  # same dtype, changes within the rounding of the narrower one
    SCALE = "scale"  # W' = c W
    LOW_RANK = "low-rank"  # ΔW = B A of small rank
    NOISE = "noise"  # ΔW like independent Gaussian entries
    DENSE = "dense"  # anything else


IDENTICAL = Form.IDENTICAL

# safetensors storage dtype -> (unit roundoff of round-to-nearest, smallest positive subnormal)
ROUNDING = {"F64": (2.0**-53, 2.0**-1074), "F32": (2.0**-24, 2.0**-149),
            "BF16": (2.0**-8, 2.0**-133), "F16": (2.0**-11, 2.0**-24)}


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


@dataclass(frozen=True)
class Delta:
    """The change of one tensor (or one parameter's slice of it)."""

    form: Form
    count: int  # number of elements
    norm: float  # ‖ΔW‖_F
    base_norm: float | None  # ‖W‖_F; None when identical by hash (not read)
    max_abs: float  # max |ΔW_ij|
    cosine: float | None  # ⟨W, W'⟩ / (‖W‖_F ‖W'‖_F); None when either is zero
    rounding_units: float | None  # max |ΔW_ij| / (u max(|W_ij|, |W'_ij|)), u of the narrower dtype
    scale: float | None  # c of W' = c W, when that is the form
    kurtosis: float | None  # of ΔW's entries (3 for Gaussian noise)
    spectrum: Spectrum | None  # for changed matrices that are not a cast, rounding or scale

    @classmethod
    def unchanged(cls, count: int) -> Delta:
        """Bit-identical by hash: nothing to measure (‖W‖ itself is not read)."""
        return cls(IDENTICAL, count, norm=0.0, base_norm=None, max_abs=0.0, cosine=1.0, rounding_units=None,
                   scale=None, kurtosis=None, spectrum=None)

    @property
    def relative(self) -> float:
        """‖ΔW‖_F / ‖W‖_F (infinite when W = 0 and W' is not)."""
        if self.norm == 0:
            return 0.0
        return self.norm / self.base_norm if self.base_norm else math.inf

    @property
    def rms(self) -> float:
        """Root mean square of ΔW's entries (the σ of noise)."""
        return self.norm / math.sqrt(self.count) if self.count else 0.0


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """How a tensor is seen as a matrix: a vector is one row, higher ranks keep their first axis."""
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) < 2:
        return 1, math.prod(shape)
    return shape[0], math.prod(shape[1:])


def as_matrix(array: np.ndarray) -> np.ndarray:
    return array.reshape(matrix_shape(array.shape))


def measure(before: np.ndarray, after: np.ndarray, dtypes: tuple[str, str] = ("F32", "F32"),
            seed: int = 0) -> Delta:
    """Compare two matrices of the same shape (stored as ``dtypes``), reading them block by block.

    ``seed`` fixes the random sketch of a randomized SVD, so that reports are reproducible.
    """
    if before.shape != after.shape or before.ndim != 2:
        raise ValueError(f"measure needs two matrices of one shape, got {before.shape} and {after.shape}")
    sums = _moments(before, after, _roundoff(dtypes))
    count = before.size
    norm, base_norm = math.sqrt(sums.dd), math.sqrt(sums.aa)
    cosine = sums.ab / math.sqrt(sums.aa * sums.bb) if sums.aa > 0 and sums.bb > 0 else None
    common = dict(count=count, norm=norm, base_norm=base_norm, max_abs=sums.max_abs, cosine=cosine,
                  rounding_units=sums.rounding_units, kurtosis=sums.kurtosis(count))
    if sums.same_bits:
        form = IDENTICAL if dtypes[0] == dtypes[1] else Form.CAST
        return Delta(form, **common, scale=None, spectrum=None)
    finite = all(map(math.isfinite, (sums.aa, sums.bb, sums.dd)))
    if finite and sums.rounding_units is not None and sums.rounding_units <= 2:  # within one ulp
        return Delta(Form.CAST if dtypes[0] != dtypes[1] else Form.ROUNDING, **common, scale=None, spectrum=None)
    unit = _roundoff(dtypes)[0] or ROUNDING["F32"][0]
    if finite and cosine is not None and 1 - cosine <= max(4 * unit**2, 1e-9):  # cheap test, then exact
        scale = sums.ab / sums.aa
        if abs(scale - 1) > 4 * unit and _residual_norm(before, after, scale) <= 2 * unit * math.sqrt(sums.bb):
            return Delta(Form.SCALE, **common, scale=scale, spectrum=None)
    rows, cols = before.shape
    if not finite or min(rows, cols) < 2:
        return Delta(Form.DENSE, **common, scale=None, spectrum=None)
    spectrum = _spectrum(before, after, sums, unit, seed)
    return Delta(_shape_of_change(spectrum, sums, before.shape), **common, scale=None, spectrum=spectrum)


def _shape_of_change(spectrum: Spectrum, sums: _Moments, shape: tuple[int, int]) -> str:
    rows, cols = shape
    if not spectrum.rank_is_bound and spectrum.numerical_rank < min(rows, cols) / 2:
        return Form.LOW_RANK
    count = rows * cols
    edge = math.sqrt(sums.dd / count) * (math.sqrt(rows) + math.sqrt(cols))
    kurtosis = sums.kurtosis(count)
    if (count >= NOISE_MIN_ELEMENTS and kurtosis is not None and spectrum.top <= NOISE_EDGE * edge
            and abs(kurtosis - 3) <= max(0.3, 3 * math.sqrt(24 / count))):  # 3 standard errors
        return Form.NOISE
    return Form.DENSE


def narrower(dtypes: tuple[str, str]) -> str | None:
    """The float storage dtype with the larger unit roundoff; None if one of them is not a float."""
    if not all(d in ROUNDING for d in dtypes):
        return None
    return max(dtypes, key=lambda d: ROUNDING[d])


def _roundoff(dtypes: tuple[str, str]) -> tuple[float, float] | tuple[None, None]:
    """(u, smallest subnormal) of the narrower storage dtype; (None, None) if one is not a float."""
    dtype = narrower(dtypes)
    return ROUNDING[dtype] if dtype else (None, None)


def _blocks(before: np.ndarray, after: np.ndarray):
    """Row blocks of both matrices as they are stored (float32 or integers)."""
    rows = _block_rows(before)
    for start in range(0, before.shape[0], rows):
        yield start, np.asarray(before[start:start + rows]), np.asarray(after[start:start + rows])


def _block_rows(matrix: np.ndarray) -> int:
    return max(1, BLOCK_ELEMENTS // max(1, matrix.shape[1]))


def _buffers(matrix: np.ndarray, count: int) -> list[np.ndarray]:
    """Flat float64 buffers of one block each, refilled block after block: a fresh 2 MiB array per
    block gets fresh pages (the allocator returns them to the system), and faulting those in cost
    more than the arithmetic on them."""
    size = min(_block_rows(matrix), matrix.shape[0]) * matrix.shape[1]
    return [np.empty(size) for _ in range(count)]


def _column_major(*blocks: np.ndarray) -> bool:
    """Whether numpy lays out the result of ``astype`` or arithmetic on ``blocks`` column by column
    (its order "K": when every one of them is a transposed view)."""
    return all(b.shape[0] > 1 and b.shape[1] > 1 and abs(b.strides[0]) < abs(b.strides[1]) for b in blocks)


def _view(buffer: np.ndarray, shape: tuple[int, int], column_major: bool) -> np.ndarray:
    """The start of ``buffer`` as a contiguous ``shape`` array, in the memory order numpy would give a
    new result: sums add in memory order, so they stay the same to the last bit."""
    rows, cols = shape
    flat = buffer[:rows * cols]
    return flat.reshape(cols, rows).T if column_major else flat.reshape(rows, cols)


def _float64(block: np.ndarray, buffer: np.ndarray) -> np.ndarray:
    """``block.astype(np.float64)``, written into ``buffer``."""
    out = _view(buffer, block.shape, _column_major(block))
    np.copyto(out, block, casting="unsafe")
    return out


def _delta_blocks(before: np.ndarray, after: np.ndarray):
    """Row blocks of ΔW in float64 (both converted before the subtraction), each overwriting the last."""
    [buffer] = _buffers(before, 1)
    for start, a, b in _blocks(before, after):
        yield start, np.subtract(b, a, out=_view(buffer, a.shape, _column_major(a, b)), dtype=np.float64)


@dataclass
class _Moments:
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


def _moments(before: np.ndarray, after: np.ndarray, roundoff) -> _Moments:
    """One pass: the sums, max |Δ|, the largest change in rounding units, and bit identity."""
    sums = _Moments(rounding_units=0.0 if roundoff[0] is not None else None)
    buffers = _buffers(before, 4)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _, a, b in _blocks(before, after):
            _accumulate(sums, a, b, *roundoff, buffers)
    return sums


def _accumulate(sums: _Moments, a: np.ndarray, b: np.ndarray, unit: float | None, subnormal: float | None,
                buffers: list[np.ndarray]) -> None:
    """Add one block to the sums, in place in four float64 ``buffers`` of a block each."""
    if sums.same_bits:
        sums.same_bits = a.dtype == b.dtype and np.array_equal(_bits(a), _bits(b))
    if not a.size:
        return
    column_major = _column_major(a, b)
    a, b = _float64(a, buffers[0]), _float64(b, buffers[1])
    sums.aa += float(np.vdot(a, a))
    sums.bb += float(np.vdot(b, b))
    sums.ab += float(np.vdot(a, b))
    d = np.subtract(b, a, out=_view(buffers[2], a.shape, column_major))
    sums.dd += float(np.vdot(d, d))
    sums.d1 += float(d.sum())
    squares = np.multiply(d, d, out=_view(buffers[3], a.shape, column_major))
    sums.d3 += float(np.vdot(squares, d))
    sums.d4 += float(np.vdot(squares, squares))
    magnitude = np.abs(d, out=d)
    sums.max_abs = max(sums.max_abs, float(magnitude.max()))
    if unit is not None:  # |Δ| / (u max(|W|, |W'|) + smallest subnormal)
        allowed = np.maximum(np.abs(a, out=a), np.abs(b, out=b), out=a)
        allowed *= unit
        allowed += subnormal
        sums.rounding_units = max(sums.rounding_units, float(np.divide(magnitude, allowed, out=b).max()))


def _bits(array: np.ndarray) -> np.ndarray:
    return array.view(np.dtype(f"u{array.dtype.itemsize}")) if array.dtype.kind in "fc" else array


def _residual_norm(before: np.ndarray, after: np.ndarray, scale: float) -> float:
    total = 0.0
    scaled, residual = _buffers(before, 2)
    for _, a, b in _blocks(before, after):
        product = _float64(a, scaled)
        product *= scale
        r = _float64(b, residual)
        r -= product
        total += float(np.vdot(r, r))
    return math.sqrt(total)


def _spectrum(before: np.ndarray, after: np.ndarray, sums: _Moments, unit: float, seed: int) -> Spectrum:
    """Singular values of ΔW: exact for a small side, randomized (a few power iterations) above."""
    if before.shape[0] < before.shape[1]:  # stream along the long side; σ(ΔWᵀ) = σ(ΔW)
        before, after = before.T, after.T
    rows, cols = before.shape
    if cols <= EXACT_MAX_SIDE:
        values, method = _gram_singular_values(before, after), "exact"
    else:
        values, method = _randomized_singular_values(before, after, SKETCH_RANK, seed), "randomized"
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


def _gram_singular_values(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """All singular values, as square roots of the eigenvalues of ΔWᵀΔW (float64, streamed).

    Resolves σ_i down to about 1e-8 σ_1, far below the float32 rounding floor.
    """
    gram = np.zeros((before.shape[1],) * 2)
    for _, d in _delta_blocks(before, after):
        gram += d.T @ d
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1], 0, None))


def _randomized_singular_values(before: np.ndarray, after: np.ndarray, rank: int, seed: int) -> np.ndarray:
    """The top singular values by a randomized range finder (Halko, Martinsson & Tropp 2011).

    ΔW is never formed: each product with it streams the row blocks of both tensors.
    """
    rows, cols = before.shape
    width = min(cols, rank + OVERSAMPLING)
    omega = np.random.default_rng(seed).standard_normal((cols, width))

    def times(right: np.ndarray) -> np.ndarray:  # ΔW @ right
        out = np.empty((rows, right.shape[1]))
        for start, d in _delta_blocks(before, after):
            out[start:start + len(d)] = d @ right
        return out

    def transposed_times(left: np.ndarray) -> np.ndarray:  # ΔWᵀ @ left
        out = np.zeros((cols, left.shape[1]))
        for start, d in _delta_blocks(before, after):
            out += d.T @ left[start:start + len(d)]
        return out

    basis = np.linalg.qr(times(omega))[0]
    for _ in range(POWER_ITERATIONS):
        basis = np.linalg.qr(times(np.linalg.qr(transposed_times(basis))[0]))[0]
    values = np.linalg.svd(transposed_times(basis).T, compute_uv=False)
    return values[:min(rank, len(values))]
