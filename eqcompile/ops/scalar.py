"""Scalar definitions of the activations, as plain Python over sympy's functions.

They are the mathematical meaning: latexify-py renders their source for ``--level index``, the
literal expansion (``--expand``) applies them to each scalar term, and the tests check each
vectorised numpy version in ``activation.py`` against them.
"""

from sympy import Max, erf, exp, pi, sqrt, tanh


def gelu_tanh(x):
    return 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))


def gelu(x):
    return 0.5 * x * (1 + erf(x / sqrt(2)))


def relu(x):
    return Max(x, 0)


def sigmoid(x):
    return 1 / (1 + exp(-x))


def silu(x):
    return x / (1 + exp(-x))


def quick_gelu(x):
    return x / (1 + exp(-1.702 * x))


def tanh_activation(x):
    return tanh(x)
