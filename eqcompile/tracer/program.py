"""The traced graph cut into stages (embedding, one generic block, unembedding) and assembled into
a :class:`~eqcompile.program.Program`.

Every layer's section of the graph must be the same sequence of ops on the same-named weights
(layer index aside); then layer 0's section alone is lowered and stands for every layer (l).
"""

from __future__ import annotations

import re
import sys

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from ..arch.common import DIM_LATEX, DIM_PYTHON, d_ff, d_model, layer, n_ctx, n_vocab, seq
from ..errors import ConfigError, UnsupportedArchitecture
from ..load import Checkpoint
from ..ops import d_head, n_head, n_kv_head
from ..ops.moe import MOE_LATEX
from ..ops.partial_rope import d_rot
from ..ops.per_layer import LayerValue
from ..ops.softcap import CAP_LATEX
from ..ops.yarn import YARN_LATEX
from ..program import Interface, Program, Stage
from .export import Exported
from .generic import generic_listing
from .lower import StageLowering
from .naming import Names, module_path, op_name
from .layers import PerLayer, varying_statics
from .rotary import rope_parameters
from .statics import Evaluator, static_nodes
from .values import Stream, Tokens, Weight

DIM_LATEX = {**DIM_LATEX, d_rot: r"d_{\mathrm{rot}}", **CAP_LATEX, **MOE_LATEX, **YARN_LATEX}
DIM_PYTHON = {**DIM_PYTHON, d_rot: "d_rot",
              **{symbol: symbol.name for symbol in (*CAP_LATEX, *MOE_LATEX, *YARN_LATEX)}}
ROWS_OUTPUT = ("y_out", r"Y_{\mathrm{out}}")  # a module's output on real rows ("y", Y: a matrix named midway)
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
        config = exported.config
        self.config = config
        self.dims: dict[sp.Symbol, int | float] = {}
        self.rope_base = _rope_base(config)
        self.window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        self._sizes = self._size_table(config)
        self.varying: dict = {}  # layer 0's static inputs that differ between layers -> each layer's
        self.notes: list[str] = []  # what the Program states besides its equations (per-layer constants)
        self.generic: dict = {}  # AtenOp lowered generically -> its module path (tracer/generic.py)

    def _size_table(self, config) -> list[tuple[int, sp.Expr, sp.Symbol | None, int | None]]:
        """(size, its symbol expression, the dim it defines, value) in order of preference."""
        hidden, heads = config.hidden_size, config.num_attention_heads or 1
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
        if not config.vocab_size:  # a module on real inputs (trace.module) has no vocabulary
            del self.dims[n_vocab]
        if not config.num_attention_heads:  # nor, without attention, heads
            del self.dims[n_head], self.dims[d_head]
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
    base = rope_parameters(config).get("rope_theta")
    base = base if base is not None else getattr(config, "rope_theta", None)
    return float(base) if base is not None else None


def _sections(context: Context):
    """(embedding nodes, [nodes of layer i], unembedding nodes) by each node's module path."""
    prefix = f"m.{context.exported.layers_path}."
    layers: list[list] = [[] for _ in range(context.exported.traced_layers)]
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


def _boundary(nodes: list, static: set, parameters: dict) -> tuple:
    """(the stream entering a section: its one input from outside that is neither static nor a
    weight, the node leaving it)."""
    inside = set(nodes)
    inputs = {arg for node in nodes for arg in node.all_input_nodes
              if arg not in inside and arg not in static and arg.name not in parameters}
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


def _layer_templates(context: Context, layers: list, checkpoint: Checkpoint) -> dict[str, str]:
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
        for index in range(len(layers), context.exported.layers):  # layers not exported (truncate.py)
            name = template.format(layer=index)
            if name not in checkpoint.tensors or checkpoint.shape(name) != checkpoint.shape(tensor):
                raise ConfigError(f"the checkpoint has no tensor {name!r} shaped as {tensor!r}")
        templates[tensor] = template
    return templates


