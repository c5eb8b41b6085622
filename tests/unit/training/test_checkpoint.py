from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.checkpoint import PARAMS_FILE, check_or_write_params
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
