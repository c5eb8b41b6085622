"""`scorer reconcile`: find lost messages again from the database."""

from __future__ import annotations

import click
from sqlalchemy import Engine

from scorer.cli.common import ready_engine, settings_of


@click.command("reconcile")
@click.option(
    "--older-than",
    type=float,
    help="Seconds a snippet may wait in queued/preprocessed (default SCORER_RECONCILE_AFTER_S; "
    "embedded: 0, nothing else works on them).",
)
@click.pass_context
def reconcile_cmd(ctx: click.Context, older_than: float | None) -> None:
    """Re-publish snippets that have waited too long in a non-final state.

    Messages can be lost (Redis restarted without persistence, a queue purged); the database
    still knows every snippet's state. Re-publishing is safe: every stage is idempotent. A
    snippet whose source file cannot be reached stays queued, with a `warning:` line.

    Embedded (no SCORER_BROKER_URL): finishes here what a crashed run left queued or
    preprocessed (preprocessed rows are scored by the active model).
    """
    settings = settings_of(ctx)
    engine = ready_engine(settings)
    if settings.embedded:
        finish_embedded(ctx, engine, 0.0 if older_than is None else older_than)
        return
    from worker.celery_app import make_celery
    from worker.publish import reconcile

    counts = reconcile(
        settings,
        engine,
        make_celery(settings),
        settings.reconcile_after_s if older_than is None else older_than,
    )
    click.echo(
        f"re-published {counts['preprocess']} to preprocess, {counts['infer']} to infer; "
        f"{counts['failed']} failed (source changed), "
        f"{counts['unreachable']} left queued (source unreachable)"
    )


def finish_embedded(ctx: click.Context, engine: Engine, older_than_s: float) -> None:
    """Embedded mode has no broker: run the left-over rows through the stages right here."""
    from scorer.cli import EXIT_ITEMS_FAILED
    from scorer.cli.enqueue import print_failures
    from scorer.db.models import SnippetStatus
    from worker.embedded import run
    from worker.runtime import configure_threads

    settings = settings_of(ctx)
    configure_threads(settings)
    summary = run(
        settings,
        engine,
        [],
        recover=[SnippetStatus.queued, SnippetStatus.preprocessed],
        recover_older_than_s=older_than_s,
    )
    print_failures(summary.failures)
    print_failures(summary.warnings, "warning")
    click.echo(
        f"finished {summary.recovered} left by an earlier run: {summary.preprocessed} "
        f"preprocessed, {summary.scored} scored, {len(summary.failures)} failed, "
        f"{len(summary.warnings)} left queued (source unreachable)"
    )
    if summary.failures:
        ctx.exit(EXIT_ITEMS_FAILED)


COMMANDS = [reconcile_cmd]
