"""The tokenizer τ stated in LaTeX: pre-tokenization, the byte table, the merge rule, the lookup."""

from __future__ import annotations

from ..errors import ConfigError
from ..tokenizer import Tokenizer, bytes_to_unicode
from .text import tex_escape


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
    size = len(set(tokenizer.ids.values()) | set(tokenizer.added))
    describe = _character_level if tokenizer.data["model"] == "WordLevel" else _byte_level_bpe
    body = describe(tokenizer, size)
    return "\n".join([r"\subsection*{Tokenizer}", *body]) + "\n"


def _character_level(tokenizer: Tokenizer, size: int) -> list[str]:
    steps = [s for s in tokenizer.data["pre_tokenizer"] if "split" in s]
    if [s["split"] for s in steps] != [""]:
        raise ConfigError("only character-level WordLevel tokenizers can be written as LaTeX")
    return [
        rf"The tokenizer $\tau\colon \Sigma^* \to V^*$ is character-level, with $|V| = {_count(size)}$ "
        r"characters: a string $s = s_1 \cdots s_n$ maps to",
        r"\[ \tau(s) = \bigl(\operatorname{id}(s_1), \dots, \operatorname{id}(s_n)\bigr), \]",
        r"where $\operatorname{id}(c)$ is the index of character $c$ in $V$ (a character outside "
        r"$V$ has no image). Its inverse concatenates the characters of the ids.",
    ]


def _byte_level_bpe(tokenizer: Tokenizer, size: int) -> list[str]:
    """The BPE algorithm as an enumerated list, one item per step, then τ⁻¹."""
    data = tokenizer.data
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    rules = data["merges"]
    lines = [
        rf"The tokenizer $\tau\colon \Sigma^* \to V^*$ is byte-level BPE: a vocabulary of "
        rf"$|V| = {_count(size)}$ tokens and $M = {_count(len(rules))}$ merge rules "
        r"$(a_r, b_r) \mapsto a_r b_r$ ranked $r = 1, \dots, M$. For a string $s$:",
        r"\begin{enumerate}",
        *_added_item(data["added_tokens"]),
        *_normalization_item(data),
        _pre_tokenization_item(data),
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
    return lines


def _added_item(added: list[dict]) -> list[str]:
    """The item on added tokens (with up to three examples), if there are any."""
    if not added:
        return []
    examples = ", ".join([r"\texttt{" + tex_escape(t["content"]) + "}" for t in added[:3]]
                         + [r"\dots"] * (len(added) > 3))
    which = "the added token" if len(added) == 1 else f"one of the {_count(len(added))} added tokens"
    return [rf"\item \emph{{Added tokens.}} Each occurrence in $s$ of {which} "
            rf"({examples}) is cut out, "
            r"leftmost and longest first, and stands for its own id; the stretches between go on."]


def _normalization_item(data: dict) -> list[str]:
    """The item on Unicode normalization, when the tokenizer normalizes (Qwen2: NFC)."""
    if "normalizer" not in data:
        return []
    return [rf"\item \emph{{Normalization.}} Each stretch is put in Unicode normalization form "
            rf"{tex_escape(data['normalizer'])} (by the Unicode {tex_escape(data['unicode_version'])} tables)."]


def _pre_tokenization_item(data: dict) -> str:
    """The item on pre-tokenization: each regex set apart, then what its classes mean."""
    split_steps = [s for s in data["pre_tokenizer"] if "split" in s]
    regexes = "then each piece again into those of".join(_regex_tex(s["split"]) for s in split_steps)
    prefix = (r"A space is put before each stretch that does not begin with one. "
              if any("prefix_space" in s for s in data["pre_tokenizer"]) else "")
    return (rf"\item \emph{{Pre-tokenization.}} {prefix}Each stretch is cut into the successive matches "
            rf"$w_1, \dots, w_m$ of {regexes}(leftmost first, alternatives tried in order; "
            r"\texttt{\textbackslash{}p\{L\}} is a letter, \texttt{\textbackslash{}p\{N\}} a number, "
            r"\texttt{\textbackslash{}s} white space, by the Unicode "
            rf"{tex_escape(data['unicode_version'])} tables).")


def _template_tex(data: dict) -> str:
    """The post-processor's ids around τ(s) (a BOS, say), in words."""
    parts = [f"{where} ${', '.join(map(str, ids))}$" for where, ids in
             (("preceded by", data["prefix"]), ("followed by", data["suffix"])) if ids]
    return ", " + " and ".join(parts) + " (the post-processor's ids)" if parts else ""
