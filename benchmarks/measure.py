"""How a run measures: best times, child processes' resources, and the machine's two ceilings.

The sgemm peak (a large float32 matrix product) bounds every matmul-bound figure; the copy
bandwidth (a large array copy, counted as STREAM does: bytes read + bytes written) bounds
generation, which reads every weight once per token. Both are measured in the process whose
figures they bound, in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import numpy as np



def timings(function, repeats: int, clock=time.perf_counter, warm: bool = True) -> list[float]:
    """The times of ``repeats`` calls, after one warm-up call unless ``warm`` is false."""
    if warm:
        function()
    times = []
    for _ in range(repeats):
        start = clock()
        function()
        times.append(clock() - start)
    return times


def best_time(function, repeats: int, clock=time.perf_counter) -> float:
    """The fastest of ``repeats`` calls, after one warm-up: the least disturbed by other load."""
    return min(timings(function, repeats, clock))


# Runs a command and reports its resources. A child's peak RSS counts the memory of the process it
# was forked from (Linux carries it across exec), so commands are started by this small process
# rather than by the benchmark, which holds numpy, sympy and torch.
LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
error = child.stderr.read()
_, status, usage = os.wait4(child.pid, 0)
print(json.dumps({"wall": time.perf_counter() - start, "cpu": usage.ru_utime + usage.ru_stime,
                  "rss_mb": usage.ru_maxrss / 1024, "code": os.waitstatus_to_exitcode(status),
                  "error": error.decode(errors="replace")[-2000:]}))
"""


def run_command(argv: list, env: dict) -> dict:
    """One child process: wall seconds, CPU seconds (user + system), peak RSS in MB, its own alone."""
    launched = subprocess.run([sys.executable, "-c", LAUNCHER, *map(str, argv)], env=env, capture_output=True,
                              text=True, check=True)
    run = json.loads(launched.stdout)
    if run.pop("code") != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed: {run['error'].strip()}")
    del run["error"]
    return run


def best_of(argv: list[str], env: dict, repeats: int) -> dict:
    """The fastest wall and CPU times of ``repeats`` runs, and the largest peak RSS."""
    runs = [run_command(argv, env) for _ in range(repeats)]
    return {"wall": min(r["wall"] for r in runs), "cpu": min(r["cpu"] for r in runs),
            "rss_mb": max(r["rss_mb"] for r in runs)}


def sgemm_peak(clock=time.perf_counter, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a float32 [size, size] @ [size, size] product with this process's BLAS threads."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    out = np.empty((size, size), dtype=np.float32)
    return 2 * size**3 / best_time(lambda: np.matmul(a, b, out=out), repeats, clock)


def copy_bandwidth(clock=time.perf_counter, megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes/s of copying a large float32 array (read + write), far beyond every cache."""
    source = np.ones(megabytes * 2**20 // 4, dtype=np.float32)
    target = np.empty_like(source)
    return 2 * source.nbytes / best_time(lambda: np.copyto(target, source), repeats, clock)


def cpu_model() -> str:
    """The CPU's name, its x86 family/model (a VM may hide the name) and its vector extensions."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    vectors = [flag for flag in ("avx2", "fma", "avx512f") if flag in fields.get("flags", "").split()]
    return (f"{fields.get('model name', platform.machine())} (family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')}; {', '.join(vectors) or 'no AVX2'})")


def memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return float("nan")


def describe(threads: int) -> dict:
    """CPU, cores, memory, library versions and the BLAS kernels that run (threadpoolctl)."""
    import sympy

    try:
        import torch  # first, so that its OpenMP and MKL pools are listed too
    except ImportError:
        torch = None
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "memory_gb": round(memory_gb(), 1),
        "python": platform.python_version(), "numpy": np.__version__, "sympy": sympy.__version__,
        "torch": torch.__version__ if torch else None, "threads": threads,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "blas": describe_blas(),
    }


def describe_blas() -> list[dict]:
    """The thread pools loaded in this process and the kernels they run (threadpoolctl)."""
    from threadpoolctl import threadpool_info

    return [{key: pool.get(key) for key in ("user_api", "internal_api", "version", "architecture", "threading_layer",
                                            "num_threads", "prefix")} for pool in threadpool_info()]
