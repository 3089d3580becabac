"""torch's side of the tracer: the transformers model for a config.json, exported with a dynamic
sequence length, and the checkpoint names of its parameters."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, UnsupportedArchitecture
from ..load import Checkpoint
from .moe import stacked_names
from .rotary import refuse_length_dependent
from .truncate import fewer_layers

EXAMPLE_LENGTH = 4  # export needs an example of >= 2 tokens for a dynamic length
ALLOCATE_BELOW = 256 * 2**20  # bytes of weights: smaller models are exported with (random) weights allocated


@dataclass
class Exported:
    program: object  # torch.export.ExportedProgram
    model: object  # the transformers model (weights not allocated)
    parameters: dict[str, str]  # graph placeholder -> the checkpoint's tensor name
    buffers: dict[str, object]  # graph placeholder -> buffer tensor (real values, e.g. inv_freq)
    layers_path: str  # "gpt_neox.layers": the ModuleList of the blocks ("" for a model without one)
    layers: int
    # a fused experts' parameter (its first tensor's name) -> per expert, the tensors it stacks (Mixtral)
    stacked: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    config: object = None  # the sizes: transformers' config, or one read off a module's graph (trace.module)
    origin: str = ""  # what was traced, for the notes: "transformers' GPTNeoXForCausalLM"
    traced_layers: int = 0  # how many of the layers the graph holds (truncate.py), 0: all

    def __post_init__(self):
        self.config = self.config if self.config is not None else self.model.config
        self.traced_layers = self.traced_layers or self.layers
        self.origin = self.origin or f"transformers' {type(self.model).__name__}"


def implementations(config) -> dict[str, str]:
    """How transformers is asked to build the model: attention through torch's sdpa where the class
    offers it, else written out ("eager": Gemma-2, whose soft-capped scores sdpa cannot take); a
    mixture of experts as one batched product per chosen expert ("batched_mm": the experts' fused
    weights indexed by the router's choice, which export traces without data-dependent loops)."""
    import transformers

    model_class = transformers.AutoModelForCausalLM._model_mapping.get(type(config), None)
    options = {"attn_implementation": "sdpa" if getattr(model_class, "_supports_sdpa", True) else "eager"}
    if model_class is not None and model_class._can_set_experts_implementation():
        options["experts_implementation"] = "batched_mm"
    return options


def _model(checkpoint: Checkpoint, empty: bool, overrides: dict | None = None):
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    if not checkpoint.config or "model_type" not in checkpoint.config:
        raise UnsupportedArchitecture("the tracer needs a config.json with a model_type")
    try:
        config = transformers.AutoConfig.for_model(**{**checkpoint.config, **(overrides or {})})
        config.use_cache = False
        if empty:
            from accelerate import init_empty_weights  # keeps buffers (rotary inv_freq) real

            with init_empty_weights():
                model = transformers.AutoModelForCausalLM.from_config(config, **implementations(config))
        else:
            model = transformers.AutoModelForCausalLM.from_config(config, **implementations(config))
    except Exception as e:  # anything transformers raises on a stranger's config: a refusal, not a crash
        reason = str(e).split(". ")[0].splitlines()[0] if str(e) else type(e).__name__
        raise UnsupportedArchitecture(f"transformers cannot build it: {reason}") from None
    return model.to(torch.float32).eval()


class _Logits:
    """Wraps the model so the export returns the logits tensor alone."""

    def __new__(cls, model):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = model

            def forward(self, ids):
                return self.m(input_ids=ids, use_cache=False).logits

        return Wrapper()


def export_checkpoint(checkpoint: Checkpoint) -> Exported:
    # unallocated weights keep a big model's export in constant memory, but some models then make
    # their constants (Falcon's head indices) or buffers (GPT-J's sin/cos table) on the wrong device
    big = sum(info.nbytes for info in checkpoint.tensors.values()) > ALLOCATE_BELOW
    model = _model(checkpoint, empty=big)
    refuse_length_dependent(model.config)
    path, layers = layer_list(model)
    fewer = fewer_layers(model, path, layers) if big else None
    if fewer:
        model = _model(checkpoint, empty=True, overrides=fewer)
    names = _checkpoint_names(model, checkpoint)
    stacked = stacked_names(model, names)
    names.update({name: parts[0][0] for name, parts in stacked.items()})
    missing = [name for name, _ in model.named_parameters() if name not in names]
    if missing:
        raise UnsupportedArchitecture(f"the checkpoint's tensors are not those of transformers' "
                                      f"{type(model).__name__} (no {missing[0]!r})")
    program = _export(model, int(getattr(model.config, "max_position_embeddings", 0) or 2048))
    signature = program.graph_signature
    parameters = {}
    for placeholder, state_name in signature.inputs_to_parameters.items():
        name = state_name.removeprefix("m.")
        if name not in names:
            raise ConfigError(f"the checkpoint has no tensor for the model's parameter {name!r}")
        parameters[placeholder] = names[name]
    buffer_values = dict(model.named_buffers())
    buffers = {placeholder: buffer_values[name.removeprefix("m.")]
               for placeholder, name in signature.inputs_to_buffers.items()}
    buffers.update({placeholder: program.constants[name]
                    for placeholder, name in signature.inputs_to_lifted_tensor_constants.items()})
    return Exported(program, model, parameters, buffers, path, layers,
                    {parts[0][0]: parts for parts in stacked.values()}, traced_layers=layer_list(model)[1])


def _export(model, context: int):
    """The model exported for 2 <= n <= context; where a table of the whole context is sliced to the
    last n rows (MPT's ALiBi), n = context is a branch of its own, so that length is left out."""
    import torch

    for longest in (max(context, 3), max(context - 1, 3)):
        try:
            return torch.export.export(_Logits(model), (torch.zeros(1, EXAMPLE_LENGTH, dtype=torch.long),),
                                       dynamic_shapes={"ids": {1: torch.export.Dim("n", min=2, max=longest)}})
        except Exception as e:  # torch raises many types; the user gets why, in one line
            error = e
            if f"satisfy the generated guard L['ids'].size()[1] != {context}" not in str(e):
                break
    raise UnsupportedArchitecture(f"torch.export cannot trace {type(model).__name__}: "
                                  f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None


def _checkpoint_names(model, checkpoint: Checkpoint) -> dict[str, str]:
    """The model's parameter names -> the checkpoint's tensor names: the same name, a tensor saved
    under an older name (transformers' renamings, e.g. GPT-NeoX ``embed_out`` -> ``lm_head``), or
    for a tied weight, the tensor it is tied to."""
    from transformers.conversion_mapping import get_model_conversion_mapping

    renamings = [(source, target) for rule in get_model_conversion_mapping(model)
                 if type(rule).__name__ == "WeightRenaming"
                 for source, target in zip(rule.source_patterns, rule.target_patterns)]
    names = {}
    for stored in checkpoint.tensors:
        renamed = stored
        for source, target in renamings:
            renamed = re.sub(source, target, renamed)
        names.setdefault(renamed, stored)
        names.setdefault(stored, stored)
    tied = getattr(model, "_tied_weights_keys", None) or {}
    if isinstance(tied, dict) and getattr(model.config, "tie_word_embeddings", False):
        for target, source in tied.items():
            if target not in names and source in names:
                names[target] = names[source]
    return names


def layer_list(model) -> tuple[str, int]:
    """The ModuleList holding the blocks: the longest one (its length is the depth)."""
    import torch

    lists = [(len(module), name) for name, module in model.named_modules()
             if isinstance(module, torch.nn.ModuleList) and len(module)]
    if not lists:
        raise UnsupportedArchitecture(f"{type(model).__name__} has no list of layers to state as one block")
    count, name = max(lists)
    return name, count


def reference_forward(checkpoint: Checkpoint, dtype: str = "float32"):
    """transformers' own model for the checkpoint (its class from config.json), computing in ``dtype``."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if checkpoint.folder is None:
        raise ConfigError("the traced reference needs the checkpoint's folder (config.json beside the weights)")
    config = transformers.AutoConfig.from_pretrained(checkpoint.folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint.folder, dtype=getattr(torch, dtype),
                                                              **implementations(config)).eval()

    def forward(tokens: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(tokens, dtype=torch.long)[None], use_cache=False).logits[0].float().numpy()

    return forward
