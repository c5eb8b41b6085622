"""`scorer train`: train an ensemble on labelled snippets and make it the active model version."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from scorer.cli.common import ready_engine, settings_of, stderr
from scorer.errors import ScorerError


@click.command("train")
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    help="Labelled audio: a CSV (file,label[,group]), a folder with labels.csv, or a folder per "
    "class. Ingested first; training then uses exactly these files. Default: every labelled "
    "snippet in the database.",
)
@click.option("--members", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, help="Member i is seeded with seed + i.")
@click.option("--lr", default=3e-4, show_default=True, help="AdamW learning rate.")
@click.option("--weight-decay", default=1e-5, show_default=True, help="AdamW weight decay.")
@click.option("--mixup-alpha", default=0.4, show_default=True, help="Mixup Beta(a, a); 0 = off.")
@click.option(
    "--arch",
    default="resnet34",
    show_default=True,
    type=click.Choice(["resnet34", "resnet18", "resnet10"]),
    help="Member architecture (resnet34 is the reference; smaller ones for quick runs).",
)
@click.option(
    "--normalize",
    default="none",
    show_default=True,
    type=click.Choice(["none", "per_snippet"]),
    help="Input normalisation of the log-mel (none = the reference).",
)
@click.option(
    "--val-fraction",
    default=0.2,
    show_default=True,
    help="Share of groups (singers) held out for validation; no group is on both sides.",
)
@click.option("--name", help="Model version name (default v<job id>).")
@click.option("--no-activate", is_flag=True, help="Register the model without activating it.")
@click.option("--keep-checkpoints", is_flag=True, help="Keep per-epoch checkpoints after success.")
@click.option("--json", "as_json", is_flag=True, help="Print the model version as JSON.")
@click.option(
    "--no-wait",
    is_flag=True,
    help="With workers (SCORER_BROKER_URL): queue the job and return; `scorer jobs` follows it.",
)
@click.pass_context
def train(
    ctx: click.Context,
    data: Path | None,
    members: int,
    epochs: int,
    batch_size: int,
    seed: int,
    lr: float,
    weight_decay: float,
    mixup_alpha: float,
    arch: str,
    normalize: str,
    val_fraction: float,
    name: str | None,
    no_activate: bool,
    keep_checkpoints: bool,
    as_json: bool,
    no_wait: bool,
) -> None:
    """Train an ensemble of MEMBERS ResNets on labelled snippets (the reference recipe).

    Each member-epoch is checkpointed: if the run is killed, the same command resumes it where
    it stopped. The result is a model version with per-member and ensemble validation accuracy,
    activated for scoring unless --no-activate. With SCORER_BROKER_URL the job is queued in the
    database for `scorer worker train`, and this command follows it until it ends.
    """
    from tqdm import tqdm

    from scorer.cli.enqueue import print_failures
    from scorer.db.engine import make_sessionmaker
    from scorer.manifest import labels_for_data
    from training.train import TrainParams
    from worker import embedded
    from worker.runtime import Runtime, configure_threads
    from worker.training_job import claim, create_job, find_resumable, run_job, worker_name

    settings = settings_of(ctx)
    tp = TrainParams(
        members=members, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        mixup_alpha=mixup_alpha, seed=seed, arch=arch, normalize=normalize,
        val_fraction=val_fraction,
    )  # fmt: skip
    try:
        tp.validate()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    engine = ready_engine(settings)
    configure_threads(settings)
    shas: list[str] | None = None
    if data is not None:
        labels = labels_for_data(data)
        files = sorted(labels)
        if settings.embedded:
            with tqdm(
                total=len(files), unit="file", desc="features", file=sys.stderr, disable=None
            ) as bar:
                summary = embedded.run(
                    settings, engine, files, labels, score_with_model=False, progress=bar.update
                )
        else:  # the CPU workers compute the features; wait for them
            from scorer.cli.enqueue import publish_and_wait

            summary = publish_and_wait(
                settings, engine, files, labels, no_score=True, retry_failed=False, wait=True
            )
        print_failures(summary.failures)
        failed = {p for p, _ in summary.failures}
        shas = sorted(sha for sha, p in summary.shas.items() if p not in failed)
        stderr(f"{len(shas)} labelled files ready, {len(summary.failures)} failed")
    params = {
        "train": tp.to_dict(),
        "shas": shas,
        "name": name,
        "activate": not no_activate,
        "keep_checkpoints": keep_checkpoints,
    }
    sessions = make_sessionmaker(engine)
    with sessions.begin() as s:
        job = find_resumable(s, params)
        if job is not None:
            stderr(f"resuming training job {job.id} ({job.message or 'not started'})")
        else:
            job = create_job(s, params)
        job_id = job.id
    if settings.embedded:
        with sessions.begin() as s:
            claimed = claim(s, worker_name(), job_id=job_id, stale_after_s=0)
        if claimed is None:
            raise ScorerError(f"training job {job_id} is being run elsewhere")
        mv = run_job(engine, Runtime(settings), job_id)
    else:
        stderr(f"training job {job_id} queued for `scorer worker train`")
        if no_wait:
            return
        mv = follow_job(engine, job_id)
    m = mv.metrics
    if as_json:
        click.echo(json.dumps({"name": mv.name, "id": mv.id, "active": mv.active, **m}, indent=1))
        return
    members_acc = ", ".join("-" if a is None else f"{a:.3f}" for a in m["member_val_acc"])
    acc = m["ensemble_val_acc"]
    click.echo(
        f"model version {mv.name}{' (active)' if mv.active else ''}: {mv.members} members, "
        f"{m['n_train']} train / {m['n_val']} validation windows"
    )
    click.echo(f"validation accuracy: ensemble {'-' if acc is None else f'{acc:.4f}'}")
    click.echo(f"validation accuracy per member: {members_acc}")


def follow_job(engine, job_id: int):  # type: ignore[no-untyped-def]
    """Show a queued job's progress until it ends; returns its model version."""
    import time

    from tqdm import tqdm

    from scorer.db.engine import make_sessionmaker
    from scorer.db.models import JobStatus, ModelVersion, TrainingJob

    sessions = make_sessionmaker(engine)
    with tqdm(total=1.0, desc=f"job {job_id}", file=sys.stderr, disable=None) as bar:
        while True:
            with sessions() as s:
                job = s.get(TrainingJob, job_id)
                assert job is not None
                bar.n = job.progress
                bar.set_postfix_str(job.message or job.status.value, refresh=True)
                if job.status == JobStatus.succeeded:
                    from sqlalchemy import select

                    return s.scalars(
                        select(ModelVersion).where(ModelVersion.training_job_id == job_id)
                    ).one()
                if job.status in (JobStatus.failed, JobStatus.cancelled):
                    raise ScorerError(
                        f"training job {job_id} {job.status.value}: {job.error or job.message}"
                    )
            time.sleep(2.0)


COMMANDS = [train]
