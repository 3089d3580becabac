"""Memory of ``eqcompile diff`` on two GPT-2-124M-shaped checkpoints in which every tensor changed.

    python benchmarks/diff_memory.py [--folder DIR]

Writes two float32 checkpoints (random N(0, 0.02) weights, and the same plus N(0, 1e-3) noise on every
tensor, so that every pair goes through the numeric path, wte's 50257 x 768 included), then diffs
them in two fresh processes: one under tracemalloc (peak of Python and numpy allocations), one
without it (peak resident set and wall time). Results: ``benchmarks/diff_memory.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diff_pair import GPT2_124M, shapes, write_pair

ROOT = Path(__file__).resolve().parents[1]
CONFIG = GPT2_124M


def measure(before: str, after: str, traced: bool) -> dict:
    """Run in a fresh process: diff the pair, report peak allocations or peak RSS and time."""
    import tracemalloc

    from eqcompile import arch
    from eqcompile.diff import compare

    arch.families()  # import every module first: the baseline then holds all the code
    rss_before = _status_kib("VmRSS")
    if traced:
        tracemalloc.start()
    start, cpu = time.perf_counter(), time.process_time()
    diff = compare(before, after)
    result = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
              "compared": len(diff.parameters) + len(diff.tensors),
              "changed": len(diff.changed_weights),
              "forms": sorted({w.delta.form for w in diff.changed_weights})}
    if traced:
        result["traced_peak"] = tracemalloc.get_traced_memory()[1]
    else:
        result["rss_before"] = rss_before * 1024
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec from the parent that wrote the files
        result["rss_peak"] = _status_kib("VmHWM") * 1024
    return result


def _status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB (0 where there is none)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="where to write the two checkpoints (default: a temp dir)")
    parser.add_argument("--measure", nargs=3, metavar=("A", "B", "TRACED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.measure[1], args.measure[2] == "1")))
        return
    with tempfile.TemporaryDirectory(prefix="eqcompile-bench-") as temp:
        folder = args.folder or Path(temp)
        before, after = write_pair(folder, CONFIG, every_tensor=True)
        runs = {traced: json.loads(subprocess.run(
            [sys.executable, __file__, "--measure", str(before), str(after), "1" if traced else "0"],
            cwd=ROOT, capture_output=True, text=True, check=True).stdout) for traced in (True, False)}
    largest = 4 * max(math.prod(shape) for shape in shapes(CONFIG).values())
    mib = 2**20
    traced, plain = runs[True], runs[False]
    print(f"tensors compared: {plain['compared']} ({plain['changed']} changed; forms {', '.join(plain['forms'])})")
    print(f"largest tensor (wte, float32): {largest / mib:.1f} MiB")
    print(f"tracemalloc peak: {traced['traced_peak'] / mib:.1f} MiB = {traced['traced_peak'] / largest:.2f} x largest")
    growth = plain["rss_peak"] - plain["rss_before"]
    print(f"peak RSS: {plain['rss_peak'] / mib:.0f} MiB, {growth / mib:.0f} MiB above the "
          f"{plain['rss_before'] / mib:.0f} MiB after imports = {growth / largest:.2f} x largest")
    print(f"without tracemalloc: {plain['seconds']:.1f} s wall, {plain['cpu_seconds']:.1f} s CPU "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
