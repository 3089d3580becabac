"""``eqcompile diff A B``: the pairs of models are built here, each with a known difference.

Models are small GPT-2s from transformers (``make_gpt2``); their variants are made by training,
merging a low-rank update, casting, or editing the safetensors file, and the diff must name exactly
that difference, in the equations' symbols.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tracemalloc
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from eqcompile.cli import main
from eqcompile.diff import compare, delta, render, spectrum
from eqcompile.emit.files import write_safetensors
from eqcompile.emit.text import tex_code
from eqcompile.errors import TeXError
from eqcompile.load import load_checkpoint

from conftest import compile_tex, make_gpt2, pdflatex_available

needs_tex = pytest.mark.skipif(not pdflatex_available(), reason="pdflatex is not installed (CI installs it)")

WIDTH = 48  # wide enough that a rank-4 update is clearly low-rank


# ---------------------------------------------------------------------------------------- helpers

def edited_copy(source: Path, target: Path, edit) -> Path:
    """``source``'s tensors passed through ``edit(dict) -> dict``, saved with its config.json."""
    tensors = edit(load_file(source / "model.safetensors"))
    target.mkdir(parents=True)
    save_file(tensors, str(target / "model.safetensors"))
    shutil.copy(source / "config.json", target / "config.json")
    return target


def run_diff(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["diff", *map(str, args)])
    return result.exit_code, result.output


def by_key(diff) -> dict:
    return {w.slot.key: w for w in diff.parameters}


def changed_keys(diff) -> set[str]:
    return {w.slot.key for w in diff.parameters if w.delta.form != "identical"}


def assert_latex_compiles(tmp_path: Path, diff) -> str:
    """The LaTeX report of ``diff`` goes through pdflatex (when it is installed); returns the text."""
    document = render.latex(diff)
    if pdflatex_available():
        tex = tmp_path / "diff.tex"
        tex.write_text(document)
        result = compile_tex(tex)
        assert result.returncode == 0, result.stdout[-2000:]
    return document


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_gpt2(tmp_path_factory.mktemp("base") / "a", n_embd=WIDTH, n_head=4)


@pytest.fixture(scope="module")
def rank4(base, tmp_path_factory) -> Path:
    """W_Q of layer 1 (columns 0:48 of c_attn) and W_O of layer 2 plus rank-4 products B A."""
    rng = np.random.default_rng(4)

    def merge(tensors):
        for name, columns in (("transformer.h.0.attn.c_attn.weight", slice(0, WIDTH)),
                              ("transformer.h.1.attn.c_proj.weight", slice(0, WIDTH))):
            b = rng.standard_normal((WIDTH, 4)).astype(np.float32) * 0.05
            a = rng.standard_normal((4, WIDTH)).astype(np.float32) * 0.05
            tensors[name][:, columns] += b @ a
        return tensors

    return edited_copy(base, tmp_path_factory.mktemp("rank4") / "b", merge)


# ----------------------------------------------------------------------- identical (exit status 0)

def test_a_model_against_itself_and_a_reordered_copy_is_identical(base, tmp_path):
    checkpoint = load_checkpoint(base)
    names = list(checkpoint.tensors)
    reordered = tmp_path / "reordered"
    reordered.mkdir()
    write_safetensors(reordered / "model.safetensors", [(n, checkpoint.shape(n)) for n in reversed(names)],
                      checkpoint.tensor)
    shutil.copy(base / "config.json", reordered / "config.json")
    copy = load_checkpoint(reordered)
    offsets = sorted(copy.tensors, key=lambda n: copy.tensors[n].start)
    assert offsets != sorted(checkpoint.tensors, key=lambda n: checkpoint.tensors[n].start)  # really reordered
    assert copy.sha256() != checkpoint.sha256()

    for other in (base, reordered):
        diff = compare(base, other)
        assert diff.identical and not diff.structure.changed
        assert {w.delta.form for w in diff.parameters} == {"identical"} and len(diff.parameters) == 36
        code, output = run_diff(base, other)
        assert code == 0, output
        assert "Result: identical" in output and "block: every parameter of layers 1–2" in output
        code, output = run_diff(base, other, "--json")
        assert code == 0 and json.loads(output)["identical"] is True


