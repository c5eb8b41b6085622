"""Two-voice `multi` examples from solo ones (training/mixing.py): the log-mel maths against the
real front end, the pairs (training side only, two singers), and training that learns `multi`
from mixtures alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.frontend import FrontendConfig
from pipeline.preprocess import mel_windows
from training.ensemble import load_ensemble
from training.mixing import gain_db, mixing_pairs, power_sum_db, with_mixtures
from training.train import TrainParams, run

torch.set_num_threads(1)

CLASSES = ["none", "male", "female", "multi"]
EPOCHS, LR = 6, 1e-3


def _logmel(x: np.ndarray) -> np.ndarray:
    return mel_windows([x.astype(np.float32)], FrontendConfig(separation=False))[0][0].astype(
        np.float32
    )


def _voice(f0: float, seed: int) -> np.ndarray:
    """3 s of a vibrato harmonic voice-like tone at 16 kHz with a little breath noise."""
    t = np.arange(48_000) / 16_000
    phase = 2 * np.pi * f0 * t + 0.5 * np.sin(2 * np.pi * 5 * t)
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    return 0.1 * tone + 0.01 * np.random.default_rng(seed).standard_normal(len(t))


def test_power_sum_of_two_logmels_is_the_logmel_of_the_mixed_audio() -> None:
    a, b = _voice(130.0, 0), _voice(220.0, 1)
    half = 20 * np.log10(0.5)
    approx = power_sum_db(_logmel(a), gain_db(_logmel(b), half))
    err = np.abs(approx - _logmel(a + 0.5 * b))
    assert np.median(err) < 2.0 and np.percentile(err, 95) < 8.0
    # neither voice alone nor their average is as close: the sum carries both
    for other in (_logmel(a), (_logmel(a) + _logmel(0.5 * b)) / 2):
        assert np.median(np.abs(other - _logmel(a + 0.5 * b))) > 1.5 * np.median(err)


def test_gain_moves_the_features_by_twice_the_amplitude_db() -> None:
    b = _voice(180.0, 2)
    np.testing.assert_allclose(gain_db(_logmel(b), 20 * np.log10(0.25)), _logmel(0.25 * b),
                               atol=0.2)  # fmt: skip


def test_pairs_are_two_singers_solo_and_from_the_candidates_only() -> None:
    y = np.array([1, 1, 2, 2, 0, 3, 1, 2])
    groups = ["a", "a", "b", "c", "a", "a+b", "d", "e"]
    candidates = np.array([0, 1, 2, 3, 4, 5])  # 6 and 7 are validation singers
    pairs, quieter = mixing_pairs(y, groups, candidates, [1, 2], 200, seed=3)
    assert pairs.shape == (200, 2) and quieter.shape == (200,)
    assert set(pairs.ravel()) <= {0, 1, 2, 3}  # solo classes among the candidates
    assert all(groups[i] != groups[j] for i, j in pairs)
    assert (quieter <= 0).all() and (quieter >= -6).all()
    again, _ = mixing_pairs(y, groups, candidates, [1, 2], 200, seed=3)
    np.testing.assert_array_equal(pairs, again)  # seeded: a resumed run mixes the same
    none, _ = mixing_pairs(y, ["a"] * 8, candidates, [1, 2], 10, seed=3)
    assert len(none) == 0  # one singer cannot make a duet


def test_with_mixtures_appends_multi_on_the_training_side_and_refuses_other_classes() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(-60, 5, (6, 299, 40)).astype(np.float16)
    y = np.array([1, 2, 1, 2, 0, 0])
    train_idx = np.array([0, 1, 2, 3])
    x2, y2, idx2 = with_mixtures(x, y, list("abcdef"), CLASSES, train_idx, 5, seed=0)
    assert x2.shape == (11, 299, 40) and list(y2[6:]) == [3] * 5
    np.testing.assert_array_equal(idx2, [0, 1, 2, 3, 6, 7, 8, 9, 10])
    np.testing.assert_array_equal(x2[:6], x)
    with pytest.raises(ValueError, match="'multi'"):
        with_mixtures(x, y, list("abcdef"), ["none", "male", "female"], train_idx, 5, seed=0)


def test_training_learns_multi_from_mixtures_alone(tmp_path: Path) -> None:
    """No `multi` snippet in the data: only the mixtures can teach it. Each singer is loud in
    bands of their own (male singers low, female ones high); two voices are two loud places."""
    rng = np.random.default_rng(0)

    def snippets(bands: list[int]) -> np.ndarray:
        x = rng.normal(-80, 3, (len(bands), 299, 40)).astype(np.float32)
        for k, b in enumerate(bands):
            if b >= 0:
                x[k, :, b : b + 3] += 50
        return x

    singers = [2, 7, 12, 24, 29, 34]  # male: bands 2, 7, 12; female: 24, 29, 34
    per = 14
    bands = [b for b in singers for _ in range(per)] + [-1] * per
    y = np.array([1 if b < 20 else 2 for b in bands[: 6 * per]] + [0] * per)
    groups = [f"s{b}" for b in bands[: 6 * per]] + [f"n{i % 3}" for i in range(per)]
    x = snippets(bands)
    params = TrainParams(members=1, epochs=EPOCHS, batch_size=16, arch="resnet10", lr=LR,
                         val_fraction=0.2, mixup_alpha=0.0, mix_multi=80)  # fmt: skip
    result = run(params, x.astype(np.float16), y, groups, CLASSES, tmp_path / "run")
    m = result.metrics()
    assert m["n_train"] + m["n_val"] <= len(y)  # the labelled ones only
    ens = load_ensemble(result.ensemble_dir, "cpu", amp=False)
    # the training singers' places (7 and 34 are the validation singers of this split)
    probe = snippets([2, 12, 24, 29, -1, -1])  # one voice (or none)
    both = snippets([2, 12, 2, 24])  # two voices: low and high, two low, two high
    for k, b in enumerate([29, 24, 12, 29]):
        both[k, :, b : b + 3] += 50
    got = ens.predict(torch.from_numpy(np.concatenate([probe, both])))["label_idx"].tolist()
    assert got == [1, 1, 2, 2, 0, 0, 3, 3, 3, 3], got
