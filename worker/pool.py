"""Embedded mode's preprocessing on every core: a pool of single-thread processes.

One process with N torch threads loses to N processes with one thread each on this workload
(OpenMP threads spin-wait; measured: Celery's 2 x 1-thread children did 2.4x the in-process
throughput, docs/BENCHMARKS.md). The pool is the same idea without a broker. Children are
spawned (never forked from a process that holds torch state), load Spleeter once each, and run
the same `worker.stages.preprocess`. A child that dies (out of memory, a crash in a native
library) costs only the item it was working on: that item fails with a reason, the pool is
rebuilt, and the run goes on.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from pipeline.frontend import FrontendConfig
from scorer.settings import Settings
from worker.runtime import Runtime
from worker.stages import Item, Preprocessed, one_line, preprocess

log = logging.getLogger(__name__)

_runtime: Runtime | None = None


def _init(settings: dict[str, Any], frontend: dict[str, Any]) -> None:
    global _runtime
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(1)
    _runtime = Runtime(Settings(**settings), frontend_override=FrontendConfig.from_dict(frontend))


def _one(item: Item) -> Preprocessed:
    assert _runtime is not None
    try:
        return preprocess(_runtime, [item])[0]
    except Exception as exc:  # preprocess fails items itself; this is the last boundary
        return Preprocessed(item.sha256, error=f"preprocessing failed: {one_line(exc)}")


class PreprocessPool:
    """`map(items)` -> the same list `worker.stages.preprocess` returns, computed in parallel."""

    def __init__(self, settings: Settings, frontend: FrontendConfig, processes: int) -> None:
        self.processes = processes
        self._args = (settings.model_dump(mode="json"), frontend.to_dict())
        self._executor = self._new()

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init,
            initargs=self._args,
        )

    def map(self, items: list[Item]) -> list[Preprocessed]:
        try:
            return [self._result(f, item) for f, item in self._submit(items)]
        except BrokenProcessPool:
            log.warning("a preprocessing process died; retrying %d items one by one", len(items))
        out = []
        for item in items:  # find the item that kills its process; the others go through
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new()
            try:
                out.append(self._result(self._executor.submit(_one, item), item))
            except BrokenProcessPool:
                out.append(Preprocessed(item.sha256, error="the preprocessing process died on "
                                        "this file (out of memory?)"))  # fmt: skip
        return out

    def _submit(self, items: list[Item]) -> list[tuple[Future[Preprocessed], Item]]:
        return [(self._executor.submit(_one, item), item) for item in items]

    @staticmethod
    def _result(future: Future[Preprocessed], item: Item) -> Preprocessed:
        """The item's result; an error that is not the pool's (a result that cannot be sent
        back, MemoryError) fails this item alone. A dead process raises BrokenProcessPool."""
        try:
            return future.result()
        except BrokenProcessPool:
            raise
        except Exception as exc:
            return Preprocessed(item.sha256, error=f"preprocessing failed: {one_line(exc)}")

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def processes_for(settings: Settings, n_files: int) -> int:
    """How many preprocessing processes a run of `n_files` gets: SCORER_PREPROCESS_PROCESSES,
    or (0 = auto) one per core when there is enough work to repay ~3 s of start-up per process."""
    if settings.preprocess_processes:
        return settings.preprocess_processes
    cores = os.cpu_count() or 1
    return cores if cores > 1 and n_files >= 8 * cores else 1