# -------------------------------------------------------------------------------------- training

def test_training_changes_the_trained_tensors_and_not_the_frozen_ones(base, tmp_path):
    import torch
    import transformers

    frozen = {"transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
              "transformer.h.1.mlp.c_fc.weight", "transformer.ln_f.weight"}
    model = transformers.GPT2LMHeadModel.from_pretrained(base)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name not in frozen)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    torch.manual_seed(1)
    for _ in range(3):
        tokens = torch.randint(0, 50, (4, 16))
        loss = model(tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(tmp_path / "trained")

    diff = compare(base, tmp_path / "trained")
    assert not diff.structure.changed and not diff.identical
    changed = [w for w in diff.parameters if w.delta.form != "identical"]
    assert {w.slot.source.name for w in changed} == trained
    assert all(w.slot.source.name in frozen for w in diff.parameters if w.delta.form == "identical")
    for weight in changed:  # three small Adam steps: a small, full-rank ("dense") change everywhere
        assert 0 < weight.delta.relative < 0.05, (weight.label, weight.delta.relative)
        assert weight.delta.form == "dense", (weight.label, weight.delta.form)
        assert 0.99 < weight.delta.cosine < 1
    assert run_diff(base, tmp_path / "trained")[0] == 1
    assert_latex_compiles(tmp_path, diff)


# --------------------------------------------------------------------------------- a merged LoRA

def test_a_rank_4_update_of_two_attention_matrices_is_found_with_its_rank(base, rank4):
    diff = compare(base, rank4)
    assert changed_keys(diff) == {"block.0.W_Q", "block.1.W_O"}
    assert by_key(diff)["block.0.W_K"].delta.form == "identical"  # the other slices of c_attn
    assert by_key(diff)["block.0.W_V"].delta.form == "identical"
    for key in ("block.0.W_Q", "block.1.W_O"):
        d = by_key(diff)[key].delta
        assert d.form == "low-rank"
        assert d.spectrum.method == "exact" and d.spectrum.numerical_rank == 4 and d.spectrum.rank_99 <= 4
        assert 1 <= d.spectrum.stable_rank <= 4
    assert [w.label for w in diff.changed_weights] == sorted(
        ["W_Q^(1)", "W_O^(2)"], key=lambda label: -next(w.delta.relative for w in diff.parameters
                                                          if w.label == label))


def test_the_reports_state_the_low_rank_form(base, rank4, tmp_path):
    code, output = run_diff(base, rank4)
    assert code == 1
    assert "Result: different: 2 of 36 parameters changed" in output
    assert any(line.split()[:2] == ["W_Q^(1)", "low-rank"] and "r=4" in line for line in output.splitlines())
    assert "in every layer: gamma_1, beta_1, b_Q, W_K, b_K, W_V, b_V" in output

    code, output = run_diff(base, rank4, "--json")
    report = json.loads(output)
    assert code == 1 and report["identical"] is False
    entries = {p["key"]: p for p in report["parameters"]}
    assert entries["block.0.W_Q"]["spectrum"]["numerical_rank"] == 4
    assert entries["block.0.W_Q"]["sources"][0] == "transformer.h.0.attn.c_attn.weight[..., 0:48]"
    assert entries["block.0.W_K"]["form"] == "identical"

    text = render.latex(compare(base, rank4))
    assert r"W^{\prime (1)}_Q &= W_Q^{(1)} + \Delta W_Q^{(1)}" in text
    assert r"\Delta W_Q^{(1)} &= B A, \quad B \in \mathbb{R}^{48 \times 4},\ A \in \mathbb{R}^{4 \times 48}" in text
    assert r"W^{\prime (2)}_O &= W_O^{(2)} + \Delta W_O^{(2)}" in text


@needs_tex
def test_latex_and_pdf_reports_compile(base, rank4, tmp_path):
    code, _ = run_diff(base, rank4, "--latex", "-o", tmp_path / "report.tex")
    assert code == 1
    result = compile_tex(tmp_path / "report.tex")
    assert result.returncode == 0, result.stdout[-2000:]
    code, _ = run_diff(base, rank4, "--pdf", tmp_path / "report.pdf")
    assert code == 1
    text = subprocess.run(["pdftotext", str(tmp_path / "report.pdf"), "-"], capture_output=True, text=True).stdout
    assert "low-rank update" in text and "transformer.h.0.attn.c" in text and "Identical" in text


# ------------------------------------------------------------------------------------------ cast

def test_a_bf16_cast_is_reported_as_a_cast_at_the_rounding_level(base, tmp_path):
    import torch
    import transformers

    transformers.GPT2LMHeadModel.from_pretrained(base).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    diff = compare(base, tmp_path / "bf16")
    retyped = diff.structure.tensors.retyped
    assert len(retyped) == len(load_checkpoint(base).tensors)
    assert {(c.before, c.after) for c in retyped} == {("F32", "BF16")}
    assert not diff.structure.config and not diff.structure.stages  # the equations are the same
    for weight in diff.parameters:
        d = weight.delta
        assert d.form == "cast" and weight.dtypes == ("F32", "BF16")
        assert 0 < d.rounding_units <= 1  # round to nearest: |Δ| <= u |W|, u = 2^-8
        assert d.relative < 2.0**-8
    code, output = run_diff(base, tmp_path / "bf16")
    assert code == 1 and "cast F32→BF16" in output and "stored in another dtype (28)" in output
    assert r"W^{\prime (1)}_Q &= \operatorname{fl}_{\text{BF16}}\left(W_Q^{(1)}\right)" in \
        assert_latex_compiles(tmp_path, diff)


# ------------------------------------------------------------------------------------- structure

def test_layer_count_and_activation_changes_are_named_with_the_equations_they_change(tmp_path):
    two = make_gpt2(tmp_path / "two", n_layer=2)
    three = make_gpt2(tmp_path / "three", n_layer=3, activation_function="relu")
    diff = compare(two, three)
    s = diff.structure
    config = {c.name: (c.before, c.after) for c in s.config}
    assert config == {"n_layer": (2, 3), "activation_function": ("gelu_new", "relu")}
    (block,) = s.stages
    assert block.name == "block" and block.layers == (2, 3)
    assert [(e.lhs, type(e.before.rhs).__name__, type(e.after.rhs).__name__) for e in block.equations] == \
        [("m", "GELUTanh", "ReLU")]
    assert {slot.key for slot in s.params_added} == {key.format(l=2) for key in (
        "block.{l}.gamma_1", "block.{l}.beta_1", "block.{l}.W_Q", "block.{l}.b_Q", "block.{l}.W_K", "block.{l}.b_K",
        "block.{l}.W_V", "block.{l}.b_V", "block.{l}.W_O", "block.{l}.b_O", "block.{l}.gamma_2", "block.{l}.beta_2",
        "block.{l}.W_in", "block.{l}.b_in", "block.{l}.W_out", "block.{l}.b_out")}
    assert len(s.tensors.added) == 12 and all(n.startswith("transformer.h.2.") for n in s.tensors.added)
    assert not s.tensors.removed and not s.params_removed

    code, output = run_diff(two, three)
    assert code == 1
    assert 'config n_layer: 2 → 3' in output and 'config activation_function: "gelu_new" → "relu"' in output
    assert "stage block: L = 2 → 3" in output
    assert "A: m = GELUTanh(Linear(h_mid, W_in, b_in))" in output and "B: m = ReLU(Linear(h_mid, W_in, b_in))" in output
    text = assert_latex_compiles(tmp_path, diff)
    assert r"Applied $L = 2$ times in A, $L = 3$ times in B." in text
    assert r"\operatorname{ReLU}" in text and tex_code("n_layer") in text


def test_width_and_tied_unembedding_changes(tmp_path):
    narrow = make_gpt2(tmp_path / "narrow")
    wide = make_gpt2(tmp_path / "wide", n_embd=16, n_head=4, tie_word_embeddings=False)
    s = compare(narrow, wide).structure
    assert {c.name for c in s.dimensions} == {"d", "d_ff", "n_head"}  # d_head = 12/3 = 16/4
    assert [e.lhs for st in s.stages for e in st.equations] == ["logits"]  # W_Eᵀ became W_U
    assert [slot.key for slot in s.params_added] == ["unembedding.W_U"]
    assert "lm_head.weight" in s.tensors.added
    assert {a.key for a, _ in s.params_reshaped} >= {"embedding.W_E", "block.0.W_Q", "block.1.W_in"}
    assert {c.name for c in s.tensors.reshaped} >= {"transformer.wte.weight", "transformer.h.0.attn.c_attn.weight"}


def test_renamed_tensors_by_hash_and_by_role(base, tmp_path):
    """Without the ``transformer.`` prefix (a GPT2Model checkpoint) every tensor is renamed."""
    def strip(tensors):
        renamed = {name.removeprefix("transformer."): value for name, value in tensors.items()}
        renamed["h.1.ln_2.bias"] = renamed["h.1.ln_2.bias"] * 2  # renamed and changed
        renamed["extra.scale"] = np.ones(3, dtype=np.float32)  # outside the equations
        return renamed

    diff = compare(base, edited_copy(base, tmp_path / "bare", strip))
    renames = {(r.before, r.after): r.same_data for r in diff.structure.tensors.renamed}
    assert len(renames) == 28 and renames[("transformer.wte.weight", "wte.weight")] is True
    assert renames[("transformer.h.1.ln_2.bias", "h.1.ln_2.bias")] is False  # matched by its role, beta_2
    assert diff.structure.tensors.added == ["extra.scale"] and not diff.structure.tensors.removed
    assert changed_keys(diff) == {"block.1.beta_2"}
    beta = by_key(diff)["block.1.beta_2"]
    assert beta.delta.form == "scale" and beta.delta.scale == pytest.approx(2)
    assert beta.sources == ("transformer.h.1.ln_2.bias", "h.1.ln_2.bias")
    assert_latex_compiles(tmp_path, diff)


def test_other_families_need_no_changes(tmp_path):
    """An mlp (nn.Sequential of Linear layers): a rank-2 update of W_2, then another activation."""
    import torch
    from safetensors.torch import save_file as save_torch

    def save(model, folder, activation):
        folder.mkdir()
        save_torch(model.state_dict(), str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"model_type": "mlp", "activation": activation}))
        return folder

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 4))
    before = save(model, tmp_path / "a", "relu")
    with torch.no_grad():
        model[2].weight += 0.05 * torch.randn(32, 2) @ torch.randn(2, 32)
    updated, other = save(model, tmp_path / "b", "relu"), save(model, tmp_path / "c", "tanh")

    diff = compare(before, updated)
    assert diff.programs[0].family == "mlp" and not diff.structure.changed
    (changed,) = diff.changed_weights
    assert changed.label == "W_2" and changed.delta.form == "low-rank" and changed.delta.spectrum.numerical_rank == 2
    assert r"W^{\prime}_{2} &= W_{2} + \Delta W_{2}" in assert_latex_compiles(tmp_path, diff)
    structure = compare(before, other).structure
    assert [(c.name, c.before, c.after) for c in structure.config] == [("activation", "relu", "tanh")]
    assert {e.lhs for stage in structure.stages for e in stage.equations} == {"h_1", "h_2"}


