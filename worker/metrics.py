"""Prometheus metrics of a worker (cpu, gpu, train), served on SCORER_METRICS_PORT (0 = off).

What operators of batch-inference servers ask for first: items done per stage (rate() gives
items/s), the GPU worker's batch sizes, queue wait (publish -> start of work, from the
`scorer_sent_at` header worker/celery_app.py stamps on every message), failures by a bounded
reason (never the raw message: label values must stay few), and queue depths read from Redis on
each scrape.

A prefork CPU worker runs its tasks in child processes, so it uses prometheus-client's
multiprocess mode: children write their counters to files in PROMETHEUS_MULTIPROC_DIR (set by
`scorer worker cpu` before this module is imported) and the parent serves their sum on one port.
One port per worker, not per child: children come and go, a scrape target should not.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from scorer.errors import ScorerError
from scorer.settings import Settings

log = logging.getLogger(__name__)

REASONS = ("decode", "too_long", "too_large", "invalid", "oom", "poison", "config", "other")
"""Every value the `reason` label takes."""

ITEMS = Counter(
    "scorer_items", "Snippets a stage finished successfully (rate() = items/s).", ["stage"]
)
FAILURES = Counter(
    "scorer_failures",
    "Snippets failed, and configuration faults (snippets sent back to wait), by reason.",
    ["stage", "reason"],
)
BATCH_SIZE = Histogram(
    "scorer_infer_batch_size",
    "Snippets per GPU-worker batch (one ensemble forward each).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
QUEUE_WAIT = Histogram(
    "scorer_queue_wait_seconds",
    "From publishing a message to a worker starting its work.",
    ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)


_NEEDLES = (
    ("gave up after", "poison"),
    ("out of memory", "oom"),
    ("too long", "too_long"),
    ("too large", "too_large"),
    ("decode", "decode"),
    ("not a readable audio file", "decode"),
    ("empty file", "decode"),
    ("no audio samples", "decode"),
    ("nan or infinite", "decode"),
    ("invalid", "invalid"),
)

TRAINING_JOBS = Counter(
    "scorer_training_jobs",
    "Training jobs a train worker ran, by outcome: done (model registered), stopped (a reason "
    "the job records: cancelled, refused, failed), error (unexpected; the job is released).",
    ["outcome"],
)
for _outcome in ("done", "stopped", "error"):
    TRAINING_JOBS.labels(_outcome)  # shown as 0 from the first scrape


def failure_reason(error: str, name: str = "") -> str:
    """A failure's row text reduced to one of REASONS (the label set must stay bounded).

    `name`: the input's name, which row texts start with; dropped first, so a file called
    `too long.mp3` does not change the reason."""
    if name and error.startswith(name):
        error = error[len(name) :]
    text = error.lower()
    for needle, reason in _NEEDLES:
        if needle in text:
            return reason
    return "other"


def failed(stage: str, reason: str, n: int = 1) -> None:
    FAILURES.labels(stage, reason if reason in REASONS else "other").inc(n)


def done(stage: str, n: int = 1) -> None:
    ITEMS.labels(stage).inc(n)


def waited(stage: str, sent_at: object, now: float | None = None) -> None:
    """Observe one message's queue wait; messages without a usable stamp are not observed."""
    if isinstance(sent_at, int | float) and not isinstance(sent_at, bool):
        QUEUE_WAIT.labels(stage).observe(max(0.0, (now or time.time()) - float(sent_at)))


class QueueDepths(Collector):
    """`scorer_queue_depth{queue}`: read when scraped, so it is never stale."""

    def __init__(self, depths: Callable[[], dict[str, int]]) -> None:
        self.depths = depths

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily(
            "scorer_queue_depth", "Messages waiting per queue (Redis LLEN).", labels=["queue"]
        )
        try:
            for queue, n in self.depths().items():
                gauge.add_metric([queue], n)
        except Exception as exc:  # the broker is away: the scrape still answers
            log.warning("queue depths unavailable: %s", exc)
        yield gauge


def serve(settings: Settings, depths: Callable[[], dict[str, int]] | None = None) -> bool:
    """Start the metrics endpoint in a thread of this process; False when it is off."""
    if not settings.metrics_port:
        return False
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    if depths is not None:
        registry.register(QueueDepths(depths))
    try:
        start_http_server(settings.metrics_port, addr=settings.metrics_addr, registry=registry)
    except OSError as exc:
        raise ScorerError(
            f"cannot serve metrics on {settings.metrics_addr}:{settings.metrics_port} "
            f"({exc.strerror or exc}): set SCORER_METRICS_PORT to a free port, or 0 for none"
        ) from exc
    log.info("metrics on http://%s:%d/metrics", settings.metrics_addr, settings.metrics_port)
    return True
