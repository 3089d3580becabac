"""Plain MLPs (torch ``nn.Sequential`` of Linear layers): the emitted module against torch itself.

Tolerance (float32): max |error| <= 1e-4 and max |error| / max |reference| <= 1e-5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import eqcompile
from eqcompile.cli import main
from eqcompile.emit.latex import LEVELS
from eqcompile.emit.python import import_module
from eqcompile.errors import CheckpointError, ConfigError
from eqcompile.verify import compare

from conftest import SAMPLE, compile_tex, pdflatex_available

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402  (installed with torch's test extra)

needs_tex = pytest.mark.skipif(not pdflatex_available(), reason="pdflatex is not installed (CI installs it)")

MODULES = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid,
           "gelu": torch.nn.GELU, "silu": torch.nn.SiLU}
WIDTHS = {1: (4, 3), 2: (4, 16, 4), 3: (7, 5, 3, 2), 4: (6, 9, 8, 5, 3)}  # by depth: d_0, ..., d_L


def sequential(widths, activation="relu", bias=True, seed=0) -> torch.nn.Sequential:
    """Linear layers with the activation between them (none after the last), as people write it."""
    torch.manual_seed(seed)
    layers = []
    for k, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        if k:
            layers.append(MODULES[activation]())
        layers.append(torch.nn.Linear(n_in, n_out, bias=bias))
    return torch.nn.Sequential(*layers).eval()


def save(model: torch.nn.Module, folder, config: dict | None = None):
    """The state dict with safetensors' own writer, and config.json unless ``config`` is None."""
    folder.mkdir(parents=True)
    save_file(model.state_dict(), folder / "model.safetensors")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def save_mlp(folder, widths, activation="relu", bias=True, seed=0):
    model = sequential(widths, activation, bias, seed)
    return model, save(model, folder, {"model_type": "mlp", "activation": activation})


def emitted(compiled, out):
    return import_module(compiled.to_python(out), name=f"mlp_{abs(hash(str(out)))}")


def assert_matches(module, model, d_in, seed=0) -> tuple[float, float]:
    """forward on several vectors, at unit scale and large enough to saturate tanh/sigmoid."""
    rng = np.random.default_rng(seed)
    worst = (0.0, 0.0)
    for scale in (1.0, 1.0, 5.0):
        x = (scale * rng.standard_normal(d_in)).astype(np.float32)
        y = module.forward(x)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert y.dtype == np.float32 and y.shape == expected.shape
        max_abs, max_rel, ok = compare(y, expected)
        assert max_abs <= 1e-4 and max_rel <= 1e-5 and ok, (scale, max_abs, max_rel)
        worst = max(worst[0], max_abs), max(worst[1], max_rel)
    return worst


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("depth", sorted(WIDTHS))
@pytest.mark.parametrize("activation", sorted(MODULES))
def test_emitted_forward_matches_torch(tmp_path, activation, depth, bias):
    model, folder = save_mlp(tmp_path / "ckpt", WIDTHS[depth], activation, bias, seed=depth)
    module = emitted(eqcompile.compile(folder), tmp_path / "out")
    assert_matches(module, model, WIDTHS[depth][0])


def test_forward_takes_a_list_and_checks_its_length(tmp_path):
    model, folder = save_mlp(tmp_path / "ckpt", (7, 5, 3, 2), "tanh")
    module = emitted(eqcompile.compile(folder), tmp_path / "out")
    x = [0.5, -1.0, 2.0, 0.0, 1.5, -0.25, 3.0]
    with torch.no_grad():
        expected = model(torch.tensor(x)).numpy()
    assert compare(module.forward(x), expected)[2]
    for bad in ([1.0] * 6, [1.0] * 8, np.ones((1, 7)), np.ones((7, 1))):
        with pytest.raises(ValueError, match="need a vector of length 7"):
            module.forward(bad)


