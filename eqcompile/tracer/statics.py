"""Tensors that depend on the sequence length only (positions, masks, rotary tables): found in the
graph, evaluated at a chosen length, and identified by value, never lowered op by op."""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedArchitecture
from ..ops.rope import rope_frequencies


def static_nodes(graph, parameters: set[str], tokens: str) -> set:
    """Nodes whose value depends on no weight and on the tokens' count only (via ``sym_size``)."""
    dynamic, static = {tokens} | parameters, set()
    for node in graph.nodes:
        if node.op == "placeholder":
            if node.name not in dynamic:
                static.add(node)
            continue
        if node.op != "call_function":
            continue
        inputs = node.all_input_nodes
        if "sym_size" in str(node.target) or all(arg in static for arg in inputs):
            static.add(node)
    return static


class Evaluator:
    """Runs the static part of the graph for ``n`` tokens (the tokens' values never matter)."""

    def __init__(self, buffers: dict, tokens: str):
        self.buffers, self.tokens = buffers, tokens
        self.memo: dict = {}

    def value(self, node, n: int):
        import torch
        import torch.fx

        key = (node, n)
        if key not in self.memo:
            if node.op == "placeholder":
                result = torch.zeros(1, n, dtype=torch.long) if node.name == self.tokens else self.buffers[node.name]
            elif "sym_size" in str(node.target):
                result = n
            else:
                def resolve(arg):  # weights were never allocated (meta device): the tables are built on cpu
                    if isinstance(arg, torch.device):
                        return torch.device("cpu")
                    return self.value(arg, n) if isinstance(arg, torch.fx.Node) else arg
                args = torch.fx.node.map_aggregate(node.args, resolve)
                kwargs = torch.fx.node.map_aggregate(node.kwargs, resolve)
                result = node.target(*args, **kwargs)
            self.memo[key] = result
        return self.memo[key]

    def array(self, node, n: int) -> np.ndarray:
        return np.asarray(self.value(node, n).detach().to("cpu").numpy())


def positions_offset(values: np.ndarray, n: int) -> int | None:
    """k when ``values`` are the position ids k, ..., k+n-1 (any leading size-1 axes), else None."""
    if values.size != n or values.dtype.kind not in "iu":
        return None
    offset = int(values.reshape(-1)[0])
    return offset if offset >= 0 and np.array_equal(values.reshape(-1), np.arange(offset, offset + n)) else None


def rotary_kind(values: np.ndarray, n: int, base: float | None, width: int, scaling=None) -> str | None:
    """"cos" or "sin" when ``values`` [.., n, width] is that of the half-split rotary angles
    p_i θ_k (θ = base^(-2k/width), each repeated for both halves; as ``scaling`` (tracer/rotary.py)
    rescales θ and the table); None otherwise."""
    if base is None or values.shape[-2:] != (n, width) or values.size != n * width:
        return None
    theta, amplitude = (scaling.frequencies(base, width), scaling.amplitude) if scaling else \
        (rope_frequencies(base, width), 1.0)
    angles = np.arange(n, dtype=np.float32)[:, None] * theta
    angles = np.concatenate([angles, angles], axis=-1)
    table = values.reshape(n, width)
    for kind, function in (("cos", np.cos), ("sin", np.sin)):
        if np.max(np.abs(table - amplitude * function(angles))) <= 1e-6:
            return kind
    return None


def mask_kind(evaluate, n_values=(5, 9), window: int | None = None) -> tuple[str, int | None]:
    """("causal", None) or ("window", w) for an attention mask, read off its values at a few lengths."""
    for kind, size in (("causal", None), ("window", window)):
        if kind == "window" and not window:
            continue
        lengths = n_values if kind == "causal" else (window + 3, window + 6)
        if all(_visible(evaluate(n), n) is not None and np.array_equal(_visible(evaluate(n), n), _expected(n, size))
               for n in lengths):
            return kind, size
    raise UnsupportedArchitecture("the attention mask is neither causal nor a causal sliding window")


def _visible(mask: np.ndarray, n: int):
    if mask.size != n * n:
        return None
    mask = mask.reshape(n, n)
    return mask if mask.dtype == bool else mask == 0


def _expected(n: int, window: int | None) -> np.ndarray:
    behind = np.arange(n)[:, None] - np.arange(n)[None, :]
    return (behind >= 0) & (behind < (window or n + 1))
