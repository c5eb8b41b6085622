"""Distributed mode's producer side: store each distinct content once, publish what needs work,
wait (with backpressure) and watch the database until everything is final.

The database decides what to publish, so publishing the same folder twice sends nothing new for
content that is already scored, and `reconcile` can re-publish anything a lost message stranded.
No message carries more than SCORER_MAX_MESSAGE_MB of audio (a larger file goes as its path with
SCORER_SHARED_INPUT, else fails), and backpressure counts the broker's bytes as well as messages.
Each preprocess message carries a time limit that fits its audio's length (`preprocess_limits`).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import Engine, select

from pipeline.decode import open_source
from scorer.db import queries
from scorer.db.engine import make_sessionmaker
from scorer.db.models import Snippet, SnippetStatus, utcnow
from scorer.manifest import Labelled
from scorer.settings import Settings
from worker.celery_app import (
    INFER_TASK,
    PREPROCESS_QUEUE,
    PREPROCESS_TASK,
    queue_depths,
    time_limits,
)
from worker.embedded import RunSummary, ingest, model_and_frontend, snippet_state
from worker.inputs import MB, Content, FileRef, find_source

log = logging.getLogger(__name__)


UNACKED_KEY = "unacked"
"""kombu's Redis hash of delivered, unacknowledged messages (its default `unacked_key`)."""


def queued_bytes(app: Celery) -> int:
    """Bytes the broker holds in preprocess messages: the queue's list and the unacknowledged
    hash, as Redis counts them (MEMORY USAGE, every element: at most a bound's worth)."""
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        keys = (PREPROCESS_QUEUE, UNACKED_KEY)
        return sum(int(client.memory_usage(k, samples=0) or 0) for k in keys)


def message_bytes(audio: bytes | dict) -> int:
    """About what one preprocess message costs the broker: kombu base64-encodes the body."""
    return (len(audio) if isinstance(audio, bytes) else 4096) * 4 // 3 + 2048


def has_room(app: Celery, bound: int, bound_bytes: int | None = None, size: int = 0) -> bool:
    """Is the preprocess queue within `bound` messages and, with `bound_bytes`, the broker's
    preprocess bytes plus `size` within that? An empty queue always has room for one message,
    so a file larger than the byte bound still goes (alone)."""
    depth = queue_depths(app)[PREPROCESS_QUEUE]
    if depth > bound:
        return False
    return bound_bytes is None or depth == 0 or queued_bytes(app) + size <= bound_bytes


def wait_for_room(
    app: Celery,
    bound: int,
    poll_s: float = 0.5,
    *,
    bound_bytes: int | None = None,
    size: int = 0,
) -> None:
    """Backpressure: block while the preprocess queue is longer than `bound` messages or (with
    `bound_bytes`) holds more bytes than that, counting the message about to be sent."""
    while not has_room(app, bound, bound_bytes, size):
        time.sleep(poll_s)


def audio_for_message(settings: Settings, content: Content) -> tuple[bytes | dict | None, str]:
    """(what a preprocess message carries, "") or (None, why the file cannot be sent): bytes
    up to SCORER_MAX_MESSAGE_MB; a larger file as its path where the workers share the files
    (SCORER_SHARED_INPUT), else not at all (Redis's bulk limit is 512 MB, and kombu
    base64-encodes every body)."""
    if isinstance(content, bytes):
        if len(content) <= settings.max_message_mb * MB:
            return content, ""
        size = len(content)
    else:
        if settings.shared_input:
            return {"path": content.path, "size": content.size}, ""
        size = content.size
    return None, (
        f"too large to send: {size / MB:.4g} MB > {settings.max_message_mb:g} MB "
        "(SCORER_MAX_MESSAGE_MB); where the workers see the same files, set "
        "SCORER_SHARED_INPUT=true to send its path instead"
    )


def audio_seconds(content: Content) -> float | None:
    """The file's length from its header (no sample decoded; bytes in memory, or the shared
    path), or None where the header cannot be read: the worker then fails the file with its
    reason, under the default limit, as before."""
    try:
        with open_source(content.path if isinstance(content, FileRef) else content) as f:
            return f.frames / f.samplerate
    except Exception:  # only a hint: any fault here leaves the default limit
        return None


