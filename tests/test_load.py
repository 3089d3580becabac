"""Loading checkpoints: every way of naming one, every dtype, no data read, and every malformed file.

The malformed inputs are built by ``BAD_INPUTS`` (name -> builder(tmp_path) -> path), which
``test_cli_inputs.py`` reuses to check the command line reports the same problems.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import make_gpt2, reference_logits

import eqcompile
from eqcompile import CheckpointError, UnsupportedArchitecture
from eqcompile.emit.python import import_module
from eqcompile.load import load_checkpoint
from eqcompile.load import safetensors_file

LEVELS = ("model", "layer", "index")


# ---------------------------------------------------------------------------------------- helpers

def raw_safetensors(header: dict, data: bytes = b"") -> bytes:
    """A safetensors file written by hand, so its header can say anything."""
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def f32(name: str, shape: list[int], begin: int) -> dict:
    return {name: {"dtype": "F32", "shape": shape, "data_offsets": [begin, begin + 4 * int(np.prod(shape))]}}


def shapes_of(checkpoint) -> dict[str, tuple[int, ...]]:
    return {name: info.shape for name, info in checkpoint.tensors.items()}


def write_sharded(src: Path, dst: Path) -> Path:
    """Split ``src/model.safetensors`` into two shards with an index; config.json beside."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(src / "model.safetensors")
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    dst.mkdir(parents=True)
    weight_map = {}
    for shard, shard_names in halves.items():
        save_file({n: tensors[n] for n in shard_names}, str(dst / shard))
        weight_map.update(dict.fromkeys(shard_names, shard))
    (dst / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    shutil.copy(src / "config.json", dst / "config.json")
    return dst


def write_hub_cache(src: Path, cache: Path, repo: str = "org/name", rev: str = "0123abcd" * 5) -> Path:
    """The huggingface_hub cache layout: blobs, snapshots/<rev>/ symlinks to them, refs/main."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    snapshot = storage / "snapshots" / rev
    snapshot.mkdir(parents=True)
    (storage / "blobs").mkdir()
    for i, f in enumerate(sorted(src.iterdir())):
        blob = storage / "blobs" / f"blob{i}"
        shutil.copy(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(rev)
    return snapshot


def use_hub_cache(monkeypatch, cache: Path) -> None:
    """Point huggingface_hub at ``cache``, offline; its constants are read at import, so patch them too."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_gpt2(tmp_path_factory.mktemp("tiny") / "tiny")


# ------------------------------------------------------------------ 1. every way of naming a model

def test_file_folder_shards_and_hub_cache_load_the_same_tensors(tiny, tmp_path, monkeypatch):
    sharded = write_sharded(tiny, tmp_path / "sharded")
    cache = tmp_path / "cache"
    snapshot = write_hub_cache(tiny, cache)
    use_hub_cache(monkeypatch, cache)
    monkeypatch.chdir(tmp_path)  # no folder named org/name here: the id must go through the cache
    assert not Path("org/name").exists()

    by_file = load_checkpoint(tiny / "model.safetensors")
    expected = shapes_of(by_file)
    assert "transformer.wte.weight" in expected and len(expected) > 20
    loaded = {
        "folder": load_checkpoint(tiny),
        "shards": load_checkpoint(sharded),
        "index": load_checkpoint(sharded / "model.safetensors.index.json"),
        "hub": load_checkpoint("org/name"),
    }
    assert len(loaded["shards"].files) == 2
    assert loaded["hub"].folder == snapshot
    assert all(f.parent == snapshot for f in loaded["hub"].files)
    for how, checkpoint in loaded.items():
        assert shapes_of(checkpoint) == expected, how
        assert checkpoint.config == json.loads((tiny / "config.json").read_text()), how
        for name in ("transformer.wte.weight", "transformer.h.1.mlp.c_proj.bias"):
            np.testing.assert_array_equal(checkpoint.tensor(name), by_file.tensor(name), err_msg=how)

    compiled = eqcompile.compile("org/name")
    assert compiled.checkpoint.folder == snapshot
    assert compiled.program.dims == eqcompile.compile(tiny).program.dims
    assert compiled.latex(level="layer") == eqcompile.compile(sharded).latex(level="layer")


def test_sharded_model_in_the_hub_cache_loads(tiny, tmp_path, monkeypatch):
    """Cached shards are symlinks into blobs/, outside the snapshot folder: that is not an escape."""
    cache = tmp_path / "cache"
    snapshot = write_hub_cache(write_sharded(tiny, tmp_path / "sharded"), cache)
    assert (snapshot / "model-00001-of-00002.safetensors").is_symlink()
    use_hub_cache(monkeypatch, cache)
    monkeypatch.chdir(tmp_path)
    compiled = eqcompile.compile("org/name")
    assert [f.parent for f in compiled.checkpoint.files] == [snapshot, snapshot]
    assert shapes_of(compiled.checkpoint) == shapes_of(load_checkpoint(tiny))
    np.testing.assert_array_equal(compiled.checkpoint.tensor("transformer.wpe.weight"),
                                  load_checkpoint(tiny).tensor("transformer.wpe.weight"))


def test_hub_id_not_in_cache_names_the_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    use_hub_cache(monkeypatch, cache)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="cache") as e:
        eqcompile.compile("org/absent")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------ 2. half precision

