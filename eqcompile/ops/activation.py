"""Elementwise activations: the scalar definition (``scalar.py``) next to its numpy meaning."""

from __future__ import annotations

import math
from functools import cache
from typing import Callable, ClassVar

import numpy as np
import sympy as sp
from sympy.printing.numpy import NumPyPrinter

from . import scalar
from .base import Cost, MatrixOp, count_operations, operator


def gelu_tanh(x):  # GPT-2's "gelu_new"
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))))


def erf(x):  # Numerical Recipes' erfc Chebyshev fit: relative error < 1.2e-7, float32 rounding level
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    erfc = t * np.exp(-z * z + poly)
    return np.sign(x) * (1.0 - erfc)


def gelu(x):  # exact GELU, with erf
    return 0.5 * x * (1.0 + erf(x * (1.0 / math.sqrt(2.0))))


def relu(x):
    return np.maximum(x, 0)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def silu(x):
    return x / (1.0 + np.exp(-x))


def quick_gelu(x):
    return x / (1.0 + np.exp(-1.702 * x))


def tanh(x):
    return np.tanh(x)


class Activation(MatrixOp):
    """An activation applied elementwise to a matrix."""

    latex_name: ClassVar[str]
    scalar: ClassVar[Callable]

    def _latex(self, printer):
        return operator(printer, self.latex_name, self.arg)

    def _numpycode(self, printer):
        return self._call(printer, self.numpy_functions[-1].__name__, self.arg)

    def vjp(self, grad, output):
        """X̄ = G ⊙ σ'(X), σ' the ``sympy.diff`` of the scalar definition."""
        return [(self.arg, sp.HadamardProduct(grad, ActivationDerivative(self.arg, sp.Symbol(type(self).__name__))))]

    @classmethod
    def definition_latex(cls, printer):
        import latexify  # only --level index needs it: the command line does not pay its import

        # the name as the block's equations print it, not the Python function's ("gelu_tanh")
        name = operator(printer, cls.latex_name, sp.Symbol("x"))
        return [(name, latexify.get_latex(cls.scalar, use_math_symbols=True, use_signature=False))]

    @classmethod
    def scalar_form(cls, x: sp.Symbol) -> sp.Expr:
        """The definition applied to one scalar term, constants evaluated to 17 digits."""
        return sp.nfloat(cls.scalar(x), 17)

    def explicit(self, ev):
        x = sp.Dummy("x")
        form = self.scalar_form(x)
        values = ev.shared(self.arg) if form.count(x) > 1 else ev.value(self.arg)
        with sp.evaluate(False):  # keep tanh(-y) as written: sympy would pull the sign out
            return values.applyfunc(lambda term: form.xreplace({x: term}))

    @classmethod
    @cache
    def scalar_cost(cls) -> Cost:
        """Operations of the definition on one scalar (sympy's nfloat is slow: counted once)."""
        return count_operations(cls.scalar_form(sp.Dummy("x")))

    def cost(self, ev):
        rows, cols = ev.size(self)
        return ev.cost(self.arg) + self.scalar_cost() * (rows * cols)


class GELUTanh(Activation):
    """GELU, tanh approximation (GPT-2's gelu_new)."""

    summary_latex = r"GELU, $\tanh$ approximation (GPT-2's \texttt{gelu{\char95}new})."

    latex_name, scalar, numpy_functions = "GELU", scalar.gelu_tanh, (gelu_tanh,)


class GELU(Activation):
    """GELU, exact (with the error function)."""

    latex_name, scalar, numpy_functions = "GELU", scalar.gelu, (erf, gelu)


class ReLU(Activation):
    """Rectified linear unit."""

    latex_name, scalar, numpy_functions = "ReLU", scalar.relu, (relu,)


class Sigmoid(Activation):
    """Logistic sigmoid."""

    latex_name, scalar, numpy_functions = r"\sigma", scalar.sigmoid, (sigmoid,)


class SiLU(Activation):
    """SiLU (swish): x times its sigmoid."""

    summary_latex = r"SiLU (swish): $x$ times its sigmoid."

    latex_name, scalar, numpy_functions = "SiLU", scalar.silu, (silu,)