# -------------------------------------------------------------------------------- the other forms

def test_scale_noise_and_raw_tensors(base, tmp_path):
    rng = np.random.default_rng(7)

    def edit(tensors):
        tensors["transformer.h.0.mlp.c_fc.weight"] = tensors["transformer.h.0.mlp.c_fc.weight"] * np.float32(1.25)
        noise = rng.standard_normal(tensors["transformer.h.1.mlp.c_proj.weight"].shape).astype(np.float32)
        tensors["transformer.h.1.mlp.c_proj.weight"] = tensors["transformer.h.1.mlp.c_proj.weight"] + 1e-3 * noise
        return tensors

    def with_buffer(value):
        def edit_buffer(tensors):
            tensors["transformer.h.0.attn.bias"] = np.full((4, 4), value, dtype=np.float32)  # not a parameter
            return tensors
        return edit_buffer

    a = edited_copy(base, tmp_path / "a", with_buffer(1.0))
    b = edited_copy(a, tmp_path / "b", lambda t: with_buffer(3.0)(edit(t)))
    diff = compare(a, b)
    assert changed_keys(diff) == {"block.0.W_in", "block.1.W_out"}
    scaled, noisy = by_key(diff)["block.0.W_in"].delta, by_key(diff)["block.1.W_out"].delta
    assert scaled.form == "scale" and scaled.scale == pytest.approx(1.25, rel=1e-6)
    assert noisy.form == "noise" and noisy.rms == pytest.approx(1e-3, rel=0.05)
    assert abs(noisy.kurtosis - 3) < 0.5 and noisy.spectrum.numerical_rank == WIDTH
    (buffer,) = diff.tensors
    assert buffer.label == "transformer.h.0.attn.bias" and buffer.slot is None
    assert buffer.delta.form == "scale" and buffer.delta.scale == pytest.approx(3)
    assert "transformer.h.0.attn.bias" in render.text(diff)
    text = assert_latex_compiles(tmp_path, diff)
    assert r"\left(\Delta W_{\mathrm{out}}^{(2)}\right)_{ij} &\sim \mathcal{N}\left(0, \sigma^2\right)" in text
    assert r"W^{\prime (1)}_{\mathrm{in}} &= c\, W_{\mathrm{in}}^{(1)}, \quad c = 1.25" in text


