"""`scorer evaluate`: how good is a model version on labelled snippets it was not trained on?

Only options and printing live here; the evaluation itself is ``scorer.evaluation`` (callable
from a notebook or a bench script without click).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from scorer.cli.common import ready_engine, settings_of, stderr
from scorer.evaluation import _select, finite, format_report, summarize, write_outputs

__all__ = ["COMMANDS", "_select", "format_report", "summarize", "write_outputs"]


@click.command("evaluate")
@click.option(
    "--labels",
    "labels_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV with file,label[,group]: evaluate exactly these files, with these labels. Files not "
    "ingested yet are ingested first (features only) when embedded; with workers, enqueue them "
    "first. Default: every labelled snippet in the database.",
)
@click.option("--model-version", "model_key", help="Name or id; default: the active one.")
@click.option(
    "--exclude-training/--include-training",
    "exclude_training",
    default=None,
    help="Leave out the files the model was trained on (its training job's files). Default: on "
    "when the model knows its training files; otherwise all are included, with a warning.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write confusion.png, reliability.png and metrics.json into this folder.",
)
@click.pass_context
def evaluate(
    ctx: click.Context,
    labels_csv: Path | None,
    model_key: str | None,
    exclude_training: bool | None,
    as_json: bool,
    out_dir: Path | None,
) -> None:
    """Accuracy, macro-F1, per-class precision/recall, confusion matrix, accuracy against the
    number of members, and calibration (ECE) of a model version on labelled files.

    Each file is judged as `scorer enqueue` judges it: a prediction per 3 s window, and a
    per-file verdict that is the mean of the windows with voice (P(none) < 0.5), or of all
    windows when none has voice. Metrics are per file; files of several windows also get their
    window accuracy and a comparison of ways to combine windows.
    """
    from scorer.evaluation import evaluate_model
    from worker.runtime import configure_threads

    settings = settings_of(ctx)
    engine = ready_engine(settings)
    configure_threads(settings)
    report = evaluate_model(
        settings,
        engine,
        model_key=model_key,
        labels_csv=labels_csv,
        exclude_training=exclude_training,
        notify=stderr,
    )
    if out_dir is not None:
        write_outputs(report, out_dir)
    report = finite(report)
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        click.echo(format_report(report))
    if out_dir is not None:
        stderr(f"wrote confusion.png, reliability.png and metrics.json to {out_dir}")


COMMANDS = [evaluate]
