"""Generation as a pure function step(state, token, u) -> (state', next_token), KV cache as state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import eqcompile
from eqcompile.emit.python import import_module

from conftest import SAMPLE, make_gpt2


@pytest.fixture(scope="module")
def random_gpt2(tmp_path_factory):
    folder = make_gpt2(tmp_path_factory.mktemp("gen") / "ckpt", n_positions=48, vocab_size=40, n_layer=3)
    module = import_module(eqcompile.compile(folder).to_python(folder.parent / "out"), "gen_random")
    return folder, module


@pytest.fixture(scope="module")
def sample_module(tmp_path_factory):
    return import_module(eqcompile.compile(SAMPLE).to_python(tmp_path_factory.mktemp("sample")), "gen_sample")


def test_cached_steps_equal_the_full_forward_at_every_position(random_gpt2):
    _, m = random_gpt2
    tokens = np.random.default_rng(0).integers(0, 40, size=48)
    full = m.forward(tokens)
    state = m.init_state()
    for i, token in enumerate(tokens):
        state, logits = m.advance(state, [token])
        np.testing.assert_allclose(logits[0], full[i], atol=1e-5, rtol=0)
    assert state.length == 48
    with pytest.raises(ValueError):  # the context is full
        m.advance(state, [0])


def test_prefill_then_steps_equal_forward(random_gpt2):
    _, m = random_gpt2
    tokens = list(range(20))
    state, first = m.advance(m.init_state(), tokens[:13])
    state, rest = m.advance(state, tokens[13:])
    np.testing.assert_allclose(np.concatenate([first, rest]), m.forward(tokens), atol=1e-5, rtol=0)


def test_step_is_pure(random_gpt2):
    _, m = random_gpt2
    state, _ = m.advance(m.init_state(), [1, 2, 3])
    once = m.step(state, 4, 0.5)
    again = m.step(state, 4, 0.5)  # the same state, reused
    assert once[1] == again[1] and state.length == 3
    np.testing.assert_array_equal(m.advance(state, [4])[1], m.advance(state, [4])[1])


def greedy_reference(folder, prompt, n):
    import torch
    import transformers

    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                             pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


def test_greedy_matches_transformers_on_a_random_model(random_gpt2):
    folder, m = random_gpt2
    prompt = [3, 17, 5, 9]
    assert m.generate(prompt, 32, seed=0, temperature=0) == greedy_reference(folder, prompt, 32)


def test_greedy_matches_transformers_on_the_trained_sample(sample_module):
    vocab = json.loads((SAMPLE / "vocab.json").read_text())
    prompt = [vocab[c] for c in "Shall I compare thee"]
    ours = sample_module.generate(prompt, 32, seed=0, temperature=0)
    assert ours == greedy_reference(SAMPLE, prompt, 32)
    text = "".join({i: c for c, i in vocab.items()}[i] for i in ours)
    assert text.startswith(" to a summer"), text  # it learned the sonnet


def test_same_seed_same_tokens(sample_module):
    runs = [sample_module.generate([1, 2, 3], 40, seed=7) for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0] != sample_module.generate([1, 2, 3], 40, seed=8)


def chi_square_critical(df: int, z: float = 3.0902) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile; z = 3.09 is significance 0.001."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_frequencies_match_the_softmax(sample_module, temperature):
    m = sample_module
    logits = m.forward([5, 8, 13])[-1]
    probs = np.exp(logits / temperature - (logits / temperature).max())
    probs /= probs.sum()
    rng = np.random.default_rng(2024)
    draws = 20000
    counts = np.bincount([m.sample(logits, rng.random(), temperature) for _ in range(draws)],
                         minlength=probs.size)
    expected = probs * draws
    pooled = expected >= 5  # pool rare tokens into one cell, as the test requires
    observed = np.append(counts[pooled], counts[~pooled].sum())
    expected = np.append(expected[pooled], expected[~pooled].sum())
    statistic = float(((observed - expected) ** 2 / expected).sum())
    assert statistic < chi_square_critical(len(observed) - 1), statistic


def test_top_k_top_p_and_greedy_restrict_the_support(sample_module):
    module = sample_module
    logits = np.array([0.0, 3.0, 1.0, 2.5, -1.0])
    picks = {module.sample(logits, u, top_k=2) for u in np.linspace(0, 0.999, 200)}
    assert picks == {1, 3}
    probs = np.exp(logits) / np.exp(logits).sum()  # 0.50, 0.30, ... : top-p 0.6 keeps two
    assert sorted(probs)[-1] < 0.6 < sorted(probs)[-1] + sorted(probs)[-2]
    assert {module.sample(logits, u, top_p=0.6) for u in np.linspace(0, 0.999, 200)} == {1, 3}
    assert {module.sample(logits, u, temperature=0) for u in (0.0, 0.5, 0.99)} == {1}
    assert module.sample(logits, 0.0) == 0 and module.sample(logits, 0.9999) == 4  # inverse CDF by id


def test_text_in_text_out_through_the_emitted_tokenizer(sample_module):
    """The whole map: string -> encode -> generate -> decode, all inside the emitted module."""
    ids = sample_module.generate("Shall I compare thee", 20, seed=0, temperature=0)
    assert sample_module.decode(ids).startswith(" to a summer")
    assert sample_module.encode("Shall") == [sample_module.encode(c)[0] for c in "Shall"]
