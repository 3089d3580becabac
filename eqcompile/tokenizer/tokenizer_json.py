"""Hugging Face ``tokenizer.json``: byte-level BPE, or WordLevel (character-level models)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from ..load.files import read_json
from .build import added_token, build, expect, merge_pairs, optional, text, token_id
from .pattern import DIGIT_PATTERNS, GPT2_PATTERN, literal_step, split_step
from .runtime import Tokenizer

FILE = "tokenizer.json"
ROOT = "tokenizer.json: "  # the prefix of its keys in errors
SHOWN_CHARS = 120  # of an unsupported part, in its error
UNICODE_FORMS = ("NFC", "NFD", "NFKC", "NFKD")  # normalizers that are unicodedata.normalize's forms (Qwen2: NFC)


def from_tokenizer_json(source: str | Path | dict, trust_pattern: bool = False) -> Tokenizer:
    """A ``tokenizer.json`` (path or parsed): BPE with a ByteLevel pre-tokenizer, or WordLevel
    (character-level models such as the sample). ``trust_pattern`` runs a Split regex of no known
    family (see :mod:`eqcompile.tokenizer.pattern`)."""
    spec = expect(source if isinstance(source, dict) else read_json(Path(source)), dict, FILE)
    model = optional(spec, "model", dict, ROOT) or {}
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind not in ("BPE", "WordLevel"):
        raise ConfigError(f"tokenizer model {_shown(kind)} is not supported (byte-level BPE and WordLevel are)")
    normalizer = optional(spec, "normalizer", dict, ROOT)
    if normalizer is not None and normalizer.get("type") not in UNICODE_FORMS:
        raise ConfigError(f"tokenizer normalizer {_shown(normalizer.get('type'))} is not supported "
                          f"(the Unicode forms {', '.join(UNICODE_FORMS)} are)")
    decoder = (optional(spec, "decoder", dict, ROOT) or {}).get("type")
    if decoder != {"BPE": "ByteLevel", "WordLevel": "Fuse"}[kind]:
        raise ConfigError(f"decoder {_shown(decoder)} is not supported for a {kind} tokenizer")
    if kind == "BPE" and (model.get("dropout") or model.get("byte_fallback") or model.get("continuing_subword_prefix")
                          or model.get("end_of_word_suffix")):
        raise ConfigError("BPE with dropout, byte fallback or subword affixes is not supported")
    vocab = expect(model.get("vocab") or {}, dict, "tokenizer.json: model.vocab", "an object of token -> id")
    merges = merge_pairs(model.get("merges") or [], "tokenizer.json: model.merges")
    entries = expect(spec.get("added_tokens") or [], list, "tokenizer.json: added_tokens")
    bound = len(vocab) + len(entries)
    added = [added_token(t, f"tokenizer.json: added_tokens[{n}]", bound) for n, t in enumerate(entries)]
    prefix, suffix = _template(optional(spec, "post_processor", dict, ROOT), bound)
    unk = optional(model, "unk_token", str, "tokenizer.json: model.")
    steps = _pre_tokenizer_steps(optional(spec, "pre_tokenizer", dict, ROOT), kind == "BPE", trust_pattern)
    return build(kind, vocab, merges, steps, where="tokenizer.json: model.vocab", added_tokens=added,
                 prefix=prefix, suffix=suffix, unk=unk, fuse_unk=bool(model.get("fuse_unk")),
                 ignore_merges=bool(model.get("ignore_merges")),
                 normalizer=normalizer["type"] if normalizer is not None else None)


def _shown(value) -> str:
    """A value from the file in a message, cut short: plain if printable, else its repr (control
    characters escaped, so a file cannot forge a second line or move the terminal's cursor)."""
    shown = value if isinstance(value, str) else json.dumps(value)
    return (shown if shown.isprintable() else repr(shown))[:SHOWN_CHARS]


def _parts(spec: dict | None, key: str, where: str) -> list[dict]:
    """The steps of a pre-tokenizer or post-processor: its ``key`` list for a Sequence, else itself."""
    if spec is None:
        return []
    if spec.get("type") != "Sequence":
        return [spec]
    return [expect(part, dict, f"{where}.{key}[{n}]")
            for n, part in enumerate(expect(spec.get(key, []), list, f"{where}.{key}"))]


def _pre_tokenizer_steps(spec: dict | None, byte_level: bool, trust: bool) -> list[dict]:
    """tokenizer.json's pre_tokenizer as split/prefix steps; ByteLevel must come last when used."""
    parts = _parts(spec, "pretokenizers", "tokenizer.json: pre_tokenizer")
    steps: list[dict] = []
    for n, part in enumerate(parts):
        kind = part.get("type")
        if kind == "ByteLevel" and byte_level and n == len(parts) - 1:
            steps += [{"prefix_space": True}] * bool(part.get("add_prefix_space"))
            steps += [split_step(GPT2_PATTERN, FILE)] * bool(part.get("use_regex", True))
        elif kind == "Split" and part.get("behavior") == "Isolated" and not part.get("invert"):
            steps.append(_split(part, f"tokenizer.json: pre_tokenizer (step {n})", trust))
        elif kind == "Digits":
            steps.append(split_step(DIGIT_PATTERNS[bool(part.get("individual_digits"))], FILE))
        else:
            where = "" if kind != "ByteLevel" else " (ByteLevel must be the last step of a BPE tokenizer)"
            raise ConfigError(f"pre-tokenizer {_shown(part)} is not supported{where}")
    if byte_level and not any(p.get("type") == "ByteLevel" for p in parts):
        raise ConfigError("only byte-level BPE is supported: the pre-tokenizer has no ByteLevel step")
    return steps


def _split(part: dict, where: str, trust: bool) -> dict:
    """A Split step: a regex (through the gate) or a literal string."""
    pattern = expect(part.get("pattern"), dict, f"{where}.pattern", '{"Regex": ...} or {"String": ...}')
    if "Regex" in pattern:
        return split_step(text(pattern["Regex"], f"{where}.pattern.Regex"), where, trust)
    if "String" in pattern:
        return literal_step(text(pattern["String"], f"{where}.pattern.String"))
    raise CheckpointError(f"{where}.pattern has neither Regex nor String")


def _template(processor: dict | None, bound: int) -> tuple[list[int], list[int]]:
    """Ids the post-processor puts before and after a single sequence (add_special_tokens)."""
    prefix: list[int] = []
    suffix: list[int] = []
    where = "tokenizer.json: post_processor"
    for part in _parts(processor, "processors", where):
        if part.get("type") == "ByteLevel":
            continue  # only trims offsets
        if part.get("type") != "TemplateProcessing":
            raise ConfigError(f"post-processor {_shown(part.get('type'))} is not supported")
        special = expect(part.get("special_tokens"), dict, f"{where}.special_tokens")
        target = prefix  # special tokens before the sequence, then those after it
        for n, piece in enumerate(expect(part.get("single"), list, f"{where}.single")):
            if "Sequence" in expect(piece, dict, f"{where}.single[{n}]"):
                target = suffix
                continue
            named = expect(piece.get("SpecialToken"), dict, f"{where}.single[{n}].SpecialToken")
            name = text(named.get("id"), f"{where}.single[{n}].SpecialToken.id")
            if name not in special:
                raise CheckpointError(f"{where}.single[{n}] names the special token {name!r}, "
                                      "which special_tokens does not define")
            entry = expect(special[name], dict, f"{where}.special_tokens[{name!r}]")
            for k, i in enumerate(expect(entry.get("ids"), list, f"{where}.special_tokens[{name!r}].ids")):
                target.append(token_id(i, f"{where}.special_tokens[{name!r}].ids[{k}]", bound))
    return prefix, suffix
