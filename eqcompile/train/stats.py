"""``eqcompile stats MODEL --train``: the scalar operations of the backward pass, counted from shapes.

Counted as the backward equations are written (``eqcompile.train.derive``), by the same rules as the
forward (``eqcompile.stats``): the loss's gradient and every stage's backward equations; the forward
equations a backward stage recomputes are not counted again (they are the forward's). Gradients of
attention weights are counted dense, as written, where the forward skips masked scores.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ops import Softmax, n_head
from ..ops.base import Cost
from ..program import Program
from ..stats import _CostEvaluator, operation_counts
from .derive import per_head
from .program import training_program


@dataclass(frozen=True)
class BackwardStats:
    seq: int
    forward: int  # scalar operations of the forward for seq tokens (as ``eqcompile stats`` counts them)
    backward: int  # of the loss's gradient and every backward stage
    operations: dict[str, int]  # the backward's, by kind

    @property
    def ratio(self) -> float:
        return self.backward / self.forward


def backward_counts(program: Program, seq: int) -> Cost:
    training = training_program(program)
    numbers = dict(program.dims) | ({program.seq: seq} if program.seq is not None else {})
    masked = {eq.lhs: eq.rhs.arg for stage in program.stages for eq in stage.equations
              if isinstance(eq.rhs, Softmax) and hasattr(eq.rhs.arg, "kept")}
    total = Cost()
    for backward in training.backward:
        stage = backward.forward
        ev = _CostEvaluator(numbers | {symbol: 1 for symbol in stage.layer_symbols}, masked,
                            {program.positions, *program.input_defaults})
        heads = per_head([*stage.equations, *backward.equations])
        for eq in backward.equations:
            cost = ev.cost(eq.rhs) * (stage.layers or 1)
            total += cost * int(ev.number(n_head)) if eq.lhs in heads else cost
    return total


def backward_stats(program: Program, seq: int | None = None) -> BackwardStats:
    seq = seq or program.max_seq
    forward, backward = operation_counts(program, seq), backward_counts(program, seq)
    return BackwardStats(seq, sum(forward.values()), sum(backward.values()), dict(sorted(backward.items())))
