"""Names for what the lowering finds: weights by their role (W_Q, W_gate, γ_1, ...) where the
module path tells it, intermediate matrices by what computed them (H, Q, A_h, Z, M), each stated
once as an equation of its stage."""

from __future__ import annotations

import re

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from ..arch.common import layer, param, seq
from ..ops import LayerNorm, Linear, MergeHeads, RMSNorm, Softmax, epsilon, window
from ..ops.partial_rope import d_rot
from ..ops.attention import d_head
from ..errors import UnsupportedArchitecture
from ..program import Equation, TensorRef
from .values import Heads, Weight


def op_name(node) -> str:
    """``aten.linear.default`` -> ``linear``; Python's ``getitem`` -> ``getitem``."""
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]


def module_path(node) -> str:
    """The module a graph node comes from (``gpt_neox.layers.0.attention``): errors and names say it."""
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else "m"
    return "(model)" if path == "m" else path.removeprefix("m.")  # "m": the exported wrapper's model


ROLES = {"q_proj": "Q", "query": "Q", "k_proj": "K", "key": "K", "v_proj": "V", "value": "V", "o_proj": "O",
         "out_proj": "O", "gate_proj": "gate", "up_proj": "up", "down_proj": "down", "fc1": "in", "fc2": "out",
         "fc_in": "in", "fc_out": "out", "dense_h_to_4h": "in", "dense_4h_to_h": "out", "c_fc": "in",
         "lm_head": "U", "embed_out": "U", "w1": "gate", "w3": "up", "w2": "down",
         "gate": "r"}  # a module named "gate" is a mixture of experts' router
OUTPUT_LEAVES = {"dense", "c_proj", "proj"}  # "O" inside attention, "out" inside an MLP
FUSED = {"query_key_value": ("Q", "K", "V"), "qkv_proj": ("Q", "K", "V"), "qkv": ("Q", "K", "V"), "c_attn": ("Q", "K", "V"),
         "Wqkv": ("Q", "K", "V"), "gate_up_proj": ("gate", "up"),
         "attn.qkv_proj": ("Q", "V", "K")}  # CodeGen's order, per group of heads
ATTENTION_PARENTS = ("attention", "self_attn", "attn", "self_attention")
# stem -> LaTeX of an intermediate matrix ($l: the layer)
LOCALS = {"h": "H", "q": "Q", "k": "K", "v": "V", "a": "A_h", "z": "Z", "m": "M", "x_mid": "X", "y": "Y"}


def _role_latex(role: str) -> str:
    return role if len(role) == 1 else rf"\mathrm{{{role}}}"


