"""Byte-level BPE (and character-level WordLevel) encoding and decoding, standard library only.

eqcompile copies this file's code into the ``tokenizer.py`` it writes beside every emitted
``model.py`` whose checkpoint has a tokenizer, so it imports nothing but the standard library: no
``tokenizers``, no ``regex``, no eqcompile. The data it runs on (vocabulary, merges, pre-tokenization
regexes already translated to Python's ``re`` syntax and passed through the pattern gate of
``eqcompile.tokenizer.pattern``) is packed by ``eqcompile.tokenizer``; the rules follow Hugging Face
``tokenizers``, the reference the tests compare with token for token.
"""

import heapq
import json
import re
import unicodedata
from pathlib import Path

# Unicode's White_Space property (PropList.txt, unchanged since Unicode 6.3): what Oniguruma's and
# Rust's ``\s`` match. Python's own ``\s`` also matches U+001C..U+001F, so it is never used here.
WHITE_SPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
               "\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
WORD_CACHE_SIZE = 100_000


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> symbol table: printable Latin-1 bytes stand for themselves, the 68 others
    (controls, space, soft hyphen) for U+0100..U+0143 in byte order, so BPE works on visible text."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    shifted = iter(range(0x100, 0x200))
    return {b: chr(b) if b in printable else chr(next(shifted)) for b in range(256)}


def split_isolated(regex: re.Pattern, text: str) -> list[str]:
    """``text`` cut at the regex's matches, each match its own piece (tokenizers' "Isolated")."""
    pieces, end = [], 0
    for match in regex.finditer(text):
        start, stop = match.span()
        if start > end:
            pieces.append(text[end:start])
        if stop > start:
            pieces.append(text[start:stop])
        end = stop
    if end < len(text):
        pieces.append(text[end:])
    return pieces


