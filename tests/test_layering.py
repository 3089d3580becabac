"""Imports flow one way: every ``import`` in eqcompile/ (function-level ones included) against the layering.

The layering, lowest first (README, "How it works"). A module may import modules of its own group and
of lower layers; the two groups of one layer (analyses, emitters) sit side by side and import neither
each other. Each exception is listed below with its reason, so the remaining debt stays visible.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "eqcompile"

LAYERS: list[dict[str, tuple[str, ...]]] = [  # lowest first; each group: module name prefixes
    {"base": ("eqcompile.errors", "eqcompile.composition", "eqcompile.terminal", "eqcompile.progress",
              "eqcompile.weight_statistics")},
    {"load": ("eqcompile.load",)},  # file formats only
    {"ops and program": ("eqcompile.ops", "eqcompile.program")},
    # front ends: what a checkpoint holds -> the intermediate forms (Program, Tokenizer)
    {"front ends": ("eqcompile.arch", "eqcompile.tracer", "eqcompile.tokenizer")},
    {"front end choice": ("eqcompile.frontend",),  # a hand-written family, else the tracer
     "transforms": ("eqcompile.fold",)},  # Program -> Program: the circuit form's folded weights
    {"analyses": ("eqcompile.stats", "eqcompile.expand", "eqcompile.diff", "eqcompile.train",
                  "eqcompile.circuits", "eqcompile.sharding"),
     "emitters": ("eqcompile.emit", "eqcompile.diff.render", "eqcompile.train.module", "eqcompile.train.latex")},
    {"runs": ("eqcompile.verify", "eqcompile.exact", "eqcompile.api",
              "eqcompile.train.finetune")},  # run what an emitter wrote
    {"command line": ("eqcompile.cli", "eqcompile.__main__")},
]
TOP = "eqcompile"  # the package's __init__: the public API, above everything

RENDERS = {  # by design: a renderer imports the result type of the analysis it prints, never the reverse
    ("eqcompile.emit.expanded", "eqcompile.expand"),
    ("eqcompile.diff.render", "eqcompile.diff"),  # ModelDiff, and the delta and structure types it holds
    ("eqcompile.train.module", "eqcompile.train"),  # the training Program: backward stages, loss ops
    ("eqcompile.train.latex", "eqcompile.train"),
    ("eqcompile.emit.jax", "eqcompile.sharding"),  # model_jax.py's SPLIT is the placement split_table derives
    ("eqcompile.emit.circuit_tables", "eqcompile.circuits"),  # the appendix's table of each head's figures
}
DEBT: set[tuple[str, str]] = set()  # imports that break the layering today; none left (issue 14)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The eqcompile modules ``name`` imports, at any depth of its code (TYPE_CHECKING blocks too)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            base = ".".join(filter(None, [base, node.module]))
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names}
    return {target for target in found if target == TOP or target.startswith(TOP + ".")}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def allowed(source: str, target: str) -> bool:
    return any(within(source, a) and within(target, b) for a, b in RENDERS | DEBT)


def place(name: str) -> tuple[int, str]:
    """(layer, group) of a module: its longest matching prefix."""
    if name == TOP:
        return len(LAYERS), "top"
    matches = [(len(prefix), layer, group) for layer, groups in enumerate(LAYERS)
               for group, prefixes in groups.items() for prefix in prefixes
               if within(name, prefix)]
    assert matches, f"{name} is in no layer: add it to LAYERS"
    _, layer, group = max(matches)
    return layer, group


GRAPH = {name: imports_of(name) for name in MODULES}


def test_every_module_has_a_layer():
    for name in MODULES:
        place(name)


def test_imports_go_down_or_stay_in_their_group():
    wrong = []
    for source, targets in GRAPH.items():
        for target in targets:
            (layer, group), (target_layer, target_group) = place(source), place(target)
            downward = target_layer < layer or (target_layer == layer and target_group == group)
            if not downward and not allowed(source, target):
                wrong.append(f"{source} ({group}) imports {target} ({target_group})")
    assert not wrong, "\n".join(wrong)


def test_allowances_are_still_needed():
    """An exception whose import is gone is deleted, so the list shows only what is left."""
    stale = [(a, b) for a, b in RENDERS | DEBT
             if not any(within(source, a) and within(target, b) for source, targets in GRAPH.items()
                        for target in targets)]
    assert not stale, stale


def test_no_import_cycle():
    """Depth-first search over the module graph; a back edge is a cycle."""
    state: dict[str, str] = {}  # "open" while on the stack, "done" after

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(GRAPH.get(name, ())):
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_the_checker_sees_function_level_and_relative_imports():
    """The parser finds what the rules are about (a checker that finds nothing cannot fail)."""
    assert "eqcompile.verify" in GRAPH["eqcompile.cli"]  # imported inside a function
    assert "eqcompile.load.gguf" in GRAPH["eqcompile.arch.common"]  # relative, two levels
    assert "eqcompile.emit.appendix" in GRAPH["eqcompile.api"]  # ``from .emit import appendix``
    assert place("eqcompile.diff.render") == (5, "emitters") and place("eqcompile.diff.delta") == (5, "analyses")
