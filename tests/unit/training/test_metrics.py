"""Metrics on a hand-worked case (numbers as scikit-learn gives them)."""

import math

import numpy as np
import pytest

from training.metrics import accuracy, confusion_matrix, macro_f1, precision_recall_f1

Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 0, 2])


def test_accuracy() -> None:
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)


def test_confusion_matrix_rows_are_true_classes() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, 4)
    expected = [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert cm.tolist() == expected


def test_precision_recall_f1_per_class() -> None:
    p, r, f = precision_recall_f1(Y_TRUE, Y_PRED, 4)
    np.testing.assert_allclose(p, [1 / 2, 2 / 3, 1.0, 0.0])
    np.testing.assert_allclose(r, [1 / 2, 1.0, 1 / 2, 0.0])
    np.testing.assert_allclose(f, [1 / 2, 0.8, 2 / 3, 0.0])


def test_macro_f1_averages_over_seen_classes_only() -> None:
    assert macro_f1(Y_TRUE, Y_PRED, 4) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_perfect_prediction() -> None:
    assert macro_f1(Y_TRUE, Y_TRUE, 3) == 1.0
    assert accuracy(Y_TRUE, Y_TRUE) == 1.0


def test_empty_input_is_nan_not_zero() -> None:
    assert math.isnan(accuracy(np.array([]), np.array([])))
    assert math.isnan(macro_f1(np.array([]), np.array([]), 3))


def test_length_mismatch_rejected() -> None:
    with pytest.raises(ValueError):
        accuracy(np.array([0, 1]), np.array([0]))
