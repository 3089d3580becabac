"""Loading: checkpoints on disk -> :class:`Checkpoint` with lazily read tensors."""

from .checkpoint import Checkpoint, load_checkpoint
from .safetensors_file import TensorInfo

__all__ = ["Checkpoint", "TensorInfo", "load_checkpoint"]
