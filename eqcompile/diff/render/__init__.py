"""A :class:`~eqcompile.diff.ModelDiff` written out: a text table (default), JSON, or LaTeX.

Changed weights come first, largest relative change first; identical parameters are summarised
(whole layers, symbols identical in every layer) rather than listed.
"""

from .latex import latex, primed
from .text import json_text, text

__all__ = ["json_text", "latex", "primed", "text"]
