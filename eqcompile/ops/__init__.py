"""The canonical operations, as sympy matrix expressions (see ``base.py`` for the recipe)."""

from .activation import GELU, Activation, GELUTanh, QuickGELU, ReLU, Sigmoid, SiLU, Tanh
from .attention import (CausalMask, MergeHeads, PaddingMask, Softmax, SplitHeads, d_head, head, is_per_head,
                        n_head)
from .base import MatrixOp
from .gqa import GroupedHeads, n_kv_head
from .linear import Embed, FirstRows, Linear
from .norm import LayerNorm, RMSNorm, epsilon
from .rope import Llama3Frequencies, RoPE, RotaryFrequencies
from .window import SlidingWindowMask, window
from .pooling import MeanPool
from .partial_rope import PartialRoPE, d_rot
from .head_norm import HeadLayerNorm, HeadRMSNorm
from .norm_core import RMSScale, Standardise
from .softcap import SoftCap, UnitOffset
from .moe import MixtureOfExperts
from .generic import AtenOp
from .interleaved_rope import InterleavedRoPE
from .yarn import YarnFrequencies
from .alibi import ALiBi

__all__ = [
    "Embed", "FirstRows", "Linear", "LayerNorm", "RMSNorm", "Softmax", "CausalMask",
    "SplitHeads", "MergeHeads", "GELUTanh", "GELU", "ReLU", "Sigmoid", "SiLU", "QuickGELU", "Tanh",
    "RoPE", "RotaryFrequencies", "Llama3Frequencies", "GroupedHeads", "SlidingWindowMask",
    "PaddingMask", "MeanPool", "PartialRoPE", "HeadRMSNorm", "Standardise", "RMSScale", "SoftCap", "UnitOffset",
    "MixtureOfExperts", "InterleavedRoPE", "AtenOp", "YarnFrequencies", "ALiBi", "HeadLayerNorm",
]
OPS: tuple[type[MatrixOp], ...] = tuple(globals()[name] for name in __all__)
ACTIVATIONS: tuple[type[Activation], ...] = tuple(op for op in OPS if issubclass(op, Activation))


def ops_used_by(program) -> list[type[MatrixOp]]:
    """The op classes a program's equations use, in ``OPS`` order."""
    used = {type(op) for stage in program.stages for eq in stage.equations for op in eq.rhs.atoms(*OPS)}
    return [op for op in OPS if op in used]
