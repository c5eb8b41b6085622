from __future__ import annotations

import numpy as np

from worker.stages import file_verdict

CLASSES = ["none", "male", "female", "multi"]


def test_verdict_averages_only_windows_with_voice() -> None:
    probs = np.array(
        [
            [0.9, 0.05, 0.03, 0.02],  # instrumental intro
            [0.1, 0.2, 0.6, 0.1],
            [0.2, 0.1, 0.6, 0.1],
        ]
    )
    v = file_verdict(probs, CLASSES)
    np.testing.assert_allclose(v, probs[1:].mean(axis=0))
    assert CLASSES[int(v.argmax())] == "female"


def test_instrumental_file_stays_none() -> None:
    probs = np.array([[0.9, 0.05, 0.03, 0.02], [0.7, 0.1, 0.1, 0.1]])
    v = file_verdict(probs, CLASSES)
    np.testing.assert_allclose(v, probs.mean(axis=0))
    assert v.argmax() == 0


def test_without_a_none_class_it_is_the_plain_mean() -> None:
    probs = np.array([[0.8, 0.2], [0.4, 0.6]])
    np.testing.assert_allclose(file_verdict(probs, ["male", "female"]), [0.6, 0.4])


def test_one_false_voiced_window_does_not_decide_an_instrumental() -> None:
    """Ten windows of accompaniment, one of which looks sung: the file stays none (the rule
    before judged it by that one window alone)."""
    probs = np.tile([0.92, 0.04, 0.02, 0.02], (10, 1))
    probs[4] = [0.3, 0.6, 0.05, 0.05]
    v = file_verdict(probs, CLASSES)
    np.testing.assert_allclose(v, probs.mean(axis=0))
    assert v.argmax() == 0
    probs[5] = probs[6] = probs[4]  # 3 of 10 sung: judged by its voice
    assert file_verdict(probs, CLASSES).argmax() == 1
