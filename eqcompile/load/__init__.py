"""Loading: checkpoints on disk -> :class:`Checkpoint` with lazily read tensors."""

from .base import Checkpoint
from .checkpoint import load_checkpoint
from .safetensors_file import TensorInfo

__all__ = ["Checkpoint", "TensorInfo", "load_checkpoint"]
