"""Real singing (../shared/data/mir1k4) through real Spleeter: train on some singers, score others.

Skips cleanly when the data set is absent (it is research-only and never copied into the repo).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from scorer.cli import main
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.models import FILE_WINDOW, Prediction, Snippet, SnippetStatus
from scorer.settings import Settings

MIR1K4 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mir1k4"
PER_CLASS_TRAIN = 8
PER_CLASS_TEST = 5

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def subsets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not (MIR1K4 / "labels.csv").is_file():
        pytest.skip(f"real data set not present at {MIR1K4}")
    with (MIR1K4 / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    root = tmp_path_factory.mktemp("mir")
    train, test = [], []
    for label in ("none", "male", "female", "multi"):
        of_class = sorted((r for r in rows if r["label"] == label), key=lambda r: r["file"])
        groups = sorted({r["split_group"] for r in of_class})
        held_out = set(groups[::3])  # a third of the singers never seen in training
        train += [r for r in of_class if r["split_group"] not in held_out][:PER_CLASS_TRAIN]
        test += [r for r in of_class if r["split_group"] in held_out][:PER_CLASS_TEST]
    paths = []
    for name, part in (("train.csv", train), ("test.csv", test)):
        path = root / name
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["file", "label", "group"])
            w.writeheader()
            for r in part:
                w.writerow({"file": str(MIR1K4 / r["file"]), "label": r["label"],
                            "group": r["split_group"]})  # fmt: skip
        paths.append(path)
    return paths[0], paths[1]


def test_real_singing_is_scored_through_spleeter(
    subsets: tuple[Path, Path], tmp_path: Path
) -> None:
    train_csv, test_csv = subsets
    settings = Settings(data_dir=tmp_path / "data", torch_threads=2)
    run = CliRunner().invoke
    result = run(main, ["train", "--data", str(train_csv), "--members", "2", "--epochs", "2",
                        "--arch", "resnet10"], obj=settings)  # fmt: skip
    assert result.exit_code == 0, result.output
    with test_csv.open(newline="") as f:
        files = [row["file"] for row in csv.DictReader(f)]
    result = run(main, ["enqueue", *files, "--labels", str(test_csv)], obj=settings)
    assert result.exit_code == 0, result.output
    assert "accuracy:" in result.output
    with make_sessionmaker(make_engine(settings))() as s:
        test_shas = s.scalars(select(Snippet.sha256).where(Snippet.source_path.in_(files))).all()
        assert len(test_shas) == len(files)
        statuses = s.scalars(select(Snippet.status).where(Snippet.sha256.in_(test_shas))).all()
        assert set(statuses) == {SnippetStatus.scored}
        n_verdicts = s.scalar(
            select(func.count())
            .select_from(Prediction)
            .where(Prediction.sha256.in_(test_shas), Prediction.window_index == FILE_WINDOW)
        )
        assert n_verdicts == len(files)
    # the same held-out singers through `scorer evaluate` (cached features: no Spleeter again)
    # and the version in `scorer models`
    result = run(main, ["evaluate", "--labels", str(test_csv), "--json"], obj=settings)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["files"] == len(files) and not report["includes_training_data"]
    assert 0.0 <= report["accuracy"] <= 1.0 and len(report["member_accuracy"]) == 2
    assert sum(map(sum, report["confusion_matrix"])) == len(files)
    assert [p["members"] for p in report["accuracy_vs_members"]] == [1, 2]
    result = run(main, ["models", "--json"], obj=settings)
    assert result.exit_code == 0, result.output
    (model,) = json.loads(result.stdout)
    assert model["active"] and model["members"] == 2 and 0.0 <= model["val_accuracy"] <= 1.0
