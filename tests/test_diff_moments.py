"""The one-pass statistics of ΔW against a float64 reference of whole arrays, and the randomized
spectrum's first product taken during that pass against a separate pass."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eqcompile.diff import delta, spectrum
from eqcompile.diff.moments import BLOCK_ELEMENTS, moments

ROUNDOFF = {np.float32: delta.ROUNDING["F32"], np.float16: delta.ROUNDING["F16"]}


def reference(before: np.ndarray, after: np.ndarray, unit: float, subnormal: float) -> dict:
    """Every statistic from whole float64 arrays: sums by math.fsum (correctly rounded), maxima by
    the formula the report states, |Δ| / (u max(|W|, |W'|) + smallest subnormal)."""
    w, w_new = before.astype(np.float64).ravel(), after.astype(np.float64).ravel()
    d = w_new - w
    allowed = np.maximum(np.abs(w), np.abs(w_new)) * unit + subnormal
    return {"aa": math.fsum(w * w), "bb": math.fsum(w_new * w_new), "ab": math.fsum(w * w_new),
            "dd": math.fsum(d * d), "d1": math.fsum(d), "d3": math.fsum(d**3), "d4": math.fsum(d**4),
            "max_abs": float(np.abs(d).max()), "rounding_units": float((np.abs(d) / allowed).max())}


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("scale", [0.02, 1e-30, 1e4])
def test_moments_match_a_float64_reference(dtype, scale):
    """Over several blocks: the maxima bit for bit (also for tiny values, where the rounding test's
    subnormal term counts), the sums to 1e-12 of ‖·‖² (Σ Δ and Σ Δ³ to 1e-12 of their scale)."""
    rng = np.random.default_rng(0)
    shape = (3 * BLOCK_ELEMENTS // 700 + 5, 700)
    before = (scale * rng.standard_normal(shape)).astype(dtype)
    after = (before + scale * 1e-3 * rng.standard_normal(shape)).astype(dtype)
    after[::7] = np.nextafter(before[::7], dtype(np.inf))  # rows changed by one unit in the last place
    after[3] = before[3]
    unit, subnormal = ROUNDOFF[dtype]
    found, expected = moments(before, after, (unit, subnormal)), reference(before, after, unit, subnormal)
    assert found.max_abs == expected["max_abs"] and found.rounding_units == expected["rounding_units"]
    for name in ("aa", "bb", "ab", "dd", "d4"):
        assert getattr(found, name) == pytest.approx(expected[name], rel=1e-12), name
    spread = math.sqrt(expected["dd"] * before.size)  # |Σ Δ| ≤ √(n ‖Δ‖²)
    assert found.d1 == pytest.approx(expected["d1"], abs=1e-12 * spread)
    assert found.d3 == pytest.approx(expected["d3"], abs=1e-12 * math.sqrt(expected["d4"] * expected["dd"]))


@pytest.mark.parametrize("row", [0, -1])
def test_a_nan_makes_the_maxima_nan_wherever_it_is(row):
    """Not only when it falls in the first block (Python's max keeps its first argument against NaN)."""
    rng = np.random.default_rng(1)
    before = rng.standard_normal((2 * BLOCK_ELEMENTS // 500 + 3, 500)).astype(np.float32)
    after = before + np.float32(1e-3)
    after[row, 7] = np.nan
    found = moments(before, after, ROUNDOFF[np.float32])
    assert math.isnan(found.max_abs) and math.isnan(found.rounding_units)


def test_the_sketch_taken_during_the_moments_pass_gives_the_separate_passs_spectrum():
    """ΔW Ω computed block by block beside the moments (each block of ΔW rounded to float32 as the
    spectrum's own pass rounds it) agrees with a separate pass to float32 rounding."""
    rng = np.random.default_rng(2)
    before = (0.02 * rng.standard_normal((900, 600))).astype(np.float32)
    after = (before + 0.01 * rng.standard_normal((900, 5)) @ rng.standard_normal((5, 600))
             + 1e-4 * rng.standard_normal((900, 600))).astype(np.float32)
    sketch = spectrum.Sketch.of(before.shape, spectrum.FAST, seed=0)
    sums = moments(before, after, ROUNDOFF[np.float32], sketch)
    fused = spectrum.spectrum(before, after, sums, 2.0**-24, 0, spectrum.FAST, sketch)
    separate = spectrum.spectrum(before, after, sums, 2.0**-24, 0, spectrum.FAST)
    assert fused.method == separate.method == "randomized"
    assert fused.top == pytest.approx(separate.top, rel=1e-5)
    assert fused.stable_rank == pytest.approx(separate.stable_rank, rel=1e-5)
    assert (fused.numerical_rank, fused.rank_99) == (separate.numerical_rank, separate.rank_99)
    exact = np.linalg.svd(after.astype(np.float64) - before, compute_uv=False)
    assert fused.top == pytest.approx(exact[0], rel=2e-3)
    assert spectrum.Sketch.of((900, 200), spectrum.FAST, 0) is None  # the exact spectrum needs none
    assert spectrum.Sketch.of((900, 600), spectrum.FULL, 0) is None  # nor does --full-spectrum's QR path


def test_the_sketch_resolves_a_steep_spectrum_down_to_the_rank_floor():
    """σ falling from 1 to 1e-4 over the top 40: all 32 computed values stay above the rounding
    floor, as numpy's SVD says (a power iteration without orthonormalising between its products,
    whose subspace holds σ² instead of σ, counted 23)."""
    rng = np.random.default_rng(3)
    rows, cols = 600, 400
    before = (0.02 * rng.standard_normal((rows, cols))).astype(np.float32)
    left, right = (np.linalg.qr(rng.standard_normal((side, cols)))[0] for side in (rows, cols))
    sigma = 1e-2 * np.concatenate([np.logspace(0, -4, 40), np.zeros(cols - 40)])
    after = (before + (left * sigma) @ right.T).astype(np.float32)
    found = delta.measure(before, after).spectrum
    exact = np.linalg.svd(after.astype(np.float64) - before, compute_uv=False)
    assert found.method == "randomized" and found.numerical_rank == found.computed == 32
    assert np.count_nonzero(exact[:32] > rows * spectrum.EPS32 * exact[0]) == 32
    assert found.top == pytest.approx(exact[0], rel=1e-6)
