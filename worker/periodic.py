"""Recovery without cron: `reconcile` on a timer, inside the deployment.

`python -m worker.periodic` (the `reconciler` service of docker-compose.yml) runs one bounded
pass every SCORER_RECONCILE_EVERY_S: at most `PASS_LIMIT` rows, and never past the preprocess
queue's bound (it does not wait on a queue, it stops and goes on next time). A message lost with
a killed worker or a restarted Redis is then found again within SCORER_RECONCILE_AFTER_S plus
one period, not after the Redis visibility timeout (an hour) or when someone remembers to run
`scorer reconcile`. Each pass holds a Redis lock, so two copies of the service never reconcile
at once; a pass is idempotent (every stage skips work already done), so a pass repeated after
a crash is harmless. Errors (database or broker away) are logged and the next pass tries again.
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid

import redis
from celery import Celery
from sqlalchemy import Engine

from scorer.settings import Settings
from worker.publish import reconcile

log = logging.getLogger(__name__)

LOCK_KEY = "scorer:reconcile:lock"
PASS_LIMIT = 5000
"""Rows one pass looks at; the rest waits for the next pass."""
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


def reconcile_pass(
    settings: Settings, engine: Engine, app: Celery, client: redis.Redis
) -> dict[str, int] | None:
    """One bounded reconcile under the lock; None when another copy holds it."""
    token = uuid.uuid4().hex
    hold_ms = 1000 * max(60, 2 * settings.reconcile_every_s)  # outlives a crashed holder briefly
    if not client.set(LOCK_KEY, token, nx=True, px=hold_ms):
        return None
    try:
        return reconcile(
            settings, engine, app, settings.reconcile_after_s, limit=PASS_LIMIT, wait=False
        )
    finally:
        client.eval(_RELEASE, 1, LOCK_KEY, token)


def run(settings: Settings, stop: threading.Event) -> None:
    """Passes every `reconcile_every_s` until `stop` is set; survives any error of one pass."""
    from scorer.db.engine import make_engine
    from worker.celery_app import make_celery

    if not settings.reconcile_every_s:
        log.warning("SCORER_RECONCILE_EVERY_S=0: the reconciler does nothing")
        stop.wait()
        return
    engine, app = make_engine(settings), make_celery(settings)
    client = redis.Redis.from_url(settings.broker_url or "")
    log.info(
        "reconciling every %d s what waited %d s", settings.reconcile_every_s,
        settings.reconcile_after_s,
    )  # fmt: skip
    while not stop.is_set():
        try:
            counts = reconcile_pass(settings, engine, app, client)
        except Exception as exc:  # a pass must never end the service
            log.warning("reconcile pass failed (%s); trying again next period", exc)
        else:
            if counts and any(counts.values()):
                log.info("reconciled: %s", counts)
        stop.wait(settings.reconcile_every_s)
    engine.dispose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run(Settings(), stop)


if __name__ == "__main__":
    main()
