"""The voice head: fitting, choosing on validation, fusing, saving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training.voice_head import VoiceHead, fit_linear, fit_voice_head, fuse


def blobs(n: int, seed: int, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    centres = np.eye(4, 12) * 3
    return (centres[y] + spread * rng.standard_normal((n, 12))).astype(np.float32), y


def test_linear_head_learns_separable_classes() -> None:
    x, y = blobs(400, 0)
    xt, yt = blobs(200, 1)
    head = fit_linear(x, y, 4, l2=1e-3)
    pred = head.log_proba(torch.from_numpy(xt)).argmax(1).numpy()
    assert (pred == yt).mean() > 0.9


def test_fusion_weight_follows_the_better_model_on_validation() -> None:
    x, y = blobs(400, 0, spread=0.5)
    xv, yv = blobs(200, 1, spread=0.5)
    useless = np.full((len(yv), 4), 0.25, dtype=np.float32)  # an ensemble that knows nothing
    head = fit_voice_head(x, y, 4, xv, yv, useless)
    assert head.fusion_weight >= 0.9
    perfect = np.eye(4, dtype=np.float32)[yv] * 0.97 + 0.01
    xv_noise = np.random.default_rng(2).standard_normal(xv.shape).astype(np.float32)
    head = fit_voice_head(x, y, 4, xv_noise, yv, perfect)
    assert head.fusion_weight <= 0.1


def test_fuse_endpoints() -> None:
    p = torch.tensor([[0.7, 0.1, 0.1, 0.1]])
    logq = torch.log(torch.tensor([[0.1, 0.1, 0.1, 0.7]]))
    torch.testing.assert_close(fuse(p, logq, 0.0), p)
    torch.testing.assert_close(fuse(p, logq, 1.0), logq.exp())
    assert fuse(p, logq, 0.5).sum().item() == torch.ones(()).item()


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    x, y = blobs(100, 0)
    head = fit_linear(x, y, 4, l2=1e-2)
    head.fusion_weight = 0.35
    head.save(tmp_path)
    back = VoiceHead.load(tmp_path)
    assert back is not None and back.fusion_weight == 0.35
    xt = torch.from_numpy(x[:5])
    torch.testing.assert_close(back.log_proba(xt), head.log_proba(xt))
    assert VoiceHead.load(tmp_path / "none") is None


def test_the_fused_temperature_calibrates_without_changing_decisions() -> None:
    from training.calibration import expected_calibration_error

    x, y = blobs(400, 0, spread=1.5)
    xv, yv = blobs(300, 1, spread=1.5)
    rng = np.random.default_rng(3)
    # an over-confident ensemble: right 70 % of the time, always 0.97 sure
    guess = np.where(rng.random(len(yv)) < 0.7, yv, rng.integers(0, 4, len(yv)))
    ens = np.full((len(yv), 4), 0.01, dtype=np.float32)
    ens[np.arange(len(yv)), guess] = 0.97
    head = fit_voice_head(x, y, 4, xv, yv, ens)
    assert head.temperature != 1.0
    feats = torch.from_numpy(xv)
    calibrated = head.fuse(torch.from_numpy(ens), feats).numpy()
    raw = fuse(torch.from_numpy(ens), head.log_proba(feats), head.fusion_weight).numpy()
    assert (calibrated.argmax(1) == raw.argmax(1)).all()
    assert expected_calibration_error(calibrated, yv) < expected_calibration_error(raw, yv)