@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_half_precision_widens_exactly(tmp_path, dtype_name):
    import torch
    from safetensors.torch import save_file

    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(0)
    special = torch.tensor([0.0, -0.0, 1.0, -2.5, float("inf"), -float("inf"),
                            torch.finfo(dtype).max, torch.finfo(dtype).tiny, torch.finfo(dtype).tiny / 4])
    tensors = {  # odd sizes, so later tensors start at offsets that are not 4-byte aligned
        "odd": (torch.randn(3, generator=g) * 7).to(dtype),
        "special": special.to(dtype),
        "matrix": (torch.randn(5, 7, generator=g) * 100).to(dtype),
        "empty": torch.zeros(0, 4, dtype=dtype),
    }
    save_file(tensors, str(tmp_path / "half.safetensors"))
    checkpoint = load_checkpoint(tmp_path / "half.safetensors")
    for name, t in tensors.items():
        got = checkpoint.tensor(name)
        want = t.float().numpy()
        assert got.dtype == np.float32 and got.shape == want.shape, name
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name  # bit-exact (-0.0 too)


# ------------------------------------------------------------------------ 3. symbolic reads no data

def test_symbolic_path_reads_no_tensor_data(tiny, tmp_path, monkeypatch):
    expected = {level: eqcompile.compile(tiny).latex(level=level) for level in LEVELS}
    folder = tmp_path / "hollow"
    shutil.copytree(tiny, folder)
    path = folder / "model.safetensors"
    size = path.stat().st_size
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    with open(path, "r+b") as f:  # keep the header, make the data a hole of zeros
        f.truncate(8 + header_len)
        f.truncate(size)
    assert not path.read_bytes()[8 + header_len:].strip(b"\0")

    def no_reading(*args, **kwargs):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(safetensors_file, "read_tensor", no_reading)
    monkeypatch.setattr(np, "memmap", no_reading)
    monkeypatch.setattr(np, "fromfile", no_reading)

    compiled = eqcompile.compile(folder)
    assert compiled.program.family == "gpt2"
    for level in LEVELS:
        assert compiled.latex(level=level) == expected[level]
    with pytest.raises(AssertionError, match="data was read"):  # the patches are really in force
        compiled.checkpoint.tensor("transformer.wte.weight")


# ----------------------------------------------------------------- 4. bare file without config.json

