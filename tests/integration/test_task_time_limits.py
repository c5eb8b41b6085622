"""A long file's preprocess task gets a time limit that fits its length (issue 10, item 8).

A long file is one task. With one limit for every task (SCORER_TASK_TIME_LIMIT_S), a file longer
than that limit allows was killed on every delivery and ended failed. Here, against the real
Redis and a real `scorer worker cpu` process: the messages that `publish` and `reconcile` send
carry a limit from the file's header, a file whose header cannot be read keeps the default, and a
file that takes longer than a tiny default limit to featurise is scored.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import msgpack
import numpy as np
import pytest
import redis
import soundfile as sf
from celery import Celery
from sqlalchemy import Engine, select, update

from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.migrate import upgrade
from scorer.db.models import Snippet, SnippetStatus, utcnow
from scorer.settings import Settings
from worker.celery_app import PREPROCESS_QUEUE, TASK_OVERHEAD_S, make_celery
from worker.publish import publish, reconcile

REDIS_DB = 8
SR = 16_000


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    c = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    c.flushdb()
    yield c
    c.flushdb()
    c.close()


def write(path: Path, seconds: float, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32), SR)
    return path


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def limits_sent(client: redis.Redis) -> dict[str, list[int]]:
    """{file name: [hard, soft]} of each preprocess message waiting in Redis (its headers)."""
    out = {}
    for raw in client.lrange(PREPROCESS_QUEUE, 0, -1):
        msg = json.loads(raw)
        name = msgpack.unpackb(base64.b64decode(msg["body"]), raw=False)[0][2]
        out[name] = list(msg["headers"]["timelimit"])
    return out


def producer(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> tuple[Settings, Engine, Celery, Path]:
    """The enqueuing side with no worker: settings (900 s base, 2 s per audio second), a
    migrated SQLite database, the Celery app and an empty inbox folder."""
    settings = make_settings(
        database_url=f"sqlite:///{tmp_path / 'scorer.db'}",
        broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}",
        separation=False, task_time_limit_s=900, task_time_per_audio_s=2.0,
    )  # fmt: skip
    engine = make_engine(settings)
    upgrade(engine)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    return settings, engine, make_celery(settings), inbox


def test_published_and_reconciled_messages_carry_a_limit_that_fits_the_file(
    tmp_path: Path, client: redis.Redis, make_settings: Callable[..., Settings]
) -> None:
    """No worker: the messages stay in Redis, where their headers are read back."""
    settings, engine, app, inbox = producer(tmp_path, make_settings)
    write(inbox / "short.wav", 3, 0), write(inbox / "long.wav", 600, 1)
    bad = inbox / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEnot audio at all" * 100)
    publish(settings, engine, app, sorted(inbox.iterdir()), score_with_model=False)
    want_long = TASK_OVERHEAD_S + 2 * 600
    assert limits_sent(client) == {
        "short.wav": [900, 870],  # within the default: the default
        "long.wav": [want_long, want_long - 30],
        "bad.wav": [900, 870],  # no header: the default, and the worker says why it fails
    }

    client.delete(PREPROCESS_QUEUE)  # the messages were lost; the rows wait, queued
    with make_sessionmaker(engine).begin() as s:
        s.execute(update(Snippet).values(updated_at=utcnow() - timedelta(hours=1)))
    counts = reconcile(settings, engine, app, older_than_s=60, wait=False)
    assert counts["preprocess"] == 3
    assert limits_sent(client) == {
        "short.wav": [900, 870],
        "long.wav": [want_long, want_long - 30],
        "bad.wav": [900, 870],
    }
    engine.dispose()


def test_a_file_longer_than_the_default_limit_allows_is_scored(
    tmp_path: Path, client: redis.Redis, make_settings: Callable[..., Settings]
) -> None:
    """A real worker whose default limit (2 s; soft 1 s) is shorter than featurising 5 minutes
    of audio takes: before, the task was stopped (its row failed, or stayed queued for the
    reconciler to send again into the same limit); now its message carries a limit for 300 s
    of audio and the file is preprocessed."""
    values = {
        "database_url": f"sqlite:///{tmp_path / 'scorer.db'}",
        "broker_url": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "data_dir": tmp_path / "data",
        "separation": False,
        "task_time_limit_s": 2,
    }
    settings = make_settings(**values)
    engine = make_engine(settings)
    upgrade(engine)
    path = write(tmp_path / "five_minutes.wav", 300, 2)
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
        publish(settings, engine, make_celery(settings), [path], score_with_model=False)
        sessions, sha = make_sessionmaker(engine), sha_of(path)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with sessions() as s:
                got = s.scalars(select(Snippet).where(Snippet.sha256 == sha)).one()
            if got.status != SnippetStatus.queued:
                break
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        engine.dispose()
    assert (got.status, got.error, got.n_windows) == (SnippetStatus.preprocessed, None, 100), (
        log.read_text()[-3000:]
    )


def test_reconcile_leaves_a_long_file_alone_while_its_work_may_still_run(
    tmp_path: Path, client: redis.Redis, make_settings: Callable[..., Settings]
) -> None:
    """A queued row whose delivery began work (its token in flight) 20 minutes ago: a 3 s file
    is past its 900 s limit, so it died and is re-sent; a 10-minute file's limit is 1260 s, so
    re-sending it would start the same work twice and count the running delivery as a death."""
    settings, engine, app, inbox = producer(tmp_path, make_settings)
    write(inbox / "short.wav", 3, 0)
    long = write(inbox / "long.wav", 600, 1)
    publish(settings, engine, app, sorted(inbox.iterdir()), score_with_model=False)
    client.delete(PREPROCESS_QUEUE)
    sessions = make_sessionmaker(engine)

    def started(ago: timedelta, *shas: str) -> None:
        with sessions.begin() as s:
            s.execute(
                update(Snippet)
                .where(Snippet.sha256.in_(shas) if shas else Snippet.id > 0)
                .values(in_flight="task:0", updated_at=utcnow() - ago)
            )

    started(timedelta(minutes=20))
    assert reconcile(settings, engine, app, older_than_s=60, wait=False)["preprocess"] == 1
    assert list(limits_sent(client)) == ["short.wav"]
    client.delete(PREPROCESS_QUEUE)
    started(timedelta(minutes=22), sha_of(long))  # past 60 + 2 x 600 s: it died
    assert reconcile(settings, engine, app, older_than_s=60, wait=False)["preprocess"] == 1
    assert list(limits_sent(client)) == ["long.wav"]
    engine.dispose()
