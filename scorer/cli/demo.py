"""`scorer demo-data`: a deterministic labelled demo set, synthesised (no downloads)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--per-class", default=60, show_default=True, type=click.IntRange(min=2))
@click.option("--seed", default=0, show_default=True)
@click.option("--test-fraction", default=0.25, show_default=True)
def demo_data(out_dir: Path, per_class: int, seed: int, test_fraction: float) -> None:
    """Write synthetic singing snippets (none/male/female/multi) to OUT_DIR/train and OUT_DIR/test,
    folder per class plus labels.csv, with disjoint singers between train and test."""
    from pipeline.synth import generate_dataset

    generate_dataset(out_dir, n_per_class=per_class, seed=seed, test_fraction=test_fraction)
    click.echo(f"demo data in {out_dir}/train and {out_dir}/test (labels.csv in each)")


COMMANDS = [demo_data]
