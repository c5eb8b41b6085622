"""Recovery without cron: the drain time of a run whose CPU worker is SIGKILLed mid-run, against
the same run unfaulted, both with the reconciler service running (worker/periodic.py).

Real processes on the local Redis (127.0.0.1:6379, db 10) and a SQLite file: `scorer worker cpu
-c 1` and `python -m worker.periodic`; N snippets published with `worker.publish.publish` (no
model: a snippet is final once preprocessed; separation off, so the run is short). Faulted: once a
third is preprocessed, the worker's whole process group gets SIGKILL (its unacknowledged message
would come back only after the visibility timeout, an hour) and a new worker starts at once; the
reconciler re-publishes the lost message after SCORER_RECONCILE_AFTER_S. Target: faulted <= 2x.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis
import soundfile as sf
from sqlalchemy import func, select

from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.migrate import upgrade
from scorer.db.models import Snippet, SnippetStatus
from scorer.settings import Settings
from worker.celery_app import make_celery
from worker.publish import publish

REDIS_DB = 10
AFTER_S, EVERY_S = 10, 2


def _library(folder: Path, n: int) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        buf = io.BytesIO()
        sf.write(buf, (0.1 * rng.standard_normal(3 * 16_000)).astype(np.float32), 16_000,
                 format="WAV")  # fmt: skip
        (folder / f"{i:04d}.wav").write_bytes(buf.getvalue())
    return sorted(folder.iterdir())


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:  # type: ignore[type-arg]
    with log.open("a") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:  # type: ignore[type-arg]
    try:
        os.killpg(proc.pid, sig)
        proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def _one_run(tmp: Path, n: int, fault: bool) -> tuple[float, int]:
    """(seconds until all N are final, messages the reconciler re-published)."""
    db = tmp / ("faulted.db" if fault else "clean.db")
    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    redis.Redis.from_url(url).flushdb()
    env = {
        **os.environ, "SCORER_DATABASE_URL": f"sqlite:///{db}", "SCORER_BROKER_URL": url,
        "SCORER_DATA_DIR": str(tmp), "SCORER_SEPARATION": "false", "SCORER_DEVICE": "cpu",
        "SCORER_TORCH_THREADS": "1", "SCORER_RECONCILE_AFTER_S": str(AFTER_S),
        "SCORER_RECONCILE_EVERY_S": str(EVERY_S),
    }  # fmt: skip
    settings = Settings(data_dir=tmp, database_url=f"sqlite:///{db}", broker_url=url,
                        separation=False)  # fmt: skip
    engine = make_engine(settings)
    upgrade(engine)
    files = _library(tmp / ("audio-f" if fault else "audio-c"), n)
    worker_cmd = [sys.executable, "-m", "scorer", "worker", "cpu", "-c", "1", "--loglevel", "ERROR"]
    log = tmp / f"procs-{int(fault)}.log"
    start = time.monotonic()
    publish(settings, engine, make_celery(settings), files, score_with_model=False)
    procs = [
        _start([sys.executable, "-m", "worker.periodic"], env, log),
        _start(worker_cmd, env, log),
    ]

    def done() -> int:
        with make_sessionmaker(engine)() as s:
            return (
                s.scalar(
                    select(func.count())
                    .select_from(Snippet)
                    .where(Snippet.status.in_([SnippetStatus.preprocessed, SnippetStatus.failed]))
                )
                or 0
            )

    try:
        killed = not fault
        while done() < n:
            if not killed and done() >= n // 3:
                _stop(procs[1], signal.SIGKILL)  # the worker and its pool child, mid-task
                procs[1] = _start(worker_cmd, env, log)
                killed = True
            if time.monotonic() - start > 900:
                raise RuntimeError(f"did not drain in 900 s ({done()}/{n}); see {log}")
            time.sleep(0.2)
        seconds = time.monotonic() - start
        republished = sum(int(k) for k in re.findall(r"'preprocess': (\d+)", log.read_text()))
        return seconds, republished
    finally:
        for p in procs:
            _stop(p)
        engine.dispose()


def run(quick: bool) -> dict[str, Any]:
    n = 30 if quick else 120
    with tempfile.TemporaryDirectory() as tmp:
        clean, clean_sent = _one_run(Path(tmp), n, fault=False)
        faulted, faulted_sent = _one_run(Path(tmp), n, fault=True)
    return {
        "config": {
            "snippets": n,
            "reconcile_after_s": AFTER_S,
            "reconcile_every_s": EVERY_S,
            "separation": False,
            "cpu_worker_processes": 1,
        },
        "rows": [
            {"run": "unfaulted", "drain_s": round(clean, 1), "republished": clean_sent},
            {
                "run": "cpu worker SIGKILLed at n/3",
                "drain_s": round(faulted, 1),
                "republished": faulted_sent,
            },
        ],
        "ratios": {"faulted_vs_unfaulted": round(faulted / clean, 2)},
        "notes": [
            "target <= 2x; a lost message waits SCORER_RECONCILE_AFTER_S, plus a worker restart",
            "republished: messages the reconciler sent again (its log)",
        ],
    }