class Tokenizer:
    """τ: text -> token ids and its inverse, from the data ``eqcompile.tokenizer`` packs.

    ``encode``: cut out added tokens, normalize the rest if the tokenizer says so, pre-tokenize each remaining stretch with the regexes, map
    each piece's UTF-8 bytes to symbols, apply merges lowest rank first (leftmost on a tie), look
    the symbols up. ``decode``: symbols back to bytes, bytes to text (invalid UTF-8 -> U+FFFD).
    """

    def __init__(self, data: dict):
        self.data = data
        self.vocab: list = data["vocab"]  # id -> token string (None where no token has that id)
        self.ids = {token: i for i, token in enumerate(self.vocab) if token is not None}
        self.merges = {}  # (left id, right id) -> (rank, merged id); a repeated pair keeps its last rank
        for rank, (left, right) in enumerate(data["merges"]):
            self.merges[left, right] = (rank, self.ids[self.vocab[left] + self.vocab[right]])
        self.steps = [re.compile(step["re"], re.MULTILINE) if "re" in step else step
                      for step in data["pre_tokenizer"]]
        added = data["added_tokens"]
        self.added = {token["id"]: token["content"] for token in added}
        self.special = {token["content"] for token in added if token["special"]}
        # tokenizers looks for the added tokens kept out of normalization first, normalizes what is
        # left (a Unicode form such as Qwen2's NFC, if any), then looks for the others; in each pass
        # the leftmost match wins, and the longest among those starting there
        self.normal_form = data.get("normalizer")
        self.added_passes = {}
        for normalized in (False, True):
            tokens = {t["content"]: t for t in added if t["normalized"] == normalized}
            if tokens:
                longest_first = sorted(tokens, key=len, reverse=True)
                self.added_passes[normalized] = (re.compile("|".join(map(re.escape, longest_first))), tokens)
        self.byte_symbols = {b: ord(c) for b, c in bytes_to_unicode().items()}  # a str.translate table
        self.symbol_bytes = {c: b for b, c in bytes_to_unicode().items()}
        self.cache: dict[str, list[int]] = {}

    @classmethod
    def load(cls, path) -> "Tokenizer":
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; with ``add_special_tokens`` the post-processor's template tokens
        (e.g. a BOS) around them, as ``tokenizers.Tokenizer.encode`` does by default."""
        text.encode("utf-8")  # a lone surrogate has no UTF-8 form: refuse the text up front
        ids = list(self.data["prefix"]) if add_special_tokens else []
        for piece, added_id in self._split_added(text):
            if added_id is not None:
                ids.append(added_id)
                continue
            for word in self._pre_tokenize(piece):
                ids.extend(self._word_ids(word))
        if add_special_tokens:
            ids.extend(self.data["suffix"])
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """The text of ``ids``. Ids with no token are skipped, as tokenizers does; special tokens
        too unless ``skip_special_tokens`` is false (tokenizers' default is true)."""
        tokens = []
        for i in map(int, ids):
            if i < 0:
                raise ValueError(f"token ids are non-negative, got {i}")
            token = self.added.get(i, self.vocab[i] if i < len(self.vocab) else None)
            if token is not None and not (skip_special_tokens and token in self.special):
                tokens.append(token)
        if self.data["decoder"] == "fuse":
            return "".join(tokens)
        return b"".join(map(self._token_bytes, tokens)).decode("utf-8", errors="replace")

    def _token_bytes(self, token: str) -> bytes:
        try:
            return bytes(map(self.symbol_bytes.__getitem__, token))
        except KeyError:  # not made of byte symbols (an added token with a space, say): its own text
            return token.encode("utf-8")

    def _split_added(self, text: str) -> list[tuple[str, int | None]]:
        """``text`` as (normalized stretch, None) and (added token, its id) in order."""
        pieces = [(text, None)] if text else []
        for normalized in (False, True):
            if normalized and self.normal_form:
                pieces = [(unicodedata.normalize(self.normal_form, piece), None) if added is None else (piece, added)
                          for piece, added in pieces]
            if normalized in self.added_passes:
                regex, tokens = self.added_passes[normalized]
                pieces = [part for piece in pieces for part in
                          ([piece] if piece[1] is not None else self._split_on(piece[0], regex, tokens))]
        return pieces

    def _split_on(self, text: str, regex: re.Pattern, tokens: dict) -> list[tuple[str, int | None]]:
        pieces, end = [], 0
        for match in regex.finditer(text):
            token = tokens[match.group()]
            start, stop = match.span()
            while token["lstrip"] and start > end and text[start - 1] in WHITE_SPACE:
                start -= 1  # the token swallows the white space before it
            while token["rstrip"] and stop < len(text) and text[stop] in WHITE_SPACE:
                stop += 1  # ... or after it
            if start > end:
                pieces.append((text[end:start], None))
            pieces.append((text[start:stop], token["id"]))
            end = stop
        if end < len(text):
            pieces.append((text[end:], None))
        return pieces

    def _pre_tokenize(self, text: str) -> list[str]:
        pieces = [text]
        for step in self.steps:
            if isinstance(step, re.Pattern):
                pieces = [part for piece in pieces for part in split_isolated(step, piece)]
            else:  # ByteLevel's add_prefix_space, applied to every stretch
                pieces = [piece if piece.startswith(" ") else " " + piece for piece in pieces]
        return pieces

    def _word_ids(self, word: str) -> list[int]:
        ids = self.cache.get(word)
        if ids is None:
            if len(self.cache) >= WORD_CACHE_SIZE:
                self.cache.clear()
            ids = self.cache[word] = self._bpe(word) if self.data["model"] == "BPE" else self._lookup(word)
        return ids

    def _lookup(self, word: str) -> list[int]:
        """WordLevel: the whole piece is one token, or the unknown token."""
        found = self.ids.get(word, self.data["unk"])
        if found is None:
            raise ValueError(f"{word!r} is not in the vocabulary, which has no unknown token")
        return [found]

    def _bpe(self, word: str) -> list[int]:
        """The merge rule, as tokenizers applies it: while some adjacent pair has a merge, merge the
        pair of lowest rank (the leftmost of equals), one pair at a time."""
        symbols = word.encode("utf-8").decode("latin-1").translate(self.byte_symbols)
        if self.data["ignore_merges"] and symbols in self.ids:
            return [self.ids[symbols]]
        unk, fuse_unk = self.data["unk"], self.data["fuse_unk"]
        ids, previous_unknown = [], False
        for symbol in symbols:
            found = self.ids.get(symbol)
            if found is None and unk is not None and not (fuse_unk and previous_unknown):
                ids.append(unk)
            elif found is not None:
                ids.append(found)
            previous_unknown = found is None  # an unknown symbol with no unk token just drops out
        # a doubly linked list over positions, and a heap of (rank, left position, merged id) that
        # may hold stale entries, checked when popped exactly as tokenizers checks them
        following = list(range(1, len(ids) + 1))
        preceding = list(range(-1, len(ids) - 1))
        heap = []

        def push(position: int, left: int, right: int) -> None:
            if (found := self.merges.get((left, right))) is not None:
                heapq.heappush(heap, (found[0], position, found[1]))

        for i in range(len(ids) - 1):
            push(i, ids[i], ids[i + 1])
        while heap:
            _, i, merged = heapq.heappop(heap)
            j = following[i]
            if ids[i] is None or j >= len(ids) or self.merges.get((ids[i], ids[j]), (0, None))[1] != merged:
                continue
            ids[i], ids[j] = merged, None
            k = following[i] = following[j]
            if k < len(ids):
                preceding[k] = i
            if preceding[i] >= 0:
                push(preceding[i], ids[preceding[i]], merged)
            if k < len(ids):
                push(i, merged, ids[k])
        return [i for i in ids if i is not None]
