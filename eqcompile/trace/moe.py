"""Mixture-of-experts layers (Mixtral): the router's top-k choice and the experts' fused weights,
lowered into one :class:`~eqcompile.ops.MixtureOfExperts` whose experts are bound to the
checkpoint's own per-expert tensors."""

from __future__ import annotations

import re


def stacked_names(model, names: dict[str, str]) -> dict[str, tuple[tuple[str, ...], ...]]:
    """The model's fused experts' parameters -> per expert, the checkpoint tensors stacked into it.

    transformers builds ``mlp.experts.gate_up_proj`` [E, 2F, D] out of each expert's ``w1`` and
    ``w3`` (its conversion rules: MergeModulelist over experts, then Concatenate); ``names`` maps
    the checkpoint's tensors, renamed as transformers renames them, to their stored names."""
    from transformers.conversion_mapping import get_model_conversion_mapping

    rules = [(rule.source_patterns, rule.target_patterns[0]) for rule in get_model_conversion_mapping(model)
             if type(rule).__name__ == "WeightConverter" and len(rule.target_patterns) == 1]
    found = {}
    for parameter, _ in model.named_parameters():
        if parameter in names:
            continue
        for sources, target in rules:
            if not parameter.endswith(target):
                continue
            stem = parameter[:-len(target)]
            patterns = [re.compile(re.escape(stem + source).replace(r"\*", r"(\d+)") + "$") for source in sources]
            experts: dict[int, list[str]] = {}
            for renamed, stored in names.items():
                for position, pattern in enumerate(patterns):
                    match = pattern.match(renamed)
                    if match:
                        experts.setdefault(int(match.group(1)), [""] * len(patterns))[position] = stored
            if experts and sorted(experts) == list(range(len(experts))) and all(all(p) for p in experts.values()):
                found[parameter] = tuple(tuple(experts[e]) for e in range(len(experts)))
    return found
