"""Shared timing helpers: warm-up, then best-of-N and median of wall and CPU time.

Best-of-N is the figure least disturbed by other work on a shared machine; the median is kept to
show the spread. CPU time (``time.process_time``, all threads of this process) is steadier than
wall time when the load average is above the core count.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Timing:
    """Wall and CPU seconds of each timed repetition (warm-up excluded)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.wall)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def best_cpu(self) -> float:
        return min(self.cpu)

    def as_dict(self) -> dict[str, Any]:
        return {
            "best_s": round(self.best, 6),
            "median_s": round(self.median, 6),
            "best_cpu_s": round(self.best_cpu, 6),
            "runs": len(self.wall),
        }


def measure(
    fn: Callable[[], object],
    *,
    repeat: int = 3,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
) -> Timing:
    """Time `fn()` `repeat` times after `warmup` untimed calls (first-call allocations, caches).

    `sync` (e.g. ``torch.cuda.synchronize``) runs before each clock read so asynchronous device
    work is counted.
    """
    for _ in range(warmup):
        fn()
    timing = Timing()
    for _ in range(repeat):
        if sync:
            sync()
        w, c = time.perf_counter(), time.process_time()
        fn()
        if sync:
            sync()
        timing.wall.append(time.perf_counter() - w)
        timing.cpu.append(time.process_time() - c)
    return timing


def once(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall s, CPU s) of a single call: for runs that change state and cannot repeat."""
    w, c = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - w, time.process_time() - c


def speedup(baseline_s: float, candidate_s: float) -> float:
    """Baseline time / candidate time: > 1 means the candidate is faster."""
    return round(baseline_s / candidate_s, 3) if candidate_s > 0 else float("inf")


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark in MB (Linux reports KiB). Monotonic: a
    per-configuration peak needs its own process."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 1024, 1)


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0, /proc/self/clear_refs), so the
    peak of one stage can be read apart from loading. False where it is not supported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def rss_mb(field: str = "VmHWM") -> float | None:
    """VmHWM (peak since start or the last reset) or VmRSS (now) in MB, from /proc/self/status."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def traced_peak_mb(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result, peak MB of Python allocations during `fn`). Not for timing: tracing slows
    Python code several-fold, and torch's own buffers are invisible to it."""
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, round(peak / 2**20, 2)


class Stopwatch:
    """Accumulates time spent inside chosen functions while real code runs, for breakdowns.

    ``with sw.wrap(module, "name", "bucket"):`` replaces ``module.name`` by a timing wrapper;
    code that looks the name up at call time (module attribute, local import) is measured.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, bucket: str, seconds: float) -> None:
        self.seconds[bucket] = self.seconds.get(bucket, 0.0) + seconds
        self.calls[bucket] = self.calls.get(bucket, 0) + 1

    @contextlib.contextmanager
    def section(self, bucket: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(bucket, time.perf_counter() - start)

    @contextlib.contextmanager
    def wrap(self, owner: object, name: str, bucket: str) -> Iterator[None]:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.section(bucket):
                return original(*args, **kwargs)

        setattr(owner, name, timed)
        try:
            yield
        finally:
            setattr(owner, name, original)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What the figures depend on; load average is read at the start and end of a run."""
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
