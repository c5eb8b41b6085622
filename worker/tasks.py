"""The Celery tasks: thin wrappers around worker/stages.py.

`scorer.preprocess` (CPU workers, prefork): {sha, audio bytes or a shared path, name} ->
features row -> publish `scorer.infer` {sha}. `scorer.infer` (GPU worker, solo pool): gathered
by celery-batches into batches of up to SCORER_INFER_BATCH messages or SCORER_BATCH_FLUSH_MS, one
ensemble forward per batch, bulk upsert. Both are idempotent: a redelivered message finds its row
done and does nothing, so acks_late redelivery after a crash is safe.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from celery import current_app, shared_task
from celery.signals import worker_process_init
from celery_batches import Batches
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from pipeline.frontend import FrontendConfig
from scorer.db import queries
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.models import ModelVersion, Snippet, SnippetStatus
from scorer.errors import ScorerError
from scorer.settings import Settings
from worker import metrics
from worker.celery_app import INFER_TASK, PREPROCESS_TASK, SENT_AT_HEADER
from worker.inputs import FileRef, size_of
from worker.runtime import ModelUnavailable, Runtime, configure_threads, frontend_from_settings
from worker.stages import Item, preprocess, save_preprocessed, score
from worker.validate import accepted_infer, rejected_preprocess

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


CONFIG_RETRY_S = 60
"""A configuration fault (model weights missing on this host): messages come back this late."""


def poison_count(in_flight: str | None, after: str | None, attempts: int) -> int:
    """`attempts` counting this delivery's evidence of a death mid-work.

    `in_flight` is the token the last delivery wrote before its work and clears after it; found
    set, that delivery never finished: it died (out of memory, a native crash, a kill). The
    one exception is `after`, the token of the delivery this one retries: it stopped on a
    transient fault (database or broker away) and asked for this retry, so it did not die.
    """
    return attempts + 1 if in_flight is not None and in_flight != after else attempts


def _delivery(request: object) -> tuple[str, str | None]:
    """(this delivery's token, the token of the delivery it retries): an autoretry keeps the
    task id and counts `retries` up; a redelivery after a death repeats both."""
    task_id = getattr(request, "id", None) or uuid.uuid4().hex
    retries = getattr(request, "retries", 0) or 0
    return f"{task_id}:{retries}", f"{task_id}:{retries - 1}" if retries else None


def _clear_in_flight(session: Session, shas: list[str], token: str | None = None) -> None:
    stmt = update(Snippet).where(Snippet.sha256.in_(shas))
    if token is not None:
        stmt = stmt.where(Snippet.in_flight == token)
    session.execute(stmt.values(in_flight=None))


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
    self, sha: str, data: bytes | dict, name: str, frontend: dict | None = None
) -> None:
    """Decode, separate, featurise one snippet; publish it for inference.

    `data`: the file's bytes (up to SCORER_MAX_MESSAGE_MB), or {"path", "size"} where the
    workers share the producer's files (SCORER_SHARED_INPUT): read from the path in blocks,
    after its bytes are checked against `sha` (worker/sources.py).

    `frontend`: the front-end parameters the producer wants (the active model's, or the
    settings' for training data); without it, the active model's at the time of the work.
    """
    metrics.waited("preprocess", getattr(self.request, SENT_AT_HEADER, None))
    if rejected_preprocess(ctx().sessions, sha, data, name, frontend, ctx().settings):
        metrics.failed("preprocess", "invalid")
        return
    c = ctx()
    content = FileRef(data["path"], data["size"]) if isinstance(data, dict) else data
    token, after = _delivery(self.request)
    with c.sessions.begin() as s:
        snip = s.scalars(select(Snippet).where(Snippet.sha256 == sha)).first()
        if snip is None:  # published by someone who did not write the row first: write it now
            queries.add_snippets(
                s, [{"sha256": sha, "source_path": name, "size_bytes": size_of(content)}]
            )
            snip = s.scalars(select(Snippet).where(Snippet.sha256 == sha)).one()
        if snip.status == SnippetStatus.failed:
            return
        model = queries.active_model(s)
        wanted = (
            FrontendConfig.from_dict(frontend) if frontend else _frontend_for(model, c.settings)
        )
        has_features = sha in queries.shas_with_features(s, [sha], wanted.version)
    if not has_features:
        rt = c.runtime(wanted)
        try:
            rt.separator  # noqa: B018  (loaded before anything is counted: a fault of this host)
        except (ScorerError, OSError) as exc:
            log.error("cannot separate on this host (%s); snippet %s waits", exc, sha[:12])
            metrics.failed("preprocess", "config")
            raise self.retry(exc=exc, countdown=CONFIG_RETRY_S) from exc
        with c.sessions.begin() as s:
            snip = s.scalars(select(Snippet).where(Snippet.sha256 == sha)).one()
            attempts = poison_count(snip.in_flight, after, snip.attempts)
            if attempts >= c.settings.max_attempts:
                queries.mark_failed(s, sha, _gave_up(attempts))
                snip.attempts, snip.in_flight = attempts, None
                metrics.failed("preprocess", "poison")
                return
            # Committed before the work: a delivery that dies mid-work leaves its token behind.
            snip.attempts, snip.in_flight = attempts, token
            snip.preprocess_runs = Snippet.preprocess_runs + 1  # work done, counted in SQL
        results = preprocess(rt, [Item(sha, content, name)])
        with c.sessions.begin() as s:
            save_preprocessed(s, wanted.version, results, rt.voice_version)
            _clear_in_flight(s, [sha], token)
        if results[0].error is not None:
            metrics.failed("preprocess", metrics.failure_reason(results[0].error, name))
            return
    metrics.done("preprocess")
    if model is not None and model.frontend_version == wanted.version:
        infer_task.apply_async((sha,))  # after the commit, so the GPU worker finds the row


@shared_task(base=Batches, name=INFER_TASK, flush_every=64, flush_interval=0.2)
def infer_task(requests) -> None:  # type: ignore[no-untyped-def]
    """One batch of {sha} messages: one fused forward of the ensemble, one bulk upsert."""
    metrics.BATCH_SIZE.observe(len(requests))
    for r in requests:
        metrics.waited("infer", (getattr(r, "request_dict", None) or {}).get(SENT_AT_HEADER))
    n = len(requests)
    requests = accepted_infer(ctx().sessions, requests)
    if len(requests) < n:
        metrics.failed("infer", "invalid", n - len(requests))
    handle_infer(
        ctx(), [(r.args[0], r.id, (r.kwargs or {}).get("after")) for r in requests if r.args]
    )


def handle_infer(c: Context, deliveries: list[tuple[str, str | None, str | None]]) -> None:
    """Score a batch of (sha, task id, `after`) deliveries. A transient fault re-publishes each
    sha naming this delivery as the one it retries (so it is not counted as a death); a
    missing or mismatched model re-publishes them later, uncounted, and says so in the log."""
    tokens: dict[str, tuple[str, str | None]] = {}
    for sha, task_id, after in deliveries:
        tokens.setdefault(sha, (f"{task_id or uuid.uuid4().hex}:0", after))
    try:
        infer_shas(c, list(tokens), tokens)
    except ModelUnavailable as exc:
        log.error(
            "configuration: %s; %d snippets wait (sent again in %d s)",
            exc, len(tokens), CONFIG_RETRY_S,
        )  # fmt: skip
        metrics.failed("infer", "config", len(tokens))
        for sha in tokens:
            infer_task.apply_async((sha,), countdown=CONFIG_RETRY_S)
    except TRANSIENT as exc:
        log.warning("database or broker away (%s); re-publishing %d snippets", exc, len(tokens))
        for sha, (token, _) in tokens.items():
            infer_task.apply_async((sha,), {"after": token}, countdown=10)


def infer_shas(
    c: Context, shas: list[str], tokens: dict[str, tuple[str, str | None]] | None = None
) -> None:
    """Score `shas` with the active model; redelivered or already scored ones are skipped.

    `tokens`: per sha, (this delivery's token, the token of the delivery it retries), for
    `poison_count`. Raises ModelUnavailable, before anything is counted, when the model's
    weights are missing here or are not the model version's.
    """
    tokens = tokens or {}
    with c.sessions() as s:
        model = queries.active_model(s)
    if model is None:
        log.warning("no active model: %d snippets stay preprocessed", len(shas))
        return
    rt = c.runtime(FrontendConfig.from_dict(model.frontend))
    rt.ensemble(model.weights_uri, classes=model.classes)
    fallback = (f"{uuid.uuid4().hex}:0", None)
    with c.sessions.begin() as s:
        rows = s.execute(
            select(Snippet.sha256, Snippet.status, Snippet.attempts, Snippet.in_flight).where(
                Snippet.sha256.in_(shas)
            )
        ).all()
        done = queries.shas_scored_by(s, shas, model.id)
        have = queries.shas_with_features(s, shas, model.frontend_version)
        todo = []
        for sha, status, attempts, in_flight in rows:
            if status == SnippetStatus.failed or sha in done:
                continue
            if sha not in have:  # features of another front end: reconcile re-preprocesses it
                queries.set_status(s, [sha], SnippetStatus.queued, error=None)
                continue
            token, after = tokens.get(sha, fallback)
            attempts = poison_count(in_flight, after, attempts)
            if attempts >= c.settings.max_attempts:
                queries.mark_failed(s, sha, _gave_up(attempts))
                s.execute(
                    update(Snippet)
                    .where(Snippet.sha256 == sha)
                    .values(attempts=attempts, in_flight=None)
                )
                metrics.failed("infer", "poison")
                continue
            todo.append(sha)
            s.execute(
                update(Snippet)
                .where(Snippet.sha256 == sha)
                .values(attempts=attempts, in_flight=token, score_runs=Snippet.score_runs + 1)
            )
    if not todo:
        return
    try:
        with c.sessions.begin() as s:
            score(s, rt, model, todo)
            _clear_in_flight(s, todo)
        metrics.done("infer", len(todo))
    except TRANSIENT:
        raise
    except (DBAPIError, ValueError, RuntimeError) as exc:
        # The batch boundary: find the bad item by scoring one at a time; the rest is scored.
        log.warning("batch of %d failed (%s); scoring one by one", len(todo), exc)
        for sha in todo:
            try:
                with c.sessions.begin() as s:
                    score(s, rt, model, [sha])
                    _clear_in_flight(s, [sha])
                metrics.done("infer")
            except TRANSIENT:
                raise
            except (DBAPIError, ValueError, RuntimeError) as item_exc:
                with c.sessions.begin() as s:
                    queries.mark_failed(s, sha, f"inference failed: {item_exc}")
                    _clear_in_flight(s, [sha])
                metrics.failed("infer", metrics.failure_reason(str(item_exc)))
