"""The appendix's next-token map, as generation_config.json asks for it (transformers' defaults otherwise)."""

from __future__ import annotations

from ..load import Checkpoint
from ..program import Interface, Program
from .latex import EquationLine, printer_for
from .model_card import optional_json


def _config_number(config: dict, key: str, default: float, low: float, high: float) -> float | None:
    value = config.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        return None
    return value


def sampling(checkpoint: Checkpoint, program: Program) -> tuple[list[EquationLine], list[str]]:
    """The equations of the next token and notes on its parameters; nothing for a model that does
    not generate or has no generation_config.json. A hostile file raises ``CheckpointError``."""
    if program.interface != Interface.CAUSAL_LM or checkpoint.folder is None:
        return [], []
    config = optional_json(checkpoint.folder / "generation_config.json")
    if not isinstance(config, dict):
        return [], []
    last = program.stages[-1]
    logits = printer_for(program, last)._print(last.output)
    row = rf"{{{logits}}}_{{n,v}}"
    if config.get("do_sample") is not True:
        return [EquationLine("t_{n+1}", rf"\operatorname*{{arg\,max}}_{{v \in \mathcal{{V}}}} {row}")], \
            ["Greedy decoding (generation_config.json does not set do_sample)."]
    temperature = _config_number(config, "temperature", 1.0, 1e-6, 1e6)
    top_k = _config_number(config, "top_k", 50, 0, 1e12)
    top_p = _config_number(config, "top_p", 1.0, 0.0, 1.0)
    if temperature is None or top_k is None or top_p is None:
        return [], ["generation_config.json sets sampling values eqcompile cannot read."]
    lines = [EquationLine(r"p(v \mid t_1, \dots, t_n)",
                          rf"\frac{{\exp\left({row} / T\right)}}{{\sum_{{u \in \mathcal{{S}}}} "
                          rf"\exp\left({{{logits}}}_{{n,u}} / T\right)}}, \quad v \in \mathcal{{S}}"),
             EquationLine("t_{n+1}", r"\sim p(\cdot \mid t_1, \dots, t_n)")]
    notes = [f"Sampling with temperature T = {temperature:g}."]
    if top_k:
        notes.append(f"S is restricted to the {int(top_k)} most probable tokens (top-k).")
    if top_p < 1:
        notes.append(f"S is the smallest set of most probable tokens whose probability reaches {top_p:g} (top-p).")
    if not top_k and top_p >= 1:
        notes.append("S is the whole vocabulary V.")
    return lines, notes
