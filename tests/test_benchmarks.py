"""The benchmark suite runs end to end (on tiny shapes) and writes what the README quotes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_quick_benchmark_writes_results_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("threadpoolctl")
    pytest.importorskip("transformers")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "scaling.png").read_bytes().startswith(b"\x89PNG")
    assert results["machine"]["blas"] and results["machine"]["threads"] == 2
    symbolic = results["symbolic"]
    assert all(run["rss_mb"] < 300 for row in symbolic["layers"].values() for run in row.values())
    for mode in results["numeric"]["modes"].values():
        assert all(row["numpy"] > 0 and row["torch"] > 0 for row in mode["forward"].values())
    assert all(row["dtype"] == "float32" for row in results["numeric"]["faithfulness"].values())
    assert results["numeric"]["decode_same_tokens"]
    assert results["loading"]["checkpoints"] and results["documents"]
    for heading in ("numpy / PyTorch", "## Load to first logits", "## Documents and diff", "not in --quick"):
        assert heading in run.stdout
