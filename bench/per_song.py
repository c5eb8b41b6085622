"""Per-song verdicts from per-window probabilities: how much does a whole song add?

    python -m bench.per_song --probs probs_reference.npz [--features .gpu/mir1k4.npz]
        [--windows 10] [--repeats 20]

mir1k4 holds 3 s snippets only, while users score whole songs and the literature reports per
song. This builds "songs" of ``--windows`` held-out snippets of one group and one class (one
singer's male or female snippets; one duet pair's multi snippets; the accompaniment of one
singer's karaoke clips for none), drawn without replacement, ``--repeats`` draws per group, and
judges each song by every rule below from its windows' ensemble probabilities. It simulates a
concatenated file: a real one would be separated as a whole (Spleeter sees its neighbours
across window edges), so window probabilities would differ slightly.

Rules: ``voiced_mean`` (scorer's: the mean of the windows with P(none) < 0.5, else of all),
``voiced_mean_30`` (the same, but a song with fewer than 30 % voiced windows is judged by the
mean of all), ``mean``, ``log_mean`` (mean log-probability), ``majority`` (most frequent window
verdict). ``--instrumental K`` replaces K windows of every voiced song with accompaniment windows
of the same singer's karaoke clips (``none`` snippets of that group): a song with an intro and
breaks, still labelled by its voice.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.gpu_suite import CLASSES, load_split
from training.metrics import accuracy, macro_f1


def verdict(windows: np.ndarray, rule: str) -> int:
    """(W, C) window probabilities -> one class index."""
    if rule == "voiced_mean":
        voiced = windows[windows[:, 0] < 0.5]
        return int((voiced if len(voiced) else windows).mean(axis=0).argmax())
    if rule == "voiced_mean_30":
        voiced = windows[windows[:, 0] < 0.5]
        if len(voiced) < 0.3 * len(windows):  # mostly instrumental: a song without voice
            return int(windows.mean(axis=0).argmax())
        return int(voiced.mean(axis=0).argmax())
    if rule == "mean":
        return int(windows.mean(axis=0).argmax())
    if rule == "log_mean":
        return int(np.log(np.clip(windows, 1e-7, 1)).mean(axis=0).argmax())
    if rule == "majority":
        return int(np.bincount(windows.argmax(axis=1), minlength=windows.shape[1]).argmax())
    raise ValueError(rule)


RULES = ("voiced_mean", "voiced_mean_30", "mean", "log_mean", "majority")


def songs(
    groups: list[str],
    y: np.ndarray,
    windows: int,
    repeats: int,
    instrumental: int = 0,
    seed: int = 0,
) -> list[tuple[int, np.ndarray]]:
    """(label, window indices): ``windows`` snippets sharing group and class; a voiced song's
    last ``instrumental`` windows come from the none snippets of its singer(s)."""
    rng = np.random.default_rng(seed)
    by: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, (g, c) in enumerate(zip(groups, y, strict=True)):
        by[(g, int(c))].append(i)
    out = []
    for (group, label), idx in sorted(by.items()):
        k = instrumental if label != 0 else 0
        backing = [i for g in group.split("+") for i in by.get((g, 0), [])]
        if len(idx) < windows - k or len(backing) < k:
            continue
        for _ in range(repeats):
            voiced = rng.choice(idx, size=windows - k, replace=False)
            extra = rng.choice(backing, size=k, replace=False) if k else np.zeros(0, np.int64)
            out.append((label, np.concatenate([voiced, extra]).astype(np.int64)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probs", type=Path, required=True)
    parser.add_argument("--features", type=Path, default=Path(".gpu/mir1k4.npz"))
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--instrumental", type=int, default=0)
    args = parser.parse_args()
    _, test, _ = load_split(args.features)
    probs = np.load(args.probs)["test"].astype(np.float32).mean(axis=0)  # (N, C)
    y = test.y
    window_pred = probs.argmax(axis=1)
    report: dict = {
        "windows": {
            "n": len(y),
            "accuracy": accuracy(y, window_pred),
            "macro_f1": macro_f1(y, window_pred, len(CLASSES)),
        }
    }
    sets = songs(test.groups, y, args.windows, args.repeats, args.instrumental)
    truth = np.array([label for label, _ in sets])
    report["songs"] = {
        "n": len(sets),
        "windows_each": args.windows,
        "instrumental_windows_each": args.instrumental,
        "per_class": {c: int((truth == i).sum()) for i, c in enumerate(CLASSES)},
    }
    for rule in RULES:
        pred = np.array([verdict(probs[idx], rule) for _, idx in sets])
        recall = [
            float((pred[truth == i] == i).mean()) if (truth == i).any() else None
            for i in range(len(CLASSES))
        ]
        report[rule] = {
            "accuracy": accuracy(truth, pred),
            "macro_f1": macro_f1(truth, pred, len(CLASSES)),
            "recall": recall,
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