class Names:
    """One stage's symbols, parameters and equations, as the lowering creates them."""

    def __init__(self, context, stage: str, input_symbol: MatrixSymbol, input_latex: str, layered: bool):
        self.context, self.stage, self.layered = context, stage, layered
        self.input = input_symbol
        self.equations: list[Equation] = []
        self.params: dict[MatrixSymbol, object] = {}
        self.sources: dict[MatrixSymbol, tuple[Weight, bool]] = {}  # symbol -> (weight, transposed)
        self.latex: dict[str, str] = {input_symbol.name: input_latex}
        self.streams = {input_symbol}
        self.cached: tuple = ()
        self.extra: list[MatrixSymbol] = []
        self.prelude: list[Equation] = []  # equations of constants (RoPE frequencies), stated first
        self.counts: dict[str, int] = {}
        self.fused_leaf: dict[MatrixSymbol, str] = {}  # a projection's weight -> its parent's and its name
        self.parts: dict[MatrixSymbol, int] = {}  # a fused projection's weight -> the last part taken

    def _superscript(self, text: str, next_layer: bool = False) -> str:
        if not self.layered:
            return text
        return text + ("^{($next)}" if next_layer else "^{($l)}")

    def _unique(self, stem: str) -> str:
        count = self.counts.get(stem, 0) + 1
        self.counts[stem] = count
        return stem if count == 1 else f"{stem}_{count}"

    # parameters -----------------------------------------------------------------------------
    def _param(self, name: str, latex: str, weight: Weight, height, width, transpose=False, blocks=None,
               rows=None):
        tensor = self.context.template(weight.tensor) if self.layered else weight.tensor
        p = param(self.stage, name, height, width, self._superscript(latex),
                  TensorRef(tensor, transpose=transpose, blocks=blocks, rows=rows))
        self.params[p.symbol] = p
        self.sources[p.symbol] = (weight, transpose)
        return p.symbol

    def weight(self, weight: Weight, role: str, offset: int = 0) -> MatrixSymbol:
        """An embedding table [rows, d]; ``offset``: its first rows are never read (OPT's positions)."""
        rows, cols = weight.shape
        rows -= offset
        return self._param(self._unique(f"W_{role}"), f"W_{{{role}}}", weight, self.context.dim(rows),
                           self.context.dim(cols), rows=(offset, offset + rows) if offset else None)

    def _role(self, node) -> str:

        path = module_path(node).split(".")
        leaf, parent = path[-1], path[-2] if len(path) > 1 else ""
        if leaf in ROLES:
            return ROLES[leaf]
        if leaf in OUTPUT_LEAVES:
            return "O" if parent in ATTENTION_PARENTS else "out"
        return re.sub(r"\W", "_", leaf) if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,20}", leaf) else "lin"

    def linear(self, x, weight: Weight, bias, node, stored_transposed: bool = True):
        """X W + b; ``stored_transposed``: the tensor is [out, in] (nn.Linear), else [in, out] (GPT-2's Conv1D)."""
        out = weight.shape[0] if stored_transposed else weight.shape[1]
        role = self._role(node)
        stem = self._unique(role)
        cols = self.context.dim(out)
        w = self._param(f"W_{stem}", f"W_{{{_role_latex(stem)}}}", weight, x.shape[1], cols,
                        transpose=stored_transposed)
        self.fused_leaf[w] = ".".join(module_path(node).split(".")[-2:])  # its parent's name and its own
        if bias is None:
            return Linear(x, w)
        b = self._param(f"b_{stem}", f"b_{{{_role_latex(stem)}}}", bias, 1, cols)
        return Linear(x, w, b)

    def fold(self, base, blocks: tuple[int, int, int]):
        """Part of a fused projection as its own projection (W_Q out of ``query_key_value``): entries
        start:stop of every ``width`` of its outputs; None when ``base`` is no projection of ours."""
        if not isinstance(base, Linear) or base.weight not in self.sources:
            return None
        fused = base.weight
        index = self.parts[fused] = self.parts.get(fused, -1) + 1  # parts are taken in order: q, k, v
        path = self.fused_leaf.get(fused, "")
        roles = FUSED.get(path) or FUSED.get(path.rsplit(".", 1)[-1])
        role = self._unique(roles[index] if roles and index < len(roles) else f"part{index + 1}")
        width, start, stop = blocks
        weight, transposed = self.sources[fused]
        cols = self.context.dim(weight.shape[0 if transposed else 1] // width * (stop - start))
        w = self._param(f"W_{role}", f"W_{{{_role_latex(role)}}}", weight, fused.shape[0], cols,
                        transpose=transposed, blocks=blocks)
        if base.bias is None:
            return Linear(base.arg, w)
        b = self._param(f"b_{role}", f"b_{{{_role_latex(role)}}}", self.sources[base.bias][0], 1, cols,
                        blocks=blocks)
        return Linear(base.arg, w, b)

    def fold_heads(self, view: Heads) -> Heads:
        folded = None if view.whole else self.fold(view.base, (view.width, view.start, view.stop))
        if folded is None:
            return view
        width = view.stop - view.start
        return Heads(folded, view.heads, width, 0, width, rows_first=view.rows_first)

    def parameter(self, weight: Weight, node) -> MatrixSymbol:
        """A [d] weight a generic op reads as it is stored, as a row [1, d], named by its module."""
        leaf = weight.tensor.rsplit(".", 1)[-1]  # a parameter of its own (``self.scale``) by its name
        plain = leaf not in ("weight", "bias") and re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,20}", leaf)
        stem = self._unique(leaf if plain else self._role(node))
        return self._param(f"W_{stem}", f"W_{{{_role_latex(stem)}}}", weight, 1, self.context.dim(weight.shape[0]))

    def norm_weights(self, gain: Weight, shift: Weight | None, node):
        suffix = "f" if self.stage == "unembedding" else str(self.counts.get("norm", 0) + 1)
        self.counts["norm"] = self.counts.get("norm", 0) + 1
        width = self.context.dim(gain.shape[0])
        g = self._param(f"gamma_{suffix}", rf"\gamma_{{{suffix}}}", gain, 1, width)
        b = None if shift is None else self._param(f"beta_{suffix}", rf"\beta_{{{suffix}}}", shift, 1, width)
        return g, b

    # constants ------------------------------------------------------------------------------
    def epsilon(self, value: float):
        return self.context.constant(epsilon, float(value))

    def window(self, size: int):
        return self.context.constant(window, int(size))

    def positions(self) -> MatrixSymbol:
        p = MatrixSymbol("p", seq, 1)
        if p not in self.extra:
            self.extra.append(p)
            self.latex["p"] = "p"
        return p

    def frequencies(self, width: int, partial: bool = False) -> MatrixSymbol:
        """θ, the rotary frequencies of ``width`` features (all of a head, or its first d_rot)."""
        size = d_rot if partial else d_head
        base = self.context.rope_base_expr()
        if partial:
            self.context.constant(d_rot, width)
        theta = MatrixSymbol("theta", 1, size / 2)
        if not any(eq.lhs == theta for eq in self.prelude):
            scaling = self.context.rotary_scaling  # RoPE scaling, if any (tracer/rotary.py)
            self.prelude.append(Equation(theta, scaling.expression(self.context.constant, base, self.context.rope_base,
                                                                   size, width)))
            self.latex["theta"] = self._superscript(r"\theta") if base.has(layer) else r"\theta"
        return theta

    def cache(self, keys, values):
        self.cached = (keys, values)

    # intermediate matrices ----------------------------------------------------------------------
    def named_input(self, expr):
        """A Linear's input as a named matrix (H, Z, M), so each equation reads as one step."""
        if isinstance(expr, MatrixSymbol):
            return expr
        stem = "h" if isinstance(expr, (LayerNorm, RMSNorm)) else "z" if isinstance(expr, MergeHeads) else "m"
        return self.materialize(expr, stem)

    def materialize(self, expr, stem: str | None = None) -> MatrixSymbol:
        if isinstance(expr, MatrixSymbol):
            return expr
        if stem is None:
            stem = "h" if isinstance(expr, (LayerNorm, RMSNorm)) else "x_mid" if isinstance(expr, sp.MatAdd) else "y"
        name = self._unique(stem)
        symbol = MatrixSymbol(name, *expr.shape)
        if isinstance(expr, Softmax) and name != stem:
            raise UnsupportedArchitecture("a block with two attentions is not supported")
        letter = LOCALS.get(stem, stem)
        primes = "" if name == stem else "'" * (int(name.rsplit("_", 1)[1]) - 1)
        if stem == "h" and primes:
            letter, primes = (r"\tilde{H}", "") if primes == "'" else (r"\hat{H}", primes[2:])
        self.latex[name] = self._superscript(letter + primes) if stem != "x_mid" else (
            "X^{($half)}" if self.layered else "X" + primes)
        self.equations.append(Equation(symbol, expr))
        if stem == "x_mid":
            self.streams.add(symbol)
        return symbol

    def finish(self, expr, name: str, latex: str) -> MatrixSymbol:
        symbol = MatrixSymbol(name, *expr.shape)
        self.equations.append(Equation(symbol, expr))
        self._inline_single_uses()
        self.latex[name] = latex
        return symbol

    def _inline_single_uses(self):
        """Put back where it is used a matrix named only because its node had several users, when the
        equations use it once (the others were fused away: gelu_new's x, in GELUTanh(x))."""
        for eq in [eq for eq in self.equations if re.fullmatch(r"y(_\d+)?", eq.lhs.name)]:
            uses = [other for other in self.equations if eq.lhs in other.rhs.free_symbols]
            if len(uses) == 1 and sum(1 for node in sp.preorder_traversal(uses[0].rhs) if node == eq.lhs) == 1:
                index = self.equations.index(uses[0])
                self.equations[index] = Equation(uses[0].lhs, uses[0].rhs.xreplace({eq.lhs: eq.rhs}))
                self.equations.remove(eq)
                del self.latex[eq.lhs.name]

    def is_stream(self, expr) -> bool:
        return expr in self.streams

    def used_params(self) -> list:
        """The parameters the equations use, in order of first use (a fused projection folded away is not)."""
        used = set()
        for eq in self.prelude + self.equations:
            used |= eq.rhs.free_symbols
        return [p for symbol, p in self.params.items() if symbol in used]

