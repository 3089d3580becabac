r"""The tokenizer τ: text -> token ids, as part of the map from text to text.

Loads byte-level BPE (GPT-2, SmolLM2, Llama-3 style) from ``tokenizer.json``, from ``vocab.json`` +
``merges.txt`` or from GGUF metadata, and character-level WordLevel tokenizers, into the compact
data that :mod:`eqcompile.tokenizer_runtime` runs on; writes that data beside an emitted module
with the runtime's code for ``model.py``; and states τ in LaTeX.

The pre-tokenization regexes are Oniguruma patterns (``\p{L}``, ``\p{N}``), which Python's ``re``
cannot express. :func:`translate_pattern` spells each such class out as explicit code point ranges
from the Unicode database of the Python that builds the tokenizer (``unicodedata``); the result is
stored in the data, so an emitted module behaves the same on any Python. The reference
(``tokenizers``, Oniguruma) has its own, newer tables: characters assigned after Python's Unicode
version are letters or numbers there and "other" here. Measured with tokenizers 0.23 (Unicode 16)
against Python 3.11 (Unicode 14): 9,272 letters and 120 numbers, all unassigned in Python's tables;
on every character both know, ``\p{L}``, ``\p{N}``, ``\p{P}``, ``\p{S}``, ``\p{M}``, ``\d`` and
``\s`` agree exactly (tests/test_tokenizer.py shows one such character changing the ids).
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import unicodedata
from functools import cache
from pathlib import Path

from . import tokenizer_runtime
from .emit.files import write_text
from .emit.templates import render_template
from .emit.text import tex_escape
from .errors import ConfigError
from .tokenizer_runtime import WHITE_SPACE, Tokenizer, bytes_to_unicode

__all__ = ["GGUF_PRE_TOKENIZERS", "GPT2_PATTERN", "LLAMA3_PATTERN", "Tokenizer", "bytes_to_unicode", "from_gguf",
           "checkpoint_tokenizer", "from_tokenizer_json", "from_vocab_merges", "load_tokenizer", "tokenizer_latex",
           "translate_pattern", "write_tokenizer"]

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
                  r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
DIGIT_PATTERNS = {True: r"\p{N}", False: r"\p{N}+"}  # tokenizers' Digits(individual_digits)

# tokenizer.ggml.pre -> (pre-tokenization regexes, ignore_merges) of the family's tokenizer.json
GGUF_PRE_TOKENIZERS = {
    "gpt2": ([GPT2_PATTERN], False),
    "smollm": ([DIGIT_PATTERNS[True], GPT2_PATTERN], False),  # StarCoder's Digits + ByteLevel
    "starcoder": ([DIGIT_PATTERNS[True], GPT2_PATTERN], False),
    "llama-bpe": ([LLAMA3_PATTERN], True),
}
GGUF_CONTROL, GGUF_USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values of added tokens
DATA_FILE = "tokenizer_data.json"


# --- Oniguruma classes as explicit ranges -------------------------------------------------------

@cache
def category_ranges() -> dict[str, list[tuple[int, int]]]:
    """General category -> code point ranges, from this Python's ``unicodedata`` (one pass)."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    start = 0
    for category, run in itertools.groupby(map(unicodedata.category, map(chr, range(0x110000)))):
        length = sum(1 for _ in run)
        ranges.setdefault(category, []).append((start, start + length - 1))
        start += length
    return ranges


def _code(point: int) -> str:
    return f"\\u{point:04X}" if point <= 0xFFFF else f"\\U{point:08X}"


@cache
def _category_class(prefix: str) -> str:
    """The body of a ``re`` character class holding every category starting with ``prefix``."""
    spans = sorted(span for category, found in category_ranges().items() if category.startswith(prefix)
                   for span in found)
    if not spans:
        raise ConfigError(f"unknown Unicode general category \\p{{{prefix}}} in a pre-tokenizer regex")
    merged = [list(spans[0])]
    for start, stop in spans[1:]:
        if start == merged[-1][1] + 1:
            merged[-1][1] = stop
        else:
            merged.append([start, stop])
    return "".join(_code(a) if a == b else f"{_code(a)}-{_code(b)}" for a, b in merged)


