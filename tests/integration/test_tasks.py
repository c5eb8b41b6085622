"""The Celery tasks' logic against a real Redis and a real SQLite database, called in-process
(no worker): redelivery is harmless, a poison message ends `failed`, one bad item in a batch
fails alone while the rest is scored."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import redis
import soundfile as sf
from sqlalchemy import func, select

from pipeline.frontend import FrontendConfig
from scorer.db import queries
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.migrate import upgrade
from scorer.db.models import Feature, ModelVersion, Prediction, Snippet, SnippetStatus
from scorer.settings import Settings
from training.ensemble import save_members
from training.model import build_member

REDIS_DB = 13
CLASSES = ["none", "male", "female", "multi"]


def wav_bytes(seed: int, seconds: float = 3.0, sr: int = 16_000) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    sf.write(buf, 0.1 * rng.standard_normal(round(seconds * sr)).astype(np.float32), sr,
             format="WAV")  # fmt: skip
    return buf.getvalue()


@pytest.fixture
def env(make_settings: Callable[..., Settings]) -> Iterator[dict]:
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379 (scripts/services starts it)")
    client.flushdb()
    settings = make_settings(
        broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}", separation=False, max_attempts=2
    )
    engine = make_engine(settings)
    upgrade(engine)
    # a real (untrained) 2-member ensemble, registered and active, without separation
    frontend = FrontendConfig(separation=False)
    torch_members = [build_member(len(CLASSES), "resnet10") for _ in range(2)]
    meta = {"classes": CLASSES, "arch": "resnet10", "normalize": "none"}
    save_members(settings.resolved_model_dir / "vt", torch_members, meta)
    with make_sessionmaker(engine).begin() as s:
        mv = ModelVersion(
            name="vt", classes=CLASSES, frontend_version=frontend.version,
            frontend=frontend.to_dict(), members=2, params={}, metrics={}, weights_uri="vt",
        )  # fmt: skip
        s.add(mv)
        s.flush()
        queries.activate_model(s, mv.id)
    from worker.celery_app import make_celery

    app = make_celery(settings)
    import worker.tasks as tasks

    tasks._ctx = None  # a fresh per-process context for this test's settings
    yield {"settings": settings, "engine": engine, "tasks": tasks, "redis": client, "app": app}
    tasks._ctx = None
    engine.dispose()
    client.flushdb()
    client.close()


def add(engine, data: bytes, attempts: int = 0) -> str:  # type: ignore[no-untyped-def]
    sha = hashlib.sha256(data).hexdigest()
    with make_sessionmaker(engine).begin() as s:
        queries.add_snippets(s, [{"sha256": sha, "source_path": f"{sha[:8]}.wav",
                                  "size_bytes": len(data), "attempts": attempts}])  # fmt: skip
    return sha


def snippet(engine, sha: str) -> Snippet:  # type: ignore[no-untyped-def]
    with make_sessionmaker(engine)() as s:
        return s.scalars(select(Snippet).where(Snippet.sha256 == sha)).one()


def test_preprocess_is_idempotent_and_publishes_for_inference(env: dict) -> None:
    data = wav_bytes(1)
    sha = add(env["engine"], data)
    env["tasks"].preprocess_task(sha, data, "a.wav")
    env["tasks"].preprocess_task(sha, data, "a.wav")  # a redelivered message
    row = snippet(env["engine"], sha)
    assert row.status == SnippetStatus.preprocessed and row.attempts == 0 and row.n_windows == 1
    with make_sessionmaker(env["engine"])() as s:
        assert s.scalar(select(func.count()).select_from(Feature)) == 1
    assert env["redis"].llen("infer") == 2  # published after each commit; inference dedupes


def test_poison_message_ends_failed_instead_of_looping(env: dict) -> None:
    data = wav_bytes(2)
    sha = add(env["engine"], data, attempts=2)  # two deliveries already died mid-work
    env["tasks"].preprocess_task(sha, data, "poison.wav")
    row = snippet(env["engine"], sha)
    assert row.status == SnippetStatus.failed
    assert row.error.startswith("gave up after 2 deliveries")
    assert env["redis"].llen("infer") == 0


def test_bad_item_fails_alone_and_the_batch_is_scored(env: dict) -> None:
    tasks, engine = env["tasks"], env["engine"]
    shas = []
    for seed in range(4):
        data = wav_bytes(10 + seed, seconds=3.0 + 4 * (seed == 0))
        shas.append(add(engine, data))
        tasks.preprocess_task(shas[-1], data, f"{seed}.wav")
    with make_sessionmaker(engine).begin() as s:  # corrupt one snippet's stored features
        s.execute(
            Feature.__table__.update().where(Feature.sha256 == shas[2]).values(data=b"\x00" * 10)
        )
    tasks.infer_shas(tasks.ctx(), shas)
    tasks.infer_shas(tasks.ctx(), shas)  # redelivered batch: no new rows
    statuses = {sha: snippet(engine, sha).status for sha in shas}
    assert statuses[shas[2]] == SnippetStatus.failed
    assert snippet(engine, shas[2]).error.startswith("inference failed")
    assert all(statuses[s] == SnippetStatus.scored for s in shas if s != shas[2])
    with make_sessionmaker(engine)() as s:
        n = dict(s.execute(
            select(Prediction.sha256, func.count()).group_by(Prediction.sha256)
        ).all())  # fmt: skip
    assert n == {shas[0]: 4, shas[1]: 2, shas[3]: 2}  # 7 s: 3 windows + verdict; 3 s: 1 + 1
