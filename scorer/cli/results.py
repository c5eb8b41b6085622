"""`scorer results`: the stored predictions, as a table, JSON or CSV."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator

import click

from scorer.cli.common import ready_engine, settings_of
from scorer.errors import ScorerError


@click.command("results")
@click.option("--json", "as_json", is_flag=True, help="One JSON array on stdout.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout.")
@click.option("--windows", is_flag=True, help="One row per 3 s window instead of per file.")
@click.option("--label", help="Only predictions of this class.")
@click.option("--uncertain", is_flag=True, help="Least certain first (highest entropy).")
@click.option("--model-version", "model_key", help="Name or id; default: the active one.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@click.option(
    "--by-content",
    is_flag=True,
    help="One row per distinct content (sha256), not one per path it was enqueued at.",
)
@click.pass_context
def results_cmd(
    ctx: click.Context,
    as_json: bool,
    as_csv: bool,
    windows: bool,
    label: str | None,
    uncertain: bool,
    model_key: str | None,
    limit: int | None,
    by_content: bool,
) -> None:
    """Print the predictions of a model version (per file by default).

    Every path a scored content was enqueued at is listed under its own name (two copies of a
    song: two rows with one sha256); --by-content lists each content once."""
    from scorer.db import queries
    from scorer.db.engine import make_sessionmaker

    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    engine = ready_engine(settings_of(ctx))
    with make_sessionmaker(engine)() as s:
        model = queries.model_by_name_or_id(s, model_key) if model_key else queries.active_model(s)
        if model is None:
            raise ScorerError(
                f"no model version {model_key!r}" if model_key else "no active model version"
            )
        rows = queries.iter_results(
            s, model.id, windows=windows, label=label, uncertain=uncertain, limit=limit,
            by_content=by_content,
        )  # fmt: skip
        n = write_rows(
            (as_item(r, list(model.classes), windows) for r in rows),
            "json" if as_json else "csv" if as_csv else "text",
            windows,
        )
    if not (as_json or as_csv):
        click.echo(f"{n} rows, model {model.name}", err=True)


def as_item(r: dict, classes: list[str], windows: bool) -> dict:
    """One result row as printed: rounded scores, one p_<class> column per class."""
    item = {
        "path": r["source_path"],
        "sha256": r["sha256"],
        "window": r["window_index"] if windows else None,
        "start_s": r["start_s"] if windows else None,
        "label": r["label"],
        "confidence": round(r["confidence"], 4),
        "disagreement": round(r["disagreement"], 4),
        "entropy": round(r["entropy"], 4),
        "true_label": r["true_label"],
        **{f"p_{c}": p for c, p in zip(classes, r["probabilities"], strict=True)},
    }
    if not windows:
        item.pop("window")
        item.pop("start_s")
    return item


def write_rows(items: Iterator[dict], fmt: str, windows: bool) -> int:
    """Write each row as it comes (memory stays flat for millions of rows); returns the count.
    JSON is still one valid array: "[", the rows separated by commas, "]"."""
    n = 0
    writer: csv.DictWriter | None = None
    if fmt == "json":
        sys.stdout.write("[")
    for n, item in enumerate(items, 1):
        if fmt == "json":
            sys.stdout.write(("\n" if n == 1 else ",\n") + json.dumps(item))
        elif fmt == "csv":
            if writer is None:
                writer = csv.DictWriter(sys.stdout, fieldnames=list(item))
                writer.writeheader()
            writer.writerow(item)
        else:
            where = f" @{item['start_s']:.0f}s" if windows else ""
            truth = f" (labelled {item['true_label']})" if item["true_label"] else ""
            sys.stdout.write(
                f"{item['label']:<8} {item['confidence']:.3f}  {item['path']}{where}{truth}\n"
            )
    if fmt == "json":
        sys.stdout.write("\n]\n" if n else "]\n")
    sys.stdout.flush()
    return n


COMMANDS = [results_cmd]
