"""``run(val_groups=...)``: the validation singers given explicitly (fold-wise members) are
exactly the ones validated on; duets straddling them are dropped; a resume with other
validation singers is refused; without it the run is ``group_split``'s, unchanged."""

from pathlib import Path

import numpy as np
import pytest
import torch

from training.train import TrainParams, explicit_split, run

torch.set_num_threads(1)

CLASSES = ["none", "male", "female"]
ONE = TrainParams(members=1, epochs=1, batch_size=8, arch="resnet10")
# a: 5 male, b: 3 female, c: 4 none, a+b: 2, a+c: 1 (label arbitrary for duets here)
GROUPS = ["a"] * 5 + ["b"] * 3 + ["c"] * 4 + ["a+b"] * 2 + ["a+c"]
Y = np.array([1] * 5 + [2] * 3 + [0] * 4 + [1] * 2 + [0])


def _x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(-60, 10, (len(Y), 299, 40)).astype(np.float16)


def test_explicit_split_puts_duets_with_their_singers() -> None:
    tr, va = explicit_split(GROUPS, len(Y), ["b"])
    assert va.tolist() == [5, 6, 7]
    assert tr.tolist() == [0, 1, 2, 3, 4, 8, 9, 10, 11, 14]  # a+b (12, 13) dropped
    tr, va = explicit_split(GROUPS, len(Y), ["a+b"])  # a pair names both its singers
    assert va.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 12, 13]
    assert tr.tolist() == [8, 9, 10, 11]  # a+c dropped


def test_run_validates_on_exactly_the_given_groups(tmp_path: Path) -> None:
    result = run(ONE, _x(), Y, GROUPS, CLASSES, tmp_path / "b", val_groups=["b"])
    assert (result.n_train, result.n_val, result.n_dropped) == (10, 3, 2)
    # every validation sample is one of b's three female snippets
    assert np.asarray(result.confusion).sum(1).tolist() == [0, 0, 3]

    result = run(ONE, _x(), Y, GROUPS, CLASSES, tmp_path / "c", val_groups={"c"})
    assert (result.n_train, result.n_val, result.n_dropped) == (10, 4, 1)
    assert np.asarray(result.confusion).sum(1).tolist() == [4, 0, 0]


def test_resume_with_other_val_groups_is_refused(tmp_path: Path) -> None:
    run(ONE, _x(), Y, GROUPS, CLASSES, tmp_path, val_groups=["b"])
    with pytest.raises(ValueError, match="training data differ"):
        run(ONE, _x(), Y, GROUPS, CLASSES, tmp_path, val_groups=["c"])
