"""Packing a tokenizer's parts into the runtime's data, every field checked for its kind and size.

The loaders (tokenizer.json, vocab.json + merges.txt, GGUF metadata) each read their own layout
and hand the parts here. A field of the wrong kind, or an id beyond what the file itself holds, is
one ``CheckpointError`` naming the key and what was expected, found before anything is allocated:
ids are bounded by the number of entries that back them, so one ``{"far": 200000000}`` cannot
make a 200-million-slot table.
"""

from __future__ import annotations

import re
import unicodedata

from ..errors import CheckpointError, ConfigError
from .runtime import Tokenizer, bytes_to_unicode

BYTE_SYMBOLS = frozenset(bytes_to_unicode().values())
_SURROGATE = re.compile("[\ud800-\udfff]")
_KINDS = {dict: "an object", list: "a list", str: "a string", int: "an integer", bool: "true or false",
          float: "a number", type(None): "null"}


def kind_of(value) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def expect(value, kind: type | tuple[type, ...], where: str, what: str | None = None):
    """``value`` when it is a ``kind`` (true/false never counts as an integer), else one line
    naming ``where`` and what it should be."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise CheckpointError(f"{where} is {kind_of(value)}, expected {what or _KINDS[kinds[0]]}")
    return value


def optional(mapping: dict, key: str, kind: type, where: str):
    """``mapping[key]`` if present and not null (then of ``kind``), else None; ``where`` is the
    prefix of the key in errors (``"tokenizer.json: model."``)."""
    value = mapping.get(key)
    return None if value is None else expect(value, kind, f"{where}{key}")


def text(value, where: str) -> str:
    """A string that is text: a lone surrogate has no UTF-8 form, so nothing could write it out."""
    expect(value, str, where)
    if (found := _SURROGATE.search(value)) is not None:
        raise CheckpointError(f"{where} holds a lone surrogate (\\u{ord(found[0]):04x}), which is not text")
    return value


def token_id(value, where: str, bound: int) -> int:
    """An id below ``bound``, the number of entries (vocabulary and added tokens) the file holds."""
    expect(value, int, where, "a token id (an integer)")
    if not 0 <= value < bound:
        raise CheckpointError(f"{where} is {value}, expected a token id from 0 to {bound - 1:,} "
                              f"(the file holds {bound:,} tokens)")
    return value


def merge_pairs(merges, where: str) -> list[tuple[str, str]]:
    """Merges as pairs, from either form: "a b" strings or [a, b] lists (each checked only when the
    whole list is not plain strings: the common case is one pass)."""
    expect(merges, list, where)
    if all(type(merge) is str for merge in merges):
        text("".join(merges), where)
        pairs = [tuple(merge.split(" ")) for merge in merges]
    else:
        pairs = [tuple(text(s, f"{where}[{rank}]") for s in expect(merge, list, f"{where}[{rank}]",
                                                                    'a merge ("a b" or ["a", "b"])'))
                 for rank, merge in enumerate(merges)]
    for rank, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ConfigError(f"{where}: merge {rank} ({merges[rank]!r}) is not a pair of symbols")
    return pairs


def added_token(entry, where: str, bound: int) -> dict:
    """An added token: its id and content checked; its flags as tokenizers reads them."""
    expect(entry, dict, where)
    content = text(entry.get("content"), f"{where}.content")
    if entry.get("single_word"):
        raise ConfigError(f"added token {content!r}: single_word tokens are not supported")
    return {"id": token_id(entry.get("id"), f"{where}.id", bound), "content": content,
            "special": bool(entry.get("special")), "lstrip": bool(entry.get("lstrip")),
            "rstrip": bool(entry.get("rstrip")),
            "normalized": bool(entry.get("normalized", not entry.get("special")))}


def _check_ids(vocab: dict[str, int], where: str, bound: int) -> None:
    """Every token text and every id below ``bound``, in bulk; the culprit is looked for on failure."""
    text("".join(vocab), where)
    ids = vocab.values()
    if not all(type(i) is int for i in ids) or min(ids) < 0 or max(ids) >= bound:
        for token, i in vocab.items():
            token_id(i, f"{where}[{token!r}]", bound)


def _check_byte_symbols(merges: list[tuple[str, str]]) -> None:
    """Byte-level BPE merges symbols made of its 256 byte symbols, and nothing else."""
    if BYTE_SYMBOLS.issuperset("".join(left + right for left, right in merges)):
        return
    rank, stray = next((rank, c) for rank, pair in enumerate(merges) for c in "".join(pair) if c not in BYTE_SYMBOLS)
    raise CheckpointError(f"merge {rank} {merges[rank]!r} holds {stray!r}, expected only byte-level BPE's "
                          "256 byte symbols")


def build(model: str, vocab: dict[str, int], merges: list[tuple[str, str]], steps: list[dict], *, where: str,
          added_tokens: list[dict] = (), prefix: list[int] = (), suffix: list[int] = (),
          unk: str | None = None, fuse_unk: bool = False, ignore_merges: bool = False,
          normalizer: str | None = None) -> Tokenizer:
    """Validate and pack everything into the runtime's data. ``where`` names the vocabulary's key
    in errors; ``added_tokens`` are already checked (:func:`added_token`)."""
    if not vocab:
        raise ConfigError("the tokenizer's vocabulary is empty")
    bound = len(vocab) + len(added_tokens)
    _check_ids(vocab, where, bound)
    by_id: list[str | None] = [None] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        if by_id[i] is not None:
            raise ConfigError(f"tokenizer vocabulary: bad or repeated id {i!r} (token {token!r})")
        by_id[i] = token
    merge_ids = []
    for rank, (left, right) in enumerate(merges):
        if left not in vocab or right not in vocab or left + right not in vocab:
            missing = next(t for t in (left, right, left + right) if t not in vocab)
            raise ConfigError(f"merge {rank} ({left!r}, {right!r}): {missing!r} is not in the vocabulary")
        merge_ids.append([vocab[left], vocab[right]])
    if model == "BPE":
        _check_byte_symbols(merges)
    for n, i in enumerate([*prefix, *suffix]):
        token_id(i, f"the post-processor's id {n}", bound)
    data = {
        "model": model, "unicode_version": unicodedata.unidata_version,
        "vocab": by_id, "merges": merge_ids, "pre_tokenizer": steps,
        "added_tokens": [dict(token) for token in added_tokens],
        "prefix": list(prefix), "suffix": list(suffix),
        "unk": vocab.get(unk) if unk is not None else None, "fuse_unk": fuse_unk,
        "ignore_merges": ignore_merges, "decoder": "byte_level" if model == "BPE" else "fuse",
    }
    if normalizer is not None:  # a Unicode form (NFC, ...): the key is absent when there is none
        data["normalizer"] = normalizer
    try:
        return Tokenizer(data)
    except Exception as e:  # a regex re cannot compile, say
        raise ConfigError(f"cannot build the tokenizer: {e}") from None
