"""The producer side against a real Redis: backpressure, and reconcile (by hand and by the
reconciler service) finding lost messages again from the database."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import redis
import soundfile as sf
from sqlalchemy import func, select, update

from scorer.db import queries
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.migrate import upgrade
from scorer.db.models import Feature, Snippet, SnippetStatus, utcnow
from scorer.settings import Settings
from worker.celery_app import PREPROCESS_QUEUE, make_celery, queue_depths
from worker.periodic import LOCK_KEY, reconcile_pass
from worker.publish import wait_for_room

# log-mel feature rows (voice features, when on, are rows of their own, "vf-...")
LOGMEL_ROWS = select(func.count()).select_from(Feature).where(Feature.frontend_version.like("fe-%"))

REDIS_DB = 12


@pytest.fixture
def app(make_settings: Callable[..., Settings]) -> Iterator:  # type: ignore[type-arg]
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    client.flushdb()
    yield make_celery(make_settings(broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}"))
    client.flushdb()
    client.close()


def test_enqueue_waits_while_the_first_queue_is_over_its_bound(app) -> None:  # type: ignore[no-untyped-def]
    for i in range(5):
        app.send_task("scorer.preprocess", args=(f"{i:064d}", b"", "x.wav"))
    assert queue_depths(app)[PREPROCESS_QUEUE] == 5
    returned = threading.Event()
    waiter = threading.Thread(
        target=lambda: (wait_for_room(app, bound=3, poll_s=0.05), returned.set()), daemon=True
    )
    waiter.start()
    time.sleep(0.5)
    assert not returned.is_set()  # 5 > 3: the producer is held back
    with app.connection_for_write() as conn:  # a worker takes two messages
        client = conn.default_channel.client
        client.rpop(PREPROCESS_QUEUE)
        client.rpop(PREPROCESS_QUEUE)
    assert returned.wait(5)
    waiter.join(1)


# --- reconcile ----------------------------------------------------------------------------------


def _lost(engine, folder: Path, n: int, age_s: float = 3600) -> list[str]:  # type: ignore[no-untyped-def]
    """`n` real WAV files whose rows are queued but whose messages were lost (never sent)."""
    folder.mkdir(exist_ok=True)
    shas = []
    for i in range(n):
        path = folder / f"lost {i}.wav"
        t = np.arange(3 * 16_000) / 16_000
        sf.write(path, (0.2 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), 16_000)
        data = path.read_bytes()
        shas.append(hashlib.sha256(data).hexdigest())
        with make_sessionmaker(engine).begin() as s:
            queries.add_snippets(
                s, [{"sha256": shas[-1], "source_path": str(path), "size_bytes": len(data)}]
            )
            s.execute(
                update(Snippet)
                .where(Snippet.sha256 == shas[-1])
                .values(updated_at=utcnow() - timedelta(seconds=age_s))
            )
    return shas


def _status(engine, sha: str) -> SnippetStatus:  # type: ignore[no-untyped-def]
    with make_sessionmaker(engine)() as s:
        return s.scalar(select(Snippet.status).where(Snippet.sha256 == sha))


def test_reconcile_is_bounded_by_the_queue_and_locked(app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = app.conf.scorer_settings.model_copy(update={"queue_bound": 2})
    engine = make_engine(settings)
    upgrade(engine)
    shas = _lost(engine, tmp_path / "audio", 3)
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    client.set(LOCK_KEY, "another copy", px=60_000)
    assert reconcile_pass(settings, engine, app, client) is None  # another copy is at work
    assert queue_depths(app)[PREPROCESS_QUEUE] == 0
    client.delete(LOCK_KEY)
    counts = reconcile_pass(settings, engine, app, client)
    assert (counts["preprocess"], counts["failed"]) == (2, 0)  # stops at the queue's bound
    assert queue_depths(app)[PREPROCESS_QUEUE] == 2 and client.get(LOCK_KEY) is None
    client.delete(PREPROCESS_QUEUE)  # the two messages are lost as well
    counts = reconcile_pass(settings.model_copy(update={"reconcile_after_s": 0}), engine, app,
                            client)  # fmt: skip
    assert (counts["preprocess"], counts["failed"]) == (2, 0)  # every row is found again
    assert {_status(engine, sha) for sha in shas} == {SnippetStatus.queued}
    engine.dispose()


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:  # type: ignore[type-arg]
    with log.open("w") as out:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def test_the_reconciler_service_finds_a_lost_message_and_a_worker_finishes_it(
    app,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """Real processes: `python -m worker.periodic` and `scorer worker cpu`; nobody runs
    `scorer reconcile` by hand."""
    db = tmp_path / "scorer.db"
    env = {
        **os.environ,
        "SCORER_DATABASE_URL": f"sqlite:///{db}",
        "SCORER_BROKER_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "SCORER_DATA_DIR": str(tmp_path / "data"),
        "SCORER_SEPARATION": "false",
        "SCORER_DEVICE": "cpu",
        "SCORER_TORCH_THREADS": "1",
        "SCORER_RECONCILE_AFTER_S": "2",
        "SCORER_RECONCILE_EVERY_S": "1",
    }
    settings = app.conf.scorer_settings.model_copy(update={"database_url": f"sqlite:///{db}"})
    engine = make_engine(settings)
    upgrade(engine)
    (sha,) = _lost(engine, tmp_path / "audio", 1)
    procs = [
        _start([sys.executable, "-m", "worker.periodic"], env, tmp_path / "reconciler.log"),
        _start([sys.executable, "-m", "scorer", "worker", "cpu", "-c", "1"], env,
               tmp_path / "worker.log"),
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while _status(engine, sha) != SnippetStatus.preprocessed and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), (tmp_path / "reconciler.log").read_text()
            time.sleep(0.5)
        assert _status(engine, sha) == SnippetStatus.preprocessed  # final: there is no model
        with make_sessionmaker(engine)() as s:
            assert s.scalar(LOGMEL_ROWS) == 1
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        engine.dispose()
