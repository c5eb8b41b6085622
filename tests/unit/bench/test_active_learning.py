"""bench/active_learning.py in its tiny mode, end to end through the real `scorer` CLI (demo
synthesiser, no separation, one resnet10 member, one epoch): three arms trained and evaluated,
the uncertain arm's picks are the pool's highest-entropy verdicts, and a second run resumes
without training anything again."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bench.active_learning import ARMS, main, sha256_of

pytestmark = [pytest.mark.slow]


def files(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return [r["file"] for r in csv.DictReader(f)]


def base_entropies(data_dir: Path) -> dict[str, float]:
    """sha256 -> entropy of al-r0-base's per-file verdict."""
    from sqlalchemy import select

    from scorer.db.engine import make_engine, make_sessionmaker
    from scorer.db.models import FILE_WINDOW, ModelVersion, Prediction
    from scorer.settings import Settings

    engine = make_engine(Settings(data_dir=data_dir))
    with make_sessionmaker(engine)() as s:
        rows = s.execute(
            select(Prediction.sha256, Prediction.entropy)
            .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
            .where(ModelVersion.name == "al-r0-base", Prediction.window_index == FILE_WINDOW)
        ).all()
    engine.dispose()
    return dict(rows)


def test_tiny_run_trains_three_arms_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    for name in [k for k in os.environ if k.startswith("SCORER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SCORER_TORCH_THREADS", "1")
    monkeypatch.setenv("SCORER_DEVICE", "cpu")

    assert main([str(tmp_path), "--tiny"]) == 0

    results = json.loads((tmp_path / "results.json").read_text())
    (only,) = results["repeats"]
    assert set(only) == set(ARMS)
    for arm in ARMS:
        assert 0.0 <= only[arm]["accuracy"] <= 1.0 and only[arm]["files"] > 0
    base = files(tmp_path / "r0" / "base.csv")
    uncertain = files(tmp_path / "r0" / "uncertain.csv")
    randomly = files(tmp_path / "r0" / "random.csv")
    assert len(base) == 8 and uncertain[:8] == base and randomly[:8] == base
    assert len(uncertain) == len(randomly) == 12
    assert not set(uncertain[8:]) & set(base)
    pool = set(files(tmp_path / "train.csv")) - set(base)
    entropy = base_entropies(tmp_path / "data")
    by_entropy = sorted(pool, key=lambda f: entropy[sha256_of(f)], reverse=True)
    assert len(entropy) >= len(pool)  # the whole pool was scored by the base model
    assert [entropy[sha256_of(f)] for f in uncertain[8:]] == [
        entropy[sha256_of(f)] for f in by_entropy[:4]
    ]
    assert "| mean |" in capsys.readouterr().out

    assert main([str(tmp_path), "--tiny"]) == 0  # resumes: nothing is trained again
    assert capsys.readouterr().err.count("trained before") == len(ARMS)
    assert json.loads((tmp_path / "results.json").read_text())["repeats"] == results["repeats"]
