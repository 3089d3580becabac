"""Speed of ``eqcompile diff`` against a plain read of the same two files, measured in one process.

    python benchmarks/diff_speed.py [--folder DIR] [--every-tensor] [--llama-1b] [--repeats N]

Writes a float32 pair of GPT-2-124M shape (or, with ``--llama-1b``, of Llama-3.2-1B shape: about
5 GB a file) and diffs it in a fresh process, which also reads both files plainly (memory-mapped,
every tensor summed) right before and right after each diff, so the ratio is taken under the same
load. Warm: both files in the page cache. Cold-ish: the files' pages dropped first
(``posix_fadvise(DONTNEED)``; the disk's own cache is not). B is A plus, by default, what a
partial fine-tune leaves: N(0, 1e-3) noise on every tensor of the upper half of the layers,
a rank-8 update merged into two attention matrices, a scaled final norm; the rest bit-identical.
``--every-tensor`` adds the noise to every tensor instead (the worst case: nothing is skipped).
The diff's own split of its time (structure, comparing bytes, moments, spectra, summed over its
worker threads) is ``ModelDiff.seconds``; ``--full-spectrum`` times ``compare(..., spectra=FULL)``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diff_pair import GPT2_124M, LLAMA_1B, write_pair

ROOT = Path(__file__).resolve().parents[1]
MB = 1e6


def files(folder: Path) -> list[Path]:
    return [folder / "model.safetensors"]


def drop_cache(paths: list[Path]) -> None:
    """Ask the kernel to forget the files' clean pages: the next read goes to the disk (cold-ish)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def plain_read(pair: list[Path], cpu: list | None = None) -> float:
    """Seconds to read every tensor of both checkpoints as numbers (memory-mapped and summed); the CPU
    seconds are appended to ``cpu``."""
    from eqcompile.load import load_checkpoint

    start, processor = time.perf_counter(), time.process_time()
    for path in pair:
        checkpoint = load_checkpoint(path)
        for name in checkpoint.tensors:
            float(checkpoint.tensor(name).sum())
    if cpu is not None:
        cpu.append(time.process_time() - processor)
    return time.perf_counter() - start


def measure(before: str, after: str, repeats: int, cold: bool, full: bool) -> dict:
    """In a fresh process: plain reads around each diff; the diff's own split of its time."""
    from eqcompile import arch
    from eqcompile.diff import FAST, FULL, compare

    arch.families()  # imports first: the timings are of the work
    pair = [Path(before), Path(after)]
    paths = [p for folder in pair for p in files(folder)]
    size = sum(p.stat().st_size for p in paths)
    runs, read_cpu = [], []
    spectra = FULL if full else FAST
    compare(before, after, spectra)  # warm-up: page cache, BLAS threads
    for _ in range(repeats):
        if cold:
            drop_cache(paths)
        read_before = plain_read(pair, read_cpu)
        if cold:
            drop_cache(paths)
        start, processor = time.perf_counter(), time.process_time()
        diff = compare(before, after, spectra)
        seconds, cpu = time.perf_counter() - start, time.process_time() - processor
        read_after = plain_read(pair, read_cpu)
        runs.append({"read_before": read_before, "diff": seconds, "read_after": read_after, "split": diff.seconds,
                     "diff_cpu": cpu, "read_cpu": min(read_cpu[-2:])})
    best = min(runs, key=lambda r: r["diff"])
    return {"bytes": size, "runs": runs, "best": best, "compared": len(diff.parameters) + len(diff.tensors),
            "changed": len(diff.changed_weights), "forms": sorted({w.delta.form for w in diff.changed_weights}),
            "spectra": sum(w.delta.spectrum is not None for w in diff.changed_weights),
            "methods": sorted({w.delta.spectrum.method for w in diff.changed_weights if w.delta.spectrum}),
            "load_average": os.getloadavg()[0]}


