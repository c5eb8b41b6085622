"""The Alembic revisions build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Engine, Integer, MetaData, inspect, text

from scorer.db.migrate import alembic_config, current_revision, head_revision, upgrade
from scorer.db.models import Base

MODEL_TABLES = {
    "snippets",
    "features",
    "model_versions",
    "predictions",
    "training_jobs",
    "source_paths",
    "label_events",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_engine(request: pytest.FixtureRequest) -> Engine:
    """An engine on a database with no tables at all."""
    name = {"sqlite": "empty_sqlite_engine", "postgresql": "empty_pg_engine"}[request.param]
    return request.getfixturevalue(name)


def schema_diff(engine: Engine, metadata: MetaData = Base.metadata) -> list[Any]:
    """What `alembic revision --autogenerate` would write: empty when models == migrations."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(ctx, metadata))


def downgrade(engine: Engine, revision: str) -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def test_head_is_a_single_known_revision() -> None:
    assert head_revision() == "0004"


def test_0002_records_where_known_snippets_were_seen(empty_engine: Engine) -> None:
    """A database made before source_paths existed: every snippet gets its path row, and a job
    row its claim token 0."""
    cfg = alembic_config(empty_engine.url.render_as_string(hide_password=False))
    with empty_engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with empty_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO snippets (sha256, source_path, size_bytes, status, attempts, "
                "created_at, updated_at) VALUES ('ab', '/music/a.mp3', 10, 'queued', 0, "
                ":t, :t)"
            ),
            {"t": datetime(2026, 1, 1, tzinfo=UTC)},
        )
        conn.execute(
            text(
                "INSERT INTO training_jobs (params, status, progress, attempts, created_at) "
                "VALUES ('{}', 'pending', 0, 0, :t)"
            ),
            {"t": datetime(2026, 1, 1, tzinfo=UTC)},
        )

    upgrade(empty_engine)

    with empty_engine.connect() as conn:
        assert conn.execute(text("SELECT path, sha256 FROM source_paths")).all() == [
            ("/music/a.mp3", "ab")
        ]
        assert conn.execute(text("SELECT claim FROM training_jobs")).scalar_one() == 0


def test_upgrade_from_empty_gives_the_models_schema(empty_engine: Engine) -> None:
    assert current_revision(empty_engine) is None
    assert inspect(empty_engine).get_table_names() == []

    upgrade(empty_engine)

    assert current_revision(empty_engine) == head_revision()
    assert set(inspect(empty_engine).get_table_names()) == MODEL_TABLES | {"alembic_version"}
    assert schema_diff(empty_engine) == []


def test_upgrade_is_idempotent(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revision()
    assert schema_diff(empty_engine) == []


def test_downgrade_to_base_then_upgrade_again(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    downgrade(empty_engine, "base")

    assert current_revision(empty_engine) is None
    assert set(inspect(empty_engine).get_table_names()) <= {"alembic_version"}

    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revision()
    assert schema_diff(empty_engine) == []


def test_comparison_notices_a_model_change(empty_engine: Engine) -> None:
    """Guards the guard: a column the migrations lack must show up as a difference."""
    upgrade(empty_engine)
    changed = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["snippets"].append_column(Column("loudness_db", Integer, nullable=True))

    diff = schema_diff(empty_engine, changed)

    assert [(d[0], d[3].name) for d in diff] == [("add_column", "loudness_db")]
