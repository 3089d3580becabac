"""The second front end: the model transformers builds for a config.json, exported with
``torch.export`` and lowered by patterns into the same ops and :class:`~eqcompile.program.Program`
the hand-written families (``arch/``) produce. torch and transformers are imported only here, and
only when a checkpoint has no hand-written family (``pip install 'eqcompile[trace]'``).
"""

from __future__ import annotations

import warnings

from ..arch import Family
from ..errors import Notice, UnsupportedArchitecture
from ..load import Checkpoint
from ..program import Program

EXTRA = "the tracer needs torch and transformers: pip install 'eqcompile[trace]'"


def require_torch():
    """Import torch and transformers, or say in one line which extra provides them."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise UnsupportedArchitecture(EXTRA) from None


def lower(checkpoint: Checkpoint) -> Program:
    """The Program of transformers' model for the checkpoint's config.json, or a one-line refusal."""
    from ..arch import supported_types

    model_type = str((checkpoint.config or {}).get("model_type"))
    try:
        require_torch()
        from .export import export_checkpoint
        from .program import build_program

        exported = export_checkpoint(checkpoint)
        program = build_program(exported, checkpoint)
    except UnsupportedArchitecture as e:
        raise UnsupportedArchitecture(f"unsupported architecture {model_type!r} (supported: {supported_types()}; "
                                      f"others through the tracer): {e}") from None
    warnings.warn(Notice(f"no hand-written family for model_type {model_type!r}: traced transformers' "
                         f"{type(exported.model).__name__} with torch.export"), stacklevel=2)
    return program


def reference(checkpoint: Checkpoint, dtype: str = "float32"):
    require_torch()
    from .export import reference_forward

    return reference_forward(checkpoint, dtype)


TRACER = Family("traced", (), lambda checkpoint: False, lower, reference)
