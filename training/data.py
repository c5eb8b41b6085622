"""Training data: the singer-disjoint split, the feature dataset and balanced class weights.

Snippets of one singer are alike, so a split that puts a singer on both sides measures memory,
not generalisation. Groups name the singer(s) of each snippet; a duet is written ``a+b``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from training.model import N_FRAMES, N_MELS

log = logging.getLogger(__name__)

GROUP_SEP = "+"


def _parts(groups: Sequence[str | None] | None, n: int) -> list[frozenset[str]]:
    """The atomic groups (singers) of each sample; a missing group is a group of its own."""
    if groups is None or len(groups) == 0:
        return [frozenset({f"\0sample{i}"}) for i in range(n)]
    if len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} samples; need one group per sample")
    out = []
    for i, g in enumerate(groups):
        names = frozenset(p.strip() for p in (g or "").split(GROUP_SEP) if p.strip())
        out.append(names or frozenset({f"\0sample{i}"}))
    return out


def group_split(
    groups: Sequence[str | None] | None,
    labels: np.ndarray,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices so that no singer is on both sides; returns (train_idx, val_idx).

    ``groups[i]`` names sample i's singer, or ``"a+b"`` for several; None, "" or ``groups=None``
    make a sample its own group. Singers are assigned to validation or training; a sample goes to
    validation if all its singers are validation singers, to training if all are training
    singers, and is dropped otherwise (a duet of a validation and a training singer would leak a
    voice across the split). Validation aims at ``val_fraction`` of the samples and first takes,
    for every class that can spare one, the cheapest set of singers (fewest new ones) that puts
    that class in validation while leaving some of it in training. Deterministic for a seed.
    Index arrays are int64, sorted.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    parts = _parts(groups, n)
    rng = np.random.default_rng(seed)
    atoms = sorted(set().union(*parts)) if parts else []
    samples_of: dict[str, list[int]] = {a: [] for a in atoms}
    for i, p in enumerate(parts):
        for a in p:
            samples_of[a].append(i)
    val: set[str] = set()
    n_parts_in_val = np.zeros(n, dtype=np.int64)
    n_val = 0  # samples whose singers are all in validation
    target = val_fraction * n

    def add(names: frozenset[str] | set[str]) -> None:
        nonlocal n_val
        for a in names - val:
            val.add(a)
            for i in samples_of[a]:
                n_parts_in_val[i] += 1
                n_val += int(n_parts_in_val[i] == len(parts[i]))

    if target > 0 and len(atoms) > 1:
        # Rarest class first: it has the fewest ways to be covered.
        classes, counts = np.unique(labels, return_counts=True)
        for c in classes[np.argsort(counts, kind="stable")]:
            idx = np.flatnonzero(labels == c)
            if any(parts[i] <= val for i in idx):
                continue
            options = sorted({parts[i] for i in idx}, key=sorted)
            rng.shuffle(options)
            for p in sorted(options, key=lambda p: len(p - val)):
                trial = val | p
                keeps_train = any(not (parts[i] & trial) for i in idx)
                if keeps_train and len(trial) < len(atoms):
                    add(p)
                    break
        for a in rng.permutation(np.array(atoms, dtype=object)):
            if n_val >= target:
                break
            if a not in val and len(val) + 1 < len(atoms):
                add({a})
    in_val = n_parts_in_val == np.array([len(p) for p in parts], dtype=np.int64)
    in_train = n_parts_in_val == 0
    val_idx = np.flatnonzero(in_val).astype(np.int64)
    train_idx = np.flatnonzero(in_train).astype(np.int64)
    dropped = n - len(val_idx) - len(train_idx)
    if dropped:
        log.info("group_split: dropped %d samples whose singers straddle the split", dropped)
    missing = set(np.unique(labels).tolist()) - set(labels[val_idx].tolist())
    if target > 0 and missing:
        log.warning("group_split: classes %s have no validation sample", sorted(missing))
    return train_idx, val_idx


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced weights ``n_samples / (n_classes * count)`` per class, (n_classes,) float32.

    A class with no sample gets weight 0 rather than an error: it has no targets to weigh, and a
    training set that lacks a class (e.g. all its singers fell into validation) should still
    train, with the gap logged.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got {labels.min()}..{labels.max()}")
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.zeros(n_classes, dtype=np.float64)
    present = counts > 0
    weights[present] = labels.size / (n_classes * counts[present])
    if not present.all():
        log.warning("class_weights: classes %s have no sample", np.flatnonzero(~present).tolist())
    return weights.astype(np.float32)


class FeatureDataset(Dataset[tuple[Tensor, int]]):
    """Log-mel snippets kept as float16 in memory, served as float32 member input.

    ``x``: (N, 299, 40) float16 (frames, mels); ``y``: (N,) int class indices; ``indices``: an
    optional subset (e.g. a split), so the big array is never copied. Item: ((1, 299, 40) float32,
    label). Normalisation is not done here but on the device batch (``prepare_input``), the same
    call inference uses.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, indices: np.ndarray | None = None) -> None:
        if x.ndim != 3 or x.shape[1:] != (N_FRAMES, N_MELS):
            raise ValueError(f"features must be (N, {N_FRAMES}, {N_MELS}), got {x.shape}")
        if len(x) != len(y):
            raise ValueError(f"{len(x)} feature rows but {len(y)} labels")
        self.x = x
        self.y = np.asarray(y, dtype=np.int64)
        self.indices = np.arange(len(x)) if indices is None else np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        j = int(self.indices[i])
        return torch.from_numpy(self.x[j].astype(np.float32))[None], int(self.y[j])


def data_fingerprint(
    x: np.ndarray, y: np.ndarray, groups: Sequence[str | None] | None, classes: Sequence[str]
) -> dict[str, Any]:
    """Cheap identity of a training set (labels, groups, classes, a strided sample of feature
    rows), stored with a run so a resume on other data is refused. Row order matters."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(y).tobytes())
    h.update(json.dumps(None if groups is None else [str(g) for g in groups]).encode())
    rows = x[:: max(1, len(x) // 64)]
    h.update(np.ascontiguousarray(rows, dtype=np.float16).tobytes())
    return {"n_samples": len(y), "classes": list(classes), "sha256": h.hexdigest()}
