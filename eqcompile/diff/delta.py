"""How far one weight moved, and in what form: statistics of ΔW = W' − W for one pair of tensors.

Both tensors are streamed in row blocks, once for every sum in float64 (:mod:`.moments`; a matrix's
randomized spectrum takes its first product in the same pass), then, for a changed matrix, for the
rest of its spectrum (:mod:`.spectrum`), so memory stays a few blocks whatever
the tensors' size; with memmapped inputs nothing else is allocated. Every statistic is invariant
under transposition, so a parameter stored ``[out, in]`` is measured as stored.

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
import time
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from .clock import Clock
from .moments import Moments, blocks, moments
from .spectrum import FAST, Setting, Sketch, Spectrum, spectrum

__all__ = ["Delta", "Form", "IDENTICAL", "Spectrum", "as_matrix", "matrix_shape", "measure", "narrower"]

NOISE_EDGE = 1.15  # noise: σ_1 ≤ this × the Marchenko–Pastur edge (measured ≤ 1.05 for Gaussian)
NOISE_MIN_ELEMENTS = 64  # fewer elements cannot tell noise from a small update


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
            seed: int = 0, setting: Setting = FAST, clock: Clock | None = None) -> Delta:
    """Compare two matrices of the same shape (stored as ``dtypes``), reading them block by block.

    ``seed`` fixes the random sketch of a randomized SVD, so that reports are reproducible;
    ``setting`` says how much of the spectrum to compute; ``clock`` is told the time of each phase.
    """
    clock = clock or Clock()
    if before.shape != after.shape or before.ndim != 2:
        raise ValueError(f"measure needs two matrices of one shape, got {before.shape} and {after.shape}")
    # the spectrum's first product rides on this pass, unless the pair is likely a cast (no spectrum)
    sketch = Sketch.of(before.shape, setting, seed) if dtypes[0] == dtypes[1] else None
    began = time.perf_counter()
    sums = moments(before, after, _roundoff(dtypes), sketch)
    clock.add("moments", time.perf_counter() - began - (sketch.seconds if sketch else 0.0))
    if sketch is not None:
        clock.add("spectra", sketch.seconds)
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
    with clock("spectra"):
        found = spectrum(before, after, sums, unit, seed, setting, sketch)
    return Delta(_shape_of_change(found, sums, before.shape), **common, scale=None, spectrum=found)


def _shape_of_change(spectrum: Spectrum, sums: Moments, shape: tuple[int, int]) -> str:
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


def _residual_norm(before: np.ndarray, after: np.ndarray, scale: float) -> float:
    total = 0.0
    for _, a, b in blocks(before, after):
        r = b.astype(np.float64)
        r -= scale * a.astype(np.float64)
        total += float(np.vdot(r, r))
    return math.sqrt(total)
