"""eqcompile: trained models written down as equations, and run from them.

    >>> import eqcompile
    >>> model = eqcompile.compile("samples/shakespeare-char")
    >>> print(model.latex(level="model"))
    >>> model.to_python("out/")          # out/model.py: numpy-only forward(tokens)
    >>> eqcompile.trace(my_module, torch.zeros(1, 4, dtype=torch.long))  # an nn.Module of one's own
"""

from types import ModuleType

from . import trace as _trace_package
from .api import CompiledModel, compile
from .api import trace as _trace
from .errors import CheckpointError, ConfigError, EqcompileError, UnsupportedArchitecture, UntrustedInput


class _CallableTracer(ModuleType):
    """``eqcompile.trace`` is the tracer's package and, called, :func:`eqcompile.api.trace`. A function
    bound to the name would hide the package from ``import eqcompile.trace.lower as lower``."""

    __call__ = staticmethod(_trace)


_trace_package.__class__ = _CallableTracer
trace = _trace_package

__version__ = "0.1.0"
__all__ = ["CheckpointError", "CompiledModel", "ConfigError", "EqcompileError",
           "UnsupportedArchitecture", "UntrustedInput", "compile", "trace"]