def test_checkpoints_without_equations_are_compared_tensor_by_tensor(tmp_path):
    rng = np.random.default_rng(0)
    weights = {"encoder.weight": rng.standard_normal((6, 5)).astype(np.float32), "scale": np.ones(2, np.float32)}
    save_file(weights, str(tmp_path / "a.safetensors"))
    save_file({**weights, "scale": np.ones(2, np.float32) * 2}, str(tmp_path / "b.safetensors"))
    diff = compare(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert diff.programs == (None, None) and not diff.parameters
    assert any("A has no equations" in note for note in diff.structure.notes)
    assert {w.label: w.delta.form for w in diff.tensors} == {"encoder.weight": "identical", "scale": "scale"}
    assert run_diff(tmp_path / "a.safetensors", tmp_path / "a.safetensors")[0] == 0


# ------------------------------------------------------------------------------ measure() itself

def low_rank_plus_rounding(rows: int, cols: int, rank: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    before = (0.02 * rng.standard_normal((rows, cols))).astype(np.float32)
    update = 0.01 * rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols))
    return before, (before + update).astype(np.float32)  # float32 rounding on top of the rank-r update


def test_exact_spectrum_matches_numpy_svd():
    before, after = low_rank_plus_rounding(90, 70, rank=6)
    d = delta.measure(before, after)
    sigma = np.linalg.svd(after.astype(np.float64) - before, compute_uv=False)
    energy = np.cumsum(sigma**2) / np.sum(sigma**2)
    assert d.form == "low-rank" and d.spectrum.numerical_rank == 6
    assert d.spectrum.top == pytest.approx(sigma[0], rel=1e-9)
    assert d.spectrum.rank_99 == int(np.searchsorted(energy, 0.99)) + 1
    assert d.spectrum.stable_rank == pytest.approx(np.sum(sigma**2) / sigma[0] ** 2, rel=1e-9)
    assert d.norm == pytest.approx(np.sqrt(np.sum(sigma**2)), rel=1e-9)


