"""A big model's export with two of its layers: torch.export's time grows with depth (a 32-layer
7B model: ~27 s of CPU; two layers: ~10 s), and the lowering reads one layer's ops and checks the
others are the same. With unexported layers that check cannot see their ops, so fewer layers are
exported only when nothing can make a later layer differ: every module of every layer has the same
type and the same settings (layer_idx aside) as layer 0's, and no config value is a per-layer list
with different entries (``layer_types``). The tensors of the layers not exported are checked by
name and shape (``program.py``)."""

from __future__ import annotations

TRACED_LAYERS = 2


def _settings(module) -> dict:
    """A module's plain attributes (its type, numbers, strings, flags), without the layer index."""
    return {key: value for key, value in vars(module).items()
            if not key.startswith("_") and key != "layer_idx" and isinstance(value, (int, float, str, bool, tuple))}


def _alike(layers) -> bool:
    first = [(name, type(m), _settings(m)) for name, m in layers[0].named_modules()]
    return all([(name, type(m), _settings(m)) for name, m in layer.named_modules()] == first for layer in layers[1:])


def fewer_layers(model, layers_path: str, layers: int) -> dict | None:
    """config.json's settings for a model of TRACED_LAYERS layers that stands for all ``layers``,
    or None when a later layer could differ (then every layer is exported)."""
    if layers <= TRACED_LAYERS or not _alike(model.get_submodule(layers_path)):
        return None
    settings = {"num_hidden_layers": TRACED_LAYERS}
    for key, value in vars(model.config).items():
        if isinstance(value, (list, tuple)) and len(value) == layers:
            if any(entry != value[0] for entry in value):
                return None
            settings[key] = list(value[:TRACED_LAYERS])
    return settings
