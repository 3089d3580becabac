"""The emitted ``tokenizer.py`` (eqcompile's tokenizer runtime, verbatim) and the data it reads.

picoGPT keeps ``encoder.py`` apart from ``gpt2.py``; so does the emitted package: ``model.py``
imports ``encode``/``decode`` from ``tokenizer.py`` beside it.
"""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

from ..tokenizer import Tokenizer, runtime
from .files import write_text
from .templates import render_template

DATA_FILE = "tokenizer_data.json"
MODULE_FILE = "tokenizer.py"


def runtime_source() -> str:
    """The runtime module's code without its docstring: what ``tokenizer.py`` gets verbatim."""
    source = inspect.getsource(runtime)
    docstring = ast.parse(source).body[0]
    return "\n".join(source.splitlines()[docstring.end_lineno:]).strip() + "\n"


def write_tokenizer(tokenizer: Tokenizer, folder: str | Path) -> Path:
    """Write ``folder/tokenizer.py`` (``encode(text)``, ``decode(ids)``, standard library only) and
    the ``folder/tokenizer_data.json`` it reads; return the module's path."""
    text = json.dumps(tokenizer.data, ensure_ascii=False, separators=(",", ":"))
    write_text(Path(folder) / DATA_FILE, text + "\n")
    path = Path(folder) / MODULE_FILE
    write_text(path, render_template("tokenizer.py.j2", runtime=runtime_source(), data_file=DATA_FILE))
    return path
