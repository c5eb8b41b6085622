"""Calibration and ensemble-size metrics, pure numpy: do the probabilities mean what they say,
and how many members are worth running?

Expected calibration error (ECE) follows Guo et al. 2017 ("On Calibration of Modern Neural
Networks"): confidences (the top probability) go into M equal-width bins ((m-1)/M, m/M];
ECE = sum over bins of (n_bin / N) * |accuracy_bin - mean confidence_bin|. 0 is perfectly
calibrated; an ensemble that says 0.9 and is right 60 % of the time has ECE 0.3.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

N_BINS = 10
MEMBER_COUNTS = (1, 2, 5, 10, 20)
"""Ensemble sizes reported by the accuracy-vs-members curve (capped at the member count)."""


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin of a reliability diagram; confidence/accuracy are NaN when empty."""

    lower: float
    upper: float
    count: int
    confidence: float
    accuracy: float


def _confidence_and_correct(proba: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    proba = np.asarray(proba, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    if proba.ndim != 2 or proba.shape[0] != y_true.size:
        raise ValueError(
            f"expected (N, C) probabilities for {y_true.size} labels, got {proba.shape}"
        )
    return proba.max(axis=1), proba.argmax(axis=1) == y_true


def reliability_bins(
    proba: np.ndarray, y_true: np.ndarray, n_bins: int = N_BINS
) -> list[ReliabilityBin]:
    """(N, C) probabilities and (N,) true class indices -> ``n_bins`` equal-width bins of the
    top probability, with how often the top class was right in each (a reliability diagram)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, correct = _confidence_and_correct(proba, y_true)
    # Bin m holds (edge m, edge m+1]: a confidence on an edge goes to the lower bin; 0 to the
    # first. Edges from linspace, as reference implementations use, so 0.3 is in (0.2, 0.3].
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    out = []
    for m in range(n_bins):
        sel = idx == m
        n = int(sel.sum())
        out.append(
            ReliabilityBin(
                lower=round(float(edges[m]), 12),
                upper=round(float(edges[m + 1]), 12),
                count=n,
                confidence=float(conf[sel].mean()) if n else float("nan"),
                accuracy=float(correct[sel].mean()) if n else float("nan"),
            )
        )
    return out


def expected_calibration_error(
    proba: np.ndarray, y_true: np.ndarray, n_bins: int = N_BINS
) -> float:
    """ECE over ``n_bins`` equal-width confidence bins, in [0, 1]; NaN for empty input."""
    bins = reliability_bins(proba, y_true, n_bins)
    total = sum(b.count for b in bins)
    if total == 0:
        return float("nan")
    return float(sum(b.count / total * abs(b.accuracy - b.confidence) for b in bins if b.count))


def member_counts(n_members: int, counts: Sequence[int] = MEMBER_COUNTS) -> list[int]:
    """The ensemble sizes to report: ``counts`` up to ``n_members``, plus ``n_members`` itself."""
    if n_members < 1:
        raise ValueError(f"n_members must be >= 1, got {n_members}")
    return sorted({k for k in counts if 1 <= k <= n_members} | {n_members})


def accuracy_vs_members(
    member_proba: np.ndarray,
    y_true: np.ndarray,
    counts: Sequence[int],
    combine: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[tuple[int, float]]:
    """Accuracy of the ensemble of the first k members, for each k in ``counts``.

    ``member_proba``: (M, N, C) each member's softmax over N samples (windows). The first k
    members of the *same* ensemble are used, so the curve shows what running fewer members
    would cost, not the luck of another draw. ``combine`` maps the (N, C) ensemble probabilities
    to (F, C) decisions (e.g. windows -> per-file verdicts) before comparing with ``y_true``
    (F,); without it ``y_true`` is per sample.
    """
    member_proba = np.asarray(member_proba, dtype=np.float64)
    if member_proba.ndim != 3:
        raise ValueError(f"expected (M, N, C) member probabilities, got {member_proba.shape}")
    n_members = member_proba.shape[0]
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    cumulative = np.cumsum(member_proba, axis=0)  # (M, N, C): sums of the first k members
    out = []
    for k in counts:
        if not 1 <= k <= n_members:
            raise ValueError(f"cannot take the first {k} of {n_members} members")
        proba = cumulative[k - 1] / k
        if combine is not None:
            proba = combine(proba)
        if proba.shape[0] != y_true.size:
            raise ValueError(f"{proba.shape[0]} decisions for {y_true.size} labels")
        acc = float(np.mean(proba.argmax(axis=1) == y_true)) if y_true.size else float("nan")
        out.append((int(k), acc))
    return out


def majority_vote(window_proba: np.ndarray) -> np.ndarray:
    """(W, C) window probabilities -> (C,) one-hot of the most voted class (ties: the higher
    mean probability). An alternative way to combine windows, evaluated against the documented
    rule, never used for the stored verdict."""
    window_proba = np.asarray(window_proba, dtype=np.float64)
    n_classes = window_proba.shape[1]
    votes = np.bincount(window_proba.argmax(axis=1), minlength=n_classes).astype(np.float64)
    mean = window_proba.mean(axis=0)
    best = np.flatnonzero(votes == votes.max())
    out = np.zeros(n_classes)
    out[best[np.argmax(mean[best])]] = 1.0
    return out
