"""Exact semantics: the equation in arbitrary precision, and each implementation measured against it."""

from __future__ import annotations

import json

import mpmath
import numpy as np
import pytest
from click.testing import CliRunner

import eqcompile
import eqcompile.exact
from eqcompile.cli import main
from eqcompile.exact import deviations, exact_module

from conftest import make_gpt2


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = make_gpt2(tmp_path_factory.mktemp("exact") / "m", n_embd=24, n_head=3, n_layer=2, vocab_size=64)
    return {row.implementation: row for row in deviations(eqcompile.compile(folder), seq=8)}


def test_float64_module_agrees_with_the_exact_evaluation(report):
    """Proves the exact path computes the same function: only float64 rounding separates them."""
    assert report["numpy float64"].max_rel < 1e-12


def test_float32_errors_are_float32_sized(report):
    for name in ("numpy float32", "torch float32"):
        assert 1e-9 < report[name].max_rel < 1e-5, report[name]
        assert report[name].argmax_agrees == 1.0


def test_bfloat16_strays_further_than_float32(report):
    assert report["torch bfloat16"].max_rel > 10 * report["torch float32"].max_rel
    assert report["torch bfloat16"].bits < report["numpy float32"].bits < report["numpy float64"].bits


def test_numpy_is_deterministic(report):
    assert report["numpy float32"].deterministic and report["numpy float64"].deterministic


def test_hand_computable_network_gives_its_exact_rational_answer(tmp_path):
    """y = W2 relu(W1 x + b1) + b2 with small integers: x = (1, 1) gives exactly (17/2, 2)."""
    import torch
    from safetensors.torch import save_file

    weights = {"0.weight": [[1.0, 2.0], [3.0, -4.0]], "0.bias": [1.0, -1.0],
               "2.weight": [[2.0, -1.0], [1.0, 1.0]], "2.bias": [0.5, -2.0]}
    (tmp_path / "mlp").mkdir()
    save_file({k: torch.tensor(v) for k, v in weights.items()}, tmp_path / "mlp" / "model.safetensors")
    (tmp_path / "mlp" / "config.json").write_text(json.dumps({"model_type": "mlp", "activation": "relu"}))
    module = exact_module(eqcompile.compile(tmp_path / "mlp").to_python(tmp_path / "py"), digits=50)
    y = module.forward(np.array([mpmath.mpf(1), mpmath.mpf(1)], dtype=object))
    assert list(y) == [mpmath.mpf(17) / 2, mpmath.mpf(2)]
    third = module.forward(np.array([mpmath.mpf(1) / 3, mpmath.mpf(0)], dtype=object))
    # W1 x + b1 = (4/3, 0): relu keeps (4/3, 0); W2 h + b2 = (8/3 + 1/2, 4/3 - 2)
    assert abs(third[0] - mpmath.mpf(19) / 6) < mpmath.mpf(10) ** -45
    assert abs(third[1] + mpmath.mpf(2) / 3) < mpmath.mpf(10) ** -45


def test_cli_table_json_and_refusal(tmp_path, monkeypatch):
    folder = make_gpt2(tmp_path / "m")
    result = CliRunner().invoke(main, ["verify", str(folder), "--exact", "--seq", "4", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["seq"] == 4 and {r["implementation"] for r in data["implementations"]} >= {"numpy float32", "numpy float64"}
    monkeypatch.setattr(eqcompile.exact, "TIME_LIMIT", 0.0)
    refused = CliRunner().invoke(main, ["verify", str(folder), "--exact", "--seq", "4"])
    assert refused.exit_code == 2 and "minutes" in refused.output and "--force" in refused.output
