"""Real `scorer worker cpu` (prefork, multiprocess metrics) and `scorer worker gpu` processes
against the real Redis and a SQLite database: their Prometheus endpoints, read over HTTP, count
the snippets each stage did, the GPU worker's batches, queue waits, a decode failure by its
reason, and show the queue depths."""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import soundfile as sf
from sqlalchemy import select

from bench.fixtures import register_model
from pipeline.frontend import FrontendConfig
from scorer.db import queries
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.migrate import upgrade
from scorer.db.models import Snippet, SnippetStatus
from scorer.settings import Settings

pytestmark = [pytest.mark.e2e]

REDIS_DB = 9
CLASSES = ["none", "male", "female", "multi"]
N_GOOD = 3
WAIT_S = 300  # the longest any wait here may take before the test says what it saw


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wav_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    noise = 0.1 * np.random.default_rng(seed).standard_normal(48_000).astype(np.float32)
    sf.write(buf, noise, 16_000, format="WAV")
    return buf.getvalue()


def scrape(port: int) -> dict[str, float]:
    """`name{labels}` -> value from the worker's endpoint ({} while it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            body = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in body.splitlines():
        m = re.fullmatch(r"([a-z_]+(?:\{[^}]*\})?) ([-+0-9.e]+|NaN)", line)
        if m:
            out[m[1]] = float(m[2])
    return out


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Iterator[Settings]:
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379 (scripts/services starts it)")
    client.flushdb()
    s = make_settings(broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}", separation=False)
    engine = make_engine(s)
    upgrade(engine)
    register_model(engine, s, "m", 2, "resnet10", 0, FrontendConfig(separation=False))
    engine.dispose()
    yield s
    client.flushdb()
    client.close()


def start_worker(kind: str, settings: Settings, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCORER_", "PROMETHEUS_"))}
    env.update(
        SCORER_DATA_DIR=str(settings.data_dir),
        SCORER_DATABASE_URL=settings.resolved_database_url,
        SCORER_BROKER_URL=str(settings.broker_url),
        SCORER_DEVICE="cpu",
        SCORER_TORCH_THREADS="1",
        SCORER_METRICS_PORT=str(port),
        SCORER_BATCH_FLUSH_MS="300",
        TMPDIR=str(log.parent / "tmp"),
    )
    args = {"cpu": ["-c", "1"], "train": ["--poll", "0.5"]}.get(kind, [])
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "scorer", "worker", kind, *args],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_workers_export_stage_counts_batches_waits_failures_and_queue_depths(
    settings: Settings, tmp_path: Path
) -> None:
    cpu_port, gpu_port = free_port(), free_port()
    (tmp_path / "tmp").mkdir()
    procs = [
        start_worker("cpu", settings, cpu_port, tmp_path / "cpu.log"),
        start_worker("gpu", settings, gpu_port, tmp_path / "gpu.log"),
    ]
    try:
        deadline = time.monotonic() + WAIT_S
        while not (scrape(cpu_port) and scrape(gpu_port)):
            for p in procs:
                assert p.poll() is None, (tmp_path / "cpu.log").read_text()[-2000:] + (
                    tmp_path / "gpu.log"
                ).read_text()[-2000:]
            assert time.monotonic() < deadline, "metrics endpoints did not answer"
            time.sleep(0.3)
        before = scrape(cpu_port)
        assert before['scorer_queue_depth{queue="preprocess"}'] == 0
        assert before.get('scorer_items_total{stage="preprocess"}', 0) == 0

        from worker.celery_app import make_celery

        app = make_celery(settings)
        import worker.tasks as tasks

        engine = make_engine(settings)
        items = [(f"g{i}.wav", wav_bytes(i)) for i in range(N_GOOD)]
        items.append(("bad.wav", b"this is not audio at all" * 10))
        with make_sessionmaker(engine).begin() as db:
            queries.add_snippets(db, [
                {"sha256": hashlib.sha256(d).hexdigest(), "source_path": n, "size_bytes": len(d)}
                for n, d in items
            ])  # fmt: skip
        for n, d in items:
            tasks.preprocess_task.apply_async((hashlib.sha256(d).hexdigest(), d, n))

        # A generous wait, not a timing: a loaded 2-core CI box once needed over 60 s here.
        deadline = time.monotonic() + WAIT_S
        while True:
            cpu, gpu = scrape(cpu_port), scrape(gpu_port)
            if gpu.get('scorer_items_total{stage="infer"}', 0) >= N_GOOD:
                break
            logs = [(tmp_path / f"{k}.log").read_text()[-3000:] for k in ("cpu", "gpu")]
            assert all(p.poll() is None for p in procs), logs
            assert time.monotonic() < deadline, (cpu, gpu, *logs)
            time.sleep(0.5)
        cpu = scrape(cpu_port)
        assert len(list((tmp_path / "tmp").glob("scorer-metrics-*"))) == 1
        assert cpu['scorer_items_total{stage="preprocess"}'] == N_GOOD
        assert cpu['scorer_failures_total{reason="decode",stage="preprocess"}'] == 1
        assert cpu['scorer_queue_wait_seconds_count{stage="preprocess"}'] == N_GOOD + 1
        assert 0 <= cpu['scorer_queue_wait_seconds_sum{stage="preprocess"}'] < (N_GOOD + 1) * WAIT_S
        assert gpu['scorer_items_total{stage="infer"}'] == N_GOOD
        assert gpu['scorer_queue_wait_seconds_count{stage="infer"}'] == N_GOOD
        assert gpu["scorer_infer_batch_size_sum"] == N_GOOD
        assert 1 <= gpu["scorer_infer_batch_size_count"] <= N_GOOD
        assert gpu['scorer_queue_depth{queue="infer"}'] == 0
        with make_sessionmaker(engine)() as db:
            statuses = sorted(db.scalars(select(Snippet.status)))
        assert statuses == sorted([SnippetStatus.failed] + [SnippetStatus.scored] * N_GOOD)
        engine.dispose()
        app.close()
    finally:
        for p in procs:
            stop(p)
    # the CPU worker's multiprocess files went with it (and only it removed them)
    assert list((tmp_path / "tmp").glob("scorer-metrics-*")) == []


def test_the_train_worker_exports_its_job_counts(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "tmp").mkdir()
    proc = start_worker("train", settings, port, tmp_path / "train.log")
    try:
        deadline = time.monotonic() + WAIT_S
        while not (got := scrape(port)):
            assert proc.poll() is None, (tmp_path / "train.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "metrics endpoint did not answer"
            time.sleep(0.3)
        for outcome in ("done", "stopped", "error"):
            assert got[f'scorer_training_jobs_total{{outcome="{outcome}"}}'] == 0
    finally:
        stop(proc)
