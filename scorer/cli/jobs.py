"""`scorer jobs`: training jobs, their progress, and cancelling one."""

from __future__ import annotations

import json

import click
from sqlalchemy import select, update

from scorer.cli.common import ready_engine, settings_of
from scorer.errors import ScorerError


@click.group("jobs", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array on stdout.")
@click.pass_context
def jobs_group(ctx: click.Context, as_json: bool) -> None:
    """List training jobs, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    from scorer.db.engine import make_sessionmaker
    from scorer.db.models import TrainingJob

    engine = ready_engine(settings_of(ctx))
    with make_sessionmaker(engine)() as s:
        jobs = s.scalars(select(TrainingJob).order_by(TrainingJob.id.desc())).all()
    rows = [
        {
            "id": j.id,
            "status": str(j.status.value),
            "progress": round(j.progress, 4),
            "message": j.message,
            "error": j.error,
            "worker": j.worker,
            "attempts": j.attempts,
            "claim": j.claim,
            "heartbeat_at": j.heartbeat_at.isoformat() if j.heartbeat_at else None,
            "members": j.params.get("train", {}).get("members"),
            "epochs": j.params.get("train", {}).get("epochs"),
        }
        for j in jobs
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        click.echo(
            f"{r['id']:>4} {r['status']:<10} {100 * r['progress']:5.1f}%  "
            f"{r['members']}x{r['epochs']}  {r['error'] or r['message'] or ''}"
        )
    if not rows:
        click.echo("no training jobs", err=True)


@jobs_group.command("cancel")
@click.argument("job_id", type=int)
@click.pass_context
def cancel(ctx: click.Context, job_id: int) -> None:
    """Cancel a pending or running job (a running one stops at its next batch)."""
    from scorer.db.engine import make_sessionmaker
    from scorer.db.models import JobStatus, TrainingJob

    engine = ready_engine(settings_of(ctx))
    with make_sessionmaker(engine).begin() as s:
        n = s.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id)
            .where(TrainingJob.status.in_([JobStatus.pending, JobStatus.running]))
            .values(status=JobStatus.cancelled)
        ).rowcount
    if not n:
        raise ScorerError(f"no pending or running training job {job_id}")
    click.echo(f"training job {job_id} cancelled")


@jobs_group.command("resume")
@click.argument("job_id", type=int)
@click.option(
    "--no-wait",
    is_flag=True,
    help="With workers (SCORER_BROKER_URL): queue the job and return; `scorer jobs` follows it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the model version as JSON.")
@click.pass_context
def resume(ctx: click.Context, job_id: int, no_wait: bool, as_json: bool) -> None:
    """Resume a failed or cancelled job from its checkpoints (its death count starts again).

    Without workers it trains here; with SCORER_BROKER_URL it is queued for `scorer worker
    train` and followed until it ends (unless --no-wait).
    """
    from scorer.cli.train import run_or_follow
    from scorer.db.engine import make_sessionmaker
    from worker.training_job import reopen

    settings = settings_of(ctx)
    engine = ready_engine(settings)
    with make_sessionmaker(engine).begin() as s:
        job = reopen(s, job_id)
        click.echo(
            f"training job {job_id} {job.status.value}: resumes from its checkpoints", err=True
        )
    run_or_follow(settings, engine, job_id, no_wait=no_wait, as_json=as_json)


COMMANDS = [jobs_group]
