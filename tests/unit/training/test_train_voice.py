"""Training with voice features: the head is fitted, saved, loaded and used by predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.ensemble import load_ensemble
from training.train import TrainParams, run
from training.voice_head import HEAD_FILE

torch.set_num_threads(1)

CLASSES = ["none", "male", "female"]
TINY = TrainParams(members=1, epochs=1, batch_size=16, arch="resnet10", val_fraction=0.25)


def _task(n: int = 60) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Log-mel windows of pure noise (nothing to learn there) and voice features that tell the
    class: only the head can get it right."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % len(CLASSES)
    x = rng.normal(-60, 10, (n, 299, 40)).astype(np.float16)
    voice = rng.normal(0, 0.3, (n, 8)).astype(np.float32)
    voice[np.arange(n), y] += 2.0
    return x, y, [f"s{i % 12}" for i in range(n)], voice


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, np.ndarray]:
    x, y, g, voice = _task()
    meta = {"frontend": "fe-x", "voice": {"version": "vf-test", "config": {"dim": 8}}}
    result = run(TINY, x, y, g, CLASSES, tmp_path_factory.mktemp("run"), meta=meta, voice=voice)
    return result, voice


def test_head_is_fitted_and_wins_where_the_members_cannot(trained: tuple) -> None:
    result, _ = trained
    info = result.metrics()["voice"]
    assert info["fusion_weight"] >= 0.5
    assert info["val_acc"] >= 0.9 > result.ensemble_val_acc


def test_saved_head_is_loaded_and_used_by_predict(trained: tuple) -> None:
    result, voice = trained
    meta = json.loads((result.ensemble_dir / "meta.json").read_text())
    assert meta["voice"]["version"] == "vf-test" and "fusion_weight" in meta["voice"]
    ens = load_ensemble(result.ensemble_dir, "cpu", amp=False)
    assert ens.voice_head is not None and ens.voice_version == "vf-test"
    x, y, _, _ = _task()
    xt, vt = torch.from_numpy(x[:12].astype(np.float32)), torch.from_numpy(voice[:12])
    plain, fused = ens.predict(xt), ens.predict(xt, voice=vt)
    assert (fused["label_idx"].numpy() == y[:12]).mean() >= 0.9
    assert not torch.allclose(plain["proba"], fused["proba"])
    torch.testing.assert_close(fused["proba"].sum(1), torch.ones(12))


def test_a_meta_naming_a_missing_head_refuses_to_load(trained: tuple, tmp_path: Path) -> None:
    result, _ = trained
    copy = tmp_path / "m"
    copy.mkdir()
    for f in result.ensemble_dir.iterdir():
        if f.name != HEAD_FILE:
            (copy / f.name).write_bytes(f.read_bytes())
    with pytest.raises(FileNotFoundError, match=HEAD_FILE):
        load_ensemble(copy, "cpu")


def test_without_voice_there_is_no_head(tmp_path: Path) -> None:
    x, y, g, _ = _task()
    meta = {"frontend": "fe-x", "voice": {"version": "vf-test"}}  # named but not given
    result = run(TINY, x, y, g, CLASSES, tmp_path, meta=meta)
    assert "voice" not in json.loads((result.ensemble_dir / "meta.json").read_text())
    assert load_ensemble(result.ensemble_dir, "cpu").voice_head is None


def test_a_window_without_voice_features_is_judged_by_the_members(trained: tuple) -> None:
    result, voice = trained
    ens = load_ensemble(result.ensemble_dir, "cpu", amp=False)
    x, _, _, _ = _task()
    xt = torch.from_numpy(x[:4].astype(np.float32))
    v = torch.from_numpy(voice[:4].copy())
    v[1] = float("nan")  # featurised before voice features were on
    mixed, plain, fused = ens.predict(xt, voice=v), ens.predict(xt), ens.predict(xt, voice=v)
    torch.testing.assert_close(mixed["proba"][1], plain["proba"][1])
    assert not torch.allclose(mixed["proba"][0], plain["proba"][0])
    torch.testing.assert_close(mixed["proba"][0], fused["proba"][0])
