"""Documents and diff: how compile, LaTeX and the PDF appendix grow with the layer count, and how
fast ``eqcompile diff`` streams two checkpoints compared with reading the same bytes.

Machines are noisy, so the figures that matter are ratios of timings taken in this one run: 12
layers against 2 (header-only GPT-2 shapes: nothing on disk, the appendix reads zeros), and the
diff against a plain read of both files, measured right before and right after it from the page
cache. The PDF phases are those of ``bench_appendix.py``.
"""

from __future__ import annotations

import math
import re
import shutil
import time
import tracemalloc
from pathlib import Path

import eqcompile
from diff_pair import shapes, write_pair
from eqcompile.diff import compare
from eqcompile.emit import appendix
from eqcompile.emit.pdf import build_pdf
from eqcompile.load import load_checkpoint
from eqcompile.arch import header_only

LAYERS, QUICK_LAYERS = (2, 4, 8, 12), (1, 2)
DIFF_LAYERS = 2  # 2 x 214 MB, wte's 50257 x 768 the largest pair: seconds to write and to diff
COLUMNS = {"compile": "compile", "latex": "`latex()`", "latex_unrolled": "`latex(unroll=True)`",
           "appendix": "appendix content", "tex": "appendix .tex", "pdf": "PDF (latexmk)",
           "pdf_total": "`--pdf` total", "pages": "PDF pages"}
PDF_PHASES = ("compile", "appendix", "tex", "pdf")  # what `eqcompile MODEL --pdf` runs
MB = 1e6


