"""How long a 12-layer GPT-2-124M-shaped appendix takes to render, phase by phase.

    python benchmarks/bench_appendix.py [--random] [--layers 12]

The checkpoint is GPT-2 small's exact header (124M parameters, vocabulary 50257, d = 768) over a
sparse file of zeros, made in a second; ``--random`` fills it with random values instead (slower
to make, same work to render). Prints the time of each phase; asserts nothing.
"""

from __future__ import annotations

import argparse
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import eqcompile  # noqa: E402
from eqcompile.emit import appendix, html  # noqa: E402
from eqcompile.emit.pdf import build_pdf  # noqa: E402
from eqcompile.arch import header_only  # noqa: E402

GPT2_SMALL = dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_head=12)


def fill_with_random_values(path: Path, seed: int = 0) -> None:
    """Overwrite a float32 safetensors file's data with N(0, 0.02²) values, 16 MB at a time."""
    rng = np.random.default_rng(seed)
    with open(path, "r+b") as f:
        (header_length,) = struct.unpack("<Q", f.read(8))
        start = 8 + header_length
        count = (path.stat().st_size - start) // 4
        f.seek(start)
        for done in range(0, count, 1 << 22):
            f.write((0.02 * rng.standard_normal(min(1 << 22, count - done))).astype("<f4").tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--random", action="store_true", help="random weights instead of zeros")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        folder = header_only(Path(temp) / "gpt2", {**GPT2_SMALL, "n_layer": args.layers})
        if args.random:
            fill_with_random_values(folder / "model.safetensors")
        timings = {}

        def timed(name, work):
            start = time.perf_counter()
            result = work()
            timings[name] = time.perf_counter() - start
            return result

        model = timed("compile (symbolic)", lambda: eqcompile.compile(folder))
        content = timed("appendix content (sha256, statistics, equations)", model.appendix)
        tex = timed("LaTeX from the template", lambda: appendix.tex(content))
        build = timed("PDF (latexmk + pdflatex)", lambda: build_pdf(tex))
        timed("HTML page (content + template)", lambda: html.page(
            model.program, model.appendix(decorate=html.decorate)))
    info = subprocess.run(["pdfinfo", "-"], input=build.pdf, capture_output=True).stdout.decode()
    pages = re.search(r"^Pages:\s+(\d+)", info, re.M).group(1)
    print(f"GPT-2-shaped, {args.layers} layers, {'random' if args.random else 'zero'} weights, "
          f"{len(content.symbols)} weights bound, {len(tex):,} characters of LaTeX, {pages} PDF pages")
    for name, seconds in timings.items():
        print(f"{seconds:8.2f} s  {name}")
    pdf_path = sum(seconds for name, seconds in timings.items() if not name.startswith("HTML"))
    print(f"{pdf_path:8.2f} s  total for --pdf")


if __name__ == "__main__":
    main()
