"""The traced graph cut into stages (embedding, one generic block, unembedding) and assembled into
a :class:`~eqcompile.program.Program`.

Every layer's section of the graph must be the same sequence of ops on the same-named weights
(layer index aside); then layer 0's section alone is lowered and stands for every layer (l).
"""

from __future__ import annotations

import re

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from ..arch.common import DIM_LATEX, DIM_PYTHON, d_ff, d_model, layer, n_ctx, n_vocab, seq
from ..errors import UnsupportedArchitecture
from ..load import Checkpoint
from ..ops import d_head, n_head, n_kv_head
from ..ops.partial_rope import d_rot
from ..ops.per_layer import LayerValue
from ..ops.moe import MOE_LATEX
from ..ops.softcap import CAP_LATEX
from ..program import Program, Stage
from .export import Exported
from .lower import StageLowering, op_name
from .naming import module_path
from .naming import Names
from .layers import PerLayer, varying_statics
from .statics import Evaluator, static_nodes
from .values import Stream, Tokens, Weight

DIM_LATEX = {**DIM_LATEX, d_rot: r"d_{\mathrm{rot}}", **CAP_LATEX, **MOE_LATEX}
DIM_PYTHON = {**DIM_PYTHON, d_rot: "d_rot", **{symbol: symbol.name for symbol in (*CAP_LATEX, *MOE_LATEX)}}
IGNORED = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size"}


class Context(PerLayer):
    """What every stage's lowering shares: the graph's static part, the dimensions, constants."""

    def __init__(self, exported: Exported, checkpoint: Checkpoint):
        self.exported = exported
        graph = exported.program.graph
        self.nodes = [n for n in graph.nodes if n.op != "call_function" or op_name(n) not in IGNORED]
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        user_inputs = exported.program.graph_signature.user_inputs
        self.tokens = next(n for n in placeholders if n.name in user_inputs)
        self.static = static_nodes(graph, set(exported.parameters), self.tokens.name)
        self.evaluator = Evaluator(exported.buffers, self.tokens.name)
        config = exported.model.config
        self.config = config
        self.dims: dict[sp.Symbol, int | float] = {}
        self.rope_base = _rope_base(config)
        self.window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        self._sizes = self._size_table(config)
        self.varying: dict = {}  # layer 0's static inputs that differ between layers -> each layer's
        self.notes: list[str] = []  # what the Program states besides its equations (per-layer constants)

    def _size_table(self, config) -> list[tuple[int, sp.Expr, sp.Symbol | None, int | None]]:
        """(size, its symbol expression, the dim it defines, value) in order of preference."""
        hidden, heads = config.hidden_size, config.num_attention_heads
        head_width = getattr(config, "head_dim", None) or hidden // heads
        kv = getattr(config, "num_key_value_heads", None) or getattr(config, "num_kv_heads", None) or heads
        table = [(hidden, d_model), (config.vocab_size, n_vocab), (heads * head_width, n_head * d_head),
                 (kv * head_width, n_kv_head * d_head), (head_width, d_head)]
        inner = getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None)
        if inner:
            table.append((inner, d_ff))
        table.append((int(getattr(config, "max_position_embeddings", 0) or 0), n_ctx))
        self.dims.update({d_model: hidden, n_vocab: config.vocab_size, n_head: heads, d_head: head_width,
                          n_ctx: int(getattr(config, "max_position_embeddings", 0) or 2048)})
        if kv != heads:
            self.dims[n_kv_head] = kv
        if inner:
            self.dims[d_ff] = inner
        return table

    def dim(self, size: int) -> sp.Expr:
        for value, expr in self._sizes:
            if value == size:
                return expr
        return sp.Integer(size)

    def constant(self, symbol: sp.Symbol, value):
        """``symbol`` standing for ``value``; a second, different value gets a number instead."""
        if self.dims.setdefault(symbol, value) != value:
            return sp.Float(value, 17) if isinstance(value, float) else sp.Integer(value)
        return symbol

    def evaluate(self, node, n: int):
        value = self.evaluator.array(node, n)
        if node in self.varying and any(not np.array_equal(value, self.evaluator.array(other, n))
                                        for other in self.varying[node]):
            raise UnsupportedArchitecture(f"a table at {module_path(next(iter(node.users)))} differs between layers")
        return value

    def fan_out(self, node) -> int:
        return sum(1 for user in node.users if user.op != "call_function" or op_name(user) not in IGNORED)

    def template(self, tensor: str) -> str:
        return self.templates[tensor]


