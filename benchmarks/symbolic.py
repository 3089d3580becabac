"""Symbolic work at scale: ``eqcompile MODEL --latex`` and ``eqcompile stats MODEL`` as a user runs them.

Every command runs in a fresh interpreter, imports included (a user pays them); its wall time, CPU
time and peak resident memory come from that child alone (``os.wait4``). The checkpoints are
header-only, so the figures show what the symbolic pipeline costs, independent of weight size.
Then, in this process: LaTeX emission against the layer count, the block stated once and unrolled.
"""

from __future__ import annotations

import sys
from pathlib import Path

import eqcompile
from measure import best_of, best_time
from shapes import MODELS, layer_series, parameters

TARGET_SECONDS, TARGET_MB = 2.0, 300
COMMANDS = {"latex": ["{model}", "--latex"], "stats": ["stats", "{model}"]}


def cli(model: Path, command: str) -> list[str]:
    return [sys.executable, "-m", "eqcompile", *(a.format(model=model) for a in COMMANDS[command])]


def run(folder: Path, env: dict, quick: bool = False) -> dict:
    repeats = 1 if quick else 3  # the depth series; the model shapes (one point each) take 2
    result: dict = {"floor": {}, "models": {}, "layers": {}, "emission": {}}
    result["floor"]["python"] = best_of([sys.executable, "-c", "pass"], env, repeats)
    result["floor"]["import eqcompile.cli"] = best_of([sys.executable, "-c", "import eqcompile.cli"], env, repeats)

    models = MODELS[:1] if quick else MODELS
    for shape in models:
        path = shape.write(folder)
        result["models"][shape.name] = {"parameters": parameters(path), "family": shape.config["model_type"],
                                        **{command: best_of(cli(path, command), env, min(repeats, 2))
                                           for command in COMMANDS}}

    series = layer_series((2, 4)) if quick else layer_series()
    for shape in series:
        path = shape.write(folder)
        result["layers"][shape.layers] = {command: best_of(cli(path, command), env, repeats) for command in COMMANDS}
        result["emission"][shape.layers] = emission_times(path, repeats)
    first, last = (result["layers"][shape.layers] for shape in (series[0], series[-1]))
    result["layer_growth"] = {command: last[command]["wall"] / first[command]["wall"] for command in COMMANDS}
    result["layer_range"] = [series[0].layers, series[-1].layers]
    return result


def emission_times(path: Path, repeats: int) -> dict:
    """In this process (imports paid already): compile, LaTeX with the block once and unrolled, stats."""
    model = eqcompile.compile(path)
    return {
        "compile": best_time(lambda: eqcompile.compile(path), repeats),
        "latex": best_time(model.latex, repeats),
        "latex_unrolled": best_time(lambda: model.latex(unroll=True), repeats),
        "latex_unrolled_chars": len(model.latex(unroll=True)),
        "stats": best_time(model.stats, repeats),
    }


def table(result: dict) -> list[str]:
    lines = ["| checkpoint (header only) | parameters | `--latex` wall / CPU / RSS | `stats` wall / CPU / RSS |",
             "|---|---:|---:|---:|"]

    def cell(run: dict) -> str:
        return f"{run['wall']:.2f} s / {run['cpu']:.2f} s / {run['rss_mb']:.0f} MB"

    floor = result["floor"]
    lines.append(f"| *floor: `python -c pass`; `import eqcompile.cli`* | | {cell(floor['python'])} "
                 f"| {cell(floor['import eqcompile.cli'])} |")
    for name, row in result["models"].items():
        lines.append(f"| {name} | {row['parameters'] / 1e9:.2f} B | {cell(row['latex'])} | {cell(row['stats'])} |")
    for layers, row in result["layers"].items():
        lines.append(f"| GPT-2 d=768, {layers} layers | | {cell(row['latex'])} | {cell(row['stats'])} |")
    low, high = result["layer_range"]
    growth = result["layer_growth"]
    lines.append(f"| **wall time {high} layers / {low} layers** | | **{growth['latex']:.2f}x** | **{growth['stats']:.2f}x** |")
    lines += ["", f"Targets: < {TARGET_SECONDS:g} s and < {TARGET_MB} MB per command; time constant (at worst "
              "linear) in the layer count.", "",
              "| layers | compile | LaTeX, block once | LaTeX, unrolled (characters) | stats |", "|---:|---:|---:|---:|---:|"]
    for layers, row in result["emission"].items():
        lines.append(f"| {layers} | {row['compile'] * 1e3:.1f} ms | {row['latex'] * 1e3:.1f} ms | "
                     f"{row['latex_unrolled'] * 1e3:.0f} ms ({row['latex_unrolled_chars']:,}) | {row['stats'] * 1e3:.1f} ms |")
    return lines