def _same_layers(context: Context, layers: list):
    """Refuse unless every layer's section is layer 0's up to the layer number and the static tables
    it reads (a mask, a rotary table: ``context.varying``, tracer/layers.py)."""
    state = context.exported.program.graph_signature.inputs_to_parameters
    signatures = [_signature(context, nodes, index, state) for index, nodes in enumerate(layers)]
    context.varying = varying_statics(context, layers, signatures,
                                      [_signature(context, nodes, index, state, statics=False)
                                       for index, nodes in enumerate(layers)])


def build_program(exported: Exported, checkpoint: Checkpoint) -> Program:
    context = Context(exported, checkpoint)
    graph = exported.program.graph
    values: dict = {}
    for placeholder in (n for n in graph.nodes if n.op == "placeholder"):
        if placeholder.name in exported.parameters:
            values[placeholder] = Weight(exported.parameters[placeholder.name],
                                         tuple(int(s) for s in placeholder.meta["val"].shape))
    takes_tokens = not context.tokens.meta["val"].dtype.is_floating_point
    if takes_tokens:
        model_input = MatrixSymbol("t", seq, 1)
        values[context.tokens] = Tokens(model_input)
    else:  # real rows [n, w] (a module traced from Python)
        model_input = MatrixSymbol("x", seq, context.dim(int(context.tokens.meta["val"].shape[-1])))
        values[context.tokens] = Stream(model_input)
    output_node = next(n for n in graph.nodes if n.op == "output").args[0][0]
    stages = [] if exported.layers else [_lower_stage(context, values, "network", "Network", "f", model_input, "X",
                                                      [n for n in context.nodes if n.op == "call_function"
                                                       and n not in context.static], output_node, *ROWS_OUTPUT)]
    if exported.layers:
        before, layers, after = _sections(context)
        _same_layers(context, layers)
        context.templates = _layer_templates(context, layers, checkpoint)
        block_in, block_out = _boundary(layers[0], context.static, exported.parameters)
        _, leaving = _boundary(layers[-1], context.static, exported.parameters)
        x = MatrixSymbol("x", seq, d_model)
        if before:
            stages.append(_lower_stage(context, values, "embedding", "Embedding", "E", model_input,
                                       "t" if takes_tokens else "X", before, block_in, "x", "X^{(0)}"))
        values[block_in] = Stream(x)
        stages.append(_lower_stage(context, values, "block", "Transformer block", "B", x, "X^{($l)}", layers[0],
                                   block_out, "x_next", "X^{($next)}", layers=exported.layers))
        values[leaving] = Stream(x)
        if after:
            stages.append(_lower_stage(context, values, "unembedding", "Unembedding", "U", x, "X^{(L)}", after,
                                       output_node, *(("logits", "Z") if takes_tokens else ROWS_OUTPUT)))

    positions = next((s for stage in stages for s in stage.extra_inputs if s.name == "p"), None)
    notes = [f"Traced from {exported.origin} with torch.export."]
    listing = generic_listing(context.generic, [eq for stage in stages for eq in stage.equations])
    if listing:
        notes.append(f"Lowered generically (aten ops no pattern matched, as torch defines them): {listing}.")
        print(f"eqcompile: lowered generically: {listing}", file=sys.stderr)
    return Program(
        family="traced", stages=stages, dims=context.dims, dim_latex=DIM_LATEX, dim_python=DIM_PYTHON,
        input_symbol=model_input, positions=positions, seq=seq, max_seq=context.dims[n_ctx],
        vocab=context.dims.get(n_vocab, 0), source=checkpoint.source,
        interface=Interface.CAUSAL_LM if takes_tokens else Interface.ROWS,
        notes=[*notes, *context.notes], config=dict(checkpoint.config or {}))


def _lower_stage(context: Context, values: dict, name, title, letter, input_symbol, input_latex, nodes, output,
                 out_name, out_latex, layers=None) -> Stage:
    names = Names(context, name, input_symbol, input_latex, layered=layers is not None)
    expr = StageLowering(context, names, values).lower(nodes, output)
    names.finish(expr, out_name, out_latex)
    equations = names.prelude + names.equations
    per_layer = layers and any(eq.rhs.has(LayerValue) for eq in equations)  # the block takes l
    return Stage(name, title, letter, names.input, equations, names.used_params(), names.latex, layers=layers,
                 extra_inputs=tuple(names.extra), cached=names.cached, layer_symbols=(layer,) if per_layer else ())
