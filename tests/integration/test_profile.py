"""`--profile fast` through the embedded CLI: the active model's newest distilled student scores
(the active model, said once, when it has none; explicit settings win), and Spleeter runs its
segment by need even for a model trained at T = 512, with those features (log-mel and voice)
stored under their own front-end version (real SQLite, real Spleeter and resemblyzer weights,
tiny real ResNets)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner, Result
from sqlalchemy import select

from pipeline.frontend import FrontendConfig
from pipeline.voice import VoiceConfig
from scorer.cli import main
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.models import Feature, ModelVersion, Prediction, Snippet
from scorer.settings import Settings
from training.ensemble import native_bf16
from worker.runtime import resolve_device

SR = 16_000
CLASSES = ["none", "male", "female", "multi"]


def sung(seconds: float, f0: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 8))
    return (0.15 * x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def invoke(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), obj=settings, catch_exceptions=False)


def train_teacher(settings: Settings, root: Path, per_class: int) -> None:
    data = root / "train"
    data.mkdir(parents=True)
    rows = ["file,label,group"]
    for k, c in enumerate(CLASSES):
        for j in range(per_class):
            sf.write(data / f"{c}_{j}.wav", sung(3.0, 110 * (k + 1) + 7 * j, seed=k * 10 + j), SR)
            rows.append(f"{c}_{j}.wav,{c},{c}_{j}")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    result = invoke(
        settings, "train", "--data", str(data / "labels.csv"), "--members", "2", "--epochs",
        "1", "--arch", "resnet10", "--val-fraction", "0.25", "--name", "teacher",
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def song(folder: Path, name: str, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(folder / name, sung(3.0, 200 + 13 * seed, seed=100 + seed), SR)
    return folder


def scored_by(settings: Settings, name: str) -> set[str]:
    """Names of the model versions with a verdict on the file `name`."""
    with make_sessionmaker(make_engine(settings))() as s:
        return set(
            s.scalars(
                select(ModelVersion.name)
                .join(Prediction, Prediction.model_version_id == ModelVersion.id)
                .join(Snippet, Snippet.sha256 == Prediction.sha256)
                .where(Snippet.source_path.endswith(name), Prediction.window_index == -1)
            )
        )


def test_fast_profile_scores_with_the_newest_student(
    make_settings: Callable[..., Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(separation=False, voice_features=False, preprocess_batch=4)
    train_teacher(settings, tmp_path, per_class=2)
    with caplog.at_level(logging.WARNING, logger="scorer.db.students"):
        result = invoke(
            settings, "--profile", "fast", "enqueue", str(song(tmp_path / "a", "a.wav", 1))
        )
    assert result.exit_code == 0, result.output
    assert "with model teacher," in result.output
    assert "the active model teacher has no distilled student" in caplog.text
    assert scored_by(settings, "a.wav") == {"teacher"}

    for k, epochs in enumerate(("1", "1")):  # two students: the newer one scores
        result = invoke(
            settings, "distill", "teacher", "--arch", "resnet10", "--epochs", epochs,
            "--name", f"student{k}",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scorer.db.students"):
        result = invoke(
            settings, "--profile", "fast", "enqueue", str(song(tmp_path / "b", "b.wav", 2))
        )
    assert result.exit_code == 0, result.output
    assert "with model student1," in result.output
    assert "scoring with student1, the newest student of the active model teacher" in caplog.text
    assert scored_by(settings, "b.wav") == {"student1"}

    # The teacher stays the active model: the reference profile, and an explicit setting under
    # the fast profile, score with it.
    result = invoke(settings, "enqueue", str(song(tmp_path / "c", "c.wav", 3)))
    assert result.exit_code == 0 and "with model teacher," in result.output
    explicit = make_settings(
        separation=False, voice_features=False, preprocess_batch=4, prefer_student=False
    )
    result = invoke(explicit, "--profile", "fast", "enqueue", str(song(tmp_path / "d", "d.wav", 4)))
    assert result.exit_code == 0 and "with model teacher," in result.output
    with make_sessionmaker(make_engine(settings))() as s:
        active = s.scalars(select(ModelVersion.name).where(ModelVersion.active)).all()
    assert active == ["teacher"]


def test_fast_profile_separates_by_need_under_its_own_version(
    make_settings: Callable[..., Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(voice_features=True, preprocess_batch=4)
    train_teacher(settings, tmp_path, per_class=1)  # T = 512 features, with a voice head
    # By need, and with bf16 U-Nets where bf16 is native (SCORER_SEPARATION_BF16=auto).
    bf16 = native_bf16(resolve_device(settings.device))
    official, by_need = FrontendConfig(), FrontendConfig(spleeter_frames=0, spleeter_bf16=bf16)
    with make_sessionmaker(make_engine(settings))() as s:
        model = s.scalars(select(ModelVersion).where(ModelVersion.active)).one()
        assert model.frontend_version == official.version
    library = song(tmp_path / "lib", "x.wav", 5)

    with caplog.at_level(logging.WARNING):
        result = invoke(settings, "--profile", "fast", "enqueue", str(library))
    assert result.exit_code == 0, result.output
    assert "1 preprocessed, 1 scored with model teacher" in result.output
    assert "no voice features" not in caplog.text  # the head found them under by-need's key

    def versions() -> set[str]:
        with make_sessionmaker(make_engine(settings))() as s:
            sha = s.scalars(select(Snippet.sha256).where(Snippet.source_path.endswith("x.wav")))
            return set(
                s.scalars(select(Feature.frontend_version).where(Feature.sha256 == sha.one()))
            )

    voice = VoiceConfig()
    assert versions() == {by_need.version, voice.version(by_need.version)}

    # The reference profile makes the model's own features beside them: never mixed.
    result = invoke(settings, "enqueue", str(library))
    assert result.exit_code == 0, result.output
    assert versions() == {
        by_need.version, voice.version(by_need.version),
        official.version, voice.version(official.version),
    }  # fmt: skip
