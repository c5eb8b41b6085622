"""`scorer enqueue`: find audio, store each distinct content once, and score it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from sqlalchemy import Engine

from scorer.cli.common import ready_engine, settings_of, stderr
from scorer.db.models import SnippetStatus
from scorer.settings import Settings

if TYPE_CHECKING:
    from scorer.manifest import Labelled
    from worker.embedded import RunSummary


def print_failures(failures: list[tuple[str, str]], kind: str = "failed") -> None:
    for path, reason in failures:
        click.echo(f"{kind}: {path}: {reason}", err=True)


@click.command("enqueue")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--labels",
    "labels_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV with file,label[,group]: store the labels (and print the accuracy).",
)
@click.option("--retry-failed", is_flag=True, help="Try again content that failed before.")
@click.option("--no-score", is_flag=True, help="Only preprocess (features); do not run the model.")
@click.option(
    "--no-wait",
    is_flag=True,
    help="With workers (SCORER_BROKER_URL): return once published, do not wait for the results.",
)
@click.pass_context
def enqueue(
    ctx: click.Context,
    paths: tuple[Path, ...],
    labels_csv: Path | None,
    retry_failed: bool,
    no_score: bool,
    no_wait: bool,
) -> None:
    """Score every audio file under PATHS (mp3, wav, flac, ogg; folders are walked recursively).

    Embedded (no SCORER_BROKER_URL): runs in this process. With a broker: publishes to the
    workers, slowing down while the first queue is full, and shows progress until every file is
    scored or failed (Ctrl-C stops watching; the workers go on).

    Content is identified by its sha256: the same bytes enqueued again do no new work. Files longer
    than 3 s are scored per 3 s window, plus a per-file verdict. Each file that cannot be scored
    gets one `failed:` line with the reason; a path that is no regular file (a FIFO, a device), a
    symlink loop or a folder that cannot be listed gets one `skipped:` line; the others are
    scored. Symlinked folders are followed, each folder once. Exit code 3 when some failed or
    were skipped. Embedded, rows an earlier (crashed) run left queued are finished too.
    """
    from tqdm import tqdm

    from scorer.cli import EXIT_ITEMS_FAILED
    from scorer.manifest import read_manifest

    settings = settings_of(ctx)
    labels = read_manifest(labels_csv) if labels_csv else None
    files, skipped = list_inputs(paths)
    if not files:
        print_failures(skipped, "skipped")
        stderr("no audio files found (looked for .mp3 .wav .flac .ogg)")
        if skipped:
            ctx.exit(EXIT_ITEMS_FAILED)
        return
    engine = ready_engine(settings)
    if settings.embedded:
        from worker.embedded import run  # torch: only where the stages run in this process
        from worker.runtime import configure_threads

        configure_threads(settings)
        with tqdm(
            total=len(files), unit="file", desc="scoring", file=sys.stderr, disable=None
        ) as bar:
            summary = run(
                settings,
                engine,
                files,
                labels,
                score_with_model=not no_score,
                retry_failed=retry_failed,
                progress=bar.update,
                recover=[SnippetStatus.queued],
            )
    else:
        summary = publish_and_wait(
            settings, engine, files, labels, no_score=no_score, retry_failed=retry_failed,
            wait=not no_wait,
        )  # fmt: skip
    summary.skipped[:0] = skipped
    print_failures(summary.failures)
    print_failures(summary.skipped, "skipped")
    print_failures(summary.warnings, "warning")
    if summary.model_name is None and not no_score:
        stderr("no active model: features are stored; run `scorer train`, then enqueue again")
    verb = "preprocessed" if settings.embedded else "published"
    stderr(
        f"{summary.files} files, {len(summary.shas)} distinct, {summary.new} new, "
        f"{summary.preprocessed} {verb}, {summary.scored} scored"
        + (f" with model {summary.model_name}" if summary.model_name else "")
        + f", {len(summary.failures)} failed"
        + (f", {len(summary.skipped)} skipped" if summary.skipped else "")
        + (f"; {summary.recovered} left by an earlier run taken up" if summary.recovered else "")
    )
    if labels and summary.model_name:
        from scorer.db import queries
        from scorer.db.engine import make_sessionmaker

        with make_sessionmaker(engine)() as s:  # the model that scored (a student: fast profile)
            model = queries.model_by_name_or_id(s, summary.model_name)
        assert model is not None
        with engine.connect() as conn, queries.sha_table(conn, summary.shas) as run_shas:
            correct, total = queries.label_accuracy(conn, run_shas, model.id)
        if total:
            click.echo(f"accuracy: {correct / total:.4f} ({correct}/{total} labelled files)")
    if summary.failures or summary.skipped:
        ctx.exit(EXIT_ITEMS_FAILED)


def list_inputs(paths: tuple[Path, ...]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files to score under `paths`, and (path, reason) of those skipped while listing."""
    from worker.inputs import Skipped, iter_inputs

    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for found in iter_inputs(list(paths)):
        if isinstance(found, Skipped):
            skipped.append((str(found.path), found.reason))
        else:
            files.append(found)
    return files, skipped


def publish_and_wait(
    settings: Settings,
    engine: Engine,
    files: list[Path],
    labels: dict[Path, Labelled] | None,
    *,
    no_score: bool,
    retry_failed: bool,
    wait: bool,
) -> RunSummary:
    """Distributed mode: publish, then watch the database until every file is final."""
    from tqdm import tqdm

    from scorer.db import queries
    from scorer.db.engine import make_sessionmaker
    from worker.celery_app import make_celery
    from worker.publish import pending_count, publish, wait_until_final

    app = make_celery(settings)
    with tqdm(
        total=len(files), unit="file", desc="publishing", file=sys.stderr, disable=None
    ) as bar:
        summary = publish(
            settings, engine, app, files, labels, score_with_model=not no_score,
            retry_failed=retry_failed, progress=bar.update,
        )  # fmt: skip
    with make_sessionmaker(engine)() as s:
        model = None if no_score else queries.active_model(s)
    model_id = model.id if model else None
    shas = list(summary.shas)
    if wait:
        left = pending_count(engine, shas, model_id)
        with tqdm(
            total=len(shas), initial=len(shas) - left, unit="file", desc="scored",
            file=sys.stderr, disable=None,
        ) as bar:  # fmt: skip
            try:
                wait_until_final(engine, shas, model_id, progress=bar.update)
            except KeyboardInterrupt:
                stderr("stopped watching; the workers go on (see `scorer status`)")
    from worker.embedded import failures_of

    summary.failures = failures_of(engine, summary.shas)
    summary.scored = len(shas) - len(summary.failures) - pending_count(engine, shas, model_id)
    return summary


COMMANDS = [enqueue]