def preprocess_limits(settings: Settings, content: Content, name: str = "") -> dict[str, Any]:
    """`send_task` options: a time limit that fits the file's audio (Celery applies a message's
    own `time_limit`/`soft_time_limit` over the worker's default, and keeps them on retries).
    Lengths over SCORER_MAX_DURATION_S count as that: the worker refuses them at once."""
    seconds = audio_seconds(content)
    if seconds is not None and settings.max_duration_s:
        seconds = min(seconds, settings.max_duration_s)
    hard, soft = time_limits(settings.task_time_limit_s, settings.task_time_per_audio_s, seconds)
    if hard > settings.visibility_timeout_s:
        log.warning(
            "%s: its task may run %d s, over SCORER_VISIBILITY_TIMEOUT_S (%d s): Redis would "
            "deliver it again while it runs; raise SCORER_VISIBILITY_TIMEOUT_S on every host",
            name, hard, settings.visibility_timeout_s,
        )  # fmt: skip
    return {"time_limit": hard, "soft_time_limit": soft}


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def still_running(settings: Settings, paths: Sequence[str], started: datetime) -> bool:
    """Can a delivery that began work at `started` (a queued row with its token in flight) still
    be running, within the time limit of its file? Then re-sending it would start the same work
    twice, and count the running delivery as a death. The length is read from the first path
    whose header reads (a regular file's: never a FIFO's open; no bytes hashed); none: the
    default limit."""
    regular = [p for p in paths if _is_regular(p)]
    seconds = next((d for p in regular if (d := audio_seconds(FileRef(p, 0))) is not None), None)
    if seconds is not None and settings.max_duration_s:
        seconds = min(seconds, settings.max_duration_s)
    hard, _ = time_limits(settings.task_time_limit_s, settings.task_time_per_audio_s, seconds)
    if started.tzinfo is None:  # SQLite hands back naive UTC
        started = started.replace(tzinfo=UTC)
    return utcnow() - started < timedelta(seconds=hard)


def room_for(settings: Settings, app: Celery, audio: bytes | dict, wait: bool) -> bool:
    """Wait for (or, without `wait`, check) room in the queue for this message."""
    bound_bytes, size = int(settings.queue_bound_mb * MB), message_bytes(audio)
    if wait:
        wait_for_room(app, settings.queue_bound, bound_bytes=bound_bytes, size=size)
        return True
    return has_room(app, settings.queue_bound - 1, bound_bytes, size)


def publish(
    settings: Settings,
    engine: Engine,
    app: Celery,
    paths: Sequence[Path],
    labels: dict[Path, Labelled] | None = None,
    *,
    score_with_model: bool = True,
    retry_failed: bool = False,
    progress: Callable[[int], None] | None = None,
) -> RunSummary:
    """Rows first (committed), then messages: a worker always finds the row it is sent."""
    labels = labels or {}
    sessions = make_sessionmaker(engine)
    summary = RunSummary(files=len(paths))
    model, frontend = model_and_frontend(settings, sessions, score_with_model)
    summary.model_name = model.name if model else None
    step = settings.preprocess_batch
    max_bytes = int(settings.max_file_mb * MB)
    keep_bytes = int(settings.max_message_mb * MB)
    for start in range(0, len(paths), step):
        chunk = paths[start : start + step]
        read = ingest(
            sessions, chunk, labels, summary, retry_failed, max_bytes=max_bytes,
            keep_bytes=keep_bytes,
        )  # fmt: skip
        unsendable: dict[str, str] = {}
        with sessions() as s:
            state = snippet_state(s, [sha for _, sha, _, _ in read], frontend.version, model)
        sent: set[str] = set()
        for path, sha, data, error in read:
            status, has_features, scored, reason = state[sha]
            if error or status == SnippetStatus.failed:
                summary.failures.append((str(path), error or reason or "failed"))
                continue
            if sha in sent or scored:
                continue
            sent.add(sha)
            if has_features:
                if model is not None:
                    app.send_task(INFER_TASK, args=(sha,))
            else:
                assert data is not None
                audio, why = audio_for_message(settings, data)
                if audio is None:
                    unsendable[sha] = why
                    summary.failures.append((str(path), why))
                    continue
                room_for(settings, app, audio, wait=True)
                app.send_task(
                    PREPROCESS_TASK, args=(sha, audio, path.name, frontend.to_dict()),
                    **preprocess_limits(settings, data, str(path)),
                )  # fmt: skip
                summary.preprocessed += 1
        if unsendable:
            with sessions.begin() as s:
                for sha, why in unsendable.items():
                    queries.mark_failed(s, sha, why)
        if progress:
            progress(len(chunk))
    return summary


def pending_count(engine: Engine, shas: Sequence[str], model_version_id: int | None) -> int:
    """How many of `shas` are not final yet (final = failed, or scored by the model;
    without a model: failed or preprocessed)."""
    with engine.connect() as conn, queries.sha_table(conn, shas) as table:
        return queries.pending_among(conn, table, model_version_id)


