"""bench/calibration.py on synthetic member probabilities whose right temperature is known."""

from __future__ import annotations

import numpy as np
import pytest

from bench.calibration import measure, uncertain_errors
from training.calibration import softmax


def members_and_labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three members that agree on logits z; labels drawn from softmax(z / 2): the members are
    over-confident by a factor of 2."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, size=(n, 4))
    y = np.array([rng.choice(4, p=p) for p in softmax(z, 2.0)])
    return np.stack([softmax(z)] * 3).astype(np.float16), y


def test_measure_finds_the_temperature_and_keeps_the_decisions() -> None:
    val, val_y = members_and_labels(1500, 0)
    test, test_y = members_and_labels(1500, 1)
    none, ensemble, members = measure({"val": val, "val_y": val_y, "test": test, "test_y": test_y})
    assert none["temperature"] == 1.0
    assert ensemble["temperature"] == pytest.approx(2.0, rel=0.15)
    assert members["temperature"] == pytest.approx(2.0, rel=0.15)  # identical members: the same
    assert ensemble["ece"] < none["ece"] / 2 and ensemble["nll"] < none["nll"]
    assert ensemble["accuracy"] == none["accuracy"] and ensemble["macro_f1"] == none["macro_f1"]


def test_uncertain_errors_counts_the_most_uncertain_tenth() -> None:
    sure, unsure = [0.97, 0.01, 0.01, 0.01], [0.4, 0.3, 0.2, 0.1]
    proba = np.array([unsure] + [sure] * 9)
    y = np.array([1] + [0] * 8 + [1])  # the unsure one is wrong, and so is one sure one
    assert uncertain_errors(proba, y) == (1.0, 0.5)