def test_bare_file_is_recognised_by_its_tensor_names(tmp_path):
    model = sequential((4, 16, 4), "sigmoid")
    folder = save(model, tmp_path / "bare")
    with pytest.raises(ConfigError, match="--activation"):
        eqcompile.compile(folder / "model.safetensors")
    compiled = eqcompile.compile(folder / "model.safetensors", activation="sigmoid")
    assert compiled.program.family == "mlp"
    assert compiled.program.notes[0] == ("no config.json: inferred an nn.Sequential of 2 Linear layers from the "
                                         "tensor names, widths 4 -> 16 -> 4.")
    assert_matches(emitted(compiled, tmp_path / "out"), model, 4)


def test_one_linear_layer_needs_no_activation(tmp_path):
    model = sequential((5, 2), bias=False)
    folder = save(model, tmp_path / "bare")
    assert_matches(emitted(eqcompile.compile(folder), tmp_path / "out"), model, 5)


def test_positions_in_the_sequential_decide_where_the_activation_is(tmp_path):
    """Adjacent Linear layers have nothing between them; a wider gap holds the activation."""
    torch.manual_seed(1)
    lin = torch.nn.Linear
    model = torch.nn.Sequential(lin(6, 8), lin(8, 5), torch.nn.Tanh(), torch.nn.Dropout(0.5), lin(5, 3)).eval()
    folder = save(model, tmp_path / "ckpt", {"model_type": "mlp", "activation": "tanh"})
    compiled = eqcompile.compile(folder)
    assert_matches(emitted(compiled, tmp_path / "out"), model, 6)
    text = compiled.latex()
    assert r"h_{1} &= W_{1} x + b_{1}" in text
    assert r"h_{2} &= \operatorname{\tanh}\left(W_{2} h_{1} + b_{2}\right)" in text
    assert "positions 1 and 4" in compiled.program.notes[0] and "Dropout" in compiled.program.notes[0]


def test_activation_option_overrides_the_config(tmp_path):
    relu_model, folder = save_mlp(tmp_path / "ckpt", (4, 16, 4), "relu")
    tanh_model = sequential((4, 16, 4), "tanh")  # same seed: the same weights
    result = CliRunner().invoke(main, [str(folder), "--python", str(tmp_path / "out"), "--activation", "tanh"])
    assert result.exit_code == 0, result.output
    module = import_module(tmp_path / "out" / "model.py", name="mlp_override")
    assert_matches(module, tanh_model, 4)
    x = np.linspace(-2, 2, 4, dtype=np.float32)
    with torch.no_grad():
        assert not compare(module.forward(x), relu_model(torch.from_numpy(x)).numpy())[2]


@pytest.mark.parametrize("where", ["option", "config"])
def test_bad_activation_is_a_one_line_config_error(tmp_path, where):
    _, folder = save_mlp(tmp_path / "ckpt", (4, 16, 4), "relu")
    args = [str(folder), "--latex"]
    if where == "option":
        args += ["--activation", "swish"]
    else:
        (folder / "config.json").write_text(json.dumps({"model_type": "mlp", "activation": "swish"}))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.stderr == ("eqcompile: error: mlp config: unsupported activation 'swish' "
                             "(supported: gelu, relu, sigmoid, silu, tanh)\n")
    assert result.stdout == ""


def test_activation_option_is_refused_where_it_means_nothing():
    result = CliRunner().invoke(main, [str(SAMPLE), "--latex", "--activation", "relu"])
    assert result.exit_code == 2
    assert result.stderr == "eqcompile: error: gpt2 models take no 'activation' setting (it applies to: mlp)\n"


