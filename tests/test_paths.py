"""Outputs do not depend on where a checkpoint sits: the same files at two paths give the same bytes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SAMPLE
from eqcompile.cli import main


def _outputs(model: Path, out: Path) -> dict[str, bytes]:
    """Every text output of MODEL, written by the command line into ``out``."""
    runner = CliRunner()
    for args in (["--latex", "--standalone", "-o", out / "model.tex"], ["--python", out / "module"],
                 ["--tex", out / "appendix.tex"], ["--html", out / "appendix.html"]):
        result = runner.invoke(main, [str(model), *map(str, args)])
        assert result.exit_code == 0, result.output
    return {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("named", ["folder", "file"])
def test_the_same_checkpoint_at_two_paths_gives_identical_outputs(tmp_path, named):
    copies = []
    for where in ("home/alice/models", "srv/elsewhere"):
        folder = tmp_path / where / "shakespeare-char"
        shutil.copytree(SAMPLE, folder)
        model = folder if named == "folder" else folder / "model.safetensors"
        out = tmp_path / "out" / where.replace("/", "-")
        out.mkdir(parents=True)
        copies.append(_outputs(model, out))
    assert copies[0].keys() == copies[1].keys() and len(copies[0]) >= 6
    for name in copies[0]:
        assert copies[0][name] == copies[1][name], name
    for name, data in copies[0].items():
        assert b"alice" not in data and str(tmp_path).encode() not in data, name
    assert f"SOURCE = {'shakespeare-char' if named == 'folder' else 'model.safetensors'!r}".encode() in \
        copies[0]["module/model.py"]
