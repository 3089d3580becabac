"""A plain MLP: a torch ``nn.Sequential`` of ``nn.Linear`` layers with an activation between them.

Column vectors, as ``nn.Linear`` computes: h_k = σ(W_k h_{k-1} + b_k) with h_0 = x, and no
activation after the last layer, so two layers are y = W_2 σ(W_1 x + b_1) + b_2. ``nn.Linear``
stores W_k as ``[out, in]`` = ``[d_k, d_{k-1}]``, already the orientation of W x.

The state dict names each Linear layer by its position in the Sequential (``0.weight``, ``0.bias``,
``2.weight``, ...). Activations hold no tensors, so ``config.json`` (``{"model_type": "mlp",
"activation": "relu"}``) or ``--activation`` says which one sits in the gaps; two Linear layers at
adjacent positions have nothing between them. Every layer has its own shape, so the layers are not
one repeated stage: each is a stage f_k : R^{d_{k-1}} -> R^{d_k} of its own, which gives each
layer its line in the LaTeX composition and its function in the emitted module.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixSymbol

from ..errors import CheckpointError, ConfigError
from ..load import Checkpoint
from ..ops import GELU, ReLU, Sigmoid, SiLU, Tanh
from ..program import Equation, Interface, Program, Stage, TensorRef
from . import Family
from .common import ConfigReader, load_reference, param

# config.json "activation" values: the op that writes it, and torch's module for the reference
ACTIVATIONS = {"relu": (ReLU, "ReLU"), "tanh": (Tanh, "Tanh"), "sigmoid": (Sigmoid, "Sigmoid"),
               "gelu": (GELU, "GELU"), "silu": (SiLU, "SiLU")}
TENSOR_NAME = re.compile(r"(0|[1-9]\d*)\.(weight|bias)")  # <position in the Sequential>.<weight|bias>


@dataclass(frozen=True)
class MLPConfig:
    widths: tuple[int, ...]  # d_0 (the input), d_1, ..., d_L (the output)
    positions: tuple[int, ...]  # where each Linear layer sits in the nn.Sequential
    biases: tuple[bool, ...]  # whether each Linear layer has a bias
    activated: tuple[bool, ...]  # whether each layer's output goes through the activation
    activation: str | None  # relu, tanh, sigmoid, gelu or silu; None if neither given nor needed

    @property
    def depth(self) -> int:
        return len(self.positions)


def width(k: int) -> sp.Symbol:
    """d_k, the length of the k-th vector (d_0: the input)."""
    return sp.Symbol(f"d_{k}", integer=True, positive=True)


def recognises(checkpoint: Checkpoint) -> bool:
    names = checkpoint.tensors
    weights = [name for name in names if name.endswith(".weight")]
    return (bool(weights) and all(TENSOR_NAME.fullmatch(name) for name in names)
            and all(len(checkpoint.shape(name)) == 2 for name in weights))


def read_config(checkpoint: Checkpoint) -> tuple[MLPConfig, list[str]]:
    """The layers, from tensor names and shapes; the activation, from the config; any assumptions."""
    biases = _linear_layers(checkpoint)
    positions = sorted(biases)
    widths = [checkpoint.shape(f"{positions[0]}.weight")[1]]
    for previous, position in zip([None, *positions], positions):
        rows, cols = checkpoint.shape(f"{position}.weight")
        if cols != widths[-1]:
            raise CheckpointError(f"tensor '{position}.weight' takes {cols} inputs, but the layer before "
                                  f"it ('{previous}.weight') gives {widths[-1]}")
        widths.append(rows)
    gaps = [later - earlier for earlier, later in zip(positions, positions[1:])]
    activated = tuple(gap > 1 for gap in gaps) + (False,)

    raw = checkpoint.config or {}
    activation = None
    if "activation" in raw:
        activation = ConfigReader(raw, "mlp").choice("activation", None, ACTIVATIONS)
    elif any(activated):
        raise ConfigError("mlp: the file does not name the activation between its Linear layers; give "
                          f"--activation ({', '.join(ACTIVATIONS)}) or \"activation\" in config.json")
    notes = [] if "model_type" in raw else [  # no config.json (at most command-line settings)
        f"no config.json: inferred an nn.Sequential of {len(positions)} Linear layers from the tensor names, "
        f"widths {' -> '.join(map(str, widths))}."]
    notes += [f"Between the Linear layers at positions {earlier} and {later} of the nn.Sequential, "
             f"the modules are taken to be one {activation} and modules that are the identity at "
             "inference (such as Dropout)." for earlier, later, gap in zip(positions, positions[1:], gaps)
             if gap > 2]
    return MLPConfig(tuple(widths), tuple(positions), tuple(biases[p] for p in positions), activated,
                     activation), notes


def _linear_layers(checkpoint: Checkpoint) -> dict[int, bool]:
    """Position of each Linear layer in the Sequential -> whether it has a bias (shapes checked)."""
    found: dict[int, set[str]] = {}
    for name in checkpoint.tensors:
        match = TENSOR_NAME.fullmatch(name)
        if match is None:
            raise CheckpointError(f"tensor {name!r} is not named like a Linear layer's tensor in an "
                                  "nn.Sequential ('0.weight', '0.bias', '2.weight', ...)")
        found.setdefault(int(match[1]), set()).add(match[2])
    layers = {}
    for position, kinds in found.items():
        if "weight" not in kinds:
            raise CheckpointError(f"tensor '{position}.bias' has no '{position}.weight' beside it")
        shape = checkpoint.shape(f"{position}.weight")
        if len(shape) != 2:
            raise CheckpointError(f"tensor '{position}.weight' has shape {list(shape)}: only Linear "
                                  "layers (2-D weights) are supported")
        layers[position] = "bias" in kinds
        if layers[position] and checkpoint.shape(f"{position}.bias") != shape[:1]:
            bias_shape = list(checkpoint.shape(f"{position}.bias"))
            raise CheckpointError(f"tensor '{position}.bias' has shape {bias_shape}, its weight implies {[shape[0]]}")
    return layers


def lower(checkpoint: Checkpoint) -> Program:
    config, notes = read_config(checkpoint)
    widths = [width(k) for k in range(config.depth + 1)]
    stages = [_layer(config, k, widths) for k in range(1, config.depth + 1)]
    return Program(
        family="mlp", stages=stages, dims=dict(zip(widths, config.widths)),
        dim_latex={d: f"d_{{{k}}}" for k, d in enumerate(widths)}, dim_python={d: d.name for d in widths},
        input_symbol=stages[0].input, seq=None, max_seq=1, vocab=0, interface=Interface.VECTOR,
        source=checkpoint.source, notes=notes, config=asdict(config),
    )


def _layer(config: MLPConfig, k: int, widths: list[sp.Symbol]) -> Stage:
    """Layer k as f_k: h_k = σ(W_k h_{k-1} + b_k); no σ after the last layer, whose output is y."""
    stage, position = f"layer_{k}", config.positions[k - 1]
    (h_in, latex_in), (h_out, latex_out) = _vector(k - 1, config.depth, widths), _vector(k, config.depth, widths)
    W = param(stage, f"W_{k}", widths[k], widths[k - 1], f"W_{{{k}}}", TensorRef(f"{position}.weight"))
    params, value = [W], W.symbol * h_in
    if config.biases[k - 1]:
        b = param(stage, f"b_{k}", widths[k], 1, f"b_{{{k}}}", TensorRef(f"{position}.bias"))
        params.append(b)
        value = sp.MatAdd(value, b.symbol, evaluate=False)  # printed in the order W h + b
    if config.activated[k - 1]:
        value = ACTIVATIONS[config.activation][0](value)
    return Stage(stage, f"Layer {k}", f"f_{{{k}}}", h_in, [Equation(h_out, value)], params,
                 {h_in.name: latex_in, h_out.name: latex_out})


def _vector(k: int, depth: int, widths: list[sp.Symbol]) -> tuple[MatrixSymbol, str]:
    """h_k as a column vector [d_k, 1], with its LaTeX; h_0 is the input x, h_L the output y."""
    name, latex = ("x", "x") if k == 0 else ("y", "y") if k == depth else (f"h_{k}", f"h_{{{k}}}")
    return MatrixSymbol(name, widths[k], 1), latex


def random_vector(program: Program, rng: np.random.Generator, length: int) -> np.ndarray:
    """A standard normal x in R^{d_0}. Its size is fixed: each length verify asks for is one draw."""
    return rng.standard_normal(int(program.dims[program.input_symbol.shape[0]])).astype(np.float32)


def reference(checkpoint: Checkpoint, dtype: str = "float32"):
    """torch's nn.Sequential rebuilt from the checkpoint, computing in ``dtype``."""
    import torch

    config, _ = read_config(checkpoint)
    modules, names = [], {}
    for k, position in enumerate(config.positions):
        names[f"{len(modules)}.weight"] = f"{position}.weight"
        if config.biases[k]:
            names[f"{len(modules)}.bias"] = f"{position}.bias"
        modules.append(torch.nn.Linear(config.widths[k], config.widths[k + 1], bias=config.biases[k]))
        if config.activated[k]:
            modules.append(getattr(torch.nn, ACTIVATIONS[config.activation][1])())
    torch_dtype = getattr(torch, dtype)
    model = load_reference(torch.nn.Sequential(*modules), checkpoint, names, dtype)

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(np.asarray(x, dtype=np.float32)).to(torch_dtype)).float().numpy()

    return forward


FAMILY = Family("mlp", ("mlp",), recognises, lower, reference, sample_input=random_vector,
                settings=("activation",))
