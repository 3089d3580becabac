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
    """Merges as pairs, from either form: "a b" strings or [a, b] lists."""
    expect(merges, list, where)
    pairs = []
    for rank, merge in enumerate(merges):
        pair = tuple(text(merge, f"{where}[{rank}]").split(" ")) if isinstance(merge, str) else \
            tuple(text(s, f"{where}[{rank}]") for s in expect(merge, (str, list), f"{where}[{rank}]",
                                                              'a merge ("a b" or ["a", "b"])'))
        if len(pair) != 2:
            raise ConfigError(f"{where}: merge {rank} ({merge!r}) is not a pair of symbols")
        pairs.append(pair)
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


def build(model: str, vocab: dict[str, int], merges: list[tuple[str, str]], steps: list[dict], *, where: str,
          added_tokens: list[dict] = (), prefix: list[int] = (), suffix: list[int] = (),
          unk: str | None = None, fuse_unk: bool = False, ignore_merges: bool = False) -> Tokenizer:
    """Validate and pack everything into the runtime's data. ``where`` names the vocabulary's key
    in errors; ``added_tokens`` are already checked (:func:`added_token`)."""
    if not vocab:
        raise ConfigError("the tokenizer's vocabulary is empty")
    bound = len(vocab) + len(added_tokens)
    by_id: list[str | None] = [None] * len(vocab)
    for token, i in vocab.items():
        token_id(i, f"{where}[{text(token, where)!r}]", bound)
        by_id.extend([None] * (i + 1 - len(by_id)))
        if by_id[i] is not None:
            raise ConfigError(f"tokenizer vocabulary: bad or repeated id {i!r} (token {token!r})")
        by_id[i] = token
    merge_ids = []
    for rank, (left, right) in enumerate(merges):
        missing = next((t for t in (left, right, left + right) if t not in vocab), None)
        if missing is not None:
            raise ConfigError(f"merge {rank} ({left!r}, {right!r}): {missing!r} is not in the vocabulary")
        if model == "BPE" and not BYTE_SYMBOLS.issuperset(left + right):
            stray = next(c for c in left + right if c not in BYTE_SYMBOLS)
            raise CheckpointError(f"merge {rank} ({left!r}, {right!r}) holds {stray!r}, expected only "
                                  "byte-level BPE's 256 byte symbols")
        merge_ids.append([vocab[left], vocab[right]])
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
    try:
        return Tokenizer(data)
    except Exception as e:  # a regex re cannot compile, say
        raise ConfigError(f"cannot build the tokenizer: {e}") from None
