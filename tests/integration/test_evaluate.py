"""`scorer evaluate` end to end on the embedded default: real SQLite, a real tiny model.

One test trains a tiny 2-member resnet10 on generated tones (separation off, so it takes
seconds), scores a few held-out files, and then checks that evaluate's numbers agree with each
other and with the data, that the figures are real PNGs, and what happens to files given with
--labels that were never ingested. The tone labels are arbitrary: no accuracy level is asserted.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner, Result
from sqlalchemy import select

from scorer.cli import main
from scorer.cli.evaluate import _select, summarize
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.models import Feature, Snippet, SnippetStatus
from scorer.errors import ScorerError
from scorer.settings import Settings

SR = 22_050
CLASSES = ["none", "male", "female", "multi"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tone(seconds: float, f0: float, seed: int = 0) -> np.ndarray:
    """A harmonic tone plus noise: enough to exercise the pipeline (labels here are arbitrary)."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    return (0.2 * x + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def write_set(folder: Path, items: list[tuple[str, str, float, float]]) -> Path:
    """(name, label, seconds, f0) -> wav files and a labels.csv beside them; returns the CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, _, seconds, f0) in enumerate(items):
        sf.write(folder / name, tone(seconds, f0, seed=i), SR)
    return write_csv(folder / "labels.csv", [(name, label) for name, label, _, _ in items])


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "group"])
        w.writerows([(name, label, name) for name, label in rows])
    return path


def invoke(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), obj=settings)


def evaluate_json(settings: Settings, *args: str) -> tuple[dict, str]:
    result = invoke(settings, "evaluate", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def check_consistent(report: dict) -> None:
    """Numbers that must agree whatever the model predicts."""
    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (len(report["classes"]), len(report["classes"]))
    assert cm.sum() == report["files"]
    assert report["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert [c["support"] for c in report["per_class"]] == cm.sum(axis=1).tolist()
    for i, c in enumerate(report["per_class"]):
        if cm[i].sum():
            assert c["recall"] == pytest.approx(cm[i, i] / cm[i].sum())
        if cm[:, i].sum():
            assert c["precision"] == pytest.approx(cm[i, i] / cm[:, i].sum())
    curve = report["accuracy_vs_members"]
    assert [p["members"] for p in curve] == [1, 2]  # capped at the 2 members, ends with all
    # the curve is the members'; with a voice head the verdict is the fused one, and the
    # members' own figures are reported beside it
    members = report.get("members_alone", report)
    assert curve[-1]["accuracy"] == pytest.approx(members["accuracy"])
    assert curve[-1]["macro_f1"] == pytest.approx(members["macro_f1"])
    assert len(report["member_accuracy"]) == 2
    assert curve[0]["accuracy"] == pytest.approx(report["member_accuracy"][0])  # first k = 1
    cal = report["calibration"]
    assert cal["n_bins"] == 10 and sum(b["count"] for b in cal["bins"]) == report["files"]
    assert 0.0 <= cal["ece"] <= 1.0


def test_evaluate_end_to_end(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings(separation=False, preprocess_batch=4)
    train_csv = write_set(
        tmp_path / "train",
        [(f"{c}_{j}.wav", c, 3.0, 110 * (k + 1) + 7 * j) for k, c in enumerate(CLASSES)
         for j in range(2)],
    )  # fmt: skip
    result = invoke(
        settings, "train", "--data", str(train_csv), "--members", "2", "--epochs", "1",
        "--arch", "resnet10", "--val-fraction", "0.25",
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    # Held-out files, one of them 7 s long (windows at 0, 3 and 6 s: a 1 s tail is kept).
    test_items = [(f"t_{c}.wav", c, 3.0, 115 * (k + 1)) for k, c in enumerate(CLASSES)]
    test_items.append(("t_long.wav", "female", 7.0, 335))
    test_csv = write_set(tmp_path / "test", test_items)
    result = invoke(settings, "enqueue", str(tmp_path / "test"), "--labels", str(test_csv))
    assert result.exit_code == 0, result.output

    # Default: every labelled snippet of the database, less the 8 the model was trained on.
    report, err = evaluate_json(settings)
    check_consistent(report)
    assert (
        report["model"] == "v1" and report["classes"] == CLASSES and report["source"] == "database"
    )
    assert report["files"] == 5 and report["windows"] == 4 + 3
    assert report["excluded_training_files"] == 8 and not report["includes_training_data"]
    assert "8 training files of model v1 left out" in err
    mw = report["multi_window"]
    assert mw["files"] == 1 and mw["windows"] == 3
    assert set(mw["file_accuracy_by_rule"]) == {"voiced_mean", "mean", "majority_vote"}

    # --include-training: all 13, and the user is told.
    everything, err = evaluate_json(settings, "--include-training")
    check_consistent(everything)
    assert everything["files"] == 13 and everything["includes_training_data"]
    assert "WARNING: 8 evaluated files were training data" in err

    # Text and figures.
    out = tmp_path / "out"
    result = invoke(settings, "evaluate", "--out", str(out))
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "accuracy" in text and "macro-F1" in text and "expected calibration error" in text
    assert "confusion matrix (rows: true, columns: predicted)" in text
    assert all(c in text for c in CLASSES)
    assert f"accuracy   {report['accuracy']:.4f}" in text
    for name in ("confusion.png", "reliability.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, name
    assert json.loads((out / "metrics.json").read_text()) == report

    # --labels with a file never ingested: embedded mode ingests it (features only) and
    # evaluates exactly the CSV's files; a training file listed there is still left out.
    extra = tmp_path / "extra"
    extra.mkdir()
    sf.write(extra / "new.wav", tone(3.0, 500, seed=99), SR)
    for name in ("t_male.wav", "t_long.wav"):
        (extra / name).write_bytes((tmp_path / "test" / name).read_bytes())
    (extra / "none_0.wav").write_bytes((tmp_path / "train" / "none_0.wav").read_bytes())
    labels = write_csv(
        extra / "labels.csv",
        [("new.wav", "multi"), ("t_male.wav", "male"), ("t_long.wav", "female"),
         ("none_0.wav", "none")],
    )  # fmt: skip
    chosen, err = evaluate_json(settings, "--labels", str(labels))
    check_consistent(chosen)
    assert "ingesting 1 files" in err and "1 training files of model v1 left out" in err
    assert chosen["files"] == 3 and chosen["windows"] == 1 + 1 + 3
    assert chosen["source"] == str(labels)
    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine)() as s:
            new = s.scalars(select(Snippet).where(Snippet.source_path.endswith("new.wav"))).one()
            assert new.label == "multi" and new.status == SnippetStatus.preprocessed
            versions = set(
                s.scalars(select(Feature.frontend_version).where(Feature.sha256 == new.sha256))
            )
            assert any(v.startswith("fe-") for v in versions)  # its log-mel (+ voice: "vf-")
    finally:
        engine.dispose()

    # With workers (a broker URL), evaluate does not ingest: it says how to, in one line.
    sf.write(extra / "newer.wav", tone(3.0, 600, seed=98), SR)
    write_csv(extra / "more.csv", [("newer.wav", "male")])
    broker = make_settings(separation=False, broker_url="redis://127.0.0.1:6379/15")
    result = invoke(broker, "evaluate", "--labels", str(extra / "more.csv"))
    assert result.exit_code == 1, result.output
    assert "no features for model v1" in result.output and "scorer enqueue" in result.output
    assert result.output.count("Error:") == 1 and "Traceback" not in result.output

    # An unknown model version is an expected error.
    result = invoke(settings, "evaluate", "--model-version", "v9")
    assert result.exit_code == 1 and "no model version 'v9'" in result.output


def test_evaluate_without_a_model_is_one_line_error(make_settings: Callable[..., Settings]) -> None:
    result = invoke(make_settings(), "evaluate")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: no active model version: run `scorer train` or give --model-version"
    )


def test_evaluate_has_help() -> None:
    result = CliRunner().invoke(main, ["evaluate", "--help"])
    assert result.exit_code == 0 and "--exclude-training / --include-training" in result.output


def files(*labels: str) -> list[dict]:
    return [{"sha256": f"sha{i}", "label": lab, "path": f"f{i}"} for i, lab in enumerate(labels)]


def test_a_model_without_recorded_training_files_warns_loudly() -> None:
    kept, excluded, notes = _select(files("male", "female"), CLASSES, None, None, "v1")
    assert len(kept) == 2 and excluded == 0
    assert any("INCLUDES ITS TRAINING DATA" in n for n in notes)
    with pytest.raises(ScorerError, match="--exclude-training is impossible"):
        _select(files("male"), CLASSES, None, True, "v1")


def test_labels_the_model_does_not_know_are_left_out_with_a_note() -> None:
    kept, excluded, notes = _select(files("male", "choir"), ["male", "female"], {"sha9"}, None, "v")
    assert [f["label"] for f in kept] == ["male"] and excluded == 0
    assert notes == ["1 files labelled choir left out: model v knows only male, female"]


def test_windows_are_combined_by_the_documented_rule() -> None:
    """A song with an instrumental intro: by its sung windows it is female, by the plain mean
    of all windows it is none. The verdict (and so the accuracy) follows the sung windows."""
    classes = ["none", "male", "female"]
    intro = [0.9, 0.05, 0.05]
    sung = [0.2, 0.1, 0.7]
    short = [0.1, 0.8, 0.1]  # a one-window file, truly male
    windows = np.array([intro, intro, intro, sung, sung, short])
    member_proba = np.stack([windows, windows])  # two identical members
    report = summarize(member_proba, np.array([5, 1]), np.array([2, 1]), classes)
    assert report["accuracy"] == 1.0 and report["confusion_matrix"][2][2] == 1
    mw = report["multi_window"]
    assert mw["files"] == 1 and mw["windows"] == 5
    assert mw["window_accuracy"] == pytest.approx(2 / 5)
    assert mw["file_accuracy_by_rule"] == {"voiced_mean": 1.0, "mean": 0.0, "majority_vote": 0.0}
    assert report["accuracy_vs_members"] == [
        {"members": k, "accuracy": 1.0, "macro_f1": 1.0} for k in (1, 2)
    ]
