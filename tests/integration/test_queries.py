"""scorer.db.queries and the training-job claim against real SQLite and PostgreSQL databases."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from scorer.db import queries
from scorer.db.models import (
    FILE_WINDOW,
    Feature,
    JobStatus,
    ModelVersion,
    Prediction,
    Snippet,
    SnippetStatus,
    TrainingJob,
    utcnow,
)
from worker.training_job import claim, create_job

CLASSES = ["female", "male"]


def sha(n: int) -> str:
    return f"{n:064x}"


def snippet(n: int, **extra: Any) -> dict[str, Any]:
    return {"sha256": sha(n), "source_path": f"/music/{n}.mp3", "size_bytes": 1000 + n, **extra}


def add_model(session: Session, name: str = "v1", active: bool = False) -> ModelVersion:
    mv = ModelVersion(
        name=name,
        classes=CLASSES,
        frontend_version="fe1",
        frontend={"sr": 16000},
        members=1,
        params={},
        metrics={},
        weights_uri=name,
        active=active,
    )
    session.add(mv)
    session.flush()
    return mv


def prediction(n: int, window: int, model_id: int, p_female: float = 0.8) -> dict[str, Any]:
    probs = [p_female, round(1.0 - p_female, 6)]
    k = int(np.argmax(probs))
    return {
        "sha256": sha(n),
        "window_index": window,
        "start_s": max(window, 0) * 3.0,
        "model_version_id": model_id,
        "probabilities": probs,
        "label": CLASSES[k],
        "confidence": probs[k],
        "disagreement": 0.1,
        "entropy": 0.5 - abs(p_female - 0.5),
    }


def count(session: Session, model: type, **where: Any) -> int:
    stmt = select(func.count()).select_from(model).filter_by(**where)
    return session.scalar(stmt) or 0


# --- snippets -----------------------------------------------------------------------------------


def test_add_snippets_is_insert_or_ignore(session: Session) -> None:
    assert queries.add_snippets(session, [snippet(1), snippet(2)]) == {sha(1), sha(2)}
    again = [snippet(1, source_path="/elsewhere/1.mp3"), snippet(3)]

    assert queries.add_snippets(session, again) == {sha(3)}

    assert count(session, Snippet) == 3
    first = session.scalars(select(Snippet).where(Snippet.sha256 == sha(1))).one()
    assert first.source_path == "/music/1.mp3"  # a known sha keeps where it was first seen
    assert first.status == SnippetStatus.queued
    assert first.attempts == 0


def test_add_snippets_empty_and_duplicates_within_one_call(session: Session) -> None:
    assert queries.add_snippets(session, []) == set()
    assert queries.add_snippets(session, [snippet(1), snippet(1)]) == {sha(1)}
    assert count(session, Snippet) == 1


def test_a_label_given_later_fills_in(session: Session) -> None:
    queries.add_snippets(session, [snippet(1)])

    assert queries.add_snippets(session, [snippet(1, label="female", group="singer-7")]) == set()
    # no label now: the stored one stays
    assert queries.add_snippets(session, [snippet(1, label=None)]) == set()

    row = session.scalars(select(Snippet).where(Snippet.sha256 == sha(1))).one()
    assert (row.label, row.group) == ("female", "singer-7")


def test_add_snippets_with_labels_on_some_rows_only(session: Session) -> None:
    rows = [snippet(1, label="female"), snippet(2), snippet(3, group="g")]

    assert queries.add_snippets(session, rows) == {sha(1), sha(2), sha(3)}

    got = session.execute(select(Snippet.sha256, Snippet.label, Snippet.group)).all()
    assert sorted(got) == [(sha(1), "female", None), (sha(2), None, None), (sha(3), None, "g")]


def test_add_snippets_many_rows_in_one_call(session: Session) -> None:
    """More rows than one statement may bind (SQLite: 32766 parameters)."""
    n = 5_000  # x 7 columns: past SQLite's 32766 if sent as one multi-row VALUES
    assert len(queries.add_snippets(session, [snippet(i) for i in range(n)])) == n
    assert len(queries.add_snippets(session, [snippet(i) for i in range(n + 5)])) == 5
    assert count(session, Snippet) == n + 5


def test_status_counts_and_failures(session: Session) -> None:
    queries.add_snippets(session, [snippet(i) for i in range(5)])
    queries.set_status(session, [sha(1), sha(2)], SnippetStatus.preprocessed, n_windows=4)
    queries.set_status(session, [sha(2)], SnippetStatus.scored)
    queries.mark_failed(session, sha(3), "cannot decode /music/3.mp3: not audio\ntraceback...")

    assert queries.status_counts(session) == {
        "queued": 2,
        "preprocessed": 1,
        "scored": 1,
        "failed": 1,
    }
    assert queries.failures(session) == [("/music/3.mp3", "cannot decode /music/3.mp3: not audio")]
    assert session.scalar(select(Snippet.n_windows).where(Snippet.sha256 == sha(1))) == 4


def test_status_counts_empty(session: Session) -> None:
    assert queries.status_counts(session) == {}


# --- features -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_windows", [1, 7])
def test_features_round_trip_exactly(session: Session, n_windows: int) -> None:
    rng = np.random.default_rng(n_windows)
    windows = (rng.standard_normal((n_windows, 299, 40)) * 20).astype(np.float16)
    windows[0, 0, :4] = [np.inf, -np.inf, 6e-8, 65504.0]  # extremes survive too
    queries.add_snippets(session, [snippet(1)])

    queries.store_features(session, sha(1), "fe1", windows)
    queries.store_features(session, sha(1), "fe1", np.zeros_like(windows))  # ignored: first wins

    assert count(session, Feature) == 1
    got = queries.load_features(session, [sha(1), sha(2)], "fe1")
    assert list(got) == [sha(1)]
    assert got[sha(1)].dtype == np.float16
    assert got[sha(1)].shape == (n_windows, 299, 40)
    assert got[sha(1)].tobytes() == windows.tobytes()
    assert queries.load_features(session, [sha(1)], "fe2") == {}
    assert queries.shas_with_features(session, [sha(1), sha(2)], "fe1") == {sha(1)}


def test_features_bytes_are_little_endian_float16(session: Session) -> None:
    queries.add_snippets(session, [snippet(1)])
    windows = np.full((1, 299, 40), 1.5, dtype=np.float16)
    queries.store_features(session, sha(1), "fe1", windows)

    row = session.scalars(select(Feature)).one()

    assert (row.n_windows, row.n_frames, row.n_mels, row.dtype) == (1, 299, 40, "float16")
    assert len(row.data) == 299 * 40 * 2
    assert bytes(row.data[:2]) == b"\x00\x3e"  # 1.5 in IEEE half, little-endian


def test_another_frontend_version_is_another_row(session: Session) -> None:
    queries.add_snippets(session, [snippet(1)])
    queries.store_features(session, sha(1), "fe1", np.zeros((2, 299, 40), np.float16))
    queries.store_features(session, sha(1), "fe2", np.ones((3, 299, 40), np.float16))

    assert count(session, Feature) == 2
    assert queries.load_features(session, [sha(1)], "fe2")[sha(1)].shape == (3, 299, 40)


# --- predictions and model versions -------------------------------------------------------------


def test_upsert_predictions_writes_each_key_once(session: Session) -> None:
    queries.add_snippets(session, [snippet(1)])
    v1, v2 = add_model(session, "v1"), add_model(session, "v2")
    rows = [prediction(1, w, v1.id) for w in (FILE_WINDOW, 0, 1)]

    queries.upsert_predictions(session, rows)
    queries.upsert_predictions(session, rows)  # a redelivered message
    queries.upsert_predictions(session, [])

    assert count(session, Prediction) == 3
    queries.upsert_predictions(session, [prediction(1, FILE_WINDOW, v2.id, p_female=0.3)])
    assert count(session, Prediction, sha256=sha(1), window_index=FILE_WINDOW) == 2
    assert count(session, Prediction, model_version_id=v2.id) == 1
    assert queries.shas_scored_by(session, [sha(1), sha(2)], v1.id) == {sha(1)}


def test_probabilities_round_trip_as_a_json_list(session: Session) -> None:
    queries.add_snippets(session, [snippet(1)])
    v1 = add_model(session)
    queries.upsert_predictions(session, [prediction(1, FILE_WINDOW, v1.id, p_female=0.123456)])

    probs = session.scalar(select(Prediction.probabilities))

    assert probs == [0.123456, 0.876544]


def test_activate_model_leaves_exactly_one_active(session: Session) -> None:
    v1 = add_model(session, "v1", active=True)
    v2 = add_model(session, "v2", active=True)
    v3 = add_model(session, "v3")

    queries.activate_model(session, v3.id)
    assert count(session, ModelVersion, active=True) == 1
    assert queries.active_model(session).id == v3.id  # type: ignore[union-attr]

    queries.activate_model(session, v1.id)
    session.expire_all()
    assert [m.name for m in session.scalars(select(ModelVersion).filter_by(active=True))] == ["v1"]
    assert queries.model_by_name_or_id(session, "v2").id == v2.id  # type: ignore[union-attr]
    assert queries.model_by_name_or_id(session, str(v3.id)).name == "v3"  # type: ignore[union-attr]
    assert queries.model_by_name_or_id(session, "nope") is None


def test_no_active_model(session: Session) -> None:
    add_model(session)
    assert queries.active_model(session) is None


def test_results_per_file_versus_windows(session: Session) -> None:
    queries.add_snippets(session, [snippet(1, label="female"), snippet(2)])
    v1 = add_model(session)
    queries.upsert_predictions(
        session,
        [prediction(1, w, v1.id, 0.9) for w in (FILE_WINDOW, 0, 1, 2)]
        + [prediction(2, w, v1.id, 0.45) for w in (FILE_WINDOW, 0)],
    )

    files = queries.results(session, v1.id)
    windows = queries.results(session, v1.id, windows=True)

    assert [(r["sha256"], r["window_index"]) for r in files] == [(sha(1), -1), (sha(2), -1)]
    assert [(r["sha256"], r["window_index"]) for r in windows] == [
        (sha(1), 0),
        (sha(1), 1),
        (sha(1), 2),
        (sha(2), 0),
    ]
    assert files[0]["true_label"] == "female"
    assert files[0]["label"] == "female"
    assert files[0]["source_path"] == "/music/1.mp3"
    assert [r["sha256"] for r in queries.results(session, v1.id, label="male")] == [sha(2)]
    most_uncertain = queries.results(session, v1.id, uncertain=True, limit=1)
    assert [r["sha256"] for r in most_uncertain] == [sha(2)]


# --- constraints --------------------------------------------------------------------------------


def raw_row(table: str, model_id: int) -> tuple[type, dict[str, Any]]:
    """A complete row for a plain INSERT, bypassing the query functions' ON CONFLICT."""
    now = utcnow()
    if table == "snippets":
        return Snippet, {**snippet(2), "status": "queued", "attempts": 0, "created_at": now,
                         "updated_at": now}  # fmt: skip
    if table == "features":
        shape = {"n_windows": 0, "n_frames": 299, "n_mels": 40, "dtype": "float16", "data": b""}
        return Feature, {"sha256": sha(1), "frontend_version": "fe1", **shape, "created_at": now}
    if table == "predictions":
        return Prediction, {**prediction(1, FILE_WINDOW, model_id), "created_at": now}
    return ModelVersion, {
        "name": "dup", "classes": CLASSES, "frontend_version": "fe1", "frontend": {},
        "members": 1, "params": {}, "metrics": {}, "weights_uri": "dup", "active": False,
        "created_at": now,
    }  # fmt: skip


@pytest.mark.parametrize("table", ["snippets", "features", "predictions", "model_versions"])
def test_unique_constraints_hold(session: Session, table: str) -> None:
    queries.add_snippets(session, [snippet(1)])
    model, row = raw_row(table, add_model(session).id)
    session.execute(insert(model).values(row))

    with pytest.raises(IntegrityError, match=r"(?i)unique"):
        session.execute(insert(model).values(row))


def test_foreign_keys_are_enforced(session: Session) -> None:
    """SQLite enforces them only with PRAGMA foreign_keys=ON, which make_engine sets."""
    with pytest.raises(IntegrityError):
        queries.store_features(session, sha(99), "fe1", np.zeros((1, 299, 40), np.float16))


# --- training jobs ------------------------------------------------------------------------------


def test_claim_takes_pending_jobs_in_order(session: Session) -> None:
    first = create_job(session, {"n": 1})
    second = create_job(session, {"n": 2})

    got = claim(session, "w1")

    assert got is not None and got.id == first.id
    # A claim moves the fencing token on; only a takeover of a dead owner counts as an attempt.
    assert (got.status, got.worker, got.attempts, got.claim) == (JobStatus.running, "w1", 0, 1)
    assert got.heartbeat_at is not None and got.started_at is not None
    assert claim(session, "w2", job_id=second.id) is second
    assert claim(session, "w3") is None


def test_a_stale_running_job_is_claimable_again(session: Session) -> None:
    job = create_job(session, {})
    assert claim(session, "dead-worker") is job
    job.heartbeat_at = utcnow() - timedelta(minutes=10)
    session.flush()

    again = claim(session, "w2", stale_after_s=120)

    assert again is job
    assert (again.worker, again.attempts, again.claim) == ("w2", 1, 2)


def test_a_fresh_running_job_is_not_claimable(session: Session) -> None:
    job = create_job(session, {})
    claim(session, "w1")
    job.heartbeat_at = utcnow() - timedelta(seconds=30)
    session.flush()

    assert claim(session, "w2", stale_after_s=120) is None


@pytest.mark.parametrize("status", [JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled])
def test_finished_jobs_are_never_claimed(session: Session, status: JobStatus) -> None:
    job = create_job(session, {})
    job.status = status
    session.flush()

    assert claim(session, "w1") is None


def _blocked_fast(s: Session) -> None:
    """Without SKIP LOCKED the second claim would wait; make that an error, not a hang."""
    s.execute(text("SET LOCAL lock_timeout = '2s'"))


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
def test_concurrent_claims_skip_locked_rows(engine: Engine) -> None:
    with Session(engine) as s, s.begin():
        ids = {create_job(s, {"n": 1}).id, create_job(s, {"n": 2}).id}

    with Session(engine) as a, Session(engine) as b:
        _blocked_fast(b)
        job_a = claim(a, "A")  # A holds its row lock: no commit yet
        job_b = claim(b, "B")
        assert job_a is not None and job_b is not None
        taken = {job_a.id: "A", job_b.id: "B"}
        assert set(taken) == ids
        a.commit()
        b.commit()

    with Session(engine) as s:
        workers = dict(s.execute(select(TrainingJob.id, TrainingJob.worker)).all())
    assert workers == taken


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
def test_a_job_locked_by_another_claim_is_not_taken(engine: Engine) -> None:
    with Session(engine) as s, s.begin():
        job_id = create_job(s, {}).id

    with Session(engine) as a, Session(engine) as b:
        _blocked_fast(b)
        assert claim(a, "A") is not None
        assert claim(b, "B") is None
        a.rollback()  # A's worker gave up before committing: the job is free again
        got = claim(b, "B")
        assert got is not None and got.id == job_id
        b.commit()