def _escape_class(letter: str, name: str | None) -> tuple[str, bool]:
    """(class body, negated) for ``\\s``, ``\\d``, ``\\p{..}`` and their capitals."""
    negated = letter.isupper()
    if letter in "sS":
        return WHITE_SPACE, negated
    if letter in "dD":
        return _category_class("Nd"), negated
    if len(name) > 2 or not name.isalpha():
        raise ConfigError(f"pre-tokenizer regex: \\{letter}{{{name}}} is not a general category")
    return _category_class(name), negated


def translate_pattern(pattern: str) -> str:
    r"""An Oniguruma pattern, as tokenizers runs it, rewritten for Python's ``re``.

    ``\p{X}`` (X a general category such as L, N, Lu), ``\s`` (White_Space) and ``\d`` (Nd), and
    their negations, become explicit classes; everything else is the same syntax in both engines
    (alternation, ``(?i:...)``, ``{1,3}``, ``(?!...)``, backtracking order). The empty pattern
    isolates every character, as tokenizers' Split does with it.
    """
    if pattern == "":
        return "(?s:.)"
    out, i, in_class = [], 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            letter = pattern[i + 1]
            if letter in "wWbBZ":  # word characters and \Z mean other things in the two engines
                raise ConfigError(f"pre-tokenizer regex: \\{letter} is not supported")
            if letter in "sSdDpP":
                name, i = None, i + 2
                if letter in "pP":
                    close = pattern.find("}", i)
                    if pattern[i:i + 1] != "{" or close < 0:
                        raise ConfigError(f"pre-tokenizer regex: malformed \\{letter} at {i - 2}")
                    name, i = pattern[i + 1:close], close + 1
                body, negated = _escape_class(letter, name)
                if in_class and negated:
                    raise ConfigError(f"pre-tokenizer regex: \\{letter} inside [...] is not supported")
                out.append(body if in_class else f"[{'^' if negated else ''}{body}]")
                continue
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if char == "[" and in_class:
            raise ConfigError("pre-tokenizer regex: nested character classes are not supported")
        if char == "[":
            in_class = True
            opening = 2 if pattern[i + 1:i + 2] == "^" else 1
            if pattern[i + opening:i + opening + 1] == "]":  # a leading ] is a literal
                opening += 1
            out.append(pattern[i:i + opening])
            i += opening
            continue
        if char == "]" and in_class:
            in_class = False
        if char == "&" and in_class and pattern[i + 1:i + 2] == "&":
            raise ConfigError("pre-tokenizer regex: class intersection (&&) is not supported")
        out.append(char)
        i += 1
    return "".join(out)


def _split_step(pattern: str) -> dict:
    return {"split": pattern, "re": translate_pattern(pattern)}


# --- building the data --------------------------------------------------------------------------

def _build(model: str, vocab: dict[str, int], merges: list[tuple[str, str]], steps: list[dict], *,
           added_tokens: list[dict] = (), prefix: list[int] = (), suffix: list[int] = (),
           unk: str | None = None, fuse_unk: bool = False, ignore_merges: bool = False) -> Tokenizer:
    """Validate and pack everything into the runtime's data."""
    if not vocab:
        raise ConfigError("the tokenizer's vocabulary is empty")
    by_id: list[str | None] = [None] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        if not isinstance(i, int) or i < 0 or by_id[i] is not None:
            raise ConfigError(f"tokenizer vocabulary: bad or repeated id {i!r} (token {token!r})")
        by_id[i] = token
    merge_ids = []
    for rank, (left, right) in enumerate(merges):
        missing = next((t for t in (left, right, left + right) if t not in vocab), None)
        if missing is not None:
            raise ConfigError(f"merge {rank} ({left!r}, {right!r}): {missing!r} is not in the vocabulary")
        merge_ids.append([vocab[left], vocab[right]])
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


