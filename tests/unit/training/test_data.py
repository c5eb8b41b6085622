"""The singer-disjoint split, balanced class weights and the feature dataset."""

import logging

import numpy as np
import pytest
import torch

from training.data import FeatureDataset, class_weights, group_split


def _atoms(groups: list[str], idx: np.ndarray) -> set[str]:
    return {a for i in idx for a in groups[i].split("+")}


def _library() -> tuple[list[str], np.ndarray]:
    """4 classes: none (2 sources), male (4), female (4), multi only as duets of m and f."""
    groups, labels = [], []
    for k in range(2):
        groups += [f"n{k}"] * 6
        labels += [0] * 6
    for k in range(4):
        groups += [f"m{k}"] * 5 + [f"f{k}"] * 5
        labels += [1] * 5 + [2] * 5
    for k in range(4):
        for j in range(2):
            groups += [f"m{k}+f{(k + j) % 4}"] * 2
            labels += [3] * 2
    return groups, np.array(labels)


@pytest.mark.parametrize("seed", range(6))
def test_no_singer_on_both_sides_and_straddlers_dropped(seed: int) -> None:
    groups, labels = _library()
    train, val = group_split(groups, labels, val_fraction=0.25, seed=seed)
    assert not set(train) & set(val)
    v, t = _atoms(groups, val), _atoms(groups, train)
    assert not v & t
    dropped = sorted(set(range(len(labels))) - set(train) - set(val))
    for i in dropped:
        parts = set(groups[i].split("+"))
        # Every singer also sings solo, so each one is on a side; a dropped duet straddles.
        assert parts & v and parts & t, groups[i]
    assert all(len(groups[i].split("+")) == 2 for i in dropped)


@pytest.mark.parametrize("seed", range(6))
def test_every_class_in_both_sides_when_possible(seed: int) -> None:
    groups, labels = _library()
    train, val = group_split(groups, labels, val_fraction=0.25, seed=seed)
    assert set(labels[val]) == {0, 1, 2, 3}
    assert set(labels[train]) == {0, 1, 2, 3}
    assert 0.15 * len(labels) <= len(val) <= 0.45 * len(labels)


def test_class_with_one_singer_stays_in_training(caplog: pytest.LogCaptureFixture) -> None:
    groups = ["a"] * 5 + ["b"] * 5 + ["c"] * 5 + ["solo"] * 3
    labels = np.array([0] * 10 + [1] * 5 + [2] * 3)
    with caplog.at_level(logging.WARNING):
        train, val = group_split(groups, labels, val_fraction=0.3, seed=0)
    assert set(labels[train]) >= {2}
    assert 2 not in set(labels[val])
    assert "no validation sample" in caplog.text


@pytest.mark.parametrize("groups", [None, [], [None] * 50, [""] * 50])
def test_missing_groups_make_each_sample_its_own_group(groups: list | None) -> None:
    labels = np.arange(50) % 2
    train, val = group_split(groups, labels, val_fraction=0.2, seed=3)
    assert len(val) == 10 and len(train) == 40
    assert set(labels[val]) == {0, 1}
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(50))


def test_split_is_deterministic_per_seed() -> None:
    groups, labels = _library()
    a = group_split(groups, labels, seed=1)
    b = group_split(groups, labels, seed=1)
    c = group_split(groups, labels, seed=2)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])
    assert a[0].dtype == np.int64 and np.all(np.diff(a[0]) > 0)


def test_zero_val_fraction_keeps_everything_for_training() -> None:
    groups, labels = _library()
    train, val = group_split(groups, labels, val_fraction=0.0)
    assert len(val) == 0 and len(train) == len(labels)


def test_single_group_cannot_be_split() -> None:
    train, val = group_split(["x"] * 6, np.zeros(6, int), val_fraction=0.5)
    assert len(val) == 0 and len(train) == 6


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_bad_val_fraction_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        group_split(None, np.zeros(4, int), val_fraction=bad)


def test_group_count_must_match() -> None:
    with pytest.raises(ValueError, match="one group per sample"):
        group_split(["a", "b"], np.zeros(3, int))


def test_class_weights_balanced_formula_and_absent_class() -> None:
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    np.testing.assert_allclose(w, [4 / 9, 4 / 3, 0.0], rtol=1e-6)
    assert w.dtype == np.float32


def test_class_weights_equal_for_balanced_data() -> None:
    np.testing.assert_allclose(class_weights(np.repeat(np.arange(4), 7), 4), np.ones(4))


def test_class_weights_reject_out_of_range_labels() -> None:
    with pytest.raises(ValueError):
        class_weights(np.array([0, 3]), 3)


def test_dataset_serves_float32_one_channel_snippets() -> None:
    x = (np.random.default_rng(0).normal(-60, 20, (5, 299, 40))).astype(np.float16)
    y = np.array([0, 1, 2, 3, 0])
    ds = FeatureDataset(x, y, indices=np.array([4, 2]))
    assert len(ds) == 2
    item, label = ds[1]
    assert item.shape == (1, 299, 40) and item.dtype == torch.float32
    assert label == 2
    assert torch.equal(item[0], torch.from_numpy(x[2].astype(np.float32)))


@pytest.mark.parametrize("shape", [(5, 40, 299), (5, 299), (5, 299, 41)])
def test_dataset_rejects_other_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        FeatureDataset(np.zeros(shape, np.float16), np.zeros(5, int))
