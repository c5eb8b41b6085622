"""`scorer enqueue`: find audio, store each distinct content once, and score it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from scorer.cli.common import ready_engine, settings_of, stderr


def print_failures(failures: list[tuple[str, str]]) -> None:
    for path, reason in failures:
        click.echo(f"failed: {path}: {reason}", err=True)


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
@click.pass_context
def enqueue(
    ctx: click.Context,
    paths: tuple[Path, ...],
    labels_csv: Path | None,
    retry_failed: bool,
    no_score: bool,
) -> None:
    """Score every audio file under PATHS (mp3, wav, flac, ogg; folders are walked recursively).

    Content is identified by its sha256: the same bytes enqueued again do no new work. Files longer
    than 3 s are scored per 3 s window, plus a per-file verdict. Each file that cannot be scored
    gets one `failed:` line with the reason; the others are scored. Exit code 3 when some failed.
    """
    from tqdm import tqdm

    from scorer.cli import EXIT_ITEMS_FAILED
    from scorer.manifest import iter_audio_files, read_manifest
    from worker.embedded import accuracy_against_labels, run
    from worker.runtime import configure_threads

    settings = settings_of(ctx)
    if not settings.embedded:
        raise click.ClickException(
            "SCORER_BROKER_URL is set, but publishing to workers is not built yet; "
            "unset it to score in-process"
        )
    labels = read_manifest(labels_csv) if labels_csv else None
    files = list(iter_audio_files(list(paths)))
    if not files:
        stderr("no audio files found (looked for .mp3 .wav .flac .ogg)")
        return
    engine = ready_engine(settings)
    configure_threads(settings)
    with tqdm(total=len(files), unit="file", desc="scoring", file=sys.stderr, disable=None) as bar:
        summary = run(
            settings,
            engine,
            files,
            labels,
            score_with_model=not no_score,
            retry_failed=retry_failed,
            progress=bar.update,
        )
    print_failures(summary.failures)
    if summary.model_name is None and not no_score:
        stderr("no active model: features are stored; run `scorer train`, then enqueue again")
    stderr(
        f"{summary.files} files, {len(summary.shas)} distinct, {summary.new} new, "
        f"{summary.preprocessed} preprocessed, {summary.scored} scored"
        + (f" with model {summary.model_name}" if summary.model_name else "")
        + f", {len(summary.failures)} failed"
    )
    if labels and summary.model_name:
        from scorer.db import queries
        from scorer.db.engine import make_sessionmaker

        with make_sessionmaker(engine)() as s:
            model = queries.active_model(s)
        assert model is not None
        correct, total = accuracy_against_labels(engine, list(summary.shas), model.id)
        if total:
            click.echo(f"accuracy: {correct / total:.4f} ({correct}/{total} labelled files)")
    if summary.failures:
        ctx.exit(EXIT_ITEMS_FAILED)


COMMANDS = [enqueue]
