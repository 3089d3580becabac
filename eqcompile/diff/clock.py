"""Where a diff's time goes: seconds per phase, summed over the worker threads that compare pairs."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager


class Clock:
    """``with clock("moments"): ...`` adds the block's wall time to ``clock.seconds["moments"]``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - start)

    def add(self, phase: str, seconds: float) -> None:
        with self._lock:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds
