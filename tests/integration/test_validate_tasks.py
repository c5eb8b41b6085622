"""A malformed message fails its own item with the reason, through the real task and a real
SQLite database; a good row is never failed by someone else's bad message."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from pipeline.frontend import FrontendConfig
from scorer.db import queries
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.migrate import upgrade
from scorer.db.models import Feature, Snippet, SnippetStatus
from scorer.settings import Settings
from worker.validate import accepted_infer

# log-mel feature rows (voice features, when on, are rows of their own, "vf-...")
LOGMEL_ROWS = select(func.count()).select_from(Feature).where(Feature.frontend_version.like("fe-%"))


@pytest.fixture
def tasks(make_settings: Callable[..., Settings]) -> Iterator:  # type: ignore[type-arg]
    settings = make_settings(broker_url="redis://127.0.0.1:6379/11", separation=False)
    upgrade(make_engine(settings))
    from worker.celery_app import make_celery

    make_celery(settings)  # the current app: the tasks read their settings from it
    import worker.tasks as tasks

    tasks._ctx = None
    yield tasks
    if tasks._ctx is not None:
        tasks._ctx.engine.dispose()
    tasks._ctx = None


def add(tasks, name: str, status: SnippetStatus = SnippetStatus.queued) -> str:  # type: ignore[no-untyped-def]
    sha = hashlib.sha256(name.encode()).hexdigest()
    with tasks.ctx().sessions.begin() as s:
        queries.add_snippets(s, [{"sha256": sha, "source_path": name, "size_bytes": 1}])
        queries.set_status(s, [sha], status)
    return sha


def row(tasks, sha: str) -> Snippet:  # type: ignore[no-untyped-def]
    with tasks.ctx().sessions() as s:
        return s.scalars(select(Snippet).where(Snippet.sha256 == sha)).one()


def test_a_front_end_with_unknown_or_unbounded_fields_fails_its_item(tasks) -> None:  # type: ignore[no-untyped-def]
    evil = {**FrontendConfig().to_dict(), "evil": 1}
    huge = {**FrontendConfig().to_dict(), "window_samples": 10**12}
    a, b = add(tasks, "a.wav"), add(tasks, "b.wav")
    tasks.preprocess_task(a, b"RIFF", "a.wav", evil)  # returns: no exception, no retry
    tasks.preprocess_task(b, b"RIFF", "b.wav", huge)
    assert row(tasks, a).status == SnippetStatus.failed
    assert row(tasks, a).error == "invalid front end: unknown keys evil"
    assert row(tasks, b).status == SnippetStatus.failed
    assert row(tasks, b).error.startswith("invalid front end: window_samples=1000000000000")
    with tasks.ctx().sessions() as s:
        assert s.scalar(LOGMEL_ROWS) == 0


def test_a_bad_message_never_fails_a_finished_row(tasks) -> None:  # type: ignore[no-untyped-def]
    done = add(tasks, "done.wav", SnippetStatus.scored)
    tasks.preprocess_task(done, b"", "done.wav", {"n_fft": 2**40})
    assert row(tasks, done).status == SnippetStatus.scored and row(tasks, done).error is None


def test_an_infer_batch_drops_only_its_malformed_requests(tasks) -> None:  # type: ignore[no-untyped-def]
    good, bad = (
        add(tasks, "g.wav", SnippetStatus.preprocessed),
        add(tasks, "x.wav", SnippetStatus.preprocessed),
    )
    requests = [
        SimpleNamespace(args=[good], kwargs={}),
        SimpleNamespace(args=[bad], kwargs={"after": "t:0", "size": 10**9}),
        SimpleNamespace(args=["not a sha"], kwargs={}),
    ]
    kept = accepted_infer(tasks.ctx().sessions, requests)
    assert [r.args[0] for r in kept] == [good]
    assert row(tasks, bad).status == SnippetStatus.failed
    assert "only the keyword 'after'" in row(tasks, bad).error
    assert row(tasks, good).status == SnippetStatus.preprocessed
    with make_sessionmaker(tasks.ctx().engine)() as s:
        assert s.scalar(select(func.count()).select_from(Snippet)) == 2