def _added_token(entry: dict) -> dict:
    if entry.get("single_word"):
        raise ConfigError(f"added token {entry.get('content')!r}: single_word tokens are not supported")
    return {"id": entry["id"], "content": entry["content"], "special": bool(entry.get("special")),
            "lstrip": bool(entry.get("lstrip")), "rstrip": bool(entry.get("rstrip")),
            "normalized": bool(entry.get("normalized", not entry.get("special")))}


def _pre_tokenizer_steps(spec: dict | None, byte_level: bool) -> list[dict]:
    """tokenizer.json's pre_tokenizer as split/prefix steps; ByteLevel must come last when used."""
    parts = [] if spec is None else spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else [spec]
    steps: list[dict] = []
    for n, part in enumerate(parts):
        kind = part.get("type")
        if kind == "ByteLevel" and byte_level and n == len(parts) - 1:
            steps += [{"prefix_space": True}] * bool(part.get("add_prefix_space"))
            steps += [_split_step(GPT2_PATTERN)] * bool(part.get("use_regex", True))
        elif kind == "Split" and part.get("behavior") == "Isolated" and not part.get("invert"):
            pattern = part["pattern"]
            steps.append(_split_step(pattern["Regex"] if "Regex" in pattern else _literal(pattern["String"])))
        elif kind == "Digits":
            steps.append(_split_step(DIGIT_PATTERNS[bool(part.get("individual_digits"))]))
        else:
            where = "" if kind != "ByteLevel" else " (ByteLevel must be the last step of a BPE tokenizer)"
            raise ConfigError(f"pre-tokenizer {json.dumps(part)[:120]} is not supported{where}")
    if byte_level and not any(p.get("type") == "ByteLevel" for p in parts):
        raise ConfigError("only byte-level BPE is supported: the pre-tokenizer has no ByteLevel step")
    return steps


def _merge_pairs(merges: list, where: str) -> list[tuple[str, str]]:
    """Merges as pairs, from either form: "a b" strings or [a, b] lists."""
    pairs = [tuple(m.split(" ") if isinstance(m, str) else m) for m in merges]
    bad = next((rank for rank, pair in enumerate(pairs) if len(pair) != 2), None)
    if bad is not None:
        raise ConfigError(f"{where}: merge {bad} ({merges[bad]!r}) is not a pair of symbols")
    return pairs


def _literal(text: str) -> str:
    """A literal string as an Oniguruma pattern (a non-alphanumeric after \\ is itself)."""
    return "".join(f"\\{c}" if not c.isalnum() and c != " " else c for c in text)


def _template(processor: dict | None) -> tuple[list[int], list[int]]:
    """Ids the post-processor puts before and after a single sequence (add_special_tokens)."""
    parts = [] if processor is None else processor.get("processors", []) \
        if processor.get("type") == "Sequence" else [processor]
    prefix: list[int] = []
    suffix: list[int] = []
    for part in parts:
        if part.get("type") == "ByteLevel":
            continue  # only trims offsets
        if part.get("type") != "TemplateProcessing":
            raise ConfigError(f"post-processor {part.get('type')} is not supported")
        target = prefix  # special tokens before the sequence, then those after it
        for piece in part["single"]:
            if "Sequence" in piece:
                target = suffix
            else:
                target.extend(part["special_tokens"][piece["SpecialToken"]["id"]]["ids"])
    return prefix, suffix


