"""The structural diff: what differs in the equations and in the files, without reading weights.

Two Programs are compared stage by stage (equations matched by their left-hand side), with their
parsed configs and dimension values; parameters are matched by symbol and layer (their key in the
emitted weight file, e.g. ``block.2.W_Q``), so the comparison holds for any family. Raw tensors are
matched by name; a tensor under another name is *renamed* when its data hash is the same, or when
the two Programs use it in the same role (the source of the same parameter).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..load import Checkpoint
from ..program import Equation, Program, Stage, TensorRef


@dataclass(frozen=True)
class Slot:
    """One parameter in one layer: the unit of the parametric diff (W_Q^(3) is a slice of c_attn)."""

    key: str  # its key in the emitted weight file, e.g. "block.2.W_Q" (layers counted from 0 there)
    symbol: str  # "W_Q"
    stage: str  # "block"
    layer: int | None  # counted from 1, as in the equations; None for a stage applied once
    latex: str  # "W_Q^{(3)}"
    generic_latex: str  # "W_Q^{(l)}": the symbol for any layer
    source: TensorRef  # for this layer
    shape: tuple[int, ...]  # in the equations' orientation

    @property
    def label(self) -> str:
        return self.symbol if self.layer is None else f"{self.symbol}^({self.layer})"


def slots(program: Program) -> dict[str, Slot]:
    """Every parameter of every layer, by key, in the order the model uses them."""
    shapes = {}  # one sympy substitution per symbol, not per layer
    for b in program.bindings():
        if b.param.symbol not in shapes:
            shapes[b.param.symbol] = program.numeric_shape(b.param.symbol)
    return {b.key: Slot(b.key, b.param.name, b.stage.name, None if b.layer is None else b.layer + 1, b.latex,
                        b.param.latex_at("l"), b.source, shapes[b.param.symbol])
            for b in program.bindings()}


@dataclass(frozen=True)
class Change:
    """A named value that differs; ``None`` on one side means absent there."""

    name: str
    before: object
    after: object
    latex: str | None = None  # for dimensions: the symbol's LaTeX


@dataclass(frozen=True)
class EquationChange:
    lhs: str
    before: Equation | None  # None: the equation is new in B
    after: Equation | None  # None: B no longer has it


@dataclass
class StageDiff:
    """A stage whose equations, or number of layers, differ (or that one side lacks)."""

    name: str
    before: Stage | None
    after: Stage | None
    equations: list[EquationChange]

    @property
    def layers(self) -> tuple[int | None, int | None]:
        return (self.before.layers if self.before else None, self.after.layers if self.after else None)


@dataclass(frozen=True)
class Rename:
    before: str
    after: str
    same_data: bool  # False: matched by role (the same parameter's source) with changed data


@dataclass
class TensorChanges:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    renamed: list[Rename] = field(default_factory=list)
    reshaped: list[Change] = field(default_factory=list)  # before/after: shapes
    retyped: list[Change] = field(default_factory=list)  # before/after: storage dtypes

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.renamed or self.reshaped or self.retyped)


@dataclass
class StructureDiff:
    families: tuple[str | None, str | None]
    config: list[Change]
    dimensions: list[Change]
    stages: list[StageDiff]
    params_added: list[Slot]
    params_removed: list[Slot]
    params_reshaped: list[tuple[Slot, Slot]]
    tensors: TensorChanges
    notes: list[str]  # e.g. a side that has no equations

    @property
    def changed(self) -> bool:
        return bool(self.families[0] != self.families[1] or self.config or self.dimensions or self.stages
                    or self.params_added or self.params_removed or self.params_reshaped or self.tensors)


def compare_programs(before: Program | None, after: Program | None, slots_before: dict[str, Slot],
                     slots_after: dict[str, Slot], raw_configs: tuple[dict | None, dict | None],
                     tensors: TensorChanges, notes: list[str]) -> StructureDiff:
    """Config, dimensions, equations and parameters, with the tensor changes found by name."""
    if before is not None and after is not None:
        config = changes(before.config, after.config)
        dimensions = _dimension_changes(before, after)
        stages = _stage_changes(before, after)
    else:  # no equations on one side: the config.json files are all there is to compare
        config, dimensions, stages = changes(raw_configs[0] or {}, raw_configs[1] or {}), [], []
    common = [key for key in slots_before if key in slots_after]
    return StructureDiff(
        families=(before.family if before else None, after.family if after else None),
        config=config, dimensions=dimensions, stages=stages,
        params_added=[s for key, s in slots_after.items() if key not in slots_before],
        params_removed=[s for key, s in slots_before.items() if key not in slots_after],
        params_reshaped=[(slots_before[k], slots_after[k]) for k in common
                         if slots_before[k].shape != slots_after[k].shape],
        tensors=tensors, notes=notes,
    )


def changes(before: dict, after: dict) -> list[Change]:
    """Keys whose values differ, in A's order then B's new keys."""
    keys = list(before) + [key for key in after if key not in before]
    return [Change(key, before.get(key), after.get(key)) for key in keys if before.get(key) != after.get(key)]


def _dimension_changes(before: Program, after: Program) -> list[Change]:
    symbols = list(before.dims) + [s for s in after.dims if s not in before.dims]
    names = {**after.dim_python, **before.dim_python}
    latex = {**after.dim_latex, **before.dim_latex}
    return [Change(names.get(s, str(s)), before.dims.get(s), after.dims.get(s), latex.get(s, str(s)))
            for s in symbols if before.dims.get(s) != after.dims.get(s)]


def _stage_changes(before: Program, after: Program) -> list[StageDiff]:
    stages_before = {s.name: s for s in before.stages}
    stages_after = {s.name: s for s in after.stages}
    found = []
    for name in list(stages_before) + [n for n in stages_after if n not in stages_before]:
        old, new = stages_before.get(name), stages_after.get(name)
        equations = _equation_changes(old, new) if old and new else []
        if old is None or new is None or equations or old.layers != new.layers:
            found.append(StageDiff(name, old, new, equations))
    return found


def _equation_changes(before: Stage, after: Stage) -> list[EquationChange]:
    """Equations matched by what they define; sympy's ``==`` compares the expression trees."""
    old = {eq.lhs.name: eq for eq in before.equations}
    new = {eq.lhs.name: eq for eq in after.equations}
    found = []
    for lhs in list(old) + [name for name in new if name not in old]:
        a, b = old.get(lhs), new.get(lhs)
        if a is None or b is None or a.rhs != b.rhs or a.lhs.shape != b.lhs.shape:
            found.append(EquationChange(lhs, a, b))
    return found