def _rope_base(config) -> float | None:
    params = getattr(config, "rope_parameters", None) or {}
    if isinstance(params, dict) and "full_attention" in params:
        params = params["full_attention"]
    base = params.get("rope_theta") if isinstance(params, dict) else None
    base = base if base is not None else getattr(config, "rope_theta", None)
    rope_type = params.get("rope_type", "default") if isinstance(params, dict) else "default"
    return float(base) if base is not None and rope_type == "default" else None


def _sections(context: Context):
    """(embedding nodes, [nodes of layer i], unembedding nodes) by each node's module path."""
    prefix = f"m.{context.exported.layers_path}."
    layers: list[list] = [[] for _ in range(context.exported.layers)]
    before, after = [], []
    for node in context.nodes:
        if node.op != "call_function" or node in context.static:
            continue
        paths = [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]
        index = next((int(p[len(prefix):].split(".")[0]) for p in paths if p.startswith(prefix)), None)
        if index is not None:
            layers[index].append(node)
        elif not any(layers):
            before.append(node)
        elif layers[-1]:
            after.append(node)
        else:
            raise UnsupportedArchitecture(f"op {op_name(node)} at {module_path(node)} lies between two layers")
    if not all(layers):
        raise UnsupportedArchitecture("some layers have no operations of their own in the graph")
    return before, layers, after