def test_randomized_spectrum_agrees_with_the_exact_one():
    """--full-spectrum's randomized SVD (float64, two power iterations) against the exact spectrum."""
    before, after = low_rank_plus_rounding(400, 300, rank=5, seed=1)
    exact = delta.measure(before, after, setting=spectrum.FULL)
    sketched = replace(spectrum.FULL, exact_max_side=100)
    randomized = delta.measure(before, after, setting=sketched)
    assert exact.spectrum.method == "exact"
    assert randomized.spectrum.method == "randomized" and randomized.spectrum.computed == sketched.rank
    assert randomized.form == "low-rank" and randomized.spectrum.numerical_rank == 5
    assert randomized.spectrum.rank_99 == exact.spectrum.rank_99
    assert randomized.spectrum.top == pytest.approx(exact.spectrum.top, rel=1e-8)
    assert randomized.spectrum.stable_rank == pytest.approx(exact.spectrum.stable_rank, rel=1e-8)

    rng = np.random.default_rng(2)  # a full-rank update: the sketch only bounds the ranks
    full = before + (1e-3 * rng.standard_normal(before.shape)).astype(np.float32)
    bounded = delta.measure(before, full, setting=sketched).spectrum
    assert bounded.rank_is_bound and bounded.numerical_rank == sketched.rank and bounded.rank_99 is None
    # a flat spectrum converges slowly under power iterations: σ_1 is known to a few parts in 1e3
    assert bounded.top == pytest.approx(np.linalg.norm(full.astype(np.float64) - before, 2), rel=1e-2)


