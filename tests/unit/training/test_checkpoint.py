from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.checkpoint import PARAMS_FILE, atomic_save, check_or_write_params
from training.params import TrainParams

DATA = {"n": 10, "digest": "abc"}


def test_a_run_stored_before_new_params_existed_still_resumes(tmp_path: Path) -> None:
    old = TrainParams(members=2, epochs=3).to_dict()
    for added in ("label_smoothing", "aug_gain_db", "aug_shift_frames"):
        old.pop(added)  # as written by a version that did not have these knobs
    (tmp_path / PARAMS_FILE).write_text(json.dumps({"params": old, "data": DATA}))
    check_or_write_params(tmp_path, TrainParams(members=2, epochs=3), DATA)  # no error


def test_other_params_or_data_are_refused(tmp_path: Path) -> None:
    check_or_write_params(tmp_path, TrainParams(members=2), DATA)
    with pytest.raises(ValueError, match="members: 2 -> 3"):
        check_or_write_params(tmp_path, TrainParams(members=3), DATA)
    with pytest.raises(ValueError, match="training data differ"):
        check_or_write_params(tmp_path, TrainParams(members=2), {**DATA, "n": 11})


def test_a_fence_that_refuses_leaves_the_last_checkpoint(tmp_path: Path) -> None:
    """A worker whose training job was taken over must not replace the new owner's file."""
    path = tmp_path / "member_00.pt"
    atomic_save({"epoch": 1}, path, fence=lambda: None)

    def taken_over() -> None:
        raise RuntimeError("claim lost")

    with pytest.raises(RuntimeError, match="claim lost"):
        atomic_save({"epoch": 2}, path, fence=taken_over)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["member_00.pt"]  # no temporary file left