def test_malformed_sequentials_are_checkpoint_errors(tmp_path):
    torch.manual_seed(0)
    config = {"model_type": "mlp", "activation": "relu"}
    with_norm = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.LayerNorm(6), torch.nn.Linear(6, 2))
    with pytest.raises(CheckpointError, match=r"'1.weight' has shape \[6\]: only Linear layers"):
        eqcompile.compile(save(with_norm, tmp_path / "norm", config))
    mismatched = {"0.weight": torch.zeros(5, 4), "2.weight": torch.zeros(3, 6)}
    (tmp_path / "chain").mkdir()
    save_file(mismatched, tmp_path / "chain" / "model.safetensors")
    (tmp_path / "chain" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"'2.weight' takes 6 inputs, but the layer before it \('0.weight'\) gives 5"):
        eqcompile.compile(tmp_path / "chain")
    named = torch.nn.Sequential()
    named.add_module("fc", torch.nn.Linear(3, 2))
    with pytest.raises(CheckpointError, match="'fc.bias' is not named like a Linear layer's tensor"):
        eqcompile.compile(save(named, tmp_path / "named", config))


def test_latex_is_in_column_vector_form(tmp_path):
    _, folder = save_mlp(tmp_path / "ckpt", (4, 16, 4), "relu")
    text = eqcompile.compile(folder).latex()
    for piece in [r"f_\theta &= f_{2} \circ f_{1}",
                  r"f_{1} &: \mathbb{R}^{d_{0}} \to \mathbb{R}^{d_{1}}",
                  r"f_{2} &: \mathbb{R}^{d_{1}} \to \mathbb{R}^{d_{2}}",
                  r"h_{1} &= \operatorname{ReLU}\left(W_{1} x + b_{1}\right)",
                  r"y &= W_{2} h_{1} + b_{2}",
                  r"$W_{1}$ & $\mathbb{R}^{d_{1} \times d_{0}}$ & \texttt{0.weight}",
                  r"$b_{2}$ & $\mathbb{R}^{d_{2}}$ & \texttt{2.bias}",
                  r"$d_{0} = 4$, $d_{1} = 16$, $d_{2} = 4$"]:
        assert piece in text, piece
    _, folder = save_mlp(tmp_path / "sigmoid", (7, 5, 3, 2), "sigmoid", bias=False)
    text = eqcompile.compile(folder).latex()
    assert r"h_{2} &= \operatorname{\sigma}\left(W_{2} h_{1}\right)" in text
    assert r"y &= W_{3} h_{2}" in text and r"b_{" not in text


@needs_tex
@pytest.mark.parametrize("activation, bias", [("relu", True), ("gelu", False)])
def test_every_level_compiles_with_pdflatex(tmp_path, activation, bias):
    _, folder = save_mlp(tmp_path / "ckpt", (7, 5, 3, 2), activation, bias)
    compiled = eqcompile.compile(folder)
    for level in LEVELS:
        tex = tmp_path / f"{level}.tex"
        tex.write_text(compiled.latex(level=level, standalone=True))
        result = compile_tex(tex)
        assert result.returncode == 0, result.stdout[-2000:]
    index = compiled.latex(level="index")
    assert (r"\operatorname{ReLU}\left(x\right) &=" if activation == "relu" else r"\operatorname{GELU}\left(x\right) &=") in index


def test_verify_command_passes_on_an_mlp(tmp_path):
    _, folder = save_mlp(tmp_path / "ckpt", (7, 5, 3, 2), "silu")
    result = CliRunner().invoke(main, ["verify", str(folder)])
    assert result.exit_code == 0, result.output + result.stderr
    assert result.stdout.splitlines()[-1].endswith("ok")


def test_verify_catches_a_wrong_mlp_module(tmp_path, monkeypatch):
    """The comparison can fail: perturb one weight the emitted module reads."""
    from eqcompile.program import Binding
    from eqcompile.verify import verify

    _, folder = save_mlp(tmp_path / "ckpt", (4, 16, 4), "tanh")
    original = Binding.read

    def perturbed(binding, checkpoint, program, *dtype):
        value = original(binding, checkpoint, program, *dtype).copy()
        if binding.param.name == "W_2":
            value[0, 0] += 1e-2
        return value

    monkeypatch.setattr(Binding, "read", perturbed)
    assert not any(r.ok for r in verify(eqcompile.compile(folder), [1, 2, 3]))