class QuickGELU(Activation):
    """GELU approximated by x times sigmoid(1.702 x)."""

    summary_latex = r"GELU approximated by $x \, \sigma(1.702\, x)$."

    latex_name, scalar, numpy_functions = "QuickGELU", scalar.quick_gelu, (quick_gelu,)


class Tanh(Activation):
    """Hyperbolic tangent."""

    latex_name, scalar, numpy_functions = r"\tanh", scalar.tanh_activation, (tanh,)


def _subclasses(cls) -> list:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]


class DerivativePrinter(NumPyPrinter):
    """sympy's NumPy printer as the emitted module spells it: ``np.``, and the module's own ``erf``."""

    def _module_format(self, fqn, register=True):
        return "np." + fqn[len("numpy."):] if fqn.startswith("numpy.") else super()._module_format(fqn, register)

    def _print_erf(self, expr):
        return f"erf({self._print(expr.args[0])})"

    def _print_Heaviside(self, expr):  # the derivative of max(x, 0): 0 at x = 0, as torch takes it
        return f"np.heaviside({self._print(expr.args[0])}, 0.0)"


class ActivationDerivative(MatrixOp):
    """σ'(X) elementwise, for the activation class ``args[1]`` names; its scalar form is ``sympy.diff``
    of the activation's definition, and its numpy code that form printed."""

    summary_latex = (r"$\sigma'(X)$: the derivative of the activation's scalar definition, by "
                     r"\texttt{sympy.diff}, entry by entry.")

    @property
    def activation(self):
        return next(op for op in _subclasses(Activation) if op.__name__ == str(self.args[1]))

    def _latex(self, printer):
        return operator(printer, self.activation.latex_name + "'", self.arg)

    def _numpycode(self, printer):
        return self._call(printer, self.function_name(self.activation), self.arg)

    def cost(self, ev):
        rows, cols = ev.size(self)
        form, logistic = self.numpy_form(self.activation)
        per_entry = count_operations(form) + (count_operations(logistic) if logistic is not None else Cost())
        return ev.cost(self.arg) + per_entry * (rows * cols)

    @staticmethod
    def function_name(activation) -> str:
        return activation.numpy_functions[-1].__name__ + "_derivative"

    @staticmethod
    @cache
    def scalar_derivative(activation) -> sp.Expr:
        """d σ(x) / dx of the definition the LaTeX prints, exact."""
        x = sp.Symbol("x")
        return sp.diff(activation.scalar(x), x).replace(sp.Heaviside, lambda arg, *_: sp.Heaviside(arg, 0))

    @classmethod
    @cache
    def numpy_form(cls, activation) -> tuple[sp.Expr, sp.Expr | None]:
        """σ' as the module computes it, constants to 17 digits: where σ' has one exp(u), it is written in
        s = 1 / (1 + exp(u)), which never overflows (exp(u)/(1 + exp(u))² would be inf/inf = nan for
        large u), and sympy checks that putting s back gives σ' exactly; returns (form, s's definition)."""
        s = sp.Symbol("s")
        derivative = sp.nsimplify(cls.scalar_derivative(activation))
        powers = derivative.atoms(sp.exp)
        if len(powers) == 1 and not derivative.has(sp.tanh, sp.erf):
            (power,) = powers
            form = sp.factor(sp.cancel(derivative.subs(power, (1 - s) / s)))
            logistic = 1 / (1 + power)
            if not form.has(power) and sp.simplify(form.subs(s, logistic) - derivative) == 0:
                return sp.nfloat(form, 17), sp.nfloat(logistic, 17)
        return sp.nfloat(cls.scalar_derivative(activation), 17), None

    @classmethod
    def source(cls, activation) -> str:
        """The derivative as a numpy function's source, for the emitted module."""
        printer, (form, logistic) = DerivativePrinter(), cls.numpy_form(activation)
        name = activation.numpy_functions[-1].__name__
        if logistic is None:
            return f"def {cls.function_name(activation)}(x):  # d/dx of {name}, by sympy.diff\n    return {printer.doprint(form)}\n"
        return (f"def {cls.function_name(activation)}(x):  # d/dx of {name}, by sympy.diff, in s = {sp.sstr(logistic)}\n"
                f"    s = {printer.doprint(logistic)}\n    return {printer.doprint(form)}\n")
