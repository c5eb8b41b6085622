"""worker/metrics.py's pure parts and the publish-time header: a bounded reason label whatever
the file is called, a scrape that survives a missing broker, countdowns not counted as wait."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from worker import metrics
from worker.celery_app import SENT_AT_HEADER, _stamp_sent_at


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("x.mp3: not a readable audio file (mp3/wav/flac/ogg): unknown format", "decode"),
        ("cannot decode: bad header", "decode"),
        ("x.wav: empty file", "decode"),
        ("x.wav: too long: 1200.0 s > 900 s limit", "too_long"),
        ("x.wav: too large: 3000.0 MB > 2048 MB limit (SCORER_MAX_FILE_MB)", "too_large"),
        ("gave up after 3 deliveries: the worker stopped", "poison"),
        ("inference failed: CUDA out of memory. Tried to allocate", "oom"),
        ("invalid message: sha256 must be 64 hex digits", "invalid"),
        ("cannot featurise: something new", "other"),
    ],
)
def test_failure_reason_is_one_of_a_fixed_set(error: str, reason: str) -> None:
    assert metrics.failure_reason(error) == reason
    assert reason in metrics.REASONS


def test_the_file_name_does_not_choose_the_reason() -> None:
    name = "too long (decode me).wav"
    assert metrics.failure_reason(f"{name}: empty file", name) == "decode"
    assert metrics.failure_reason(f"{name}: too large: 3 MB > 1 MB", name) == "too_large"


def test_an_unknown_reason_is_counted_as_other() -> None:
    before = metrics.FAILURES.labels("infer", "other")._value.get()
    metrics.failed("infer", "a raw message that must never become a label")
    assert metrics.FAILURES.labels("infer", "other")._value.get() == before + 1


def test_queue_depths_scrape_survives_a_missing_broker() -> None:
    def away() -> dict[str, int]:
        raise ConnectionError("redis away")

    (family,) = metrics.QueueDepths(away).collect()
    assert family.name == "scorer_queue_depth" and family.samples == []
    (family,) = metrics.QueueDepths(lambda: {"infer": 4}).collect()
    assert [(s.labels, s.value) for s in family.samples] == [({"queue": "infer"}, 4)]


def test_wait_is_not_observed_without_a_stamp() -> None:
    count = metrics.QUEUE_WAIT.labels("preprocess")._sum.get()
    metrics.waited("preprocess", None)
    metrics.waited("preprocess", "yesterday")
    assert metrics.QUEUE_WAIT.labels("preprocess")._sum.get() == count
    metrics.waited("preprocess", 100.0, now=102.5)
    assert metrics.QUEUE_WAIT.labels("preprocess")._sum.get() == count + 2.5


def test_every_message_is_stamped_and_a_countdown_starts_the_wait_later() -> None:
    headers: dict[str, object] = {"eta": None}
    _stamp_sent_at(headers=headers)
    assert abs(float(headers[SENT_AT_HEADER]) - time.time()) < 5  # type: ignore[arg-type]
    eta = datetime.now(UTC) + timedelta(seconds=60)
    headers = {"eta": eta.isoformat()}
    _stamp_sent_at(headers=headers)
    assert headers[SENT_AT_HEADER] == pytest.approx(eta.timestamp(), abs=1e-3)
