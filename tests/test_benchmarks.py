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
    for model in results["numeric"]["models"].values():
        peers = model["peers"]
        assert {"numpy", "torch"} <= set(peers)
        for peer in peers.values():  # each in its own process, which measured the machine's ceilings
            assert peer["peak_flops"] > 0 and peer["bandwidth"] > 0
            assert all(row["best"] > 0 and row["median"] >= row["best"] for row in peer["forward"].values())
            assert peer["dtype"] == "float32" and peer["same_tokens"]
            assert all(row["max_rel"] <= 1e-5 for row in peer["vs_numpy"].values())
    assert results["loading"]["checkpoints"] and results["documents"]
    diff_speed = results["diff_speed"]  # every changed matrix of the pair has its spectrum
    assert diff_speed["best"]["diff"] > 0 and diff_speed["spectra"] > 0 and "low-rank" in diff_speed["forms"]
    for heading in ("numpy / PyTorch", "numpy / onnxruntime", "## Load to first logits", "## Documents and diff", "not in --quick"):
        assert heading in run.stdout
