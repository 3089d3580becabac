"""The tracer: transformers' own models, exported with torch.export and lowered into the Program.

Each architecture is a tiny random checkpoint saved by transformers (wide weights, random norm gains
and biases, so every term moves the logits); the emitted numpy module must give transformers'
logits at several lengths within ``ATOL``/``RTOL`` (float32 on both sides).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import eqcompile  # noqa: E402
from eqcompile import UnsupportedArchitecture  # noqa: E402
from eqcompile.cli import main  # noqa: E402
from eqcompile.emit.python import import_module  # noqa: E402
from eqcompile.verify import compare  # noqa: E402

ATOL, RTOL = 1e-4, 1e-5  # max |emitted - transformers|, and that over max |transformers|
LENGTHS = (1, 5, 16)
SMALL = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
             max_position_embeddings=32, initializer_range=0.3, bos_token_id=None, eos_token_id=None,
             pad_token_id=None)
ARCHITECTURES = {  # model_type -> (config class, settings over SMALL)
    "gpt_neox": ("GPTNeoXConfig", dict(rotary_pct=0.5, use_parallel_residual=True)),
    "phi3": ("Phi3Config", dict(num_key_value_heads=2)),
    "stablelm": ("StableLmConfig", dict(num_key_value_heads=2)),
    "olmo2": ("Olmo2Config", dict(num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(num_key_value_heads=2, head_dim=8)),
    "opt": ("OPTConfig", dict(ffn_dim=40, word_embed_proj_dim=32)),
    "falcon": ("FalconConfig", dict(new_decoder_architecture=False, multi_query=True, parallel_attn=True)),
    "gptj": ("GPTJConfig", dict(rotary_dim=4)),  # interleaved rotary on 4 of each head's 8 features; gelu_new
    # beyond the list (README's table): each passes as the ones above
    "granite": ("GraniteConfig", dict(num_key_value_heads=2, embedding_multiplier=2.0, residual_multiplier=0.5,
                                      attention_multiplier=0.2, logits_scaling=4.0)),  # logits / 4: a generic div
    "cohere": ("CohereConfig", dict(num_key_value_heads=2)),  # interleaved rotary; LayerNorm written out
    "starcoder2": ("Starcoder2Config", dict(num_key_value_heads=2)),
    "phi": ("PhiConfig", dict(partial_rotary_factor=0.5)),
    "biogpt": ("BioGptConfig", {}),
    "glm": ("GlmConfig", dict(num_key_value_heads=2)),
    "helium": ("HeliumConfig", dict(num_key_value_heads=2, head_dim=8)),
    "smollm3": ("SmolLM3Config", dict(num_key_value_heads=2)),
}
DEFAULT_RUN = ("gpt_neox", "phi3", "gptj")  # the others run with -m slow (each costs an export)


def make_checkpoint(folder: Path, model_type: str, seed: int = 0, **overrides) -> Path:
    """A random ``AutoModelForCausalLM`` of ``model_type`` saved with save_pretrained."""
    config_class, settings = ARCHITECTURES[model_type]
    return save_random(lambda: getattr(transformers, config_class)(**{**SMALL, **settings, **overrides}), folder, seed)


def save_random(config, folder: Path, seed: int) -> Path:
    """``AutoModelForCausalLM`` of ``config()`` with random weights, saved with save_pretrained."""
    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config()).eval()
    with torch.no_grad():  # a fresh model's gains are 1 and its biases 0: they would test nothing
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


def transformers_logits(folder: Path, tokens) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.as_tensor(tokens)[None], use_cache=False).logits[0].numpy()


@pytest.fixture(scope="module")
def neox(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("neox") / "ckpt", "gpt_neox")


@pytest.fixture(scope="module")
def neox_compiled(neox):
    return eqcompile.compile(neox)


@pytest.mark.parametrize("model_type", [pytest.param(t, marks=() if t in DEFAULT_RUN else pytest.mark.slow)
                                        for t in ARCHITECTURES])
def test_traced_module_matches_transformers(tmp_path, model_type):
    folder = make_checkpoint(tmp_path / "ckpt", model_type)
    assert_traced_module_matches(folder, eqcompile.compile(folder), tmp_path / "out", f"traced_{model_type}")


def assert_traced_module_matches(folder: Path, compiled, out: Path, name: str) -> None:
    """One generic block (l), and the emitted module's logits within ATOL/RTOL of transformers' at LENGTHS."""
    blocks = [stage for stage in compiled.program.stages if stage.layers]
    assert len(blocks) == 1 and blocks[0].layers == SMALL["num_hidden_layers"]
    module = import_module(compiled.to_python(out), name)
    rng = np.random.default_rng(0)
    for length in LENGTHS:
        tokens = rng.integers(0, SMALL["vocab_size"], length)
        logits = module.forward(tokens)
        assert logits.dtype == np.float32
        max_abs, max_rel, ok = compare(logits, transformers_logits(folder, tokens), ATOL, RTOL)
        assert ok, (name, length, max_abs, max_rel)


def test_neox_block_is_stated_once_with_its_weights_by_role(neox_compiled):
    program = neox_compiled.program
    block = program.stages[1]
    names = [p.name for p in block.params]
    assert names[:4] == ["gamma_1", "beta_1", "W_Q", "b_Q"] and {"W_K", "W_V", "W_O", "W_in", "W_out"} <= set(names)
    w_q = next(p for p in block.params if p.name == "W_Q")
    assert w_q.source.name == "gpt_neox.layers.{layer}.attention.query_key_value.weight"
    assert w_q.source.blocks == (24, 0, 8)  # each head's [q k v] rows, q first (head width 8)
    unembedding = {p.name: p.source.name for p in program.stages[2].params}
    assert unembedding["W_U"] == "embed_out.weight"  # the checkpoint's name, not the model's lm_head


def test_neox_cli_latex_and_verify(neox):
    runner = CliRunner()
    result = runner.invoke(main, [str(neox), "--latex"])
    assert result.exit_code == 0, result.output
    assert r"\operatorname{RoPE}" in result.stdout and "B^{(l)}" in result.stdout
    assert "traced transformers' GPTNeoXForCausalLM" in result.stderr and result.stderr.count("\n") == 1
    result = runner.invoke(main, ["verify", str(neox), "--seq", "3", "--seq", "9"])
    assert result.exit_code == 0, result.output
    refused = runner.invoke(main, ["verify", str(neox), "--seq", "999"])  # refused after the lowering
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1, refused.stderr  # the refusal alone
    assert refused.stderr.startswith("eqcompile: error: --seq 999 exceeds the context length")


def assert_greedy_generation_matches(folder: Path, compiled, out: Path, name: str):
    module = import_module(compiled.to_python(out), name)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = [3, 14, 15, 9]
    expected = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, min_new_tokens=16)
    assert module.generate(prompt, 16, seed=0, temperature=0) == expected[0, len(prompt):].tolist()


def test_neox_greedy_generation_matches_transformers(neox, neox_compiled, tmp_path):
    assert_greedy_generation_matches(neox, neox_compiled, tmp_path / "out", "traced_neox_generate")


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["phi3", "opt", "falcon"])  # the others: neox above, Gemma-2 and
def test_greedy_generation_matches_transformers(tmp_path, model_type):  # Mixtral in test_trace_gemma.py
    folder = make_checkpoint(tmp_path / "ckpt", model_type)
    assert_greedy_generation_matches(folder, eqcompile.compile(folder), tmp_path / "out", f"traced_{model_type}_gen")


def test_gptj_interleaved_rotary_and_greedy_generation(tmp_path):
    """GPT-J rotates adjacent feature pairs (rotate_every_two) of each head's first rotary_dim
    features, with a base its code hard-codes (read off the sin/cos table), and writes gelu_new out."""
    folder = make_checkpoint(tmp_path / "ckpt", "gptj", seed=1)
    compiled = eqcompile.compile(folder)
    latex = compiled.latex()
    assert r"Q^{(l)} &= \operatorname{RoPE}^{\mathrm{pairs}}_{\theta}\left(H^{(l)} W_{Q}^{(l)};\, p\right)" in latex
    assert r"\theta_{\mathrm{base}} = 10000" in latex and r"d_{\mathrm{rot}} = 4" in latex
    assert r"\operatorname{GELU}" in latex and "generically" not in latex  # gelu_new's steps: one op
    assert_greedy_generation_matches(folder, compiled, tmp_path / "out", "traced_gptj_generate")


def test_an_op_without_a_pattern_is_refused_naming_it_and_its_module(neox, monkeypatch):
    from eqcompile.tracer.lower import StageLowering

    monkeypatch.delattr(StageLowering, "_gelu")
    with pytest.raises(UnsupportedArchitecture) as error:
        eqcompile.compile(neox)
    message = str(error.value)
    assert "gelu" in message and "gpt_neox.layers.0.mlp.act" in message and "\n" not in message


def test_without_torch_the_error_names_the_extra(neox, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(UnsupportedArchitecture, match=r"eqcompile\[trace\]"):
        eqcompile.compile(neox)


TINY = dict(vocab_size=8, hidden_size=8, intermediate_size=12, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=4)


@pytest.mark.parametrize("model_type, settings", [
    ("gpt_neox", dict(rotary_pct=0.5)),  # PartialRoPE
    pytest.param("qwen3", dict(num_key_value_heads=1, head_dim=4), marks=pytest.mark.slow),  # HeadRMSNorm
    pytest.param("gptj", dict(rotary_dim=4), marks=pytest.mark.slow),  # InterleavedRoPE, the whole head
    pytest.param("qwen3", dict(num_key_value_heads=1, head_dim=8, rope_parameters=dict(  # YaRN: r = 0, 1/3, 2/3, 1
        rope_type="yarn", factor=4.0, original_max_position_embeddings=8, beta_fast=2.0, beta_slow=0.05,
        rope_theta=100.0)), marks=pytest.mark.slow, id="qwen3-yarn"),
])
def test_literal_expansion_of_a_traced_model(tmp_path, model_type, settings):
    """--expand on a traced Program: the counts of the built expansion equal the analytic ones
    (``cost``), and the pure-Python module computes what the float64 numpy module computes."""
    from eqcompile.stats import operation_counts

    model = eqcompile.compile(make_checkpoint(tmp_path / "ckpt", model_type, **TINY, **settings))
    assert model.expand().operations() == operation_counts(model.program, model.program.max_seq)
    literal = import_module(model.to_python(tmp_path / "literal", expand=True), f"{model_type}_literal")
    numpy64 = import_module(model.to_python(tmp_path / "numpy", dtype="float64"), f"{model_type}_numpy64")
    tokens = [3, 1, 7, 2]
    np.testing.assert_allclose(np.array(literal.forward(tokens)), numpy64.forward(tokens), atol=1e-6, rtol=0)


ROPE_ORIGINAL = 8  # original_max_position_embeddings: LENGTHS' 16 lies past it
SCALINGS = {  # rope_type -> (its parameters, what the LaTeX of θ states)
    "linear": ({"rope_type": "linear", "factor": 2.0}, r"\theta &= \frac{1}{s}"),
    "llama3": ({"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": ROPE_ORIGINAL}, r"\theta &= \operatorname{llama3}_{s, "),
    # base 100: the ramp runs over indices 0..3 of 4 frequencies (r = 0, 1/3, 2/3, 1), not a step
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ROPE_ORIGINAL,
              "beta_fast": 2.0, "beta_slow": 0.05, "rope_theta": 100.0}, r"\theta &= \operatorname{YaRN}_{s, "),
}


@pytest.mark.parametrize("model_type, scaling", [
    ("qwen3", "yarn"), ("olmo2", "llama3"),  # whole heads rotated: YaRN's attention factor on them
    *(pytest.param(t, s, marks=pytest.mark.slow) for t, s in [  # (phi3 takes only longrope, refused below)
        ("olmo2", "linear"), ("qwen3", "linear"), ("qwen3", "llama3"),
        ("gpt_neox", "llama3"), ("stablelm", "linear"), ("gpt_neox", "yarn")])])  # partial rotary
def test_rope_scaling_matches_transformers(tmp_path, model_type, scaling):
    """The scaled frequencies (and YaRN's factor on cos and sin) as transformers computes them, at
    lengths within and past the original context; the LaTeX states the scaling and its constants."""
    parameters, stated = SCALINGS[scaling]
    parameters = {"rope_theta": 10000.0, **parameters}
    if model_type in ("gpt_neox", "stablelm", "gptj") and scaling == "yarn":
        parameters["attention_factor"] = 1.0  # the factor on a partial rotary is refused (below)
    folder = make_checkpoint(tmp_path / "ckpt", model_type, rope_parameters=parameters)
    compiled = eqcompile.compile(folder)
    latex = compiled.latex()
    assert stated in latex and "$s = " in latex
    assert ("m_{\\mathrm{YaRN}} \\operatorname{RoPE}" in latex) == (scaling == "yarn" and model_type == "qwen3")
    module = import_module(compiled.to_python(tmp_path / "out"), f"scaled_{model_type}_{scaling}")
    rng = np.random.default_rng(0)
    for length in LENGTHS:
        tokens = rng.integers(0, SMALL["vocab_size"], length)
        max_abs, max_rel, ok = compare(module.forward(tokens), transformers_logits(folder, tokens), ATOL, RTOL)
        assert ok, (model_type, scaling, length, max_abs, max_rel)


@pytest.mark.slow
@pytest.mark.parametrize("model_type, parameters, why", [
    ("qwen3", {"rope_type": "dynamic", "factor": 2.0}, "RoPE scaling 'dynamic': its frequencies depend on"),
    ("phi3", {"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
              "original_max_position_embeddings": ROPE_ORIGINAL}, "RoPE scaling 'longrope': its frequencies"),
    ("gpt_neox", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ROPE_ORIGINAL},
     "YaRN's attention factor on a partial rotary embedding")])
def test_rope_scaling_chosen_by_length_is_refused_naming_it(tmp_path, model_type, parameters, why):
    folder = make_checkpoint(tmp_path / "ckpt", model_type, rope_parameters={"rope_theta": 10000.0, **parameters})
    with pytest.raises(UnsupportedArchitecture, match=why):
        eqcompile.compile(folder)
