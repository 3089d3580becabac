"""The appendix's model card and tokenizer card: what the checkpoint's files say about the model.

Values stay plain text here; each template escapes them for its format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..load import Checkpoint
from ..load.files import read_json
from ..program import Program


@dataclass(frozen=True)
class CardRow:
    label: str
    value: str  # plain text, escaped by the template
    code: bool = False  # typeset as code (names, paths, digests) with places to break lines


def optional_json(path: Path):
    """A JSON file the model folder may have: None when absent, else read as every checkpoint file is
    (bounded and checked, so a hostile file is a one-line ``CheckpointError``)."""
    return read_json(path) if path.exists() or path.is_symlink() else None


def model_card(checkpoint: Checkpoint, program: Program, used: list[str]) -> list[CardRow]:
    """Family, source, files and their digest, dtypes, size, and what config.json names the model."""
    files = checkpoint.files
    digest_label = f"sha256 of {files[0].name}" if len(files) == 1 else \
        f"sha256 of the {len(files)} files, in order"
    rows = [CardRow("Family", program.family), CardRow("Source", program.source, code=True),
            CardRow("Weight files", ", ".join(f.name for f in files), code=True),
            CardRow(digest_label, checkpoint.sha256(), code=True),
            CardRow("Stored dtype", ", ".join(sorted({checkpoint.tensors[n].dtype for n in used}))),
            CardRow("Parameters", f"{sum(math.prod(checkpoint.shape(n)) for n in used):,}")]
    if program.takes_tokens:  # a vector-input model (an MLP) has neither
        rows += [CardRow("Context", f"{program.max_seq:,} tokens"), CardRow("Vocabulary", f"{program.vocab:,}")]
    config = checkpoint.config or {}
    for key in ("model_type", "architectures"):
        if key in config:
            value = config[key]
            rows.append(CardRow(f"config.json {key}", ", ".join(map(str, value)) if isinstance(value, list)
                                else str(value), code=True))
    rows += [CardRow(f"metadata {key}", value, code=True) for key, value in checkpoint.metadata.items()]
    return rows


def _type_of(part) -> str:
    return str(part.get("type", "?")) if isinstance(part, dict) else "none"


def tokenizer_card(checkpoint: Checkpoint) -> list[CardRow]:
    """What tokenizer.json says about the map from strings to token ids, when the folder has one."""
    if checkpoint.folder is None:
        return []
    data = optional_json(checkpoint.folder / "tokenizer.json")
    if not isinstance(data, dict):
        return []
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    vocab = model.get("vocab")
    added = data.get("added_tokens") if isinstance(data.get("added_tokens"), list) else []
    rows = [CardRow("File", "tokenizer.json", code=True), CardRow("Model", _type_of(model))]
    if isinstance(vocab, (dict, list)):
        rows.append(CardRow("Vocabulary entries", f"{len(vocab):,}"))
    if isinstance(model.get("merges"), list):
        rows.append(CardRow("Merges", f"{len(model['merges']):,}"))
    rows += [CardRow("Normalizer", _type_of(data.get("normalizer"))),
             CardRow("Pre-tokenizer", _type_of(data.get("pre_tokenizer"))),
             CardRow("Decoder", _type_of(data.get("decoder"))),
             CardRow("Added tokens", f"{len(added):,}")]
    return rows
