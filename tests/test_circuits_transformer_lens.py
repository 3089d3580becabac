"""``eqcompile circuits`` against TransformerLens (the test extra pins transformer-lens==4.3.0).

TransformerLens 4 has no HookedTransformer: ``TransformerBridge.boot_transformers`` wraps the transformers
model as loaded, with its raw weights (no LayerNorm folding, no centring: ``enable_compatibility_mode()``
is not called), which are the weights eqcompile reads. Its ``OV``/``QK`` are FactoredMatrix objects
[layer, head, d, d] whose ``S`` are the singular values; ``all_composition_scores(mode).scores`` is
[l1, h1, l2, h2], 0 where l2 ≤ l1 (eqcompile: null); its copying score is the one of its demos,
``(W_E @ OV @ W_U).eigenvalues``, Σλ/Σ|λ|. TransformerLens computes in float32, so the tolerance is float32's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_gpt2
from eqcompile import api
from llama_models import make_llama

FLOAT32_TOL = 1e-5  # relative to the largest value compared; measured differences are ≤ 7e-7

MODELS = {
    "gpt2-tied": lambda folder: make_gpt2(folder, n_layer=3),
    "gpt2-untied": lambda folder: make_gpt2(folder, n_layer=3, tie_word_embeddings=False),
    "llama-gqa": lambda folder: make_llama(folder, num_hidden_layers=3, num_attention_heads=4,
                                           num_key_value_heads=2, hidden_size=16),
    "qwen2": lambda folder: make_llama(folder, "qwen2", num_key_value_heads=1, tie_word_embeddings=True),
}


def bridge_for(folder: Path):
    """TransformerLens's view of the checkpoint, offline: the boot reads a word-level tokenizer saved beside it."""
    import transformers
    from tokenizers import Tokenizer, models

    pytest.importorskip("transformer_lens")  # here, not at collection: its import takes seconds
    from transformer_lens.model_bridge import TransformerBridge

    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(50)}, unk_token="w0"))
    transformers.PreTrainedTokenizerFast(tokenizer_object=words, unk_token="w0").save_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    return TransformerBridge.boot_transformers(str(folder), hf_model=model)


def numbers(tensor) -> np.ndarray:
    return tensor.detach().double().numpy()


@pytest.mark.parametrize("name", MODELS)
def test_spectra_composition_and_copying_equal_transformer_lens(tmp_path, name):
    folder = MODELS[name](tmp_path / name)
    bridge = bridge_for(folder)
    ours = api.compile(folder).circuits(top=4)
    for circuit, theirs in (("qk", bridge.QK), ("ov", bridge.OV)):
        values = np.array([[getattr(head, circuit).singular_values for head in layer] for layer in ours.layers])
        np.testing.assert_allclose(values, numbers(theirs.S), rtol=0, atol=FLOAT32_TOL * values.max())
        norms = np.array([[getattr(head, circuit).frobenius for head in layer] for layer in ours.layers])
        np.testing.assert_allclose(norms, numbers(theirs.norm()), rtol=FLOAT32_TOL)
    for mode in "qkv":
        scores = np.array(ours.composition[mode], dtype=float)  # null (l2 ≤ l1) -> nan
        theirs = numbers(bridge.all_composition_scores(mode.upper()).scores)
        assert np.all(theirs[np.isnan(scores)] == 0) and np.all(np.isnan(scores) == (theirs == 0))
        np.testing.assert_allclose(np.nan_to_num(scores), theirs, rtol=0, atol=FLOAT32_TOL)
    eigenvalues = (bridge.W_E @ bridge.OV @ bridge.W_U).eigenvalues
    copying = numbers(eigenvalues.sum(-1).real / eigenvalues.abs().sum(-1))
    np.testing.assert_allclose([[head.ov.copying for head in layer] for layer in ours.layers], copying,
                               rtol=0, atol=FLOAT32_TOL)
