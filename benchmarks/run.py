"""Run every benchmark: print the tables, write results.json and scaling.png beside this file.

    pip install -e ".[test,bench]"
    python benchmarks/run.py            # the whole suite: under 10 minutes on 2 cores
    python benchmarks/run.py --quick    # tiny shapes, to check that the suite runs (under a minute)
    python benchmarks/run.py --numeric  # only the emitted modules vs their peers: results-numeric.json

Each figure is a ratio or a scaling measured inside this one run, because the machines are noisy:
the emitted numpy and JAX modules, PyTorch eager and onnxruntime on the same weights and inputs, each alone
in its own fresh process, one after another (numeric.py); each process measures the sgemm peak
and the copy bandwidth that bound its figures.

The benchmark process runs with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (some images set
them for old OpenBLAS builds; they can slow a current numpy) and 2 threads for numpy and torch;
the BLAS kernel that actually runs is recorded (threadpoolctl). It benchmarks the eqcompile of
this checkout, whatever is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
MARKER = "EQCOMPILE_BENCHMARK_ENVIRONMENT"
THREADS = 2  # for numpy and for torch alike


def benchmark_environment(threads: int) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in BLAS_OVERRIDES}
    env.update({variable: str(threads) for variable in THREAD_VARIABLES})
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update({MARKER: "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"})
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes: checks that the suite runs")
    parser.add_argument("--numeric", action="store_true",
                        help="only the emitted modules vs PyTorch and onnxruntime (writes results-numeric.json)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for results.json and scaling.png")
    args = parser.parse_args()

    env = benchmark_environment(THREADS)
    if os.environ.get(MARKER) != "1":  # numpy reads the BLAS variables when it loads: start afresh
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], env)

    import diff_speed
    import documents
    import loading
    import numeric
    import symbolic
    from measure import describe
    from plot import plot

    started = time.perf_counter()
    results: dict = {"machine": describe(THREADS), "quick": args.quick}
    if args.numeric:
        return numeric_only(results, env, args, started)
    with tempfile.TemporaryDirectory(prefix="eqcompile-bench-") as scratch:
        folder = Path(scratch)
        progress(1, "symbolic compile at scale", started)
        results["symbolic"] = symbolic.run(folder / "symbolic", env, args.quick)
        progress(2, "emitted forward and decoding vs PyTorch and onnxruntime, a process each", started)
        results["numeric"] = numeric.run(folder / "numeric", env, args.quick)
        progress(3, "load to first logits", started)
        results["loading"] = loading.run(Path(results["numeric"]["checkpoint"]), folder / "loading", env, args.quick)
        progress(4, "documents and diff", started)
        results["documents"] = documents.run(folder / "documents", env, args.quick)
        progress(5, "diff against a plain read of both files, in its own process", started)
        results["diff_speed"] = diff_speed.run(folder / "diff_speed", env, args.quick)
    results["notes"] = [*results["numeric"].pop("notes"), *results["loading"].pop("notes"),
                        *results["documents"].pop("notes")]
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds"] = round(time.perf_counter() - started, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    plot(results, args.out / "scaling.png")
    print(report(results))
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'scaling.png'} ({results['seconds']:.0f} s)")


def numeric_only(results: dict, env: dict, args, started: float) -> None:
    """The numeric part alone: its tables, and results-numeric.json (results.json stays the whole suite's)."""
    import numeric

    with tempfile.TemporaryDirectory(prefix="eqcompile-bench-") as scratch:
        results["numeric"] = numeric.run(Path(scratch) / "numeric", env, args.quick)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results-numeric.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    print("\n".join(numeric.table(results["numeric"])))
    print(f"\nload average {results['machine']['load_average_at_start'][0]} at start, "
          f"{results['machine']['load_average_at_end'][0]} at end; {results['seconds']:.0f} s")


def progress(step: int, what: str, started: float) -> None:
    """One line on stderr per part (the run takes minutes; the tables come at the end)."""
    print(f"[{step}/5] {what} ({time.perf_counter() - started:.0f} s so far)", file=sys.stderr, flush=True)


def report(results: dict) -> str:
    import diff_speed
    import documents
    import loading
    import numeric
    import symbolic

    machine = results["machine"]
    blas = "; ".join(f"{pool['internal_api']} {pool['version'] or ''} {pool['architecture'] or ''}".strip()
                     for pool in machine["blas"])
    lines = [f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB; "
             f"{machine['threads']} threads each; BLAS: {blas}; Python {machine['python']}, numpy {machine['numpy']}, "
             f"torch {machine['torch']}; load average {machine['load_average_at_start'][0]} at start, "
             f"{machine['load_average_at_end'][0]} at end.", "",
             "## Symbolic compile at scale (fresh process per command, best of 2-3 runs)", ""]
    lines += symbolic.table(results["symbolic"])
    lines += ["", "## Emitted numpy module vs PyTorch eager and onnxruntime, each in its own process, float32, "
              f"{THREADS} threads" + (" (a tiny GPT-2: --quick)" if results["quick"] else ""), ""]
    lines += numeric.table(results["numeric"])
    lines += ["", "## Load to first logits", ""] + loading.table(results["loading"])
    lines += ["", "## Documents and diff", ""] + documents.table(results["documents"])
    if "diff_speed" in results:
        lines += ["", "## `eqcompile diff` at the speed of reading", ""] + diff_speed.table(results["diff_speed"])
    if results["notes"]:
        lines += ["", "Not measured in this run:"] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
