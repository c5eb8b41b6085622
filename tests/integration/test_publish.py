"""The producer side against a real Redis: backpressure and reconcile."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from scorer.settings import Settings
from worker.celery_app import PREPROCESS_QUEUE, make_celery, queue_depths
from worker.publish import wait_for_room

REDIS_DB = 12


@pytest.fixture
def app(make_settings: Callable[..., Settings]) -> Iterator:  # type: ignore[type-arg]
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    client.flushdb()
    yield make_celery(make_settings(broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}"))
    client.flushdb()
    client.close()


def test_enqueue_waits_while_the_first_queue_is_over_its_bound(app) -> None:  # type: ignore[no-untyped-def]
    for i in range(5):
        app.send_task("scorer.preprocess", args=(f"{i:064d}", b"", "x.wav"))
    assert queue_depths(app)[PREPROCESS_QUEUE] == 5
    returned = threading.Event()
    waiter = threading.Thread(
        target=lambda: (wait_for_room(app, bound=3, poll_s=0.05), returned.set()), daemon=True
    )
    waiter.start()
    time.sleep(0.5)
    assert not returned.is_set()  # 5 > 3: the producer is held back
    with app.connection_for_write() as conn:  # a worker takes two messages
        client = conn.default_channel.client
        client.rpop(PREPROCESS_QUEUE)
        client.rpop(PREPROCESS_QUEUE)
    assert returned.wait(5)
    waiter.join(1)
