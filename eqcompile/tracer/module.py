"""``eqcompile.trace(module, example_inputs)``: a researcher's own ``nn.Module`` through the tracer.

The module is exported as a checkpoint's transformers model is (a dynamic sequence length), its
sizes are read off the graph instead of a config.json, and its weights are the module's own state,
copied once at trace time into an in-memory checkpoint (no file is written).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from ..errors import UnsupportedArchitecture
from ..load import Checkpoint
from ..program import Program
from .export import Exported, layer_list

MAX_LENGTH = 1024  # the longest input the emitted module takes, unless a position table says less


@dataclass(frozen=True)
class ModuleTensor:
    """One tensor of the module's state, as a checkpoint's tensor (float32, read from memory)."""

    name: str
    array: np.ndarray

    dtype = "F32"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def nbytes(self) -> int:
        return self.array.nbytes

    def read(self) -> np.ndarray:
        return self.array


def module_checkpoint(module) -> Checkpoint:
    """The module's parameters (tied ones under every name) as an in-memory checkpoint."""
    tensors = {name: ModuleTensor(name, p.detach().to("cpu").float().numpy().copy())
               for name, p in module.named_parameters(remove_duplicate=False)}
    if not tensors:
        raise UnsupportedArchitecture(f"{type(module).__name__} has no parameters to write down")
    return Checkpoint(type(module).__name__, [], tensors, None)


def _example(example_inputs):
    """The one input tensor and the axis of its length: token ids [1, n] or [n], real rows [1, n, d] or [n, d]."""
    import torch

    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor):
        raise UnsupportedArchitecture("trace takes one example input tensor: token ids [1, n] or real rows [n, d]")
    example = inputs[0]
    tokens = not example.dtype.is_floating_point
    rank = example.dim()
    if (tokens and rank not in (1, 2)) or (not tokens and rank not in (2, 3)) or example.shape[0] != 1 and rank == (
            2 if tokens else 3):
        raise UnsupportedArchitecture(f"trace takes token ids [1, n] or [n], or real rows [1, n, d] or [n, d]; "
                                      f"got a {example.dtype} tensor of shape {list(example.shape)}")
    axis = rank - 1 if tokens else rank - 2
    if example.shape[axis] < 2:
        raise UnsupportedArchitecture("the example input needs at least 2 positions (its length is traced as n)")
    return example, axis


def export_module(module, example_inputs, max_length: int = MAX_LENGTH) -> Exported:
    import torch

    class Wrapper(torch.nn.Module):  # module paths start "m.", as a checkpoint's exports do
        def __init__(self):
            super().__init__()
            self.m = module

        def forward(self, x):
            return self.m(x)

    example, axis = _example(example_inputs)
    training = module.training
    module.eval()  # inference: dropout off (and back as it was after)
    length = torch.export.Dim("n", min=2, max=max(max_length, 3))
    try:
        program = torch.export.export(Wrapper(), (example,), dynamic_shapes={"x": {axis: length}})
    except Exception as e:  # torch raises many types; the user gets why, in one line
        raise UnsupportedArchitecture(f"torch.export cannot trace {type(module).__name__}: "
                                      f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    finally:
        module.train(training)
    outputs = next(n for n in program.graph.nodes if n.op == "output").args[0]
    if len(outputs) != 1:
        raise UnsupportedArchitecture(f"{type(module).__name__} returns {len(outputs)} tensors; trace needs one")
    signature = program.graph_signature
    parameters = {placeholder: name.removeprefix("m.") for placeholder, name in signature.inputs_to_parameters.items()}
    buffer_values = dict(module.named_buffers())
    buffers = {placeholder: buffer_values[name.removeprefix("m.")]
               for placeholder, name in signature.inputs_to_buffers.items()}
    buffers.update({placeholder: program.constants[name]
                    for placeholder, name in signature.inputs_to_lifted_tensor_constants.items()})
    try:
        path, layers = layer_list(module)
    except UnsupportedArchitecture:
        path, layers = "", 0  # no list of blocks: the whole module is one stage
    return Exported(program, module, parameters, buffers, path, layers,
                    config=_sizes(program, example, max_length), origin=f"the nn.Module {type(module).__name__}")


def _sizes(program, example, max_length: int) -> SimpleNamespace:
    """What a transformers config would say, read off the graph: the stream's width (the token
    table's or the input's), the vocabulary (token rows), the heads (the first split into heads),
    and the context (a position table's rows, else ``max_length``)."""
    tokens = not example.dtype.is_floating_point
    hidden, vocab, heads, width, context = int(example.shape[-1]), 0, None, None, max_length
    for node in program.graph.nodes:
        target = str(node.target)
        if "aten.embedding" in target:
            rows, columns = node.args[0].meta["val"].shape
            if node.args[1].op == "placeholder" and tokens:  # indexed by the tokens: the token table
                hidden, vocab = int(columns), int(rows)
            else:  # indexed by positions
                context = min(context, int(rows))
        shape = tuple(node.meta["val"].shape) if hasattr(node.meta.get("val"), "shape") else ()
        if width is None and target.startswith(("aten.view", "aten.reshape")) and len(shape) == 4:
            heads, width = int(shape[2]), int(shape[3])
    return SimpleNamespace(hidden_size=hidden, vocab_size=vocab, num_attention_heads=heads,
                           head_dim=width or hidden, max_position_embeddings=context)


def trace_module(module, example_inputs, max_length: int = MAX_LENGTH) -> tuple[Checkpoint, Program]:
    """The module's in-memory checkpoint and Program (``eqcompile.trace`` wraps them as a CompiledModel)."""
    from . import require_torch
    from .program import build_program

    require_torch()
    exported = export_module(module, example_inputs, max_length)
    checkpoint = module_checkpoint(module)
    return checkpoint, build_program(exported, checkpoint)