def test_the_default_float32_spectrum_against_numpys_exact_svd():
    """The default sketch (top 32 in float32, one power iteration) on 600 x 400 matrices, above the
    exact side of 256: a rank-8 update exactly, a decaying spectrum (σ_i ∝ i^-1/2, like training)
    to 2e-3 in σ_1, a flat one (noise) as a lower bound within 15%; the same forms as --full-spectrum."""
    rng = np.random.default_rng(0)  # seeds 0-2 measured: σ_1 within 2e-8, 8.5e-4, and 0.89-0.91 of exact
    rows, cols = 600, 400
    before = (0.02 * rng.standard_normal((rows, cols))).astype(np.float32)
    left, right = (np.linalg.qr(rng.standard_normal((side, cols)))[0] for side in (rows, cols))
    updates = {"rank-8": (0.01 * rng.standard_normal((rows, 8)) @ rng.standard_normal((8, cols)), 1e-7),
               "decaying": ((left * (1e-2 / np.sqrt(np.arange(1, cols + 1)))) @ right.T, 2e-3),
               "noise": (1e-3 * rng.standard_normal((rows, cols)), None)}
    for name, (update, tolerance) in updates.items():
        after = (before + update).astype(np.float32)
        sigma = np.linalg.svd(after.astype(np.float64) - before, compute_uv=False)
        fast, full = (delta.measure(before, after, setting=s) for s in (spectrum.FAST, spectrum.FULL))
        s = fast.spectrum
        assert s.method == "randomized" and s.computed == spectrum.FAST.rank and full.spectrum.method == "exact"
        assert fast.form == full.form, name
        if tolerance is None:  # a flat spectrum: power iterations converge slowly, from below
            assert 0.85 * sigma[0] <= s.top <= sigma[0] * (1 + 1e-6), (name, s.top / sigma[0])
        else:
            assert s.top == pytest.approx(sigma[0], rel=tolerance), name
    low_rank = delta.measure(before, (before + updates["rank-8"][0]).astype(np.float32)).spectrum
    assert low_rank.numerical_rank == 8 and low_rank.rank_99 <= 8 and not low_rank.rank_is_bound


