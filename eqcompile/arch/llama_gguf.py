"""A Llama GGUF file (llama.cpp's names and ``llama.*`` metadata) as the Llama family reads it.

The conversion only, as TransformerLens keeps ``weight_conversions/`` per family: the ``llama.*``
metadata becomes the config.json transformers would write, ``blk.0.attn_q.weight`` becomes
``model.layers.0.self_attn.q_proj.weight``. llama.cpp stores W_Q and W_K with each head's rows
interleaved for its RoPE layout; reading undoes that, so the numbers are laid out as in the original
checkpoint. The loader (``load/gguf.py``) gives the file's own names and typed metadata.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from ..errors import ConfigError, UnsupportedArchitecture
from ..load import Checkpoint
from ..load.base import StoredTensor

GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


@dataclass(frozen=True)
class ConvertedTensor:
    """A GGUF tensor under its Hugging Face name; W_Q and W_K rows put back in Hugging Face order."""

    name: str  # Hugging Face name
    stored: StoredTensor  # the tensor under the file's own name
    interleaved_heads: int | None = None  # W_Q, W_K: llama.cpp interleaved each head's rows for RoPE

    @property
    def gguf_name(self) -> str:
        return self.stored.name

    @property
    def dtype(self) -> str:
        return self.stored.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.stored.shape

    @property
    def nbytes(self) -> int:
        return self.stored.nbytes

    @property
    def path(self):  # where the stored bytes are (diff digests them)
        return self.stored.path

    @property
    def start(self) -> int:
        return self.stored.start

    def read(self) -> np.ndarray:
        weights = self.stored.read()
        if self.interleaved_heads:
            heads = self.interleaved_heads
            weights = weights.reshape(heads, self.shape[0] // heads // 2, 2, *self.shape[1:]) \
                .swapaxes(1, 2).reshape(self.shape)
        return np.ascontiguousarray(weights)


def from_gguf(checkpoint: Checkpoint) -> Checkpoint:
    """The checkpoint with a Hugging Face Llama config and Hugging Face tensor names."""
    file = checkpoint.files[0].name
    config = llama_config(file, checkpoint.file_metadata, set(checkpoint.tensors))
    interleaved = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    tensors = {}
    for gguf_name, stored in checkpoint.tensors.items():
        name = hf_name(file, gguf_name)
        block = BLOCK_TENSOR.fullmatch(gguf_name)
        tensors[name] = ConvertedTensor(name, stored, interleaved.get(block[2]) if block else None)
    return replace(checkpoint, tensors=tensors, config=config,
                   stored_names={name: tensor.gguf_name for name, tensor in tensors.items()})


def hf_name(file: str, gguf_name: str) -> str:
    stem, _, kind = gguf_name.rpartition(".")
    if stem in GLOBAL_NAMES and kind == "weight":
        return f"{GLOBAL_NAMES[stem]}.weight"
    block = BLOCK_TENSOR.fullmatch(gguf_name)
    if block and block[2] in BLOCK_NAMES:
        return f"model.layers.{block[1]}.{BLOCK_NAMES[block[2]]}.{block[3]}"
    if gguf_name == "rope_freqs.weight":
        raise UnsupportedArchitecture(f"{file}: per-frequency RoPE factors (rope_freqs.weight, as in "
                                      "Llama 3.1 GGUF files) are not supported")
    raise UnsupportedArchitecture(f"{file}: tensor {gguf_name!r} has no counterpart in a Llama model")


def llama_config(file: str, metadata, names: set[str]) -> dict:
    """The ``llama.*`` metadata (a load.gguf.GGUFMetadata) as the config.json transformers would write."""
    def value(key, kind="integer", default=None):
        found = metadata.typed(f"llama.{key}", kind, default)
        if found is None:
            raise ConfigError(f"{file}: GGUF metadata lacks llama.{key}")
        return found

    hidden, heads = value("embedding_length"), value("attention.head_count")
    head_dim = value("attention.key_length", default=hidden // heads if heads else None)
    if value("attention.value_length", default=head_dim) != head_dim:
        raise ConfigError(f"{file}: key and value heads of different widths are not a Llama model")
    if value("rope.dimension_count", default=head_dim) != head_dim:
        raise ConfigError(f"{file}: RoPE on {value('rope.dimension_count')} of {head_dim} head features "
                          "(partial rotary) is not supported")
    tokens = metadata.typed("tokenizer.ggml.tokens", "array of string")
    config = {
        "model_type": "llama",
        "vocab_size": value("vocab_size", default=len(tokens) if tokens else None),
        "hidden_size": hidden,
        "intermediate_size": value("feed_forward_length"),
        "num_hidden_layers": value("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": value("attention.head_count_kv", default=heads),
        "head_dim": head_dim,
        "max_position_embeddings": value("context_length"),
        "rms_norm_eps": value("attention.layer_norm_rms_epsilon", "number"),
        "rope_theta": value("rope.freq_base", "number", 10000.0),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "mlp_bias": "blk.0.ffn_up.bias" in names,
        "bos_token_id": metadata.typed("tokenizer.ggml.bos_token_id", "integer"),
        "eos_token_id": metadata.typed("tokenizer.ggml.eos_token_id", "integer"),
    }
    scaling = value("rope.scaling.type", "string", "none")
    if scaling != "none":  # the lowering accepts the types it supports and names them otherwise
        config["rope_scaling"] = {"rope_type": scaling, "factor": value("rope.scaling.factor", "number", 1.0)}
        if "llama.rope.scaling.original_context_length" in metadata:
            original = value("rope.scaling.original_context_length")
            config["rope_scaling"]["original_max_position_embeddings"] = original
    return config
