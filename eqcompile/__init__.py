"""eqcompile: trained models written down as equations, and run from them.

    >>> import eqcompile
    >>> model = eqcompile.compile("samples/shakespeare-char")
    >>> print(model.latex(level="model"))
    >>> model.to_python("out/")          # out/model.py: numpy-only forward(tokens)
    >>> eqcompile.trace(my_module, torch.zeros(1, 4, dtype=torch.long))  # an nn.Module of one's own
"""

from .api import CompiledModel, compile, trace
from .errors import CheckpointError, ConfigError, EqcompileError, UnsupportedArchitecture, UntrustedInput

__version__ = "0.1.0"
__all__ = ["CheckpointError", "CompiledModel", "ConfigError", "EqcompileError",
           "UnsupportedArchitecture", "UntrustedInput", "compile", "trace"]