def from_tokenizer_json(source: str | Path | dict) -> Tokenizer:
    """A Hugging Face ``tokenizer.json`` (path or parsed): BPE with a ByteLevel pre-tokenizer, or
    WordLevel (character-level models such as the sample)."""
    spec = source if isinstance(source, dict) else _read_json(Path(source))
    model = spec.get("model") or {}
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind not in ("BPE", "WordLevel"):
        raise ConfigError(f"tokenizer model {kind} is not supported (byte-level BPE and WordLevel are)")
    if spec.get("normalizer") is not None:
        raise ConfigError(f"tokenizer normalizer {spec['normalizer'].get('type')} is not supported")
    decoder = (spec.get("decoder") or {}).get("type")
    if decoder != {"BPE": "ByteLevel", "WordLevel": "Fuse"}[kind]:
        raise ConfigError(f"decoder {decoder} is not supported for a {kind} tokenizer")
    if kind == "BPE":
        if model.get("dropout") or model.get("byte_fallback") or model.get("continuing_subword_prefix") \
                or model.get("end_of_word_suffix"):
            raise ConfigError("BPE with dropout, byte fallback or subword affixes is not supported")
    merges = _merge_pairs(model.get("merges") or [], "tokenizer.json")
    prefix, suffix = _template(spec.get("post_processor"))
    return _build(kind, model.get("vocab") or {}, merges,
                  _pre_tokenizer_steps(spec.get("pre_tokenizer"), byte_level=kind == "BPE"),
                  added_tokens=[_added_token(t) for t in spec.get("added_tokens") or []],
                  prefix=prefix, suffix=suffix, unk=model.get("unk_token"),
                  fuse_unk=bool(model.get("fuse_unk")), ignore_merges=bool(model.get("ignore_merges")))


def from_vocab_merges(vocab_path: str | Path, merges_path: str | Path,
                      special_tokens: tuple[str, ...] = ("<|endoftext|>",)) -> Tokenizer:
    """GPT-2's layout: ``vocab.json`` + ``merges.txt``, GPT-2's regex, and ``special_tokens``
    matched in text when in the vocabulary (transformers' GPT2Tokenizer does so by default)."""
    vocab = _read_json(Path(vocab_path))
    lines = Path(merges_path).read_text(encoding="utf-8").split("\n")
    if lines[0].startswith("#version"):
        lines = lines[1:]
    merges = _merge_pairs([line for line in lines if line], Path(merges_path).name)
    added = [{"id": vocab[t], "content": t, "special": True} for t in special_tokens if t in vocab]
    return _build("BPE", vocab, merges, [_split_step(GPT2_PATTERN)],
                  added_tokens=[_added_token(t) for t in added])


def from_gguf(tokens: list[str], merges: list[str], pre: str, token_types: list[int] | None = None,
              bos_id: int | None = None, add_bos: bool = False,
              eos_id: int | None = None, add_eos: bool = False) -> Tokenizer:
    """GGUF metadata: ``tokenizer.ggml.tokens`` (id order), ``.merges`` ("a b"), ``.pre`` (one of
    :data:`GGUF_PRE_TOKENIZERS`), ``.token_type`` (control tokens are special, user-defined ones
    added), ``.bos_token_id``/``.add_bos_token`` and the same for EOS."""
    if pre not in GGUF_PRE_TOKENIZERS:
        raise ConfigError(f"GGUF pre-tokenizer {pre!r} is not supported "
                          f"(supported: {', '.join(GGUF_PRE_TOKENIZERS)})")
    patterns, ignore_merges = GGUF_PRE_TOKENIZERS[pre]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ConfigError("GGUF tokenizer: tokenizer.ggml.tokens repeats a token")
    pairs = _merge_pairs(merges, "tokenizer.ggml.merges")
    added = [{"id": i, "content": tokens[i], "special": kind == GGUF_CONTROL}
             for i, kind in enumerate(token_types or []) if kind in (GGUF_CONTROL, GGUF_USER_DEFINED)]
    return _build("BPE", vocab, pairs, [_split_step(p) for p in patterns],
                  added_tokens=[_added_token(t) for t in added], ignore_merges=ignore_merges,
                  prefix=[bos_id] if add_bos and bos_id is not None else [],
                  suffix=[eos_id] if add_eos and eos_id is not None else [])


def checkpoint_tokenizer(checkpoint) -> Tokenizer | None:
    """The tokenizer that belongs to a :class:`~eqcompile.load.Checkpoint`: a GGUF file's own
    metadata, else the files in its folder; None when it has neither, ConfigError when eqcompile
    does not support the one it has."""
    embedded = checkpoint.tokenizer
    if embedded is None:
        return load_tokenizer(checkpoint.folder)
    if embedded.model != "gpt2":
        raise ConfigError(f"GGUF tokenizer model {embedded.model!r} is not supported (byte-level BPE, "
                          "'gpt2', is)")
    return from_gguf(embedded.tokens, embedded.merges, embedded.pre, embedded.token_types,
                     bos_id=embedded.bos_id, add_bos=bool(embedded.add_bos_token),
                     eos_id=embedded.eos_id, add_eos=bool(embedded.add_eos_token))