def _boundary(nodes: list, static: set) -> tuple:
    """(the stream entering a section: its one non-static input from outside, the node leaving it)."""
    inside = set(nodes)
    inputs = {arg for node in nodes for arg in node.all_input_nodes
              if arg not in inside and arg not in static and arg.op != "placeholder"}
    outputs = [node for node in nodes if node not in static and any(
        user not in inside and (user.op != "call_function" or op_name(user) not in IGNORED) for user in node.users)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise UnsupportedArchitecture(
            f"layer at {module_path(nodes[0])} does not take and return one hidden state "
            f"({len(inputs)} inputs, {len(outputs)} outputs)")
    return inputs.pop(), outputs[0]


def _signature(context: Context, nodes: list, index: int, parameters: dict, statics: bool = True) -> list:
    """The layer's ops with their arguments: nodes by position in the layer, weights by their name
    with the layer number taken out, static inputs by name (by "static" alone unless ``statics``),
    the incoming stream as "input"."""
    position = {node: i for i, node in enumerate(nodes)}
    marker = f".{context.exported.layers_path}.{index}."
    memo: dict = {}

    def static(node):  # by what computes it: each layer re-derives the same tables under new names
        if node not in memo:
            if node.name in context.exported.buffers:  # each layer may lift its own copy of a constant
                memo[node] = ("static", tuple(context.exported.buffers[node.name].reshape(-1).tolist()))
            else:
                memo[node] = ("static", node.name) if node.op == "placeholder" else \
                    ("static", str(node.target), describe(node.args))
        return memo[node]

    def describe(arg):
        import torch.fx

        if isinstance(arg, torch.fx.Node):
            if arg in position:
                return ("local", position[arg])
            if arg.name in parameters:
                return ("weight", parameters[arg.name].replace(marker, ".{layer}."))
            if arg in context.static:
                return static(arg) if statics else ("static",)
            return ("input",)
        if isinstance(arg, (list, tuple)):
            return tuple(describe(a) for a in arg)
        return repr(arg)

    return [(str(node.target), describe(node.args), describe(tuple(node.kwargs.items()))) for node in nodes]


def _layer_templates(context: Context, layers: list) -> dict[str, str]:
    """Layer 0's checkpoint tensor names -> the name with its layer number as ``{layer}``."""
    names = {v: k for k, v in context.exported.program.graph_signature.inputs_to_parameters.items()}
    templates = {}
    stem = context.exported.layers_path.split(".")[-1]
    for placeholder, tensor in context.exported.parameters.items():
        state = context.exported.program.graph_signature.inputs_to_parameters[placeholder]
        if f".{context.exported.layers_path}.0." not in f".{state.removeprefix('m.')}":
            continue
        template = re.sub(rf"(^|\.){re.escape(stem)}\.0\.", rf"\1{stem}.{{layer}}.", tensor, count=1)
        if "{layer}" not in template:
            raise UnsupportedArchitecture(f"cannot tell the layer number in the tensor name {tensor!r}")
        for index in range(len(layers)):
            other = names[state.replace(f"{context.exported.layers_path}.0.",
                                        f"{context.exported.layers_path}.{index}.")]
            if context.exported.parameters[other] != template.format(layer=index):
                raise UnsupportedArchitecture(f"layer {index}'s tensor names do not follow {template!r}")
        templates[tensor] = template
    return templates


def build_program(exported: Exported, checkpoint: Checkpoint) -> Program:
    context = Context(exported, checkpoint)
    before, layers, after = _sections(context)
    state = exported.program.graph_signature.inputs_to_parameters
    signatures = [_signature(context, nodes, index, state) for index, nodes in enumerate(layers)]
    context.varying = varying_statics(context, layers, signatures,
                                      [_signature(context, nodes, index, state, statics=False)
                                       for index, nodes in enumerate(layers)])
    context.templates = _layer_templates(context, layers)

    values: dict = {}
    for placeholder in (n for n in exported.program.graph.nodes if n.op == "placeholder"):
        if placeholder.name in exported.parameters:
            values[placeholder] = Weight(exported.parameters[placeholder.name],
                                         tuple(int(s) for s in placeholder.meta["val"].shape))
    tokens = MatrixSymbol("t", seq, 1)
    values[context.tokens] = Tokens(tokens)
    block_in, block_out = _boundary(layers[0], context.static)
    _, leaving = _boundary(layers[-1], context.static)
    logits_node = next(n for n in exported.program.graph.nodes if n.op == "output").args[0][0]

    stages = []
    names = Names(context, "embedding", tokens, "t", layered=False)
    output = StageLowering(context, names, values).lower(before, block_in)
    stages.append(_stage(names, "embedding", "Embedding", "E", output, "x", "X^{(0)}"))
    x = MatrixSymbol("x", seq, d_model)
    values[block_in] = Stream(x)
    names = Names(context, "block", x, "X^{($l)}", layered=True)
    output = StageLowering(context, names, values).lower(layers[0], block_out)
    stages.append(_stage(names, "block", "Transformer block", "B", output, "x_next", "X^{($next)}",
                         layers=len(layers)))
    values[leaving] = Stream(x)
    names = Names(context, "unembedding", x, "X^{(L)}", layered=False)
    output = StageLowering(context, names, values).lower(after, logits_node)
    stages.append(_stage(names, "unembedding", "Unembedding", "U", output, "logits", "Z"))

    positions = next((s for stage in stages for s in stage.extra_inputs if s.name == "p"), None)
    return Program(
        family="traced", stages=stages, dims=context.dims, dim_latex=DIM_LATEX, dim_python=DIM_PYTHON,
        input_symbol=tokens, positions=positions, seq=seq, max_seq=context.dims[n_ctx],
        vocab=context.dims[n_vocab], source=checkpoint.source,
        notes=[f"Traced from transformers' {type(exported.model).__name__} with torch.export.", *context.notes],
        config=dict(checkpoint.config or {}))


def _stage(names: Names, name, title, letter, output, out_name, out_latex, layers=None) -> Stage:
    names.finish(output, out_name, out_latex)
    equations = names.prelude + names.equations
    per_layer = layers and any(eq.rhs.has(LayerValue) for eq in equations)  # the block takes l
    return Stage(name, title, letter, names.input, equations, names.used_params(), names.latex, layers=layers,
                 extra_inputs=tuple(names.extra), cached=names.cached, layer_symbols=(layer,) if per_layer else ())