def report(name: str, result: dict, cold: bool) -> list[str]:
    size, best = result["bytes"], result["best"]
    # cold: only the read before the diff came from the disk (the one after finds the pages it left)
    read = best["read_before"] if cold else min(best["read_before"], best["read_after"])
    lines = [f"{name}: {size / MB:,.0f} MB (both files), {'cold-ish' if cold else 'warm (page cache)'}; "
             f"{result['changed']} of {result['compared']} pairs changed ({', '.join(result['forms'])}), "
             f"spectra for {result['spectra']} ({', '.join(result['methods']) or 'none'}); "
             f"load average {result['load_average']:.1f}",
             f"  plain read: {size / read / MB:,.0f} MB/s; diff: {size / best['diff'] / MB:,.0f} MB/s "
             f"({best['diff']:.2f} s, {best['diff'] / read:.1f}x the read); CPU time {best['diff_cpu']:.2f} s, "
             f"{best['diff_cpu'] / best['read_cpu']:.1f}x the read's (all threads; less moved by other load)",
             "  diff's split (seconds, summed over worker threads): "
             + ", ".join(f"{part} {seconds:.2f}" for part, seconds in best["split"].items())]
    lines += [f"  run {i + 1}: read {r['read_before']:.2f} s, diff {r['diff']:.2f} s, read {r['read_after']:.2f} s"
              for i, r in enumerate(result["runs"])]
    return lines


QUICK = dict(GPT2_124M, vocab_size=1000, n_positions=64, n_embd=64, n_layer=2, n_head=1)


def run(folder: Path, env: dict, quick: bool) -> dict:
    """For benchmarks/run.py: the 124M-shaped pair (a tiny GPT-2 when quick), warm, in a fresh process."""
    started = time.perf_counter()
    before, after = write_pair(folder, QUICK if quick else GPT2_124M, every_tensor=False)
    result = _child(before, after, 1 if quick else 3, cold=False, full=False, env=env)
    return {**result, "quick": quick, "seconds": time.perf_counter() - started}


def table(result: dict) -> list[str]:
    return ["`eqcompile diff` (`compare(A, B)`) in a fresh process against a plain read of the same files "
            "(memmap and sum every tensor) right before and after it, best of the runs:", "",
            *report("GPT-2-124M shape" if not result["quick"] else "tiny GPT-2 (--quick)", result, cold=False)]


def _child(before: Path, after: Path, repeats: int, cold: bool, full: bool, env: dict | None = None) -> dict:
    argv = [sys.executable, __file__, "--measure", str(before), str(after), str(repeats), "1" if cold else "0",
            "1" if full else "0"]
    return json.loads(subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="where to write the checkpoints (default: a temp dir, removed)")
    parser.add_argument("--every-tensor", action="store_true", help="B = A + noise on every tensor")
    parser.add_argument("--llama-1b", action="store_true", help="also a Llama-3.2-1B-shaped pair (2 x 5 GB)")
    parser.add_argument("--cold", action="store_true", help="also drop the files' pages before each read and diff")
    parser.add_argument("--full-spectrum", action="store_true", help="time `eqcompile diff --full-spectrum`")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", nargs=5, metavar=("A", "B", "REPEATS", "COLD", "FULL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        before, after, repeats, cold, full = args.measure
        print(json.dumps(measure(before, after, int(repeats), cold == "1", full == "1")))
        return
    with tempfile.TemporaryDirectory(prefix="eqcompile-bench-") as temp:
        folder = args.folder or Path(temp)
        pairs = [("GPT-2-124M shape", GPT2_124M, "gpt2")] + ([("Llama-1B shape", LLAMA_1B, "llama1b")]
                                                            if args.llama_1b else [])
        for name, config, short in pairs:
            before, after = write_pair(folder / (short + ("-every" if args.every_tensor else "")), config,
                                       args.every_tensor)
            for cold in (False, True) if args.cold else (False,):
                result = _child(before, after, args.repeats, cold, args.full_spectrum)
                print("\n".join(report(name, result, cold)), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