def gpt2(layers: int, quick: bool) -> dict:
    """GPT-2-124M's shape at ``layers`` layers; d = 64 and a 1000-token vocabulary when quick."""
    width, vocab = (64, 1000) if quick else (768, 50257)
    return dict(model_type="gpt2", vocab_size=vocab, n_positions=1024, n_embd=width, n_layer=layers,
                n_head=width // 64)


def best_time(work, repeats: int):
    """The fastest of ``repeats`` calls (the least disturbed by other load), and the last result."""
    seconds = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        result = work()
        seconds = min(seconds, time.perf_counter() - start)
    return seconds, result


def run(folder: Path, env: dict, quick: bool) -> dict:
    """Both parts, in this process (``env``, for child processes, is not needed)."""
    notes = []
    tex_available = bool(shutil.which("latexmk") and shutil.which("pdflatex"))
    if not tex_available:
        notes.append("PDF appendix: latexmk or pdflatex is not installed, so its PDF phase was not timed")
    return {"documents": documents(folder, quick, tex_available), "diff": diff(folder / "diff", quick),
            "notes": notes}


def documents(folder: Path, quick: bool, tex_available: bool) -> dict:
    """Every document phase at each layer count, best of 2, after one untimed pass over the first
    (imports, templates and TeX's format files are paid before any timing)."""
    started = time.perf_counter()
    repeats = 1 if quick else 2
    paths = {layers: header_only(folder / f"gpt2-{layers}-layers", gpt2(layers, quick))
             for layers in (QUICK_LAYERS if quick else LAYERS)}
    phases(next(iter(paths.values())), 1, tex_available)
    rows = [{"layers": layers, **phases(path, repeats, tex_available)} for layers, path in paths.items()]
    first, last = rows[0], rows[-1]
    return {"config": gpt2(last["layers"], quick), "repeats": repeats, "rows": rows,
            "growth": {column: last[column] / first[column] for column in COLUMNS if column in last},
            "seconds": time.perf_counter() - started}


def phases(path: Path, repeats: int, tex_available: bool) -> dict:
    """Seconds of each phase on one checkpoint, the sizes of the LaTeX and the PDF's pages."""
    row = {}
    row["compile"], model = best_time(lambda: eqcompile.compile(path), repeats)
    row["latex"], _ = best_time(model.latex, repeats)
    row["latex_unrolled"], unrolled = best_time(lambda: model.latex(unroll=True), repeats)
    row["appendix"], content = best_time(model.appendix, repeats)
    row["tex"], tex = best_time(lambda: appendix.tex(content), repeats)
    row["latex_unrolled_chars"], row["tex_chars"] = len(unrolled), len(tex)
    if tex_available:
        row["pdf"], build = best_time(lambda: build_pdf(tex), repeats)
        row["pages"] = int(re.search(r"Output written on \S+ \((\d+) pages?", build.log).group(1))
        row["pdf_total"] = sum(row[phase] for phase in PDF_PHASES)
    return row


def read_numbers(paths: tuple[Path, Path]) -> float:
    """Seconds to read every tensor of both checkpoints as numbers (memmapped and summed)."""
    start = time.perf_counter()
    for path in paths:
        checkpoint = load_checkpoint(path)
        for name in checkpoint.tensors:
            float(checkpoint.tensor(name).sum())
    return time.perf_counter() - start


def diff(folder: Path, quick: bool) -> dict:
    """``compare`` on a float32 pair where every tensor changed, between two plain reads of the pair.

    A first diff under tracemalloc (peak allocations) warms up; the timed ones follow, best of 2
    (1 when quick).
    """
    started = time.perf_counter()
    config = gpt2(DIFF_LAYERS, quick)
    pair = write_pair(folder, config, every_tensor=True)
    size = sum((path / "model.safetensors").stat().st_size for path in pair)
    tracemalloc.start()
    compare(*pair)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    repeats = 1 if quick else 2
    read_before = min(read_numbers(pair) for _ in range(2))
    cpu = time.process_time()
    seconds, result = best_time(lambda: compare(*pair), repeats)
    cpu = (time.process_time() - cpu) / repeats
    read_after = min(read_numbers(pair) for _ in range(2))
    read = min(read_before, read_after)
    return {"config": config, "bytes": size, "read_before": read_before, "read_after": read_after,
            "diff_seconds": seconds, "diff_cpu_seconds": cpu, "read_mb_per_s": size / read / MB,
            "diff_mb_per_s": size / seconds / MB, "read_over_diff": seconds / read,
            "compared": len(result.parameters) + len(result.tensors), "changed": len(result.changed_weights),
            "forms": sorted({w.delta.form for w in result.changed_weights}), "traced_peak": traced_peak,
            "largest_tensor": 4 * max(map(math.prod, shapes(config).values())),
            "seconds": time.perf_counter() - started}


def table(result: dict) -> list[str]:
    docs, d = result["documents"], result["diff"]
    config, columns = docs["config"], list(docs["growth"])
    first, last = docs["rows"][0], docs["rows"][-1]
    lines = [f"GPT-2 shape, header only (d = {config['n_embd']}, vocabulary {config['vocab_size']}, "
             f"context {config['n_positions']}); seconds, best of {docs['repeats']}:", "",
             "| layers | " + " | ".join(COLUMNS[c] for c in columns) + " |", "|---:|" + "---:|" * len(columns)]
    for row in docs["rows"]:
        lines.append(f"| {row['layers']} | " + " | ".join(
            str(row[c]) if c == "pages" else f"{row[c]:.3f}" for c in columns) + " |")
    lines.append(f"| **{last['layers']} / {first['layers']} layers** | "
                 + " | ".join(f"**{docs['growth'][c]:.2f}x**" for c in columns) + " |")

    mib = 2**20
    lines += ["", f"`eqcompile diff` on two float32 GPT-2 checkpoints (d = {d['config']['n_embd']}, "
              f"{d['config']['n_layer']} layers, {d['bytes'] / 2 / MB:.0f} MB each) in which every tensor "
              f"changed ({d['changed']} of {d['compared']} pairs; forms {', '.join(d['forms'])}), from the page cache:",
              "", "| measure | seconds | MB/s of both files |", "|---|---:|---:|"]
    for name, seconds in (("plain read before: memmap and sum every tensor", d["read_before"]),
                          ("`compare(A, B)`", d["diff_seconds"]), ("plain read after", d["read_after"])):
        lines.append(f"| {name} | {seconds:.3f} | {d['bytes'] / seconds / MB:,.0f} |")
    lines += ["", f"The diff takes **{d['read_over_diff']:.0f}x** the time of the faster read "
              f"({d['diff_cpu_seconds']:.2f} s CPU per diff); its tracemalloc peak is {d['traced_peak'] / mib:.1f} MiB, "
              f"{d['traced_peak'] / d['largest_tensor']:.2f}x the largest tensor ({d['largest_tensor'] / mib:.1f} MiB)."]
    return lines
