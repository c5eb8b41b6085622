"""The Celery tasks' logic against a real Redis and a real SQLite database, called in-process
(no worker): redelivery is harmless, a poison message ends `failed`, one bad item in a batch
fails alone while the rest is scored."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis
import soundfile as sf
from sqlalchemy import func, select

from bench.fixtures import register_model
from pipeline.frontend import FrontendConfig
from scorer.db import queries
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.migrate import upgrade
from scorer.db.models import Feature, ModelVersion, Prediction, Snippet, SnippetStatus
from scorer.errors import ScorerError
from scorer.settings import Settings

# log-mel feature rows (voice features, when on, are rows of their own, "vf-...")
LOGMEL_ROWS = select(func.count()).select_from(Feature).where(Feature.frontend_version.like("fe-%"))

REDIS_DB = 13
CLASSES = ["none", "male", "female", "multi"]


def wav_bytes(seed: int, seconds: float = 3.0, sr: int = 16_000) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    sf.write(buf, 0.1 * rng.standard_normal(round(seconds * sr)).astype(np.float32), sr,
             format="WAV")  # fmt: skip
    return buf.getvalue()


def _env(settings: Settings) -> Iterator[dict]:
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379 (scripts/services starts it)")
    client.flushdb()
    engine = make_engine(settings)
    upgrade(engine)
    # a real (untrained) 2-member ensemble, registered and active, without separation
    register_model(engine, settings, "vt", 2, "resnet10", 0, FrontendConfig(separation=False))
    from worker.celery_app import make_celery

    app = make_celery(settings)
    import worker.tasks as tasks

    tasks._ctx = None  # a fresh per-process context for this test's settings
    yield {"settings": settings, "engine": engine, "tasks": tasks, "redis": client, "app": app}
    if tasks._ctx is not None:
        tasks._ctx.engine.dispose()  # its connections, before a PostgreSQL database is dropped
    tasks._ctx = None
    engine.dispose()
    client.flushdb()
    client.close()


def _settings(make_settings: Callable[..., Settings], **overrides: object) -> Settings:
    return make_settings(
        broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}", separation=False, max_attempts=2,
        **overrides,
    )  # fmt: skip


@pytest.fixture
def env(make_settings: Callable[..., Settings]) -> Iterator[dict]:
    yield from _env(_settings(make_settings))


@pytest.fixture
def pg_env(make_settings: Callable[..., Settings], pg_server: Any) -> Iterator[dict]:
    """`env` on a PostgreSQL database of its own (faults are injected there by triggers)."""
    url = pg_server.create("_tasks")
    try:
        yield from _env(
            _settings(make_settings, database_url=url.render_as_string(hide_password=False))
        )
    finally:
        pg_server.drop(url)


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
        assert s.scalar(LOGMEL_ROWS) == 1
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


# --- transient faults and configuration errors ---------------------------------------------------


def _blips_on_features_insert(engine, n: int) -> None:  # type: ignore[no-untyped-def]
    """The next `n` inserts into `features` fail with a real serialization failure (SQLSTATE
    40001, a transient error a busy PostgreSQL raises); a sequence counts them, since it is
    not rolled back with the failed transaction."""
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SEQUENCE blip_seq")
        conn.exec_driver_sql(
            "CREATE FUNCTION blip() RETURNS trigger AS $$ BEGIN "
            f"IF nextval('blip_seq') <= {n} THEN "
            "RAISE EXCEPTION 'database blip' USING ERRCODE = '40001'; END IF; "
            "RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER blip BEFORE INSERT ON features FOR EACH ROW EXECUTE FUNCTION blip()"
        )


def test_retries_after_transient_faults_do_not_count_as_poison(pg_env: dict) -> None:
    """Three database blips in a row while its features are written, SCORER_MAX_ATTEMPTS=2: the
    task retries (eagerly, as a worker would after the backoff) and the snippet is scored,
    not failed as a poison message."""
    engine, tasks = pg_env["engine"], pg_env["tasks"]
    data = wav_bytes(30)
    sha = add(engine, data)
    _blips_on_features_insert(engine, 3)
    result = tasks.preprocess_task.apply((sha, data, "good.wav"), task_id="t-blips")
    assert result.successful(), result.traceback
    row = snippet(engine, sha)
    assert (row.status, row.attempts, row.in_flight) == (SnippetStatus.preprocessed, 0, None)
    with engine.connect() as conn:  # the fault really happened three times, then the inserts
        rows = conn.execute(  # of the good try went through (log-mel, and voice features)
            select(func.count()).select_from(Feature).where(Feature.sha256 == sha)
        ).scalar_one()
        assert rows >= 1
        assert conn.exec_driver_sql("SELECT last_value FROM blip_seq").scalar_one() == 3 + rows


def test_only_a_delivery_that_died_mid_work_counts(env: dict) -> None:
    """A token left behind by the same message (a redelivery after a death) counts; the token
    of the delivery this one retries after a transient fault does not."""
    engine, tasks = env["engine"], env["tasks"]
    died, retried = wav_bytes(31), wav_bytes(32)
    died_sha, retried_sha = add(engine, died, attempts=1), add(engine, retried, attempts=1)
    with make_sessionmaker(engine).begin() as s:
        for sha, token in ((died_sha, "t-died:0"), (retried_sha, "t-retry:0")):
            s.execute(
                Snippet.__table__.update().where(Snippet.sha256 == sha).values(in_flight=token)
            )
    tasks.preprocess_task.apply((died_sha, died, "died.wav"), task_id="t-died")
    tasks.preprocess_task.apply((retried_sha, retried, "retried.wav"), task_id="t-retry", retries=1)
    row = snippet(engine, died_sha)
    assert (row.status, row.attempts) == (SnippetStatus.failed, 2)
    assert row.error.startswith("gave up after 2 deliveries")
    row = snippet(engine, retried_sha)
    assert (row.status, row.attempts, row.in_flight) == (SnippetStatus.preprocessed, 0, None)


def _preprocessed(env: dict, seed: int) -> str:
    data = wav_bytes(seed)
    sha = add(env["engine"], data)
    env["tasks"].preprocess_task(sha, data, f"{seed}.wav")
    env["redis"].delete("infer")
    return sha


def test_a_missing_model_folder_is_a_configuration_error(
    env: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """A GPU host without the shared model folder: a clear reason in the log, the snippet
    waits (its message is sent again later), nothing is counted against it."""
    tasks = env["tasks"]
    sha = _preprocessed(env, 33)
    shutil.rmtree(env["settings"].resolved_model_dir / "vt")
    with pytest.raises(ScorerError, match="cannot be loaded on this host"):
        tasks.infer_shas(tasks.ctx(), [sha])
    tasks.handle_infer(tasks.ctx(), [(sha, "i-1", None)])
    row = snippet(env["engine"], sha)
    assert (row.status, row.attempts, row.in_flight) == (SnippetStatus.preprocessed, 0, None)
    assert env["redis"].llen("infer") == 1  # sent again, to wait for the folder
    assert "SCORER_MODEL_DIR" in caplog.text and "1 snippets wait" in caplog.text


def test_weights_of_other_classes_score_nothing(env: dict) -> None:
    """The row says one class order, the folder holds another: no label would be right."""
    tasks, engine = env["tasks"], env["engine"]
    sha = _preprocessed(env, 34)
    with make_sessionmaker(engine).begin() as s:
        s.execute(ModelVersion.__table__.update().values(classes=list(reversed(CLASSES))))
    with pytest.raises(ScorerError, match=r"have classes .* but the model version says"):
        tasks.infer_shas(tasks.ctx(), [sha])
    row = snippet(engine, sha)
    assert (row.status, row.attempts) == (SnippetStatus.preprocessed, 0)
    with make_sessionmaker(engine)() as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == 0


def test_voice_features_through_the_tasks(make_settings: Callable[..., Settings]) -> None:
    """The Celery path of voice features: the CPU task stores them beside the log-mel, the GPU
    task scores with the model's voice head (real CREPE and resemblyzer weights)."""
    import torch

    from pipeline.voice import VoiceConfig
    from training.ensemble import load_ensemble
    from training.voice_head import VoiceHead

    settings = _settings(make_settings, voice_features=True)
    for env in _env(settings):
        fe = FrontendConfig(separation=False).version
        version = VoiceConfig().version(fe)
        folder = settings.resolved_model_dir / "vt"
        dim = VoiceConfig().dim
        g = torch.Generator().manual_seed(0)
        VoiceHead(torch.zeros(dim), torch.ones(dim), torch.randn(4, dim, generator=g),
                  torch.zeros(4), fusion_weight=0.7).save(folder)  # fmt: skip
        meta_path = folder / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta["voice"] = {"version": version, "fusion_weight": 0.7}
        meta_path.write_text(json.dumps(meta))
        data = wav_bytes(7)
        sha = add(env["engine"], data)
        env["tasks"].preprocess_task(sha, data, "a.wav")
        with make_sessionmaker(env["engine"])() as s:
            mel = queries.load_features(s, [sha], fe)[sha]
            voice = queries.load_features(s, [sha], version)[sha]
        assert voice.shape == (1, 1, dim) and np.isfinite(voice).all()
        tasks = env["tasks"]
        tasks.handle_infer(tasks.ctx(), [(sha, None, None)])
        with make_sessionmaker(env["engine"])() as s:
            stmt = select(Prediction.probabilities).where(Prediction.sha256 == sha)
            got = s.scalars(stmt).first()
        ens = load_ensemble(folder, "cpu", amp=settings.infer_amp)  # as the GPU task loads it
        x = torch.from_numpy(mel.astype(np.float32))
        fused = ens.predict(x, torch.from_numpy(voice[:, 0].astype(np.float32)))["proba"][0]
        plain = ens.predict(x)["proba"][0]
        np.testing.assert_allclose(got, fused.numpy(), atol=2e-5)
        assert not np.allclose(got, plain.numpy(), atol=1e-3)
