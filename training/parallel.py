"""Members trained in parallel processes, for the CPU (``SCORER_TRAIN_PROCESSES``, off by default).

Why it exists: on the CPU, stacking members (training/stacked.py) is slower than one at a time
(grouped convolutions), and one process with many torch threads can scale poorly (many cores,
or a machine shared with other work, where OpenMP threads spin-wait). N processes of one thread
each, one member each, keep every core on independent work. Why it is off by default: on 2 idle
cores one member with 2 threads was faster (bench ``training``: 0.85x for 2 processes,
docs/BENCHMARKS.md); measure on your machine before switching it on.

Each process runs exactly ``training.loop.member_epoch`` — the same
seeds, draws and checkpoints as the sequential path — so the result is the sequential result up
to the float rounding of a different thread count, and a run can be resumed in either mode.

The features go to the children through a ``.npy`` file in the run's work_dir, opened with
``mmap_mode="r"``: the page cache holds one copy for every process instead of one per pickle.
Children are spawned (no torch state forked). Stopping: the parent polls ``should_stop`` and
sets an event the children poll between batches; finished member-epochs stay checkpointed.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

FEATURES_FILE = "features.npy"
_child: dict[str, Any] = {}


def _init(ctx: dict[str, Any], stop: Any) -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from training.data import FeatureDataset
    from training.loop import EVAL_BATCH, EpochRun, make_criterion

    torch.set_num_threads(ctx["threads"])
    x = np.load(ctx["features"], mmap_mode="r")
    y = np.asarray(ctx["y"], dtype=np.int64)
    params = ctx["params"]
    _child["run"] = EpochRun(
        params=params,
        work_dir=Path(ctx["work_dir"]),
        device=torch.device("cpu"),
        train_ds=FeatureDataset(x, y, np.asarray(ctx["train_idx"], dtype=np.int64)),
        val_loader=torch.utils.data.DataLoader(
            FeatureDataset(x, y, np.asarray(ctx["val_idx"], dtype=np.int64)),
            batch_size=EVAL_BATCH,
        ),
        criterion=make_criterion(np.asarray(ctx["weights"]), params),
        n_classes=ctx["n_classes"],
        steps_per_epoch=ctx["steps_per_epoch"],
        should_stop=stop.is_set,
        amp=ctx["amp"],
    )


def _member_epoch(i: int, epoch: int) -> dict[str, Any]:
    from training.loop import member_epoch

    return member_epoch(_child["run"], i, epoch)


class MemberProcesses:
    """A pool of ``processes`` spawned children that train member-epochs of one run."""

    def __init__(
        self,
        processes: int,
        params: Any,
        x: np.ndarray,
        y: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        weights: np.ndarray,
        n_classes: int,
        steps_per_epoch: int,
        work_dir: Path,
        amp: bool = False,
    ) -> None:
        self.features = Path(work_dir) / FEATURES_FILE
        tmp = self.features.with_suffix(".tmp.npy")
        np.save(tmp, np.ascontiguousarray(x))
        tmp.replace(self.features)
        cores = os.cpu_count() or 1
        ctx = {
            "threads": max(1, cores // processes),
            "features": str(self.features),
            "y": np.asarray(y).tolist(),
            "train_idx": np.asarray(train_idx).tolist(),
            "val_idx": np.asarray(val_idx).tolist(),
            "weights": np.asarray(weights).tolist(),
            "params": params,
            "work_dir": str(work_dir),
            "n_classes": n_classes,
            "steps_per_epoch": steps_per_epoch,
            "amp": amp,
        }
        mp = multiprocessing.get_context("spawn")
        self._stop = mp.Event()
        self._executor = ProcessPoolExecutor(
            processes, mp_context=mp, initializer=_init, initargs=(ctx, self._stop)
        )

    def run_epoch(
        self, members: list[int], epoch: int, should_stop: Callable[[], bool] | None
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """Train ``members``' epoch ``epoch`` in parallel; yields (member, record) as each ends.
        If ``should_stop`` turns True, the children stop between batches and
        ``training.loop.TrainingStopped`` is raised (finished member-epochs are kept)."""
        from training.loop import TrainingStopped

        futures = {self._executor.submit(_member_epoch, i, epoch): i for i in members}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            if should_stop is not None and not self._stop.is_set() and should_stop():
                self._stop.set()
            for f in done:
                exc = f.exception()
                if isinstance(exc, TrainingStopped):
                    continue
                if exc is not None:
                    self._stop.set()
                    for p in pending:
                        p.cancel()
                    raise exc
                yield futures[f], f.result()
        if self._stop.is_set():
            raise TrainingStopped(0, 0)

    def close(self) -> None:
        self._stop.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.features.unlink(missing_ok=True)
