"""The review queue reads its index in order, on SQLite and PostgreSQL: no sort of all verdicts
per page, so a deep page of a million rows costs what the first does (keyset pagination)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from scorer.review import store


def plan(session: Session, stmt: object) -> str:
    bind = session.get_bind()
    sql = str(stmt.compile(dialect=bind.dialect, compile_kwargs={"literal_binds": True}))  # type: ignore[attr-defined]
    if bind.dialect.name == "sqlite":
        rows = session.execute(text("EXPLAIN QUERY PLAN " + sql)).all()
        return "\n".join(str(r[-1]) for r in rows)
    # A near-empty table would be scanned whatever the indexes: ask for the plan without that.
    session.execute(text("SET LOCAL enable_seqscan = off"))
    session.execute(text("SET LOCAL enable_sort = off"))
    return "\n".join(r[0] for r in session.execute(text("EXPLAIN " + sql)))


@pytest.mark.parametrize("sort", sorted(store.SORTS))
@pytest.mark.parametrize(
    "where", [{}, {"predicted": "male"}, {"truth": "female"}, {"reviewed": False}]
)
def test_a_deep_page_reads_the_index_in_order(session: Session, sort: str, where: dict) -> None:
    f = store.QueueFilter(model_version_id=1, sort=sort, **where)
    stmt = store.page_statement(f, after=store.cursor_of(0.5, 123_456), limit=50)
    shown = plan(session, stmt)
    assert f"ix_predictions_version_window_{sort}" in shown, shown
    assert "TEMP B-TREE FOR ORDER BY" not in shown and "Sort" not in shown, shown
