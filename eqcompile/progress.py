"""Progress on a terminal, for the stages that read or write every tensor (emitters and analyses alike)."""

from __future__ import annotations

import sys

from .terminal import terminal_text


def progress_bar(items, description: str, unit: str = "tensor"):
    """A progress bar on a terminal, nothing when stderr is piped."""
    from tqdm import tqdm

    return tqdm(items, desc=terminal_text(description), unit=unit, disable=not sys.stderr.isatty(), leave=False)