def compare_tensors(before: Checkpoint, after: Checkpoint, digest: Callable[[str, str], tuple],
                    same_role: list[tuple[str, str]]) -> TensorChanges:
    """Tensors added, removed, renamed, reshaped or stored in another dtype, by name.

    ``digest(side, name)`` hashes a tensor's bytes (side "before" or "after"); ``same_role`` lists
    (name in A, name in B) pairs that are the sources of the same parameter.
    """
    names_before, names_after = before.tensors, after.tensors
    only_before = [n for n in names_before if n not in names_after]
    only_after = [n for n in names_after if n not in names_before]
    found = TensorChanges()
    for name in (n for n in names_before if n in names_after):
        a, b = names_before[name], names_after[name]
        if a.shape != b.shape:
            found.reshaped.append(Change(name, a.shape, b.shape))
        if a.dtype != b.dtype:
            found.retyped.append(Change(name, a.dtype, b.dtype))
    layouts = {(names_before[n].dtype, names_before[n].shape) for n in only_before}
    by_digest: dict[tuple, list[str]] = {}  # hashed only when a tensor of A could match
    for name in only_after:
        if (names_after[name].dtype, names_after[name].shape) in layouts:
            by_digest.setdefault(digest("after", name), []).append(name)
    matched_after = set()
    for name in only_before:
        candidates = by_digest.get(digest("before", name), []) if by_digest else []
        if candidates:
            target = candidates.pop(0)
            matched_after.add(target)
            found.renamed.append(Rename(name, target, same_data=True))
    renamed_before = {r.before for r in found.renamed}
    for old, new in dict.fromkeys(same_role):
        if old in only_before and new in only_after and old not in renamed_before and new not in matched_after:
            renamed_before.add(old)
            matched_after.add(new)
            found.renamed.append(Rename(old, new, same_data=False))
    found.removed = [n for n in only_before if n not in renamed_before]
    found.added = [n for n in only_after if n not in matched_after]
    return found
