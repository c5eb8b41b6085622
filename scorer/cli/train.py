"""`scorer train`: train an ensemble on labelled snippets and make it the active model version."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from scorer.cli.common import ready_engine, settings_of, stderr
from scorer.errors import ScorerError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from scorer.db.models import ModelVersion
    from scorer.settings import Settings
    from training.params import TrainParams

# The names of training.train.PRESETS, spelled out so that `--help` does not import torch; a unit
# test keeps the two equal.
PRESET_NAMES = ("reference", "augmented", "cpu")

# Recipe options: None = not given, so the preset's value holds. Their defaults are the
# reference's (training.train.PRESETS["reference"]).
RECIPE_OPTIONS = (
    "members", "epochs", "batch_size", "seed", "lr", "weight_decay", "mixup_alpha", "arch",
    "normalize", "val_fraction", "label_smoothing", "aug_gain_db", "aug_shift_frames",
    "mix_multi",
)  # fmt: skip


def train_params_from_options(preset: str, options: dict[str, Any]) -> TrainParams:
    """The TrainParams of `scorer train`: the preset's values, then every option given.

    ``options`` maps the command's option names (``epochs``, ``aug_spec_masks``, ...) to their
    values, None where the option was not given. ``aug_spec_masks`` N means N time and N
    frequency masks. Raises click.UsageError for an unknown preset or option, or invalid values.
    """
    from training.params import preset_params

    overrides: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key == "aug_spec_masks":
            overrides["aug_spec_time_masks"] = overrides["aug_spec_freq_masks"] = value
        elif key in RECIPE_OPTIONS:
            overrides[key] = value
        else:
            raise click.UsageError(f"not a training option: {key}")
    try:
        tp = preset_params(preset, **overrides)
        tp.validate()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    return tp


@click.command("train")
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    help="Labelled audio: a CSV (file,label[,group]), a folder with labels.csv, or a folder per "
    "class. Ingested first; training then uses exactly these files. Default: every labelled "
    "snippet in the database.",
)
@click.option(
    "--preset",
    default="reference",
    show_default=True,
    type=click.Choice(PRESET_NAMES),
    help="Recipe to start from; the options below override its values. reference: the "
    "reference recipe, the default until another preset beats it on held-out singers. "
    "augmented: reference + random gain (6 dB), time shift (30 frames), 2 time + 2 frequency "
    "SpecAugment masks and label smoothing 0.1; measured worse on held-out singers "
    "(docs/RESULTS.md). cpu: 3 x ResNet-10 x 6 epochs with 600 two-voice mixtures, for a CPU "
    "(~25 min on 3,000 snippets): with the voice head 0.895-0.900 on held-out singers, above "
    "the reference's log-mel ensemble at 0.81 (docs/RESULTS.md 0g).",
)
@click.option(
    "--members", type=click.IntRange(min=1), help="Ensemble size. [preset; reference: 20]"
)
@click.option(
    "--epochs", type=click.IntRange(min=1), help="Epochs per member. [preset; reference: 20]"
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), help="Training batch. [preset; reference: 32]"
)
@click.option("--seed", type=int, help="Member i is seeded with seed + i. [preset; reference: 0]")
@click.option("--lr", type=float, help="AdamW learning rate. [preset; reference: 3e-4]")
@click.option("--weight-decay", type=float, help="AdamW weight decay. [preset; reference: 1e-5]")
@click.option(
    "--mixup-alpha", type=float, help="Mixup Beta(a, a); 0 = off. [preset; reference: 0.4]"
)
@click.option(
    "--arch",
    type=click.Choice(["resnet34", "resnet18", "resnet10"]),
    help="Member architecture (smaller ones for quick runs). [preset; reference: resnet34]",
)
@click.option(
    "--normalize",
    type=click.Choice(["none", "per_snippet"]),
    help="Input normalisation of the log-mel. [preset; reference: none]",
)
@click.option(
    "--val-fraction",
    type=float,
    help="Share of groups (singers) held out for validation; no group is on both sides. "
    "[preset; reference: 0.2]",
)
@click.option(
    "--label-smoothing",
    type=float,
    help="CrossEntropyLoss label smoothing, in [0, 1). [preset; reference: 0, augmented: 0.1]",
)
@click.option(
    "--aug-gain-db",
    type=click.FloatRange(min=0),
    help="Random gain: each training snippet's non-silent values move by one offset in "
    "[-x, +x] feature dB (half that in ordinary dB: the features are 20·log10 of a power). "
    "0 = off. [preset; reference: 0, augmented: 6]",
)
@click.option(
    "--aug-shift-frames",
    type=click.IntRange(min=0),
    help="Time shift: each training snippet is rolled circularly by up to x frames (10 ms each)."
    " 0 = off. [preset; reference: 0, augmented: 30]",
)
@click.option(
    "--aug-spec-masks",
    type=click.IntRange(min=0),
    help="SpecAugment: N time masks (up to 20 frames) and N frequency masks (up to 5 mel bands) "
    "per training snippet, filled with its mean. 0 = off. [preset; reference: 0, augmented: 2]",
)
@click.option(
    "--mix-multi",
    type=click.IntRange(min=0),
    help="Add N two-voice `multi` examples to the training side, each the power sum of the "
    "log-mels of two solo (male/female) training snippets of different singers; needs those "
    "class names. +8 points for the members on held-out singers at N = 600 for 1,367 training "
    "snippets (docs/RESULTS.md 0g). 0 = off. [preset; reference: 0, cpu: 600]",
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
    preset: str,
    members: int | None,
    epochs: int | None,
    batch_size: int | None,
    seed: int | None,
    lr: float | None,
    weight_decay: float | None,
    mixup_alpha: float | None,
    arch: str | None,
    normalize: str | None,
    val_fraction: float | None,
    label_smoothing: float | None,
    aug_gain_db: float | None,
    aug_shift_frames: int | None,
    aug_spec_masks: int | None,
    mix_multi: int | None,
    name: str | None,
    no_activate: bool,
    keep_checkpoints: bool,
    as_json: bool,
    no_wait: bool,
) -> None:
    """Train an ensemble of ResNets on labelled snippets.

    The recipe is --preset's (by default the reference recipe), with any option given on top.
    The reference stays the default until another recipe beats it on held-out singers
    (`scorer evaluate --labels HELD_OUT.csv`, see docs/RESULTS.md).

    Each member-epoch is checkpointed: if the run is killed, the same command resumes it where
    it stopped. The result is a model version with per-member and ensemble validation accuracy,
    activated for scoring unless --no-activate. With SCORER_BROKER_URL the job is queued in the
    database for `scorer worker train`, and this command follows it until it ends.
    """
    from tqdm import tqdm

    from scorer.cli.enqueue import print_failures
    from scorer.db.engine import make_sessionmaker
    from scorer.db.models import JobStatus
    from scorer.manifest import labels_for_data
    from worker import embedded
    from worker.runtime import configure_threads
    from worker.training_job import (
        check_name,
        create_job,
        find_resumable,
        name_conflict,
        reopen,
    )

    settings = settings_of(ctx)
    tp = train_params_from_options(
        preset,
        dict(
            members=members, epochs=epochs, batch_size=batch_size, seed=seed, lr=lr,
            weight_decay=weight_decay, mixup_alpha=mixup_alpha, arch=arch, normalize=normalize,
            val_fraction=val_fraction, label_smoothing=label_smoothing, aug_gain_db=aug_gain_db,
            aug_shift_frames=aug_shift_frames, aug_spec_masks=aug_spec_masks,
            mix_multi=mix_multi,
        ),
    )  # fmt: skip
    if name is not None:
        check_name(name)
    engine = ready_engine(settings)
    sessions = make_sessionmaker(engine)
    if name is not None:  # before any work: a taken name never costs a training run
        with sessions() as s:
            conflict = name_conflict(s, name, jobs=False)
        if conflict:
            raise ScorerError(conflict)
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
        print_failures(summary.skipped, "skipped")  # a FIFO, a device, a file gone: no row
        failed = {p for p, _ in summary.failures}
        shas = sorted(sha for sha, p in summary.shas.items() if p not in failed)
        stderr(
            f"{len(shas)} labelled files ready, {len(summary.failures)} failed"
            + (f", {len(summary.skipped)} skipped" if summary.skipped else "")
        )
    params = _params(tp, shas, name, no_activate, keep_checkpoints)
    with sessions.begin() as s:
        job = find_resumable(s, params)
        if name is not None:
            conflict = name_conflict(s, name, job.id if job else None)
            if conflict:
                raise ScorerError(conflict)
        if job is None:
            job = create_job(s, params)
        elif job.status == JobStatus.failed:
            stderr(f"resuming failed training job {job.id} from its checkpoints ({job.error})")
            reopen(s, job.id)
        else:
            stderr(f"resuming training job {job.id} ({job.message or 'not started'})")
        job_id = job.id
    run_or_follow(settings, engine, job_id, no_wait=no_wait, as_json=as_json)


def _params(
    tp: TrainParams, shas: list[str] | None, name: str | None, no_activate: bool, keep: bool
) -> dict[str, Any]:
    """A job's parameters: equal parameters = the same command, which resumes the same job."""
    return {
        "train": tp.to_dict(),
        "shas": shas,
        "name": name,
        "activate": not no_activate,
        "keep_checkpoints": keep,
    }


def run_or_follow(
    settings: Settings, engine: Engine, job_id: int, *, no_wait: bool, as_json: bool
) -> None:
    """Embedded: claim job `job_id` and train it here. With workers: it is queued; follow it
    (unless `no_wait`). Then print the model version it registered."""
    from scorer.db.engine import make_sessionmaker
    from worker.runtime import Runtime
    from worker.training_job import claim_here, run_job, worker_name

    if settings.embedded:
        with make_sessionmaker(engine).begin() as s:
            claimed = claim_here(s, worker_name(), job_id, settings.job_stale_after_s)
            if claimed is None:
                from scorer.db.models import TrainingJob

                job = s.get(TrainingJob, job_id)
                owner = job.worker if job is not None else None
                raise ScorerError(
                    f"training job {job_id} is being run by {owner or 'another process'}; wait "
                    f"for it, or `scorer jobs cancel {job_id}`"
                )
            token = claimed.claim
        mv = run_job(engine, Runtime(settings), job_id, token)
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


def follow_job(engine: Engine, job_id: int) -> ModelVersion:
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
