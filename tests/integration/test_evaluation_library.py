"""`scorer.evaluation` called as a library, without click: the same report as `scorer evaluate`,
and calibration (ECE before and after the model's temperature) in it.

A tiny 2-member resnet10 is trained on generated tones (separation off: seconds) through the CLI
only to have a model; the evaluation itself is called directly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from scorer.cli import main
from scorer.db import queries
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.evaluation import evaluate_model, finite, format_report, summarize
from scorer.settings import Settings
from training.calibration import calibrate, expected_calibration_error
from worker.runtime import Runtime

from .test_evaluate import CLASSES, write_set

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_evaluate_model_without_click_matches_the_cli(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(separation=False, preprocess_batch=4)
    train_csv = write_set(
        tmp_path / "train",
        [(f"{c}_{j}.wav", c, 3.0, 110 * (k + 1) + 7 * j) for k, c in enumerate(CLASSES)
         for j in range(3)],
    )  # fmt: skip
    run = CliRunner().invoke
    args = ["--members", "2", "--epochs", "1", "--arch", "resnet10", "--val-fraction", "0.34"]
    result = run(main, ["train", "--data", str(train_csv), *args], obj=settings)
    assert result.exit_code == 0, result.output
    test_csv = write_set(
        tmp_path / "test", [(f"t_{c}.wav", c, 3.0, 115 * (k + 1)) for k, c in enumerate(CLASSES)]
    )
    result = run(main, ["enqueue", str(tmp_path / "test"), "--labels", str(test_csv)], obj=settings)
    assert result.exit_code == 0, result.output

    notes: list[str] = []
    engine = make_engine(settings)
    try:
        report = evaluate_model(settings, engine, notify=notes.append)
        with make_sessionmaker(engine)() as s:
            model = queries.active_model(s)
            assert model is not None
            row_temperature, weights = model.metrics["temperature"], model.weights_uri
    finally:
        engine.dispose()
    assert report["model"] == "v1" and report["files"] == 4
    assert notes == ["12 training files of model v1 left out"]

    # the model's temperature, fitted on its validation singers, is the one applied
    temperature = Runtime(settings).ensemble(weights).temperature
    assert temperature == row_temperature  # meta.json and the model_versions row agree
    cal = report["calibration"]
    assert temperature != 1.0 and cal["temperature"] == pytest.approx(temperature)
    assert 0.0 <= cal["ece"] <= 1.0 and 0.0 <= cal["ece_uncalibrated"] <= 1.0
    assert "uncalibrated" in format_report(finite(report))

    cli = run(main, ["evaluate", "--json"], obj=settings)
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout) == finite(report)


def test_summarize_reports_ece_before_and_after_the_temperature() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(200, 3))
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    member_proba = np.stack([proba, proba])
    y = rng.integers(0, 3, size=200)
    counts = np.ones(200, dtype=np.int64)
    classes = ["none", "male", "female"]
    raw = summarize(member_proba, counts, y, classes)
    cal = summarize(member_proba, counts, y, classes, temperature=3.0)
    assert raw["calibration"]["ece_uncalibrated"] == raw["calibration"]["ece"]
    assert cal["calibration"]["ece_uncalibrated"] == pytest.approx(raw["calibration"]["ece"])
    assert cal["calibration"]["ece"] == pytest.approx(
        expected_calibration_error(calibrate(proba, 3.0), y)
    )
    # random labels: softening (T = 3) must help calibration and leave accuracy alone
    assert cal["calibration"]["ece"] < raw["calibration"]["ece"]
    assert cal["accuracy"] == raw["accuracy"]
