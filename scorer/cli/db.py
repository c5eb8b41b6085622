"""`scorer db ...`: the schema, by Alembic migrations only."""

from __future__ import annotations

import click

from scorer.cli.common import settings_of
from scorer.db.engine import make_engine
from scorer.db.migrate import current_revision, head_revision, upgrade


@click.group("db")
def db_group() -> None:
    """Create or upgrade the database schema (Alembic migrations)."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply the migrations up to REVISION (creates the database on first use)."""
    settings = settings_of(ctx)
    engine = make_engine(settings)
    ctx.call_on_close(engine.dispose)
    upgrade(engine, revision)
    click.echo(
        f"database {engine.url.render_as_string(hide_password=True)} at revision "
        f"{current_revision(engine)}"
    )


@db_group.command("current")
@click.pass_context
def db_current(ctx: click.Context) -> None:
    """Print the database's revision and the newest one this code knows."""
    engine = make_engine(settings_of(ctx))
    ctx.call_on_close(engine.dispose)
    click.echo(f"current: {current_revision(engine) or 'none'}  head: {head_revision()}")


COMMANDS = [db_group]
