"""Distributed mode and large files (issue 10, item 8), against a real Redis and a real
`scorer worker cpu` process: no message carries more than SCORER_MAX_MESSAGE_MB of audio; a
larger file fails with the reason, or travels as its path where the workers share the files
(checked against its sha there); the producer's backpressure counts bytes, not only messages."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import msgpack
import numpy as np
import pytest
import redis
import soundfile as sf
from click.testing import CliRunner
from sqlalchemy import select, update

from scorer.cli import EXIT_ITEMS_FAILED, main
from scorer.db import queries
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.migrate import upgrade
from scorer.db.models import Snippet, SnippetStatus, utcnow
from scorer.settings import Settings
from worker.celery_app import PREPROCESS_QUEUE, PREPROCESS_TASK, make_celery
from worker.publish import publish, queued_bytes, reconcile, wait_for_room

REDIS_DB = 10
SR = 16_000
MB = 1 << 20


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    c = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    c.flushdb()
    yield c
    c.flushdb()
    c.close()


def write(path: Path, seconds: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32), SR)
    return path


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def row(settings: Settings, sha: str) -> Snippet:
    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine)() as s:
            return s.scalars(select(Snippet).where(Snippet.sha256 == sha)).one()
    finally:
        engine.dispose()


@pytest.fixture
def worker(
    tmp_path: Path, client: redis.Redis, make_settings: Callable[..., Settings]
) -> Iterator[Settings]:
    """A real `scorer worker cpu` (1 MB message cap, shared input on, no separation), and the
    producer's settings, which share its database and broker."""
    db = tmp_path / "scorer.db"
    values = {
        "database_url": f"sqlite:///{db}",
        "broker_url": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "data_dir": tmp_path / "data",
        "separation": False,
        "max_message_mb": 1.0,
        "shared_input": True,
    }
    settings = make_settings(**values)
    upgrade(make_engine(settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    env.update({f"SCORER_{k.upper()}": str(v) for k, v in values.items()})
    env.update(SCORER_DEVICE="cpu", SCORER_TORCH_THREADS="1")
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scorer", "worker", "cpu", "-c", "1"], env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield settings
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def sent_audio_sizes(client: redis.Redis) -> list[int]:
    """Audio bytes in each preprocess message waiting in Redis (-1: sent as a path)."""
    sizes = []
    for raw in client.lrange(PREPROCESS_QUEUE, 0, -1):
        body = base64.b64decode(json.loads(raw)["body"])
        audio = msgpack.unpackb(body, raw=False)[0][1]
        sizes.append(len(audio) if isinstance(audio, bytes) else -1)
    return sizes


def test_a_file_over_the_message_cap_fails_without_shared_input(
    worker: Settings, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    small, big = write(inbox / "small.wav", 3, 0), write(inbox / "big.wav", 70, 1)  # 2.1 MB
    producer = worker.model_copy(update={"shared_input": False})
    result = CliRunner().invoke(main, ["enqueue", str(inbox)], obj=producer)
    assert result.exit_code == EXIT_ITEMS_FAILED, result.output
    failed = [line for line in result.output.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and failed[0].startswith(
        f"failed: {big}: too large to send: 2.136 MB > 1 MB"
    )
    assert "SCORER_MAX_MESSAGE_MB" in failed[0] and "SCORER_SHARED_INPUT=true" in failed[0]
    assert row(worker, sha_of(big)).status == SnippetStatus.failed
    assert row(worker, sha_of(small)).status == SnippetStatus.preprocessed


def test_with_shared_input_a_large_file_travels_as_its_path(
    worker: Settings, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    big = write(inbox / "big.wav", 70, 1)
    result = CliRunner().invoke(main, ["enqueue", str(inbox)], obj=worker)
    assert result.exit_code == 0, result.output
    got = row(worker, sha_of(big))
    assert (got.status, got.n_windows, got.duration_s) == (SnippetStatus.preprocessed, 24, 70.0)


def test_a_path_whose_bytes_are_not_the_sha_fails_with_the_reason(
    worker: Settings, tmp_path: Path
) -> None:
    big = write(tmp_path / "big.wav", 70, 1)
    other = hashlib.sha256(b"what was enqueued").hexdigest()
    engine = make_engine(worker)
    with make_sessionmaker(engine).begin() as s:
        queries.add_snippets(s, [{"sha256": other, "source_path": str(big), "size_bytes": 1}])
    engine.dispose()
    app = make_celery(worker)
    app.send_task(PREPROCESS_TASK, args=(other, {"path": str(big), "size": 1}, big.name, None))
    deadline = time.monotonic() + 90
    while row(worker, other).status == SnippetStatus.queued and time.monotonic() < deadline:
        time.sleep(0.5)
    got = row(worker, other)
    assert got.status == SnippetStatus.failed
    assert f"{big} no longer holds the content that was enqueued" in (got.error or "")


def test_no_published_message_carries_more_than_the_cap(
    tmp_path: Path, client: redis.Redis, make_settings: Callable[..., Settings]
) -> None:
    """No worker: the messages stay in Redis, where their bodies are read back."""
    settings = make_settings(
        database_url=f"sqlite:///{tmp_path / 'p.db'}",
        broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}",
        max_message_mb=1.0,
        shared_input=True,
    )
    engine = make_engine(settings)
    upgrade(engine)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name, seconds in (("a.wav", 3), ("b.wav", 20), ("c.wav", 70)):
        write(inbox / name, seconds, len(name) + seconds)
    publish(settings, engine, make_celery(settings), sorted(inbox.iterdir()))
    engine.dispose()
    sizes = sent_audio_sizes(client)
    assert sorted(sizes) == [-1, 96_044, 640_044]  # c.wav (2.1 MB) went as its path


def test_backpressure_counts_the_bytes_the_broker_holds(
    client: redis.Redis, make_settings: Callable[..., Settings]
) -> None:
    app = make_celery(make_settings(broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}"))
    for i in range(3):
        app.send_task(PREPROCESS_TASK, args=(f"{i:064d}", bytes(300_000), "x.wav"))
    held = queued_bytes(app)
    assert 3 * 400_000 <= held < 3 * 520_000  # base64 (4/3), in jemalloc size classes
    returned = threading.Event()
    waiter = threading.Thread(
        target=lambda: (
            wait_for_room(app, bound=100, poll_s=0.05, bound_bytes=1_000_000, size=400_000),
            returned.set(),
        ),
        daemon=True,
    )
    waiter.start()
    time.sleep(0.5)
    assert not returned.is_set()  # 3 messages < 100, but 3 x 0.46 MB + 0.4 MB > 1 MB
    client.rpop(PREPROCESS_QUEUE)
    time.sleep(0.5)
    assert not returned.is_set()  # 2 x 0.46 + 0.4 MB: still over
    client.rpop(PREPROCESS_QUEUE)
    assert returned.wait(5)  # 0.46 + 0.4 MB
    waiter.join(1)
    client.rpop(PREPROCESS_QUEUE)
    # An empty queue always takes one message, however large: a big file cannot stall enqueue.
    wait_for_room(app, bound=100, poll_s=0.05, bound_bytes=1_000, size=10**9)


def test_reconcile_sends_a_large_file_as_its_path_or_fails_it(
    tmp_path: Path, client: redis.Redis, make_settings: Callable[..., Settings]
) -> None:
    """A lost message of a large file is found again from the database like any other: as its
    path with shared input, failed with the reason without (never as a too-large message)."""
    settings = make_settings(
        database_url=f"sqlite:///{tmp_path / 'r.db'}",
        broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}",
        max_message_mb=1.0,
    )
    engine = make_engine(settings)
    upgrade(engine)
    big = write(tmp_path / "big.wav", 70, 1)
    sha = sha_of(big)
    with make_sessionmaker(engine).begin() as s:
        queries.add_snippets(s, [{"sha256": sha, "source_path": str(big), "size_bytes": 1}])
        queries.add_source_paths(s, [(str(big), sha)])
        s.execute(
            update(Snippet).values(updated_at=utcnow() - timedelta(hours=1))
        )  # its message was lost an hour ago
    app = make_celery(settings)
    shared = settings.model_copy(update={"shared_input": True})
    assert reconcile(shared, engine, app, older_than_s=60)["preprocess"] == 1
    assert sent_audio_sizes(client) == [-1]  # as {path, size}
    client.delete(PREPROCESS_QUEUE)
    with make_sessionmaker(engine).begin() as s:
        s.execute(update(Snippet).values(updated_at=utcnow() - timedelta(hours=1)))
    counts = reconcile(settings, engine, app, older_than_s=60)
    assert (counts["preprocess"], counts["failed"]) == (0, 1)
    assert sent_audio_sizes(client) == []
    got = row(settings, sha)
    assert got.status == SnippetStatus.failed and "too large to send" in (got.error or "")
    engine.dispose()
