"""The circuit figures beside the circuit form's equations (``--form circuits`` with ``--pdf``/``--tex``/``--html``).

:func:`eqcompile.circuits.measure` on the stored (unfolded) weights, turned into rows of text rounded as
``eqcompile circuits`` prints them, so one content model feeds the LaTeX and the HTML templates, each of
which escapes the text. Layers and heads count from 1 here, as the equations' (l, h) do (``--json`` counts
from 0). Bounded for a paper: a few singular values per circuit, a few composition pairs per kind.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..circuits import MODES, Circuits

SINGULAR_VALUES = 3  # per circuit in the table; `circuits --top K` gives more
STRONGEST = 5  # composition pairs per kind (Q, K, V)


@dataclass(frozen=True)
class HeadRow:
    layer: int  # 1-based
    head: int  # 1-based
    qk: tuple[str, str, str]  # (Frobenius norm, top singular values, rank)
    ov: tuple[str, str, str]
    copying: str  # "" without an embedding and unembedding


@dataclass(frozen=True)
class CompositionPair:
    mode: str  # "Q", "K" or "V"
    writer: str  # "(layer, head)", 1-based: the earlier head, whose OV circuit writes
    reader: str  # the later head, whose Q, K or V input reads
    score: str


@dataclass(frozen=True)
class CircuitFigures:
    """Each head's row of figures, and the strongest composition pairs of each kind."""

    heads: list[HeadRow]
    pairs: list[CompositionPair]
    singular_values: int  # how many each row lists (at most)
    strongest: int


def _spectrum(circuit) -> tuple[str, str, str]:
    values = ", ".join(f"{s:.3g}" for s in circuit.singular_values[:SINGULAR_VALUES])
    return f"{circuit.frobenius:.4g}", values, str(circuit.rank)


def strongest_pairs(circuits: Circuits, mode: str, count: int) -> list[CompositionPair]:
    """The ``count`` highest ``mode``-composition scores, highest first (as the text table ranks them)."""
    return [CompositionPair(mode.upper(), f"({l1 + 1}, {h1 + 1})", f"({l2 + 1}, {h2 + 1})", f"{score:.3f}")
            for score, l1, h1, l2, h2 in circuits.strongest(mode, count)]


def circuit_figures(circuits: Circuits) -> CircuitFigures:
    """The appendix's rows: one per head, then the strongest pairs of each kind (none for one layer)."""
    heads = [HeadRow(l + 1, h + 1, _spectrum(head.qk), _spectrum(head.ov),
                     "" if head.ov.copying is None else f"{head.ov.copying:.3f}")
             for l, layer in enumerate(circuits.layers) for h, head in enumerate(layer)]
    pairs = [pair for mode in MODES for pair in strongest_pairs(circuits, mode, STRONGEST)]
    return CircuitFigures(heads, pairs, SINGULAR_VALUES, STRONGEST)
