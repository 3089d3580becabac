"""GPT-J's rotary embedding, as its code writes it: ``rotate_every_two`` (the even and odd features
of each head's first d_rot, stacked as (-odd, even) and flattened) times a sin table, plus the
features times a cos table, each angle repeated for both features of its pair (``repeat_interleave``).
GPT-J rotates before it moves the heads forward (``[1, n, heads, w]``), so the views it rotates
are rows-first :class:`~eqcompile.tracer.values.Heads`.

A mixin of :class:`~eqcompile.tracer.lower.StageLowering`: its handlers take the steps
``rotate_every_two`` adds; ``lower.py`` hands over the step-2 slices and the final sum and concat.
"""

from __future__ import annotations

import numpy as np

from ..ops import d_head
from ..ops.interleaved_rope import InterleavedRoPE
from ..ops.rope import rope_frequencies
from .values import Heads, Partial, SplitRows

TOLERANCE = 1e-6  # the tables are float32: cos and sin of angles p θ, both computed as torch computes them


def interleaved_kind(values: np.ndarray, n: int, base: float | None, width: int, scaling=None) -> str | None:
    """"cos_pairs" or "sin_pairs" when ``values`` (n rows of ``width``, any size-1 axes) is that of
    the angles p_i θ_k with each angle repeated for the two features of its pair (θ and the table
    as ``scaling`` rescales them); None otherwise."""
    if base is None or values.size != n * width or values.shape[-1] != width:
        return None
    theta, amplitude = (scaling.frequencies(base, width), scaling.amplitude) if scaling else \
        (rope_frequencies(base, width), 1.0)
    angles = np.repeat(np.arange(n, dtype=np.float32)[:, None] * theta, 2, axis=-1)
    table = values.reshape(n, width)
    for kind, function in (("cos_pairs", np.cos), ("sin_pairs", np.sin)):
        if np.max(np.abs(table - amplitude * function(angles))) <= TOLERANCE:
            return kind
    return None


def table_base(values: np.ndarray, n: int, width: int) -> float | None:
    """The base b of θ_k = b^(-2k/width) a rotary table was made with, for a model that hard-codes
    it (GPT-J: 10000): θ_1 read off position 1, the base rounded to the fewest significant digits
    (2, 3 or 4) whose table matches every entry. A cosine table cannot tell 9998 from 10000 (both
    match): the rounder base is taken. A table of anything else matches no base."""
    if n < 2 or width < 4 or values.size != n * width:
        return None
    row = np.clip(values.reshape(n, width)[1].astype(np.float64), -1, 1)
    guesses = [angles[k] ** (-width / 2) for angles in (np.arccos(row), np.arcsin(row))
               for k in (1, 2, width // 2 + 1) if k < width and 0 < angles[k] < 1]  # the pairs', or halves' θ_1
    for digits in (2, 3, 4):
        for guess in guesses:
            base = float(f"{guess:.{digits}g}")
            if interleaved_kind(values, n, base, width) or _half_split(values, n, base, width):
                return base
    return None


def _half_split(values, n, base, width) -> bool:
    from .statics import rotary_kind

    return rotary_kind(values, n, base, width) is not None


class InterleavedRotary:
    """The handlers of ``rotate_every_two`` (see the module docstring)."""

    def pairs_part(self, x, start, end):
        """x[..., 0::2] or x[..., 1::2]: the even or odd features of a head's rotated part."""
        x = x.as_heads() if isinstance(x, SplitRows) else x
        if not isinstance(x, Heads) or start not in (0, 1) or (end is not None and end < x.stop - x.start):
            return NotImplemented
        return Partial("odd" if start else "even", (x,))

    def _stack(self, node, items, dim=0):  # (-odd, even) stacked on a new last axis
        rank = len(node.meta["val"].shape)
        if dim not in (-1, rank - 1) or len(items) != 2:
            return NotImplemented
        first, second = items
        if isinstance(first, Partial) and first.kind == "negated" and isinstance(first.parts[0], Partial) and \
                first.parts[0].kind == "odd" and isinstance(second, Partial) and second.kind == "even" and \
                first.parts[0].parts[0] == second.parts[0]:
            return Partial("every_two_stacked", second.parts)
        return NotImplemented

    def _flatten(self, node, x, start=0, end=-1):
        if isinstance(x, Partial) and x.kind == "every_two_stacked" and start in (-2, len(node.args[0].meta["val"].shape) - 2):
            return Partial("rotate_every_two", x.parts)
        return NotImplemented

    def interleaved(self, view: Heads):
        """cos-term + sin-term of ``view``: the whole head turned, or (a part) waiting for the concat."""
        if not view.whole:
            return Partial("rotated_pairs", (view,))
        rotated = self.context.rotated(InterleavedRoPE(view.base, self.names.frequencies(view.width),
                                                       self.names.positions(), d_head), whole=True)
        return Heads(rotated, view.heads, view.width, 0, view.width, rows_first=view.rows_first)

    def interleaved_with_rest(self, first, second):
        """concat(rotated pairs of the first d_rot features, the other features): InterleavedRoPE."""
        view = first.parts[0]
        if not (view.base == second.base and view.start == 0 and second.start == view.stop and
                second.stop == view.width):
            return NotImplemented
        rotated = self.context.rotated(InterleavedRoPE(view.base, self.names.frequencies(view.stop, partial=True),
                                                       self.names.positions(), d_head), whole=False)
        return Heads(rotated, view.heads, view.width, 0, view.width, rows_first=view.rows_first)