def load_tokenizer(folder: str | Path | None) -> Tokenizer | None:
    """The tokenizer in a model folder: ``tokenizer.json``, else ``vocab.json`` + ``merges.txt``;
    None when there is neither."""
    if folder is None:
        return None
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return from_tokenizer_json(folder / "tokenizer.json")
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return from_vocab_merges(folder / "vocab.json", folder / "merges.txt")
    return None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable JSON file ({e})") from None


# --- the emitted module -------------------------------------------------------------------------

def runtime_source() -> str:
    """The runtime module's code without its docstring: what ``model.py`` gets verbatim."""
    source = inspect.getsource(tokenizer_runtime)
    docstring = ast.parse(source).body[0]
    return "\n".join(source.splitlines()[docstring.end_lineno:]).strip() + "\n"


def write_tokenizer(tokenizer: Tokenizer, folder: str | Path) -> str:
    """Write ``folder/tokenizer_data.json``; return the Python source that gives ``model.py``
    ``encode(text)`` and ``decode(ids)`` from it (standard library only)."""
    text = json.dumps(tokenizer.data, ensure_ascii=False, separators=(",", ":"))
    write_text(Path(folder) / DATA_FILE, text + "\n")
    return render_template("tokenizer.py.j2", runtime=runtime_source(), data_file=DATA_FILE)


# --- LaTeX --------------------------------------------------------------------------------------

def _count(n: int) -> str:
    return f"{n:,}".replace(",", r"\,")


def _symbol_tex(symbol: str, byte_of: dict[str, int]) -> str:
    """A BPE symbol as the bytes it stands for: printable ASCII as text, a space as ␣, others hex."""
    out = []
    for byte in (byte_of[c] for c in symbol):
        if byte == 0x20:
            out.append(r"\textvisiblespace{}")
        elif 0x21 <= byte <= 0x7E:
            out.append(tex_escape(chr(byte)))
        else:
            out.append(rf"\textlangle{{}}{byte:02X}\textrangle{{}}")
    return r"\texttt{" + "".join(out) + "}"


def _regex_tex(pattern: str) -> str:
    """A regex set apart in \\texttt, escaped, with a line break allowed after each alternative."""
    alternatives = tex_escape(pattern).replace(r"\textbar{}", r"\textbar{}\allowbreak{}")
    return r"\begin{quote}\raggedright\texttt{" + alternatives + r"}\end{quote}"


