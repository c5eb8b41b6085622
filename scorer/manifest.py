"""Finding audio files and their labels: a recursive walk, a CSV manifest, or a folder per class."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from scorer.errors import ScorerError

AUDIO_SUFFIXES = frozenset({".mp3", ".wav", ".flac", ".ogg", ".oga"})
CANONICAL_CLASSES = ("none", "male", "female", "multi")
GROUP_COLUMNS = ("group", "split_group", "singer")


@dataclass(frozen=True)
class Labelled:
    label: str
    group: str | None = None


def iter_audio_files(paths: list[Path]) -> Iterator[Path]:
    """Audio files under `paths` (files given directly are taken whatever their suffix), sorted
    per folder so that runs are reproducible; lazy, so a huge library starts at once."""
    for root in paths:
        if root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    if Path(name).suffix.lower() in AUDIO_SUFFIXES:
                        yield Path(dirpath) / name
        elif root.exists() or root.is_symlink():
            yield root
        else:
            raise ScorerError(f"{root}: no such file or folder")


def read_manifest(csv_path: Path) -> dict[Path, Labelled]:
    """{resolved audio path: label, group} from a CSV with columns `file,label[,group]`.

    `file` is relative to the CSV's folder (or absolute). The group column may be called
    `group`, `split_group` or `singer`; it keeps one singer's snippets on one side of a split.
    """
    try:
        with csv_path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            if "file" not in fields or "label" not in fields:
                raise ScorerError(
                    f"{csv_path}: a labels CSV needs the columns file,label "
                    f"(it has: {','.join(fields)})"
                )
            group_col = next((c for c in GROUP_COLUMNS if c in fields), None)
            out: dict[Path, Labelled] = {}
            for row in reader:
                path = (csv_path.parent / row["file"]).resolve()
                group = (row.get(group_col) or None) if group_col else None
                out[path] = Labelled(row["label"].strip(), group)
            return out
    except OSError as exc:
        raise ScorerError(f"{csv_path}: cannot read labels: {exc.strerror}") from exc


def folder_labels(root: Path) -> dict[Path, Labelled]:
    """Folder-per-class layout: root/<label>/**/<audio>; the label is the first sub-folder."""
    out: dict[Path, Labelled] = {}
    for path in iter_audio_files([root]):
        rel = path.relative_to(root)
        if len(rel.parts) >= 2:
            out[path.resolve()] = Labelled(rel.parts[0])
    return out


def labels_for_data(root: Path) -> dict[Path, Labelled]:
    """Labels of a training set: a CSV, a folder with labels.csv, or a folder per class."""
    if root.is_file():
        return read_manifest(root)
    if (root / "labels.csv").is_file():
        return read_manifest(root / "labels.csv")
    labels = folder_labels(root)
    if not labels:
        raise ScorerError(
            f"{root}: no labels found: give a CSV (file,label[,group]), a folder with labels.csv, "
            "or a folder per class (root/<label>/<audio files>)"
        )
    return labels


def order_classes(labels: set[str]) -> list[str]:
    """The class order stored with a model: the canonical none/male/female/multi order when the
    labels are among those names, otherwise alphabetical."""
    if labels <= set(CANONICAL_CLASSES):
        return [c for c in CANONICAL_CLASSES if c in labels]
    return sorted(labels)
