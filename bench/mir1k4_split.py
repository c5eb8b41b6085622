"""The fixed singer-disjoint split of mir1k4 that docs/RESULTS.md measures on.

    python -m bench.mir1k4_split [--data ../shared/data/mir1k4] [--out DIR]

writes DIR/train.csv and DIR/test.csv (columns file,label,group; absolute paths, so the CSVs can
live anywhere). Held out: 3 male singers (leon, bug, khair), 2 female (annar, heycat), two
librosa instrumentals, and the duets of held-out singers only. A duet with one singer on each
side is dropped (its voices would leak across the split). The data are never copied: the CSVs
point into the shared folder (MIR-1K's licence forbids redistribution).
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

HELD_OUT = frozenset(
    {"leon", "bug", "khair", "annar", "heycat", "librosa_ragtime", "librosa_drum_bass"}
)


def side(group: str) -> str | None:
    """'train', 'test', or None for a duet whose two singers are on different sides."""
    parts = group.split("+")
    held = [p in HELD_OUT for p in parts]
    if all(held):
        return "test"
    if not any(held):
        return "train"
    return None


def split(data: Path, out: Path) -> dict[str, Counter[str]]:
    """Write out/train.csv and out/test.csv; returns the label counts of each side."""
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[tuple[str, str, str]]] = {"train": [], "test": [], "dropped": []}
    with open(data / "labels.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            where = side(r["split_group"]) or "dropped"
            rows[where].append((str((data / r["file"]).resolve()), r["label"], r["split_group"]))
    for name in ("train", "test"):
        with open(out / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["file", "label", "group"])
            w.writerows(sorted(rows[name]))
    return {k: Counter(label for _, label, _ in v) for k, v in rows.items()}


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=here.parent / "shared/data/mir1k4")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    if not (args.data / "labels.csv").is_file():
        raise SystemExit(f"no labels.csv under {args.data}")
    for name, counts in split(args.data, args.out).items():
        print(f"{name}: {sum(counts.values())} {dict(sorted(counts.items()))}")


if __name__ == "__main__":
    main()