def wait_until_final(
    engine: Engine,
    shas: Sequence[str],
    model_version_id: int | None,
    progress: Callable[[int], None] | None = None,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
) -> int:
    """Poll the database until every sha is final; returns how many are still pending.

    The shas go once into a temporary table; each poll is then one aggregate query, however
    many shas the run has (not two IN-list queries per 500)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last = len(shas)
    with engine.connect() as conn, queries.sha_table(conn, shas) as table:
        while True:
            left = queries.pending_among(conn, table, model_version_id)
            conn.commit()  # end the read: the next poll sees the workers' new commits
            if progress and left < last:
                progress(last - left)
            last = left
            if left == 0 or (deadline is not None and time.monotonic() > deadline):
                return left
            time.sleep(poll_s)


BATCH_COLUMNS = (
    Snippet.id, Snippet.sha256, Snippet.status, Snippet.source_path, Snippet.in_flight,
    Snippet.updated_at,
)  # fmt: skip
"""What reconcile reads of each waiting row: in_flight and updated_at say if work may still run."""

RECONCILE_BATCH = 500
"""Rows per reconcile batch: one read, then one transaction for the batch's writes."""


def reconcile(
    settings: Settings,
    engine: Engine,
    app: Celery,
    older_than_s: float,
    *,
    limit: int | None = None,
    wait: bool = True,
) -> dict:
    """Re-publish what has waited too long in a non-final state, so a lost message is found
    again from the database: queued -> preprocess (bytes read again from the source path),
    preprocessed -> infer. The bytes are read again from any path the content was seen at; a
    content that no readable path holds any more fails its row, one whose paths cannot be
    reached (a mount away, another host's path) stays queued with a warning.

    Works in batches of `RECONCILE_BATCH` rows (by id), one transaction per batch, so memory and
    transactions stay small however many rows wait. `limit`: at most that many rows per call
    (the periodic reconciler's bound). `wait`: hold while the preprocess queue is over
    SCORER_QUEUE_BOUND; False: stop publishing there instead (the rest waits for the next call).
    """
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    sessions = make_sessionmaker(engine)
    counts = {"preprocess": 0, "infer": 0, "failed": 0, "unreachable": 0}
    with sessions() as s:
        model = queries.active_model(s)
    after_id, seen = 0, 0
    while limit is None or seen < limit:
        size = RECONCILE_BATCH if limit is None else min(RECONCILE_BATCH, limit - seen)
        with sessions() as s:
            batch = s.execute(
                select(*BATCH_COLUMNS)
                .where(Snippet.status.in_([SnippetStatus.queued, SnippetStatus.preprocessed]))
                .where(Snippet.updated_at < cutoff, Snippet.id > after_id)
                .order_by(Snippet.id)
                .limit(size)
            ).all()
        if not batch:
            break
        after_id, seen = batch[-1][0], seen + len(batch)
        touched, failed, full = _republish(
            settings, engine, app, batch, model is not None, wait, counts
        )
        with sessions.begin() as s:
            for sha, reason in failed.items():
                queries.mark_failed(s, sha, reason)
            if touched:
                s.execute(
                    Snippet.__table__.update()
                    .where(Snippet.sha256.in_(touched))
                    .values(updated_at=utcnow())
                )
        if full:
            break
    return counts


def _republish(
    settings: Settings,
    engine: Engine,
    app: Celery,
    batch: Sequence[tuple[int, str, SnippetStatus, str, str | None, datetime]],
    has_model: bool,
    wait: bool,
    counts: dict[str, int],
) -> tuple[list[str], dict[str, str], bool]:
    """Send one batch's messages: (shas sent, {sha: reason} of failed ones, queue full?)."""
    touched: list[str] = []
    failed: dict[str, str] = {}
    queued = [sha for _, sha, status, *_ in batch if status == SnippetStatus.queued]
    with make_sessionmaker(engine)() as s:
        paths = queries.paths_of(s, queued) if queued else {}
    for _, sha, status, source, in_flight, started in batch:
        if status == SnippetStatus.preprocessed:
            if has_model:
                app.send_task(INFER_TASK, args=(sha,))
                counts["infer"] += 1
                touched.append(sha)
            continue
        if in_flight is not None and still_running(settings, paths.get(sha, [source]), started):
            log.info("%s: still within its time limit, not re-sent", source)
            continue
        if wait:
            wait_for_room(app, settings.queue_bound)
        elif queue_depths(app)[PREPROCESS_QUEUE] >= settings.queue_bound:
            return touched, failed, True
        found = find_source(
            paths.get(sha, [source]), sha, int(settings.max_file_mb * MB),
            int(settings.max_message_mb * MB),
        )  # fmt: skip
        if found.changed:
            failed[sha] = f"{found.reason}; enqueue it again"
            counts["failed"] += 1
            continue
        if found.data is None or found.path is None:  # a mount away: it may come back
            log.warning("%s: source unreachable, left queued: %s", source, found.reason)
            counts["unreachable"] += 1
            continue
        audio, why = audio_for_message(settings, found.data)
        if audio is None:
            failed[sha] = why
            counts["failed"] += 1
            continue
        if not room_for(settings, app, audio, wait):
            return touched, failed, True
        app.send_task(
            PREPROCESS_TASK, args=(sha, audio, found.path.name),
            **preprocess_limits(settings, found.data, str(found.path)),
        )  # fmt: skip
        counts["preprocess"] += 1
        touched.append(sha)
    return touched, failed, False
