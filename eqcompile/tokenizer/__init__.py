"""The tokenizer τ: text -> token ids, as part of the map from text to text.

Read at load level, printed at emit level. Loaders, one per layout: ``tokenizer.json``
(:mod:`.tokenizer_json`), ``vocab.json`` + ``merges.txt`` (:mod:`.vocab_merges`), GGUF metadata
(:mod:`.gguf`); each checks its fields (:mod:`.build`) and passes its pre-tokenization regexes
through :mod:`.pattern` (translation to Python's ``re`` and the gate for unknown patterns); the
result is the compact data :mod:`.runtime` (byte-level BPE, standard library only) runs on. The
emitters write that runtime as ``tokenizer.py`` beside ``model.py`` and state τ in LaTeX
(``eqcompile.emit.tokenizer_module``, ``eqcompile.emit.tokenizer_latex``); nothing here imports them.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .gguf import GGUF_PRE_TOKENIZERS, from_gguf
from .pattern import GPT2_PATTERN, KNOWN_PATTERNS, LLAMA3_PATTERN, QWEN2_PATTERN, translate_pattern
from .runtime import Tokenizer, bytes_to_unicode
from .tokenizer_json import from_tokenizer_json
from .vocab_merges import from_vocab_merges

__all__ = ["GGUF_PRE_TOKENIZERS", "GPT2_PATTERN", "KNOWN_PATTERNS", "LLAMA3_PATTERN", "QWEN2_PATTERN", "Tokenizer",
           "bytes_to_unicode", "checkpoint_tokenizer", "from_gguf", "from_tokenizer_json", "from_vocab_merges",
           "load_tokenizer", "translate_pattern"]


def checkpoint_tokenizer(checkpoint, trust_pattern: bool = False) -> Tokenizer | None:
    """The tokenizer that belongs to a :class:`~eqcompile.load.Checkpoint`: a GGUF file's own
    metadata, else the files in its folder; None when it has neither, ConfigError when eqcompile
    does not support the one it has, CheckpointError when a file is malformed, UntrustedInput for
    a regex of no known family unless ``trust_pattern``."""
    embedded = checkpoint.tokenizer
    if embedded is None:
        return load_tokenizer(checkpoint.folder, trust_pattern)
    if embedded.model != "gpt2":
        raise ConfigError(f"GGUF tokenizer model {embedded.model!r:.80} is not supported (byte-level BPE, "
                          "'gpt2', is)")
    return from_gguf(embedded.tokens, embedded.merges, embedded.pre, embedded.token_types,
                     bos_id=embedded.bos_id, add_bos=bool(embedded.add_bos_token),
                     eos_id=embedded.eos_id, add_eos=bool(embedded.add_eos_token))


def load_tokenizer(folder: str | Path | None, trust_pattern: bool = False) -> Tokenizer | None:
    """The tokenizer in a model folder: ``tokenizer.json``, else ``vocab.json`` + ``merges.txt``;
    None when there is neither."""
    if folder is None:
        return None
    folder = Path(folder)
    if (folder / "tokenizer.json").exists():
        return from_tokenizer_json(folder / "tokenizer.json", trust_pattern)
    if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        return from_vocab_merges(folder / "vocab.json", folder / "merges.txt")
    return None
