"""TeX to PDF with a real TeX engine: latexmk, never shell escape, in a temporary folder, timed.

The same ``.tex`` gives the same PDF bytes: the build fixes ``SOURCE_DATE_EPOCH`` (unless the caller's
environment sets it) with ``FORCE_SOURCE_DATE=1``, so dates and the PDF's ID do not change.
pdflatex is the engine; a document too big for its memory is built again with lualatex.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import TeXError, TeXInputError

ENGINES = ("pdflatex", "lualatex")
TIMEOUT_SECONDS = 300
FIXED_EPOCH = "0"  # when the environment sets no SOURCE_DATE_EPOCH
LOG_LINES_AFTER_ERROR = 4
LINE_TOO_LONG = "Unable to read an entire line"  # TeX's line buffer (200,000 bytes in TeX Live) overflowed
INSTALL_HINT = "apt-get install texlive-latex-base texlive-latex-recommended latexmk"


@dataclass(frozen=True)
class PdfBuild:
    pdf: bytes
    log: str  # the engine's log of the last run (overfull boxes, warnings)
    engine: str


def build_pdf(tex: str, engine: str = "pdflatex", timeout: float = TIMEOUT_SECONDS,
              folder: Path | None = None) -> PdfBuild:
    """Compile ``tex`` to PDF in ``folder`` (default: a temporary one, removed afterwards).

    Raises :class:`TeXError` with the log's error lines when TeX fails or runs out of time.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}")
    if shutil.which("latexmk") is None or shutil.which(engine) is None:
        raise TeXError(f"building a PDF needs latexmk and {engine} ({INSTALL_HINT})")
    try:
        return _build_in(tex, engine, timeout, folder)
    except TeXError as error:
        if not (engine == "pdflatex" and error.out_of_memory and shutil.which("lualatex")):
            raise
    try:
        return _build_in(tex, "lualatex", timeout, folder)
    except TeXError as error:
        raise TeXError(f"pdflatex ran out of memory, and {error}") from None


def _build_in(tex: str, engine: str, timeout: float, folder: Path | None) -> PdfBuild:
    if folder is not None:
        return _run(tex, engine, timeout, Path(folder))
    with tempfile.TemporaryDirectory(prefix="eqcompile-tex-") as temp:
        return _run(tex, engine, timeout, Path(temp))


def _run(tex: str, engine: str, timeout: float, folder: Path) -> PdfBuild:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "appendix.tex").write_text(tex, encoding="utf-8")
    env = {**os.environ, "FORCE_SOURCE_DATE": "1"}
    env.setdefault("SOURCE_DATE_EPOCH", FIXED_EPOCH)
    command = ["latexmk", "-norc", f"-{'pdf' if engine == 'pdflatex' else 'lualatex'}", "-no-shell-escape",
               "-interaction=nonstopmode", "-halt-on-error", "-file-line-error", "-silent", "appendix.tex"]
    # a session of its own, so that a timeout ends latexmk and the TeX run it started
    with subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise TeXError(f"{engine} did not finish within {timeout:g} s") from None
    log_path = folder / "appendix.log"
    log = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    pdf = folder / "appendix.pdf"
    if process.returncode != 0 or not pdf.exists():
        if LINE_TOO_LONG in log + stdout + stderr:  # TeX stops before it opens its log
            raise TeXInputError(f"a line of the document is longer than {engine} reads: "
                                "a string from the input is too long to typeset")
        raise TeXError(f"{engine} failed: {error_summary(log) or stdout[-300:] + stderr[-300:]}",
                       out_of_memory="TeX capacity exceeded" in log)
    return PdfBuild(pdf.read_bytes(), log, engine)


def error_summary(log: str) -> str:
    """The first error of a TeX log (``!`` or ``file:line:`` form) and the lines after it, on one line."""
    lines = log.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("!") or re.match(r"^\S+\.tex:\d+: ", line):
            context = [line.strip()]
            for after in lines[index + 1:index + 1 + LOG_LINES_AFTER_ERROR]:
                if after.startswith("Here is how much"):  # the memory report that ends a failed run
                    break
                context.append(after.strip())
            return " | ".join(s for s in context if s)
    return ""
