"""new_model_folder: the one helper training jobs and `scorer distill` create a version's weights
folder with; a folder already there (an older model's) is never reused."""

from __future__ import annotations

from pathlib import Path

import pytest

from scorer.errors import ScorerError
from worker.training_job import new_model_folder


def test_training_jobs_fall_back_to_their_job_tag(tmp_path: Path) -> None:
    names = [new_model_folder(tmp_path / "models", "v1", "job7").name for _ in range(4)]
    assert names == ["v1", "v1-job7", "v1-job7-2", "v1-job7-3"]


def test_untagged_folders_are_numbered(tmp_path: Path) -> None:
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "member_00.pt").write_bytes(b"older model")
    names = [new_model_folder(tmp_path, "student").name for _ in range(2)]
    assert names == ["student-2", "student-3"]
    assert (tmp_path / "student" / "member_00.pt").read_bytes() == b"older model"
    assert all(not any((tmp_path / n).iterdir()) for n in names)  # new and empty


def test_no_free_folder_is_an_error(tmp_path: Path) -> None:
    for k in ["x"] + [f"x-{k}" for k in range(2, 100)]:
        (tmp_path / k).mkdir()
    with pytest.raises(ScorerError, match="no free folder"):
        new_model_folder(tmp_path, "x")
