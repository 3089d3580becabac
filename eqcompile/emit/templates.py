"""The jinja2 environment for ``templates/``, with LaTeX-safe delimiters.

``((* block *))``, ``((( variable )))`` and ``((= comment =))`` never clash with TeX's braces or
with Python, so the templates stay readable as the documents they produce. Templates named
``*.html.j2`` are HTML-escaped automatically; the others are escaped explicitly (``| tex``).
"""

from __future__ import annotations

import pprint
from functools import cache
from importlib import resources
from pathlib import Path

from .text import tex_code, tex_escape


def template_folder() -> Path:
    installed = resources.files("eqcompile") / "templates"
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parents[2] / "templates"  # a source checkout


@cache
def environment():
    import jinja2  # only documents and modules need it: the command line's --latex does not

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_folder()),
        block_start_string="((*", block_end_string="*))",
        variable_start_string="(((", variable_end_string=")))",
        comment_start_string="((=", comment_end_string="=))",
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
    )
    env.filters["tex"] = tex_escape
    env.filters["texcode"] = tex_code
    env.filters["pyrepr"] = lambda value: pprint.pformat(value, width=100, sort_dicts=False)
    return env


def render_template(name: str, **context) -> str:
    return environment().get_template(name).render(**context)
