"""Every registered family provides the interface the pipeline calls, with the same signatures."""

from __future__ import annotations

import inspect

import pytest

from eqcompile import arch
from eqcompile.arch import PROTOCOLS, Family


@pytest.mark.parametrize("family", arch.families(), ids=lambda f: f.name)
def test_every_family_states_the_protocols_signatures(family):
    for field, protocol in PROTOCOLS.items():
        function = getattr(family, field)
        if function is None:
            continue
        stated = list(inspect.signature(protocol.__call__).parameters.values())[1:]
        given = list(inspect.signature(function).parameters.values())
        assert [(p.name, p.default) for p in given] == [(p.name, p.default) for p in stated], (family.name, field)


def test_families_are_discovered_and_cover_their_model_types():
    names = {family.name for family in arch.families()}
    assert {"gpt2", "llama", "bert", "mlp"} <= names
    for model_type in ("gpt2", "llama", "mistral", "qwen2", "bert", "mlp"):
        assert arch.family_named(model_type).name in names


def test_a_family_whose_reference_drifts_is_refused_when_defined():
    def lower(checkpoint):
        raise AssertionError

    def recognises(checkpoint):
        return False

    def reference_without_dtype(checkpoint):  # the Llama family's reference() once looked like this
        raise AssertionError

    with pytest.raises(TypeError, match="reference takes"):
        Family("drifted", ("drifted",), recognises, lower, reference_without_dtype)