def test_vectors_and_integer_tensors():
    gain = np.linspace(0.5, 1.5, 12, dtype=np.float32).reshape(1, -1)
    assert delta.measure(gain, gain * np.float32(0.5)).form == "scale"
    moved = gain.copy()
    moved[0, 3] += 0.1
    d = delta.measure(gain, moved)
    assert d.form == "dense" and d.spectrum is None and d.max_abs == pytest.approx(0.1, rel=1e-6)
    ids = np.arange(12).reshape(3, 4)
    assert delta.measure(ids, ids.copy(), ("I64", "I64")).form == "identical"
    assert delta.measure(ids, ids + 1, ("I64", "I64")).rounding_units is None


def test_bytes_are_compared_past_the_first_chunk_and_blas_threads_are_restored(tmp_path):
    """A tensor of 2.4 MB (three 1 MiB chunks) that differs only in its last element is changed;
    the worker threads' limit of one BLAS thread each is lifted afterwards, also after an error."""
    import threadpoolctl
    weights = np.random.default_rng(0).standard_normal((600, 1000)).astype(np.float32)
    moved = weights.copy()
    moved[-1, -1] += 1
    for name, value in (("a", weights), ("same", weights), ("moved", moved)):
        save_file({"w": value}, str(tmp_path / f"{name}.safetensors"))
    threads = [pool["num_threads"] for pool in threadpoolctl.threadpool_info()]
    same = compare(tmp_path / "a.safetensors", tmp_path / "same.safetensors")
    different = compare(tmp_path / "a.safetensors", tmp_path / "moved.safetensors")
    (changed,) = different.changed_weights
    assert same.identical and changed.delta.max_abs == pytest.approx(1, rel=1e-6)
    assert "moments" not in same.seconds and {"structure", "same bytes", "moments"} <= set(different.seconds)
    with pytest.raises(Exception):
        compare(tmp_path / "a.safetensors", tmp_path / "missing.safetensors")
    assert [pool["num_threads"] for pool in threadpoolctl.threadpool_info()] == threads


def test_primed_symbols():
    assert render.primed("W_Q^{(3)}") == r"W^{\prime (3)}_Q"
    assert render.primed(r"W_{\mathrm{in}}^{(l)}") == r"W^{\prime (l)}_{\mathrm{in}}"
    assert render.primed(r"\gamma_f") == r"\gamma^{\prime}_f"
    assert render.primed(r"\mathbf{W}") == r"{\mathbf{W}}^{\prime}"


# ------------------------------------------------------------------------------ errors and escaping

def test_errors_exit_2_with_one_line(base, tmp_path, monkeypatch):
    code, output = run_diff(base, tmp_path / "missing")
    assert code == 2 and output.count("\n") == 1 and "no such file or folder" in output
    code, output = run_diff(base, base, "--json", "--latex")
    assert code == 2 and "choose one of --json and --latex" in output

    def broken(*_):
        raise RuntimeError("boom")

    monkeypatch.setattr("eqcompile.diff.compare", broken)
    code, output = run_diff(base, base)
    assert code == 2 and "internal error (RuntimeError: boom)" in output  # never 1, which means "different"


def test_a_tex_failure_exits_2_not_1(base, tmp_path, monkeypatch):
    """For diff, 1 means "different": TeX's failures are trouble, exit 2, and leave no PDF."""
    def failing(tex, *args, **kwargs):
        raise TeXError("pdflatex failed: ! Undefined control sequence. | l.3 \\nosuchmacro")

    monkeypatch.setattr("eqcompile.emit.pdf.build_pdf", failing)
    code, output = run_diff(base, base, "--pdf", tmp_path / "x.pdf")
    assert code == 2 and "error: pdflatex failed: ! Undefined control sequence." in output
    assert not (tmp_path / "x.pdf").exists()


