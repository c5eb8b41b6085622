"""`scorer status`: where every snippet is, and why the failed ones failed."""

from __future__ import annotations

import json

import click

from scorer.cli.common import ready_engine, settings_of


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--failures", "n_failures", default=20, show_default=True, help="Failures to list.")
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool, n_failures: int) -> None:
    """Counts of snippets per state, the active model, and recent failures with reasons."""
    from scorer.db import queries
    from scorer.db.engine import make_sessionmaker

    settings = settings_of(ctx)
    engine = ready_engine(settings)
    with make_sessionmaker(engine)() as s:
        counts = queries.status_counts(s)
        model = queries.active_model(s)
        fails = queries.failures(s, n_failures)
    info = {
        "counts": {k: counts.get(k, 0) for k in ("queued", "preprocessed", "scored", "failed")},
        "total": sum(counts.values()),
        "active_model": model.name if model else None,
        "failures": [{"path": p, "reason": r} for p, r in fails],
    }
    if not settings.embedded:
        from worker.celery_app import make_celery, queue_depths

        app = make_celery(settings)
        info["queues"] = queue_depths(app)
        replies = app.control.inspect(timeout=1.0).ping() or {}
        info["workers"] = sorted(replies)
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    click.echo(
        "  ".join(f"{k}: {v}" for k, v in info["counts"].items()) + f"  total: {info['total']}"
    )
    click.echo(f"active model: {info['active_model'] or 'none'}")
    if "queues" in info:
        click.echo("queues: " + "  ".join(f"{q}: {n}" for q, n in info["queues"].items()))
        click.echo(f"workers: {', '.join(info['workers']) or 'none answered'}")
    for f in info["failures"]:
        click.echo(f"failed: {f['path']}: {f['reason']}")


COMMANDS = [status_cmd]
