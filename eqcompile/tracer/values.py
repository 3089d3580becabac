"""What a graph node stands for while the tracer lowers it.

A node is either a matrix expression of the residual stream's shape (``Stream``: torch's
``[1, n, w]``), a per-head view of one (``Heads``: ``[1, heads, n, stop - start]``), a tensor that
depends on the sequence length only (``Static``: positions, masks, rotary tables; evaluated, never
lowered), or a partial match of a multi-node pattern (RMSNorm, rotary embedding) waiting for its
last node.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import sympy as sp


@dataclass(frozen=True)
class Stream:
    expr: sp.Basic  # [n, w]


@dataclass(frozen=True)
class Heads:
    """Features start:stop of every head (``width`` wide) of ``base`` [n, heads * width]."""

    base: sp.Basic
    heads: int
    width: int
    start: int
    stop: int
    repeat: int = 1  # each head read by this many query heads in turn (transformers' repeat_kv)
    rows_first: bool = False  # laid out [1, n, heads, w], before the transpose (GPT-J rotates there)

    @property
    def whole(self) -> bool:
        return (self.start, self.stop) == (0, self.width)

    def part(self, start: int, stop: int) -> Heads:
        return replace(self, start=self.start + start, stop=self.start + stop)


@dataclass(frozen=True)
class SplitRows:
    """``[1, n, heads, width]``: a stream reshaped into heads, before the transpose to Heads."""

    base: sp.Basic
    heads: int
    width: int

    def as_heads(self) -> Heads:
        """The same array as whole heads, still rows-first (GPT-J rotates them there)."""
        return Heads(self.base, self.heads, self.width, 0, self.width, rows_first=True)


@dataclass(frozen=True)
class Attended:
    """sdpa's result ``[1, heads, n, width]``: the per-head product A_h V_h."""

    expr: sp.Basic
    heads: int
    transposed: bool = False


@dataclass(frozen=True)
class Static:
    """A tensor of the sequence length only (evaluated at chosen lengths when a pattern needs it)."""

    node: object


@dataclass(frozen=True)
class Tokens:
    symbol: sp.Basic


@dataclass(frozen=True)
class Weight:
    """A parameter placeholder: the checkpoint tensor and its torch shape."""

    tensor: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Pieces:
    """A chunk/split's tuple, before ``getitem``."""

    items: tuple


@dataclass(frozen=True)
class Partial:
    """A pattern part-way: ``kind`` names it, ``parts`` holds what the pattern has seen so far."""

    kind: str
    parts: tuple
