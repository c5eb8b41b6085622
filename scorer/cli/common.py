"""Helpers shared by the commands: the engine for the current settings, schema checks.

SQLAlchemy and Alembic are imported when an engine is made, not with this module: commands
that need no database (`demo-data`, any `--help`) do not load them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from scorer.errors import ScorerError
from scorer.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine


def settings_of(ctx: click.Context) -> Settings:
    return ctx.find_root().obj


def ready_engine(settings: Settings, *, upgrade: bool | None = None) -> Engine:
    """An engine whose schema is at head. The embedded default upgrades a fresh SQLite file by
    itself (nothing to set up on one machine); a server database must be migrated explicitly
    with `scorer db upgrade`, so that schema changes stay a deliberate step in production."""
    from sqlalchemy.exc import SQLAlchemyError

    from scorer.db.engine import make_engine
    from scorer.db.migrate import current_revision, head_revision

    engine = make_engine(settings)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:  # close pooled connections when the command ends (CliRunner, tests)
        ctx.call_on_close(engine.dispose)
    if upgrade is None:
        upgrade = engine.dialect.name == "sqlite"
    try:
        current = current_revision(engine)
    except SQLAlchemyError as exc:  # the database is away or the URL is wrong
        raise ScorerError(
            f"cannot connect to the database {engine.url.render_as_string(hide_password=True)}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    if current != head_revision():
        if not upgrade:
            raise ScorerError(
                f"the database schema is at {current or 'nothing'}, not {head_revision()}: "
                "run `scorer db upgrade`"
            )
        from scorer.db.migrate import upgrade as do_upgrade

        do_upgrade(engine)
    return engine


def stderr(msg: str) -> None:
    click.echo(msg, err=True)
