"""Runs of more shas than one SQL statement may bind (SQLite 32766, psycopg 65535), on real
SQLite and PostgreSQL: the label accuracy, the pending count and the wait poll go through
chunked IN lists or a temporary table; the result query uses the composite index."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import DateTime, Engine, bindparam, event, text
from sqlalchemy.orm import Session

from scorer.db import queries
from scorer.db.models import FILE_WINDOW, ModelVersion, utcnow
from worker.publish import pending_count, wait_until_final

N = 70_001
"""More than psycopg's 65535 bound parameters and SQLite's default 32766."""
FAILED = range(0, N, 7)
QUEUED = range(3, N, 10)  # those not failed still wait (no verdict)


def sha(n: int) -> str:
    return f"{n:064x}"


SERIES = {
    "sqlite": "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last}) ",
    "postgresql": "",
}
FROM = {"sqlite": "FROM n", "postgresql": "FROM generate_series(0, {last}) AS n(i)"}
HEX = {"sqlite": "printf('%064x', i)", "postgresql": "lpad(to_hex(i), 64, '0')"}


@pytest.fixture
def big(engine: Engine, dialect: str) -> Iterator[tuple[Engine, int]]:
    """N labelled snippets (every 7th failed, every 10th from 3 queued, the rest scored with a
    per-file verdict, right on even numbers), inserted by two INSERT ... SELECT statements."""
    if dialect == "sqlite":  # the default SQLITE_MAX_VARIABLE_NUMBER of most builds
        event.listen(
            engine,
            "connect",
            lambda conn, _: conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32766),
        )
        engine.dispose()
    series, source = SERIES[dialect].format(last=N - 1), FROM[dialect].format(last=N - 1)
    now = bindparam("now", utcnow(), type_=DateTime(timezone=True))
    with Session(engine) as s, s.begin():
        mv = ModelVersion(
            name="big", classes=["female", "male"], frontend_version="fe", frontend={},
            members=1, params={}, metrics={}, weights_uri="big", active=True,
        )  # fmt: skip
        s.add(mv)
        s.flush()
        model_id = mv.id
        s.execute(
            text(
                f"{series}INSERT INTO snippets (sha256, source_path, size_bytes, status, attempts,"
                " label, created_at, updated_at)"
                f" SELECT {HEX[dialect]}, '/m/' || i || '.wav', 1, CASE WHEN i % 7 = 0 THEN"
                " 'failed' WHEN i % 10 = 3 THEN 'queued' ELSE 'scored' END, 0, 'female',"
                f" :now, :now {source}"
            ).bindparams(now)
        )
        s.execute(
            text(
                f"{series}INSERT INTO predictions (sha256, window_index, start_s,"
                " model_version_id, probabilities, label, confidence, disagreement, entropy,"
                f" created_at) SELECT {HEX[dialect]}, -1, 0.0, :model, '[0.6, 0.4]',"
                " CASE WHEN i % 2 = 0 THEN 'female' ELSE 'male' END, 0.6, 0.0, 0.6, :now"
                f" {source} WHERE i % 7 != 0 AND i % 10 != 3"
            ).bindparams(now, model=model_id)
        )
        s.execute(  # where each content was enqueued (results are listed per path)
            text(
                "INSERT INTO source_paths (path, sha256, seen_at)"
                " SELECT source_path, sha256, :now FROM snippets"
            ).bindparams(now)
        )
    yield engine, model_id
    if dialect == "sqlite":
        engine.dispose()


def _scored() -> list[int]:
    failed, queued = set(FAILED), set(QUEUED)
    return [n for n in range(N) if n not in failed and n not in queued]


def test_label_accuracy_over_more_shas_than_one_statement_binds(big) -> None:  # type: ignore[no-untyped-def]
    engine, model_id = big
    scored = _scored()
    with engine.connect() as conn, queries.sha_table(conn, [sha(n) for n in range(N)]) as t:
        correct, total = queries.label_accuracy(conn, t, model_id)
    assert total == len(scored) > 40_000
    assert correct == sum(1 for n in scored if n % 2 == 0)


def test_pending_and_each_wait_poll_are_one_query_over_all_shas(big) -> None:  # type: ignore[no-untyped-def]
    engine, model_id = big
    shas = [sha(n) for n in range(N)]
    expected = len(set(QUEUED) - set(FAILED))
    assert pending_count(engine, shas, model_id) == expected
    # Without a model, scored and failed rows are final, queued ones are not.
    assert pending_count(engine, shas, None) == expected

    counted: list[str] = []

    def count(conn, cursor, statement, params, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT"):
            counted.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        started = time.monotonic()
        left = wait_until_final(engine, shas, model_id, poll_s=0.05, timeout_s=0.12)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert left == expected
    polls = len(counted)
    assert 1 <= polls <= (time.monotonic() - started) / 0.05 + 1  # one SELECT per poll
    assert all("snippets" in q and "predictions" in q for q in counted)


@pytest.mark.parametrize("dialect", ["sqlite"])  # EXPLAIN QUERY PLAN is SQLite's
def test_per_file_results_read_the_composite_index(big) -> None:  # type: ignore[no-untyped-def]
    engine, model_id = big
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        stmt = queries.results_query(model_id)
        compiled = stmt.compile(engine, compile_kwargs={"literal_binds": True})
        plan = " | ".join(r[-1] for r in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
    # A composite (model version, window) index serves the filter: the sha one of migration
    # 0002, or one of the review queue's (0003) with the same prefix, whichever SQLite picks;
    # never a scan of every prediction or of the one-column model-version index.
    assert re.search(
        r"SEARCH predictions USING (COVERING )?INDEX ix_predictions_version_window_\w+ "
        r"\(model_version_id=\? AND window_index=\?\)",
        plan,
    ), plan
    with Session(engine) as s:
        rows = queries.iter_results(s, model_id)
        first = next(rows)
        assert first["window_index"] == FILE_WINDOW
        assert 1 + sum(1 for _ in rows) == len(_scored())