def tokenizer_latex(tokenizer: Tokenizer) -> str:
    r"""τ as a definition (a LaTeX fragment, amsmath): the pre-tokenization regexes, the byte
    table, the merge rule as an algorithm with its counts, the lookup, and τ⁻¹."""
    data = tokenizer.data
    added = data["added_tokens"]
    size = len(set(tokenizer.ids.values()) | set(tokenizer.added))
    lines = [r"\subsection*{Tokenizer}"]
    if data["model"] == "WordLevel":
        steps = [s for s in data["pre_tokenizer"] if "split" in s]
        if [s["split"] for s in steps] != [""]:
            raise ConfigError("only character-level WordLevel tokenizers can be written as LaTeX")
        lines += [
            rf"The tokenizer $\tau\colon \Sigma^* \to V^*$ is character-level, with $|V| = {_count(size)}$ "
            r"characters: a string $s = s_1 \cdots s_n$ maps to",
            r"\[ \tau(s) = \bigl(\operatorname{id}(s_1), \dots, \operatorname{id}(s_n)\bigr), \]",
            r"where $\operatorname{id}(c)$ is the index of character $c$ in $V$ (a character outside "
            r"$V$ has no image). Its inverse concatenates the characters of the ids.",
        ]
        return "\n".join(lines) + "\n"
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    rules = data["merges"]
    lines += [
        rf"The tokenizer $\tau\colon \Sigma^* \to V^*$ is byte-level BPE: a vocabulary of "
        rf"$|V| = {_count(size)}$ tokens and $M = {_count(len(rules))}$ merge rules "
        r"$(a_r, b_r) \mapsto a_r b_r$ ranked $r = 1, \dots, M$. For a string $s$:",
        r"\begin{enumerate}",
    ]
    if added:
        examples = ", ".join([r"\texttt{" + tex_escape(t["content"]) + "}" for t in added[:3]]
                             + [r"\dots"] * (len(added) > 3))
        which = "the added token" if len(added) == 1 else f"one of the {_count(len(added))} added tokens"
        lines.append(rf"\item \emph{{Added tokens.}} Each occurrence in $s$ of {which} "
                     rf"({examples}) is cut out, "
                     r"leftmost and longest first, and stands for its own id; the stretches between go on.")
    split_steps = [s for s in data["pre_tokenizer"] if "split" in s]
    regexes = "then each piece again into those of".join(_regex_tex(s["split"]) for s in split_steps)
    prefix = (r"A space is put before each stretch that does not begin with one. "
              if any("prefix_space" in s for s in data["pre_tokenizer"]) else "")
    lines += [
        rf"\item \emph{{Pre-tokenization.}} {prefix}Each stretch is cut into the successive matches "
        rf"$w_1, \dots, w_m$ of {regexes}(leftmost first, alternatives tried in order; "
        r"\texttt{\textbackslash{}p\{L\}} is a letter, \texttt{\textbackslash{}p\{N\}} a number, "
        r"\texttt{\textbackslash{}s} white space, by the Unicode "
        rf"{tex_escape(data['unicode_version'])} tables).",
        r"\item \emph{Bytes to symbols.} Each piece $w$ is written in UTF-8, $w = b_1 \cdots b_k$, and "
        r"each byte becomes one symbol, $x = (\beta(b_1), \dots, \beta(b_k))$, where $\beta$ keeps the "
        r"188 printable Latin-1 bytes and sends the other 68 to U+0100--U+0143 in order (GPT-2's table).",
    ]
    if data["ignore_merges"]:
        lines.append(r"\item \emph{Whole pieces.} If $\beta(b_1) \cdots \beta(b_k)$ is itself a token "
                     r"of $V$, the piece is that one token and skips the merges.")
    lines += [
        r"\item \emph{Merges.} While some adjacent pair of symbols is a rule $(a_r, b_r)$, merge the "
        r"pair of lowest rank, the leftmost if that rule applies twice:",
        r"\[ x \leftarrow (x_1, \dots, x_{j-1},\; x_j x_{j+1},\; x_{j+2}, \dots, x_k), \qquad "
        r"j = \operatorname*{arg\,min}_{i \,:\, (x_i, x_{i+1}) = (a_r, b_r)} (r, i). \]",
        "The first rules join " + ", ".join(
            f"{_symbol_tex(tokenizer.vocab[a], byte_of)} + {_symbol_tex(tokenizer.vocab[b], byte_of)}"
            for a, b in rules[:4]) + r" (bytes shown as text, \textvisiblespace{} a space)." if rules else
        "There are no rules: every symbol stays apart.",
        r"\item \emph{Lookup.} Each final symbol is replaced by its id in $V$; $\tau(s)$ is the "
        "concatenation, piece by piece" + _template_tex(data) + ".",
        r"\end{enumerate}",
        r"The inverse $\tau^{-1}$ maps each id to its token, each symbol to its byte by $\beta^{-1}$, and "
        r"reads the bytes as UTF-8 (an invalid sequence becomes U+FFFD).",
    ]
    return "\n".join(lines) + "\n"


def _template_tex(data: dict) -> str:
    """The post-processor's ids around τ(s) (a BOS, say), in words."""
    parts = [f"{where} ${', '.join(map(str, ids))}$" for where, ids in
             (("preceded by", data["prefix"]), ("followed by", data["suffix"])) if ids]
    return ", " + " and ".join(parts) + " (the post-processor's ids)" if parts else ""
