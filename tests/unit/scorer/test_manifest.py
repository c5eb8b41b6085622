from __future__ import annotations

from pathlib import Path

import pytest

from scorer.errors import ScorerError
from scorer.manifest import (
    folder_labels,
    iter_audio_files,
    labels_for_data,
    order_classes,
    read_manifest,
)


def test_read_manifest_resolves_paths_and_groups(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "file,label,class_idx,singer,split_group\na/x.mp3,male,1,leon,leon\ny.wav,none,0,none,bt3\n"
    )
    got = read_manifest(csv)
    assert got[(tmp_path / "a" / "x.mp3").resolve()].label == "male"
    # split_group wins over singer: it is the column meant for splits
    assert got[(tmp_path / "a" / "x.mp3").resolve()].group == "leon"
    assert got[(tmp_path / "y.wav").resolve()].group == "bt3"


def test_read_manifest_needs_file_and_label(tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("path,class\nx.mp3,male\n")
    with pytest.raises(ScorerError, match="file,label"):
        read_manifest(csv)


def test_folder_per_class_and_walk_order(tmp_path: Path) -> None:
    for label in ("male", "female"):
        (tmp_path / label / "deep").mkdir(parents=True)
        (tmp_path / label / "deep" / "b.wav").write_bytes(b"x")
        (tmp_path / label / "a.MP3").write_bytes(b"x")
    (tmp_path / "male" / "notes.txt").write_text("not audio")
    labels = folder_labels(tmp_path)
    assert sorted({v.label for v in labels.values()}) == ["female", "male"]
    assert len(labels) == 4
    files = list(iter_audio_files([tmp_path]))
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "female/a.MP3", "female/deep/b.wav", "male/a.MP3", "male/deep/b.wav",
    ]  # fmt: skip
    assert labels_for_data(tmp_path) == labels


def test_labels_for_data_explains_what_it_wants(tmp_path: Path) -> None:
    with pytest.raises(ScorerError, match="folder per class"):
        labels_for_data(tmp_path)


def test_class_order_is_canonical_for_known_names() -> None:
    assert order_classes({"multi", "none", "female", "male"}) == ["none", "male", "female", "multi"]
    assert order_classes({"female", "male"}) == ["male", "female"]
    assert order_classes({"tenor", "alto"}) == ["alto", "tenor"]
