"""`scorer reconcile`: find lost messages again from the database."""

from __future__ import annotations

import click

from scorer.cli.common import ready_engine, settings_of


@click.command("reconcile")
@click.option(
    "--older-than",
    type=float,
    help="Seconds a snippet may wait in queued/preprocessed (default SCORER_RECONCILE_AFTER_S).",
)
@click.pass_context
def reconcile_cmd(ctx: click.Context, older_than: float | None) -> None:
    """Re-publish snippets that have waited too long in a non-final state.

    Messages can be lost (Redis restarted without persistence, a queue purged); the database
    still knows every snippet's state. Re-publishing is safe: every stage is idempotent.
    """
    from worker.celery_app import make_celery
    from worker.publish import reconcile

    settings = settings_of(ctx)
    engine = ready_engine(settings)
    counts = reconcile(
        settings,
        engine,
        make_celery(settings),
        settings.reconcile_after_s if older_than is None else older_than,
    )
    click.echo(
        f"re-published {counts['preprocess']} to preprocess, {counts['infer']} to infer; "
        f"{counts['failed']} failed (source gone or changed)"
    )


COMMANDS = [reconcile_cmd]
