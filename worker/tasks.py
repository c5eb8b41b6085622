"""The Celery tasks: thin wrappers around worker/stages.py.

`scorer.preprocess` (CPU workers, prefork): {sha, audio bytes, name} -> features row -> publish
`scorer.infer` {sha}. `scorer.infer` (GPU worker, solo pool): gathered by celery-batches into
batches of up to SCORER_INFER_BATCH messages or SCORER_BATCH_FLUSH_MS, one ensemble forward per
batch, bulk upsert. Both are idempotent: a redelivered message finds its row done and does
nothing, so acks_late redelivery after a crash is safe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from celery import current_app, shared_task
from celery.signals import worker_process_init
from celery_batches import Batches
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from pipeline.frontend import FrontendConfig
from scorer.db import queries
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.models import ModelVersion, Snippet, SnippetStatus
from scorer.settings import Settings
from worker.celery_app import INFER_TASK, PREPROCESS_TASK
from worker.runtime import Runtime, configure_threads, frontend_from_settings
from worker.stages import Item, preprocess, save_preprocessed, score

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, BrokerError, ConnectionError)
"""Faults worth a retry: the database or the broker is away for a moment."""


@dataclass
class Context:
    """Per-process state, built on first use in the process that runs tasks (after the fork)."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    runtimes: dict[str, Runtime] = field(default_factory=dict)

    def runtime(self, frontend: FrontendConfig) -> Runtime:
        if frontend.version not in self.runtimes:
            self.runtimes[frontend.version] = Runtime(self.settings, frontend_override=frontend)
        return self.runtimes[frontend.version]


_ctx: Context | None = None


def ctx() -> Context:
    global _ctx
    if _ctx is None:
        settings: Settings = current_app.conf.scorer_settings
        engine = make_engine(settings)
        _ctx = Context(settings, engine, make_sessionmaker(engine))
    return _ctx


@worker_process_init.connect
def _after_fork(**_: object) -> None:
    """A prefork child: its own engine and torch threads (never the parent's connections)."""
    global _ctx
    _ctx = None
    settings: Settings = current_app.conf.scorer_settings
    configure_threads(settings)


def _frontend_for(model: ModelVersion | None, settings: Settings) -> FrontendConfig:
    return FrontendConfig.from_dict(model.frontend) if model else frontend_from_settings(settings)


def _gave_up(attempts: int) -> str:
    return (
        f"gave up after {attempts} deliveries: the worker stopped while processing it each time "
        "(out of memory or a crash?)"
    )


@shared_task(
    name=PREPROCESS_TASK,
    bind=True,
    autoretry_for=TRANSIENT,
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=8,
)
def preprocess_task(  # type: ignore[no-untyped-def]
    self, sha: str, data: bytes, name: str, frontend: dict | None = None
) -> None:
    """Decode, separate, featurise one snippet; publish it for inference.

    `frontend`: the front-end parameters the producer wants (the active model's, or the
    settings' for training data); without it, the active model's at the time of the work.
    """
    c = ctx()
    with c.sessions.begin() as s:
        snip = s.scalars(select(Snippet).where(Snippet.sha256 == sha)).first()
        if snip is None:  # published by someone who did not write the row first: write it now
            queries.add_snippets(s, [{"sha256": sha, "source_path": name, "size_bytes": len(data)}])
            snip = s.scalars(select(Snippet).where(Snippet.sha256 == sha)).one()
        if snip.status == SnippetStatus.failed:
            return
        model = queries.active_model(s)
        wanted = (
            FrontendConfig.from_dict(frontend) if frontend else _frontend_for(model, c.settings)
        )
        if sha in queries.shas_with_features(s, [sha], wanted.version):
            has_features = True
        else:
            has_features = False
            if snip.attempts >= c.settings.max_attempts:
                queries.mark_failed(s, sha, _gave_up(snip.attempts))
                return
            snip.attempts += 1  # committed before the work: a crash mid-work still counts
    if not has_features:
        results = preprocess(c.runtime(wanted), [Item(sha, data, name)])
        with c.sessions.begin() as s:
            save_preprocessed(s, wanted.version, results)
        if results[0].error is not None:
            return
    if model is not None and model.frontend_version == wanted.version:
        infer_task.apply_async((sha,))  # after the commit, so the GPU worker finds the row


@shared_task(base=Batches, name=INFER_TASK, flush_every=64, flush_interval=0.2)
def infer_task(requests) -> None:  # type: ignore[no-untyped-def]
    """One batch of {sha} messages: one fused forward of the ensemble, one bulk upsert."""
    shas = list(dict.fromkeys(r.args[0] for r in requests if r.args))
    try:
        infer_shas(ctx(), shas)
    except TRANSIENT as exc:
        log.warning("database or broker away (%s); re-publishing %d snippets", exc, len(shas))
        for sha in shas:
            infer_task.apply_async((sha,), countdown=10)


def infer_shas(c: Context, shas: list[str]) -> None:
    """Score `shas` with the active model; redelivered or already scored ones are skipped."""
    with c.sessions.begin() as s:
        model = queries.active_model(s)
        if model is None:
            log.warning("no active model: %d snippets stay preprocessed", len(shas))
            return
        rows = s.execute(
            select(Snippet.sha256, Snippet.status, Snippet.attempts).where(Snippet.sha256.in_(shas))
        ).all()
        done = queries.shas_scored_by(s, shas, model.id)
        have = queries.shas_with_features(s, shas, model.frontend_version)
        todo = []
        for sha, status, attempts in rows:
            if status == SnippetStatus.failed or sha in done:
                continue
            if sha not in have:  # features of another front end: reconcile re-preprocesses it
                queries.set_status(s, [sha], SnippetStatus.queued, error=None)
                continue
            if attempts >= c.settings.max_attempts:
                queries.mark_failed(s, sha, _gave_up(attempts))
                continue
            todo.append(sha)
        if todo:
            for sha in todo:
                s.execute(
                    Snippet.__table__.update()
                    .where(Snippet.sha256 == sha)
                    .values(attempts=Snippet.attempts + 1)
                )
    if not todo:
        return
    rt = c.runtime(FrontendConfig.from_dict(model.frontend))
    try:
        with c.sessions.begin() as s:
            score(s, rt, model, todo)
    except TRANSIENT:
        raise
    except (DBAPIError, ValueError, RuntimeError) as exc:
        # The batch boundary: find the bad item by scoring one at a time; the rest is scored.
        log.warning("batch of %d failed (%s); scoring one by one", len(todo), exc)
        for sha in todo:
            try:
                with c.sessions.begin() as s:
                    score(s, rt, model, [sha])
            except TRANSIENT:
                raise
            except (DBAPIError, ValueError, RuntimeError) as item_exc:
                with c.sessions.begin() as s:
                    queries.mark_failed(s, sha, f"inference failed: {item_exc}")
