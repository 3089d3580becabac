"""GPT-2's original layout: ``vocab.json`` (token -> id) and ``merges.txt`` (one "a b" per line)."""

from __future__ import annotations

from pathlib import Path

from ..load.files import read_json, read_text
from .build import added_token, build, expect, merge_pairs
from .pattern import GPT2_PATTERN, split_step
from .runtime import Tokenizer


def from_vocab_merges(vocab_path: str | Path, merges_path: str | Path,
                      special_tokens: tuple[str, ...] = ("<|endoftext|>",)) -> Tokenizer:
    """``vocab.json`` + ``merges.txt`` with GPT-2's regex, and ``special_tokens`` matched in text
    when in the vocabulary (transformers' GPT2Tokenizer does so by default)."""
    vocab = expect(read_json(Path(vocab_path)), dict, "vocab.json", "an object of token -> id")
    lines = read_text(Path(merges_path)).split("\n")
    if lines[0].startswith("#version"):
        lines = lines[1:]
    merges = merge_pairs([line for line in lines if line], Path(merges_path).name)
    entries = [{"id": vocab[t], "content": t, "special": True} for t in special_tokens if t in vocab]
    added = [added_token(entry, f"vocab.json[{entry['content']!r}]", len(vocab)) for entry in entries]
    return build("BPE", vocab, merges, [split_step(GPT2_PATTERN, "vocab.json")], where="vocab.json",
                 added_tokens=added)
