"""Which front end lowers a checkpoint: its hand-written family (``arch/``) when one takes its
``model_type``, else the tracer (``tracer/``, torch.export of transformers' model). Above both, so
that neither imports the other's choice.
"""

from __future__ import annotations

from . import arch
from .load import Checkpoint
from .program import Program
from .tracer import TRACER


def family_of(checkpoint: Checkpoint) -> arch.Family:
    """The checkpoint's family: hand-written if one takes its model_type, else the tracer."""
    model_type = (checkpoint.config or {}).get("model_type")
    if isinstance(model_type, str) and not arch.is_written(model_type):
        return TRACER
    return arch.family_of(checkpoint)


def lower(checkpoint: Checkpoint) -> Program:
    return family_of(checkpoint).lower(checkpoint)