@pytest.mark.parametrize("lm_head_model", [True, False], ids=["GPT2LMHeadModel", "GPT2Model"])
def test_bare_safetensors_is_inferred_and_runs_like_transformers(tmp_path, lm_head_model):
    original = make_gpt2(tmp_path / "original", lm_head_model=lm_head_model, n_embd=128, n_head=2,
                         vocab_size=40, n_positions=12, n_layer=2)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(original / "model.safetensors", bare / "model.safetensors")
    names = load_checkpoint(bare).tensors
    assert ("transformer.wte.weight" in names) == lm_head_model
    assert ("wte.weight" in names) != lm_head_model

    compiled = eqcompile.compile(bare / "model.safetensors")
    assert compiled.checkpoint.config is None
    assert compiled.program.family == "gpt2"
    assert compiled.program.notes and "config.json" in " ".join(compiled.program.notes)
    assert compiled.program.config["n_head"] == 2 and compiled.program.config["n_layer"] == 2
    module = import_module(compiled.to_python(tmp_path / "out"), name=f"bare_{lm_head_model}")
    tokens = np.random.default_rng(0).integers(0, 40, size=12)
    np.testing.assert_allclose(module.forward(tokens), reference_logits(original, tokens), rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------ 5. malformed files

def _valid() -> bytes:
    return raw_safetensors({**f32("a", [2, 3], 0), **f32("b", [4], 24)}, bytes(40))


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _outside_shards(tmp_path: Path, absolute: bool) -> Path:
    outside = _write(tmp_path, "x.safetensors", _valid())  # exists and is valid: only its place is wrong
    folder = tmp_path / "model"
    folder.mkdir()
    shard = str(outside) if absolute else "../x.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shard, "b": shard}}))
    return folder


def _truncated(tmp_path: Path) -> Path:
    data = _valid()
    return _write(tmp_path, "cut.safetensors", data[:-5])


def _unknown_architecture_config(tmp_path: Path) -> Path:
    folder = tmp_path / "mamba"
    folder.mkdir()
    _write(folder, "model.safetensors", _valid())
    (folder / "config.json").write_text(json.dumps({"model_type": "mamba", "d_model": 8}))
    return folder


BAD_FILES = {  # name -> builder(tmp_path) -> path; each must raise CheckpointError
    "random bytes": lambda p: _write(p, "r.safetensors", np.random.default_rng(0).bytes(4096)),
    "shorter than 8 bytes": lambda p: _write(p, "s.safetensors", b"\x05\0\0"),
    "header past end": lambda p: _write(p, "h.safetensors", struct.pack("<Q", 1000) + b"{}"),
    "header not JSON": lambda p: _write(p, "j.safetensors", struct.pack("<Q", 9) + b"not json!"),
    "header not an object": lambda p: _write(p, "o.safetensors", struct.pack("<Q", 6) + b"[1, 2]"),
    "unknown dtype": lambda p: _write(p, "d.safetensors", raw_safetensors(
        {"a": {"dtype": "F7", "shape": [2], "data_offsets": [0, 8]}}, bytes(8))),
    "offsets disagree with shape": lambda p: _write(p, "n.safetensors", raw_safetensors(
        {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(12))),
    "overlapping tensors": lambda p: _write(p, "v.safetensors", raw_safetensors(
        {**f32("a", [2], 0), **f32("b", [2], 4)}, bytes(12))),
    "header nested too deep": lambda p: _write(p, "deep.safetensors", struct.pack("<Q", 200_000)
                                               + b"[" * 100_000 + b"]" * 100_000),
    "dtype not a string": lambda p: _write(p, "l.safetensors", raw_safetensors(
        {"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, bytes(4))),
    "shape of booleans": lambda p: _write(p, "b.safetensors", raw_safetensors(
        {"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, bytes(4))),
    "truncated": _truncated,
    "shard ../x": lambda p: _outside_shards(p, absolute=False),
    "shard absolute": lambda p: _outside_shards(p, absolute=True),
    "pytorch .bin": lambda p: _write(p, "pytorch_model.bin", pickle.dumps({"a": 1})),
    "pytorch .pt": lambda p: _write(p, "model.pt", pickle.dumps({"a": 1})),
    "pickle named .safetensors": lambda p: _write(p, "x.safetensors", pickle.dumps({"a": 1})),
}
EXPECTED_MESSAGE = {
    "shorter than 8 bytes": "shorter than 8 bytes", "header past end": "header length",
    "header not JSON": "not JSON", "header not an object": "not a JSON object",
    "header nested too deep": "not JSON", "dtype not a string": "unknown dtype",
    "shape of booleans": "non-negative integers", "unknown dtype": "unknown dtype", "offsets disagree with shape": "needs 12",
    "overlapping tensors": "overlap", "truncated": "truncated", "shard ../x": "outside",
    "shard absolute": "outside", "pytorch .bin": "pickle-based checkpoints are never loaded",
    "pytorch .pt": "pickle-based checkpoints are never loaded",
}
UNSUPPORTED = {  # name -> builder; each must raise UnsupportedArchitecture
    "config model_type mamba": _unknown_architecture_config,
    "bare file, unknown names": lambda p: _write(p, "unknown.safetensors", raw_safetensors(
        {**f32("backbone.layers.0.mixer.A_log", [4, 2], 0), **f32("backbone.embeddings.weight", [4], 32)},
        bytes(48))),
}
BAD_INPUTS = {**BAD_FILES, **UNSUPPORTED}


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any attempt to unpickle fails the test, even if the loader would catch the exception."""
    import torch

    calls = []

    def forbidden(*args, **kwargs):
        calls.append(args)
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    yield
    assert not calls


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_malformed_file_gives_one_line_checkpoint_error(tmp_path, case, no_unpickling):
    path = BAD_FILES[case](tmp_path)
    with pytest.raises(CheckpointError) as e:
        eqcompile.compile(path)
    message = str(e.value)
    assert message and "\n" not in message
    assert EXPECTED_MESSAGE.get(case, "not a safetensors file") in message
    assert "safetensors" in message


def test_hand_made_file_is_valid_until_cut(tmp_path):
    """Control for the cases above: the hand-made format loads and reads back when it is right."""
    path = _write(tmp_path, "ok.safetensors", raw_safetensors(
        {**f32("a", [2, 3], 0), **f32("b", [4], 24)}, np.arange(10, dtype="<f4").tobytes()))
    checkpoint = load_checkpoint(path)
    assert shapes_of(checkpoint) == {"a": (2, 3), "b": (4,)}
    np.testing.assert_array_equal(checkpoint.tensor("b"), [6, 7, 8, 9])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(_write(tmp_path, "cut.safetensors", path.read_bytes()[:-1]))


def test_folder_with_only_a_pickle_points_to_safetensors(tmp_path, no_unpickling):
    _write(tmp_path, "pytorch_model.bin", pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*safetensors"):
        eqcompile.compile(tmp_path)


# ------------------------------------------------------------------------ 6. unknown architectures

@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_unknown_architecture_names_the_supported_families(tmp_path, case):
    with pytest.raises(UnsupportedArchitecture) as e:
        eqcompile.compile(UNSUPPORTED[case](tmp_path))
    message = str(e.value)
    assert "gpt2" in message and "supported" in message and "\n" not in message
    if case.startswith("config"):
        assert "mamba" in message