@needs_tex
def test_names_from_checkpoints_are_escaped_in_latex(base, tmp_path):
    odd = tmp_path / "odd_{dir}&50%#~$^"
    source = shutil.copytree(base, odd / "a")
    target = edited_copy(base, odd / "b", lambda t: {**t, "weird\\name_{x}$&%#^~<>|\"é": np.ones(2, np.float32),
                                                     "transformer.ln_f.bias": t["transformer.ln_f.bias"] + 1})
    text = assert_latex_compiles(tmp_path, compare(source, target))
    assert tex_code("weird\\name_{x}$&%#^~<>|\"é") in text and tex_code(str(source)) in text
    pdf_text = subprocess.run(["pdftotext", str(tmp_path / "diff.pdf"), "-"], capture_output=True, text=True).stdout
    assert "weird\\name_{x}$&%#^~<>|\"[U+00E9]" in pdf_text.replace("\n", "")


# -------------------------------------------------------------------------------------- memory

def test_memory_stays_a_fraction_of_the_largest_tensor(tmp_path):
    """Two GPT-2-shaped checkpoints, every tensor changed: tracemalloc's peak (numpy arrays and
    Python objects; the memmapped files are not allocations) stays under 3x the largest tensor."""
    config = dict(model_type="gpt2", vocab_size=16384, n_positions=256, n_embd=256, n_layer=2, n_head=4)
    shapes = {"wte.weight": (16384, 256), "wpe.weight": (256, 256), "ln_f.weight": (256,), "ln_f.bias": (256,)}
    for layer in range(2):
        for name, shape in {"ln_1.weight": (256,), "ln_1.bias": (256,), "attn.c_attn.weight": (256, 768),
                            "attn.c_attn.bias": (768,), "attn.c_proj.weight": (256, 256), "attn.c_proj.bias": (256,),
                            "ln_2.weight": (256,), "ln_2.bias": (256,), "mlp.c_fc.weight": (256, 1024),
                            "mlp.c_fc.bias": (1024,), "mlp.c_proj.weight": (1024, 256),
                            "mlp.c_proj.bias": (256,)}.items():
            shapes[f"h.{layer}.{name}"] = shape

    def weights(name: str, noise: float) -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        value = 0.02 * rng.standard_normal(shapes[name], dtype=np.float32)
        return value + np.float32(noise) * rng.standard_normal(shapes[name], dtype=np.float32)

    for folder, noise in (("a", 0.0), ("b", 1e-3)):
        (tmp_path / folder).mkdir()
        write_safetensors(tmp_path / folder / "model.safetensors", list(shapes.items()),
                          lambda name, noise=noise: weights(name, noise))
        (tmp_path / folder / "config.json").write_text(json.dumps(config))
    largest = 4 * max(math.prod(shape) for shape in shapes.values())

    tracemalloc.start()
    try:
        diff = compare(tmp_path / "a", tmp_path / "b")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(diff.changed_weights) == len(diff.parameters) == 4 + 2 * 16
    assert by_key(diff)["embedding.W_E"].delta.spectrum.numerical_rank == 256
    print(f"peak {peak / 2**20:.1f} MiB, largest tensor {largest / 2**20:.1f} MiB, ratio {peak / largest:.2f}")
    assert peak < 3 * largest


def test_a_bf16_tensor_is_widened_with_a_single_float32_copy(tmp_path):
    """A pair of bf16 tensors then costs two float32 copies, not three or four."""
    rng = np.random.default_rng(0)
    bits = (rng.standard_normal(1 << 20).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    header = json.dumps({"w": {"dtype": "BF16", "shape": [1 << 20], "data_offsets": [0, 2 << 20]}}).encode()
    (tmp_path / "w.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bits.tobytes())
    checkpoint = load_checkpoint(tmp_path / "w.safetensors")
    tracemalloc.start()
    try:
        widened = checkpoint.tensor("w")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(widened.view(np.uint32), bits.astype(np.uint32) << 16)
    assert peak < 1.1 * widened.nbytes
