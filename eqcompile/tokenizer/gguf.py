"""A GGUF file's own tokenizer: its ``tokenizer.ggml.*`` metadata (llama.cpp's byte-level BPE)."""

from __future__ import annotations

from ..errors import ConfigError
from .build import added_token, build, expect, merge_pairs, text, token_id
from .pattern import DIGIT_PATTERNS, GPT2_PATTERN, LLAMA3_PATTERN, split_step
from .runtime import Tokenizer

# tokenizer.ggml.pre -> (pre-tokenization regexes, ignore_merges) of the family's tokenizer.json
GGUF_PRE_TOKENIZERS = {
    "gpt2": ([GPT2_PATTERN], False),
    "smollm": ([DIGIT_PATTERNS[True], GPT2_PATTERN], False),  # StarCoder's Digits + ByteLevel
    "starcoder": ([DIGIT_PATTERNS[True], GPT2_PATTERN], False),
    "llama-bpe": ([LLAMA3_PATTERN], True),
}
GGUF_CONTROL, GGUF_USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values of added tokens


def from_gguf(tokens: list[str], merges: list[str], pre: str, token_types: list[int] | None = None,
              bos_id: int | None = None, add_bos: bool = False,
              eos_id: int | None = None, add_eos: bool = False) -> Tokenizer:
    """GGUF metadata: ``tokenizer.ggml.tokens`` (id order), ``.merges`` ("a b"), ``.pre`` (one of
    :data:`GGUF_PRE_TOKENIZERS`), ``.token_type`` (control tokens are special, user-defined ones
    added), ``.bos_token_id``/``.add_bos_token`` and the same for EOS."""
    tokens = [text(token, f"tokenizer.ggml.tokens[{i}]")
              for i, token in enumerate(expect(tokens, list, "tokenizer.ggml.tokens"))]
    if not isinstance(pre, str) or pre not in GGUF_PRE_TOKENIZERS:
        raise ConfigError(f"GGUF pre-tokenizer {pre!r:.80} is not supported "
                          f"(supported: {', '.join(GGUF_PRE_TOKENIZERS)})")
    patterns, ignore_merges = GGUF_PRE_TOKENIZERS[pre]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ConfigError("GGUF tokenizer: tokenizer.ggml.tokens repeats a token")
    pairs = merge_pairs(merges, "tokenizer.ggml.merges")
    types = expect(token_types or [], list, "tokenizer.ggml.token_type")
    entries = [{"id": i, "content": tokens[i], "special": kind == GGUF_CONTROL}
               for i, kind in enumerate(types[:len(tokens)]) if kind in (GGUF_CONTROL, GGUF_USER_DEFINED)]
    ends = [(bos_id, add_bos, "bos_token_id"), (eos_id, add_eos, "eos_token_id")]
    prefix, suffix = ([token_id(i, f"tokenizer.ggml.{key}", len(tokens))] if add and i is not None else []
                      for i, add, key in ends)
    added = [added_token(entry, "tokenizer.ggml.token_type", len(tokens)) for entry in entries]
    return build("BPE", vocab, pairs, [split_step(p, "tokenizer.ggml.pre") for p in patterns],
                 where="tokenizer.ggml.tokens", added_tokens=added, ignore_merges=ignore_merges,
                 prefix=prefix, suffix=suffix)
