"""Calibration and ensemble-size metrics on hand-made cases whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from training.calibration import (
    accuracy_vs_members,
    calibrate,
    expected_calibration_error,
    fit_ensemble_temperature,
    fit_temperature,
    majority_vote,
    member_counts,
    reliability_bins,
    softmax,
    tempered_proba,
)


def two_class(confidence: float, correct: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Samples that all say class 0 with `confidence`; the truth is 0 where `correct`."""
    proba = np.tile([confidence, 1.0 - confidence], (len(correct), 1))
    return proba, np.array([0 if c else 1 for c in correct])


def test_perfectly_calibrated_is_zero() -> None:
    proba, y = two_class(0.8, [True] * 8 + [False] * 2)  # says 0.8, right 80 % of the time
    assert expected_calibration_error(proba, y) == pytest.approx(0.0, abs=1e-12)


def test_over_confident_gap_is_the_ece() -> None:
    proba, y = two_class(0.9, [True, False] * 5)  # says 0.9, right 50 %
    assert expected_calibration_error(proba, y) == pytest.approx(0.4)


def test_ece_weights_bins_by_their_share() -> None:
    a, ya = two_class(0.95, [True] * 4)  # gap 0.05 on 4 of 10
    b, yb = two_class(0.65, [True, False] * 3)  # gap 0.15 on 6 of 10
    ece = expected_calibration_error(np.concatenate([a, b]), np.concatenate([ya, yb]))
    assert ece == pytest.approx(0.4 * 0.05 + 0.6 * 0.15)


def test_reliability_bins_hold_counts_confidence_and_accuracy() -> None:
    a, ya = two_class(0.95, [True] * 4)
    b, yb = two_class(0.65, [True, False] * 3)
    bins = reliability_bins(np.concatenate([a, b]), np.concatenate([ya, yb]))
    assert len(bins) == 10 and [b.count for b in bins] == [0] * 6 + [6, 0, 0, 4]
    assert bins[6].lower == pytest.approx(0.6) and bins[6].upper == pytest.approx(0.7)
    assert bins[6].confidence == pytest.approx(0.65) and bins[6].accuracy == pytest.approx(0.5)
    assert bins[9].accuracy == 1.0
    assert np.isnan(bins[0].confidence) and np.isnan(bins[0].accuracy)


@pytest.mark.parametrize(
    ("confidence", "expected_bin"), [(0.1, 0), (0.3, 2), (0.5, 4), (0.55, 5), (0.7, 6), (1.0, 9)]
)
def test_bin_edges_belong_to_the_lower_bin(confidence: float, expected_bin: int) -> None:
    rest = (1.0 - confidence) / 9  # ten classes, so even 0.1 can be the top probability
    proba = np.array([[confidence] + [rest] * 9])
    bins = reliability_bins(proba, np.array([0]))
    assert [b.count for b in bins].index(1) == expected_bin


def test_empty_input_is_nan() -> None:
    assert np.isnan(expected_calibration_error(np.zeros((0, 3)), np.zeros(0)))


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="probabilities"):
        expected_calibration_error(np.ones((3, 2)) / 2, np.zeros(4))


