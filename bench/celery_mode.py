"""Celery mode against in-process mode on the same snippets, and the GPU batcher's B/T settings.

Celery mode runs real worker processes (`scorer worker cpu -c <cores>` and `scorer worker gpu`)
against a private redis-server and a scratch PostgreSQL database; in-process mode is
worker.embedded.run on its own scratch PostgreSQL database. Worker start-up (loading Spleeter and
the ensemble) is excluded: the clock runs from the first publish until the database says every
snippet is scored. Target (issue): Celery throughput >= 0.9 x in-process.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from bench import fixtures
from bench.timing import speedup
from scorer.settings import Settings
from worker import embedded
from worker.celery_app import make_celery
from worker.publish import publish, wait_until_final

MEMBERS, ARCH = 2, "resnet10"
BATCHER_MEMBERS, BATCHER_ARCH = 5, "resnet18"
BATCHER_SETTINGS = ((1, 1), (8, 50), (32, 200), (128, 500))  # (B messages, T milliseconds)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis(tmp: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    return proc, f"redis://127.0.0.1:{port}/0"


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    env.update(
        SCORER_DATABASE_URL=settings.resolved_database_url,
        SCORER_BROKER_URL=settings.broker_url or "",
        SCORER_DATA_DIR=str(settings.data_dir),
        SCORER_DEVICE="cpu",
        **extra,
    )
    return env


def _start(kind: str, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scorer", "worker", kind, "--loglevel", "WARNING", *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        with_group = os.getpgid(p.pid) if p.poll() is None else None
        if with_group is not None:
            os.killpg(with_group, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def _wait_workers(settings: Settings, names: int, timeout: float = 120) -> None:
    app = make_celery(settings)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(app.control.inspect(timeout=1.0).ping() or {}) >= names:
            return
    raise RuntimeError("workers did not answer in time")


def _celery_run(settings: Settings, engine: Engine, paths: list[Path]) -> float:
    app = make_celery(settings)
    start = time.perf_counter()
    summary = publish(settings, engine, app, paths)
    with fixtures.session(engine) as s:
        model_id = fixtures.active_model_id(s)
    left = wait_until_final(engine, list(summary.shas), model_id, poll_s=0.2, timeout_s=3600)
    if left:
        raise RuntimeError(f"{left} snippets not scored in Celery mode")
    return time.perf_counter() - start


def run(quick: bool) -> dict[str, Any]:
    n = 16 if quick else 100
    cores = os.cpu_count() or 1
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-celery-") as tmp_s:
        tmp = Path(tmp_s)
        paths = fixtures.write_wavs(tmp / "audio", n, seed=3)
        # in-process, on PostgreSQL like the Celery run
        with fixtures.scratch_postgres() as engine:
            url = engine.url.render_as_string(hide_password=False)
            settings = Settings(data_dir=tmp / "inproc", database_url=url, device="cpu")
            fixtures.register_model(engine, settings, "v1", MEMBERS, ARCH, seed=1)
            start = time.perf_counter()
            summary = embedded.run(settings, engine, paths)
            inproc = time.perf_counter() - start
            assert summary.scored == n, summary
        rows.append({"mode": "in-process", "wall_s": round(inproc, 2),
                     "snippets_per_s": round(n / inproc, 3)})  # fmt: skip
        redis, broker = _redis(tmp)
        try:
            with fixtures.scratch_postgres() as engine:
                url = engine.url.render_as_string(hide_password=False)
                settings = Settings(data_dir=tmp / "celery", database_url=url, broker_url=broker,
                                    device="cpu")  # fmt: skip
                fixtures.register_model(engine, settings, "v1", MEMBERS, ARCH, seed=1)
                env = _env(settings)
                procs = [_start("cpu", env, "-c", str(cores)), _start("gpu", env)]
                try:
                    _wait_workers(settings, 2)
                    celery_s = _celery_run(settings, engine, paths)
                finally:
                    _stop(procs)
                rows.append({"mode": f"celery (cpu -c {cores} + gpu)", "wall_s": round(celery_s, 2),
                             "snippets_per_s": round(n / celery_s, 3)})  # fmt: skip
                batcher = _batcher(settings, engine, paths, quick)
        finally:
            redis.kill()
            redis.wait()
    ratio = speedup(inproc, celery_s)
    return {
        "config": {
            "snippets": n,
            "members": MEMBERS,
            "arch": ARCH,
            "cores": cores,
            "target": "celery/in-process throughput >= 0.9",
        },
        "rows": rows + batcher,
        "ratios": {"celery_vs_inprocess_throughput": ratio},
        "notes": [
            f"target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'} ({ratio}x)",
            "batcher rows: rescoring the cached features with a new model version per "
            f"setting ({BATCHER_MEMBERS} x {BATCHER_ARCH}), GPU worker on the CPU",
        ],
    }


def _batcher(settings: Settings, engine: Engine, paths: list[Path], quick: bool) -> list[dict]:
    """The GPU worker alone at several (B, T): features are cached, each run is a new version."""
    rows = []
    for i, (b, t) in enumerate(BATCHER_SETTINGS[:2] if quick else BATCHER_SETTINGS):
        fixtures.register_model(engine, settings, f"b{i}", BATCHER_MEMBERS, BATCHER_ARCH, seed=i)
        env = _env(settings, SCORER_INFER_BATCH=str(b), SCORER_BATCH_FLUSH_MS=str(t))
        procs = [_start("gpu", env)]
        try:
            _wait_workers(settings, 1)
            wall = _celery_run(settings, engine, paths)
        finally:
            _stop(procs)
        rows.append({"mode": f"gpu worker B={b} T={t}ms", "wall_s": round(wall, 2),
                     "snippets_per_s": round(len(paths) / wall, 3)})  # fmt: skip
    return rows
