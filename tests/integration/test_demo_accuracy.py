"""The demo set is learnable: a small ensemble trained through the real path (synthesised audio ->
real Spleeter -> log-mel -> ResNet) scores singers it never heard far above chance (0.25)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.synth import generate_dataset
from scorer.cli import main

pytestmark = pytest.mark.slow

CHANCE = 0.25


def test_small_model_beats_chance_on_held_out_singers(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    generate_dataset(tmp_path / "demo", n_per_class=24, seed=0, test_fraction=0.25)
    settings = make_settings(torch_threads=2)
    run = CliRunner().invoke
    result = run(
        main,
        ["train", "--data", str(tmp_path / "demo" / "train"), "--members", "2", "--epochs", "6",
         "--arch", "resnet10", "--batch-size", "16"],
        obj=settings,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    test = tmp_path / "demo" / "test"
    result = run(main, ["enqueue", str(test), "--labels", str(test / "labels.csv")], obj=settings)
    assert result.exit_code == 0, result.output
    match = re.search(r"accuracy: ([0-9.]+) \((\d+)/(\d+) labelled files\)", result.output)
    assert match, result.output
    accuracy, total = float(match[1]), int(match[3])
    assert total == 24
    assert accuracy >= CHANCE + 0.35, result.output