@pytest.mark.parametrize(
    ("n_members", "expected"),
    [(1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (7, [1, 2, 5, 7]), (20, [1, 2, 5, 10, 20]),
     (25, [1, 2, 5, 10, 20, 25])],
)  # fmt: skip
def test_member_counts_are_capped_and_end_at_the_full_ensemble(
    n_members: int, expected: list[int]
) -> None:
    assert member_counts(n_members) == expected


def test_members_curve_uses_the_first_k_members() -> None:
    # Member 0 is wrong on both samples, members 1 and 2 are right and sure.
    wrong = [[0.4, 0.6], [0.6, 0.4]]
    right = [[0.9, 0.1], [0.1, 0.9]]
    member_proba = np.array([wrong, right, right])
    y = np.array([0, 1])
    assert accuracy_vs_members(member_proba, y, [1, 2, 3]) == [(1, 0.0), (2, 1.0), (3, 1.0)]


def test_members_curve_combines_windows_into_files() -> None:
    # Three windows: two of file A (class 0), one of file B (class 1).
    m0 = [[0.2, 0.8], [0.2, 0.8], [0.3, 0.7]]  # A wrong, B right
    m1 = [[1.0, 0.0], [1.0, 0.0], [0.3, 0.7]]  # A right, B right
    member_proba = np.array([m0, m1])

    def files(p: np.ndarray) -> np.ndarray:
        return np.stack([p[:2].mean(axis=0), p[2]])

    curve = accuracy_vs_members(member_proba, np.array([0, 1]), [1, 2], combine=files)
    assert curve == [(1, 0.5), (2, 1.0)]


def test_members_curve_refuses_more_members_than_there_are() -> None:
    with pytest.raises(ValueError, match="first 3 of 2"):
        accuracy_vs_members(np.ones((2, 1, 2)) / 2, np.array([0]), [3])


def test_majority_vote_counts_windows_and_breaks_ties_by_mean() -> None:
    votes = np.array([[0.6, 0.4, 0.0], [0.6, 0.4, 0.0], [0.0, 0.1, 0.9]])
    assert majority_vote(votes).tolist() == [1.0, 0.0, 0.0]
    tie = np.array([[0.55, 0.45], [0.1, 0.9]])  # one vote each; class 1 has the higher mean
    assert majority_vote(tie).tolist() == [0.0, 1.0]


def synthetic_logits(temperature: float, n: int = 4000, seed: int = 0) -> tuple:
    """Labels drawn from softmax(z / temperature): T is the one temperature that calibrates z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, size=(n, 4))
    p = softmax(z, temperature)
    y = np.array([rng.choice(4, p=row) for row in p])
    return z, y


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_a_known_temperature(temperature: float) -> None:
    z, y = synthetic_logits(temperature)
    fitted = fit_temperature(z, y)
    assert fitted == pytest.approx(temperature, rel=0.1)
    before, after = (
        expected_calibration_error(softmax(z), y),
        expected_calibration_error(softmax(z, fitted), y),
    )
    assert after < 0.03  # calibrated, up to sampling noise
    assert temperature == 1.0 or before > 0.05  # and miscalibrated before, where T != 1


def test_fit_temperature_on_members_matches_the_ensemble_and_log_probabilities() -> None:
    z, y = synthetic_logits(2.0, n=2000)
    members = np.stack([z, z + 0.3])  # (M, N, C): a shifted copy is the same softmax
    fitted = fit_temperature(members, y)
    assert fitted == pytest.approx(fit_temperature(z, y), rel=1e-3)
    # log-probabilities differ from logits by a per-sample constant: the same temperature
    assert fit_temperature(np.log(softmax(z)), y) == pytest.approx(fitted, rel=1e-3)
    assert tempered_proba(members, fitted) == pytest.approx(softmax(z, fitted))


def test_ensemble_temperature_is_recovered_and_never_changes_a_decision() -> None:
    z, y = synthetic_logits(2.0)
    rng = np.random.default_rng(1)
    members = np.stack([z + rng.normal(0, 1.0, z.shape) for _ in range(3)])  # they disagree
    mean = tempered_proba(members)
    fitted = fit_ensemble_temperature(mean, y)
    assert fitted > 1.5  # the labels are softer than the sharp members say
    for t in (0.3, fitted, 4.0):
        assert (calibrate(mean, t).argmax(1) == mean.argmax(1)).all()
    assert expected_calibration_error(calibrate(mean, fitted), y) < expected_calibration_error(
        mean, y
    )


def test_fit_temperature_refuses_bad_shapes_and_leaves_no_data_alone() -> None:
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(np.zeros((5, 3)), np.zeros(4))
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0)) == 1.0
