"""A folder of outputs (--python DIR, --jax DIR, --python DIR --expand) is replaced as one set (issue 20).

The new set is written whole in a staging folder beside DIR, then takes the old one's place: no
file of an earlier run survives, a failure anywhere leaves the earlier set intact, a reader never
sees two runs' files mixed, and files eqcompile did not write are kept.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

import eqcompile
from eqcompile.cli import main
from eqcompile.emit import files
from eqcompile.emit.files import output_set
from eqcompile.errors import EqcompileError

from eqcompile.arch import header_only

from conftest import SAMPLE
from test_hostile_config import GPT2

OWNED = ("model.py", "weights.safetensors")


def run(*args) -> None:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    """A model without a tokenizer (the sample has one)."""
    return header_only(tmp_path_factory.mktemp("bare") / "m", GPT2)


def test_expand_after_python_leaves_only_the_pure_module(tmp_path, bare):
    out = tmp_path / "out"
    run(SAMPLE, "--python", out)
    assert {"weights.safetensors", "tokenizer.py", "tokenizer_data.json"} <= set(os.listdir(out))
    run(bare, "--python", out, "--expand", "--seq", "1")  # before: the sample's weights and tokenizer stayed beside it
    assert os.listdir(out) == ["model.py"]


def test_python_after_jax_removes_the_stale_jax_module(tmp_path, bare):
    pytest.importorskip("jax")
    out = tmp_path / "out"
    run(SAMPLE, "--jax", out)
    assert {"model.py", "weights.safetensors", "model_jax.py"} <= set(os.listdir(out))
    run(bare, "--python", out)  # before: model_jax.py (the sample's) stayed, reading the new weights
    assert sorted(os.listdir(out)) == ["model.py", "weights.safetensors"]


def test_a_failure_while_writing_leaves_the_previous_set(tmp_path, bare, monkeypatch):
    out = tmp_path / "out"
    run(SAMPLE, "--python", out)
    before = snapshot(out)
    from eqcompile.emit import python

    def broken(*args):
        raise EqcompileError("disk full, say")

    monkeypatch.setattr(python, "module_source", broken)  # weights are written, then model.py fails
    result = CliRunner().invoke(main, [str(bare), "--python", str(out)])
    assert result.exit_code == 2 and "disk full" in result.output
    assert snapshot(out) == before and not leftovers(out)


def test_a_failure_while_moving_files_in_puts_the_previous_set_back(tmp_path, bare, monkeypatch):
    """With a user's file in DIR the set moves in file by file; the third rename fails here."""
    out = tmp_path / "out"
    run(SAMPLE, "--python", out)
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    renames, real = [], os.rename

    def failing(source, target):
        renames.append(target)
        if len(renames) == 3:
            raise OSError(28, "No space left on device")
        real(source, target)

    monkeypatch.setattr(files.os, "rename", failing)
    result = CliRunner().invoke(main, [str(bare), "--python", str(out)])
    monkeypatch.undo()
    assert result.exit_code == 2, result.output
    assert snapshot(out) == before and not leftovers(out)


def test_files_eqcompile_did_not_write_are_kept(tmp_path, bare):
    out = tmp_path / "out"
    run(SAMPLE, "--python", out)
    (out / "notes.txt").write_text("mine")
    (out / "data").mkdir()
    run(bare, "--python", out)
    assert sorted(os.listdir(out)) == ["data", "model.py", "notes.txt", "weights.safetensors"]
    assert (out / "notes.txt").read_text() == "mine" and not leftovers(out)


def test_a_folder_of_eqcompiles_files_is_swapped_whole(tmp_path, bare):
    out = tmp_path / "out"
    run(SAMPLE, "--python", out)
    before = out.stat().st_ino
    out.chmod(0o750)
    run(bare, "--python", out)
    assert out.stat().st_ino != before  # one rename exchanged the folders
    assert out.stat().st_mode & 0o777 == 0o750  # with the permissions the user gave it
    assert sorted(os.listdir(out)) == ["model.py", "weights.safetensors"] and not leftovers(out)


def test_a_new_folder_gets_the_usual_permissions(tmp_path, bare):
    run(bare, "--python", tmp_path / "new")
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o777 & ~files._umask()


def test_the_working_folder_is_not_swapped_away(tmp_path, bare, monkeypatch):
    out = tmp_path / "out"
    run(bare, "--python", out)
    inode = out.stat().st_ino
    monkeypatch.chdir(out)
    run(bare, "--python", ".")
    assert out.stat().st_ino == inode and Path.cwd() == out and os.path.exists("model.py")


def test_a_linked_folder_receives_the_outputs(tmp_path, bare):
    target = tmp_path / "disk" / "out"
    target.mkdir(parents=True)
    (tmp_path / "link").symlink_to(target)
    run(bare, "--python", tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and sorted(os.listdir(target)) == ["model.py", "weights.safetensors"]


def test_readers_never_see_two_writers_files_mixed(tmp_path):
    """Eight writers replace a folder's two files 25 times each while a reader reads both through
    one handle on the folder: every read pair comes from the same run."""
    out = tmp_path / "out"
    stop, seen, errors = threading.Event(), [], []

    def writer(number: int) -> None:
        try:
            for run_number in range(25):
                with output_set(out, OWNED) as staging:
                    for name in OWNED:
                        (staging / name).write_text(f"{number}.{run_number}")
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    def reader() -> None:
        while not stop.is_set():
            try:
                handle = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                continue
            try:
                pair = []
                for name in OWNED:
                    with open(os.open(name, os.O_RDONLY, dir_fd=handle)) as f:
                        pair.append(f.read())
                seen.append(pair)
            except FileNotFoundError:  # the folder was swapped out and is being removed
                pass
            finally:
                os.close(handle)

    watcher = threading.Thread(target=reader)
    watcher.start()
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    watcher.join()
    assert not errors, errors
    assert seen and all(first == second for first, second in seen), [p for p in seen if p[0] != p[1]][:3]
    final = snapshot(out)
    assert sorted(final) == list(OWNED) and len(set(final.values())) == 1 and not leftovers(out)


def test_a_file_where_the_folder_should_be(tmp_path, bare):
    (tmp_path / "out").write_text("x")
    with pytest.raises(EqcompileError, match="is not a folder"):
        eqcompile.compile(bare).to_python(tmp_path / "out")


def test_without_an_exchange_the_set_is_moved_in(tmp_path, bare, monkeypatch):
    """Where the kernel or filesystem cannot swap folders, the set is still replaced whole."""
    out = tmp_path / "out"
    run(SAMPLE, "--python", out)
    monkeypatch.setattr(files, "_exchange", lambda first, second: False)
    run(bare, "--python", out)
    assert sorted(os.listdir(out)) == ["model.py", "weights.safetensors"] and not leftovers(out)
