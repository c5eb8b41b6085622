"""The Celery app: configuration only. Tasks live in worker/tasks.py.

Choices (docs/ARCHITECTURE.md says why): msgpack messages (binary audio, never pickle);
acks_late + reject_on_worker_lost + prefetch 1 so a killed worker's message is delivered again;
a Redis visibility timeout longer than any task; named queues with routes; no result backend
(the database holds every result).
"""

from __future__ import annotations

import contextlib
import math
import time
from datetime import datetime
from typing import Any

from celery import Celery
from celery.signals import before_task_publish
from kombu import Exchange, Queue

from scorer.settings import Settings

PREPROCESS_QUEUE = "preprocess"
INFER_QUEUE = "infer"
QUEUES = (PREPROCESS_QUEUE, INFER_QUEUE)

PREPROCESS_TASK = "scorer.preprocess"
INFER_TASK = "scorer.infer"
SENT_AT_HEADER = "scorer_sent_at"
"""Unix time a message was published, or its countdown ends: workers' queue-wait metric."""


TASK_OVERHEAD_S = 60
"""Seconds a preprocess task may spend besides its audio (a child's first task loads its models)."""

SOFT_MARGIN_S = 30
"""The soft limit comes this much before the hard one (at least 1 s into the task)."""


def time_limits(
    default_s: int, per_audio_s: float, duration_s: float | None = None
) -> tuple[int, int]:
    """(hard, soft) time limit of a task over `duration_s` seconds of audio.

    A long file is one task, so one limit for all would kill it on every delivery until it
    failed as a poison message: the limit grows with the audio, never below the default."""
    hard = default_s
    if duration_s is not None and duration_s > 0:
        hard = max(hard, math.ceil(TASK_OVERHEAD_S + per_audio_s * duration_s))
    return hard, max(1, hard - SOFT_MARGIN_S)


@before_task_publish.connect
def _stamp_sent_at(headers: dict[str, Any] | None = None, **_: object) -> None:
    """Every message, whoever publishes it (enqueue, reconcile, a retry), carries its publish
    time in a header, so queue wait needs no message field (worker/validate.py checks those)."""
    if headers is None:
        return
    sent_at = time.time()
    eta = headers.get("eta")
    if isinstance(eta, str):  # a countdown: the wait starts when the message may run
        with contextlib.suppress(ValueError):
            sent_at = max(sent_at, datetime.fromisoformat(eta).timestamp())
    headers[SENT_AT_HEADER] = sent_at


def make_celery(settings: Settings) -> Celery:
    if not settings.broker_url:
        from scorer.errors import ScorerError

        raise ScorerError("SCORER_BROKER_URL is not set: workers need a broker (redis://...)")
    app = Celery("scorer", broker=settings.broker_url, set_as_current=True)
    hard, soft = time_limits(settings.task_time_limit_s, settings.task_time_per_audio_s)
    app.conf.update(
        task_serializer="msgpack",
        accept_content=["msgpack", "json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_time_limit=hard,  # a preprocess message carries its own (worker/publish.py)
        task_soft_time_limit=soft,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "max_retries": 3,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_queues=[Queue(q, Exchange(q, type="direct"), routing_key=q) for q in QUEUES],
        task_default_queue=PREPROCESS_QUEUE,
        task_routes={
            PREPROCESS_TASK: {"queue": PREPROCESS_QUEUE},
            INFER_TASK: {"queue": INFER_QUEUE},
        },
        worker_hijack_root_logger=False,
        worker_max_memory_per_child=None,
        worker_send_task_events=True,
        task_send_sent_event=False,
    )
    app.conf.scorer_settings = settings
    return app


def queue_depths(app: Celery) -> dict[str, int]:
    """Messages waiting per queue (Redis list lengths; unacknowledged ones are not counted)."""
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        return {q: int(client.llen(q)) for q in QUEUES}
