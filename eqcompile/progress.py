"""Progress on a terminal, for the stages that read or write every tensor (emitters and analyses alike)."""

from __future__ import annotations

import sys

from .terminal import terminal_text


def progress_bar(items, description: str, total: int | None = None, unit: str = "tensor"):
    """A progress bar on a terminal, nothing when stderr is piped (``total``: for an iterator)."""
    from tqdm import tqdm

    return tqdm(items, desc=terminal_text(description), total=total, unit=unit, disable=not sys.stderr.isatty(),
                leave=False)
