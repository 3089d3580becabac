"""eqcompile: trained models written down as equations, and run from them.

    >>> import eqcompile
    >>> model = eqcompile.compile("samples/shakespeare-char")
    >>> print(model.latex(level="model"))
    >>> model.to_python("out/")          # out/model.py: numpy-only forward(tokens)
"""

from .api import CompiledModel, compile
from .errors import CheckpointError, ConfigError, EqcompileError, UnsupportedArchitecture, UntrustedInput

__version__ = "0.1.0"
__all__ = ["CheckpointError", "CompiledModel", "ConfigError", "EqcompileError",
           "UnsupportedArchitecture", "UntrustedInput", "compile"]
