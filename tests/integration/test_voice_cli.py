"""Voice features through the embedded CLI: computed with the log-mel, cached under their own
version, a voice head trained with the members, and used when scoring (real Spleeter, real
CREPE and resemblyzer weights, tiny ResNet)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from sqlalchemy import select

from pipeline.voice import VoiceConfig
from scorer.cli import main
from scorer.db import queries
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.models import ModelVersion, Prediction, Snippet
from scorer.settings import Settings
from training.ensemble import load_ensemble
from worker.runtime import frontend_from_settings

SR = 16_000
CLASSES = ["none", "male", "female", "multi"]


def voice_like(seconds: float, f0: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    vibrato = 1 + 0.01 * np.sin(2 * np.pi * 5 * t)
    phase = 2 * np.pi * np.cumsum(f0 * vibrato) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 8))
    return (0.15 * x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def invoke(settings: Settings, *args: str):
    return CliRunner().invoke(main, list(args), obj=settings, catch_exceptions=False)


def write_set(folder: Path, per_class: int, seed: int) -> Path:
    rows = []
    for k, label in enumerate(CLASSES):
        for j in range(per_class):
            path = folder / f"{label}_{j}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, voice_like(3.0, 100 * (k + 1) + 9 * j, seed + 10 * k + j), SR)
            rows.append({"file": path.name, "label": label, "group": f"{label}{j}-{seed}"})
    with (folder / "labels.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "label", "group"])
        w.writeheader()
        w.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("voice")
    settings = Settings(
        data_dir=root / "data", torch_threads=1, preprocess_batch=4, voice_features=True
    )
    train = write_set(root / "train", 3, 0)
    result = invoke(
        settings, "train", "--data", str(train), "--members", "1", "--epochs", "1",
        "--arch", "resnet10", "--val-fraction", "0.34",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"root": root, "settings": settings}


def test_voice_features_are_cached_under_their_own_version(env: dict) -> None:
    settings = env["settings"]
    fe = frontend_from_settings(settings).version
    version = VoiceConfig().version(fe)
    with make_sessionmaker(make_engine(settings))() as s:
        shas = list(s.scalars(select(Snippet.sha256)))
        mels = queries.load_features(s, shas, fe)
        voice = queries.load_features(s, shas, version)
    assert len(shas) == 12 and set(voice) == set(mels) == set(shas)
    for sha in shas:
        assert voice[sha].shape == (mels[sha].shape[0], 1, VoiceConfig().dim)
        assert np.isfinite(voice[sha]).all()


def test_training_fitted_a_voice_head_and_scoring_uses_it(env: dict, tmp_path: Path) -> None:
    settings = env["settings"]
    test = write_set(tmp_path / "test", 1, 100)
    result = invoke(settings, "enqueue", str(test), "--labels", str(test / "labels.csv"))
    assert result.exit_code == 0, result.output
    with make_sessionmaker(make_engine(settings))() as s:
        model = s.scalars(select(ModelVersion).where(ModelVersion.active)).one()
        ens = load_ensemble(settings.resolved_model_dir / model.weights_uri, "cpu", amp=False)
        assert ens.voice_head is not None
        assert ens.voice_version == VoiceConfig().version(model.frontend_version)
        assert "fusion_weight" in model.metrics["voice"]
        shas = [
            s.scalars(select(Snippet.sha256).where(Snippet.source_path == str(p))).one()
            for p in sorted(test.glob("*.wav"))
        ]
        mels = queries.load_features(s, shas, model.frontend_version)
        voice = queries.load_features(s, shas, ens.voice_version)
        stored = {
            p.sha256: p.probabilities
            for p in s.scalars(select(Prediction).where(Prediction.sha256.in_(shas)))
        }
    x = torch.from_numpy(np.concatenate([mels[h] for h in shas]).astype(np.float32))
    v = torch.from_numpy(np.concatenate([voice[h][:, 0] for h in shas]).astype(np.float32))
    fused = ens.predict(x, voice=v)["proba"].numpy()
    plain = ens.predict(x)["proba"].numpy()
    got = np.array([stored[h] for h in shas])
    np.testing.assert_allclose(got, fused, atol=1e-5)
    if ens.voice_head.fusion_weight > 0:
        assert not np.allclose(got, plain, atol=1e-5)
    # scorer evaluate judges as the workers do: by the fused verdict, the members beside it
    from scorer.evaluation import evaluate_model

    report = evaluate_model(
        settings, make_engine(settings), labels_csv=test / "labels.csv", notify=lambda _: None
    )
    truth = {p.name: p.stem.split("_")[0] for p in test.glob("*.wav")}
    with make_sessionmaker(make_engine(settings))() as s:
        labels = {
            Path(path).name: label
            for path, label in s.execute(
                select(Snippet.source_path, Prediction.label).join(
                    Prediction, Prediction.sha256 == Snippet.sha256
                )
            )
            if Path(path).name in truth
        }
    assert report["accuracy"] == pytest.approx(np.mean([labels[n] == truth[n] for n in truth]))
    assert "members_alone" in report


def test_a_student_learns_the_fused_verdict(env: dict) -> None:
    from scorer.cli.distill import _features, _teacher_probabilities, _teacher_voice
    from worker.runtime import Runtime

    settings = env["settings"]
    engine = make_engine(settings)
    with make_sessionmaker(engine)() as s:
        model = s.scalars(select(ModelVersion).where(ModelVersion.active)).one()
        s.expunge(model)
    rt = Runtime(settings)
    x, _, _ = _features(engine, model)
    voice = _teacher_voice(engine, rt, model)
    assert voice is not None and voice.shape == (len(x), VoiceConfig().dim)
    assert np.isfinite(voice).all()
    soft = _teacher_probabilities(rt, model, x, voice)
    ens = rt.ensemble(model.weights_uri)
    want = ens.predict(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(voice))["proba"]
    np.testing.assert_allclose(soft, want.numpy(), atol=1e-5)
