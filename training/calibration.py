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


# --- temperature scaling ------------------------------------------------------------------------

T_BOUNDS = (0.05, 20.0)
"""Search range of the temperature: far beyond any seen (the reference ensemble fits about 0.6)."""


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax over the last axis of ``logits / temperature``, float64, overflow-safe."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def tempered_proba(member_logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(M, N, C) member logits -> (N, C) ensemble probability: the mean of each member's
    softmax at ``temperature``, exactly what ``training.ensemble.Ensemble`` computes."""
    return softmax(member_logits, temperature).mean(axis=0)


def nll(proba: np.ndarray, y_true: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (probabilities clipped at 1e-12)."""
    y = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(proba, dtype=np.float64)[np.arange(y.size), y]
    return float(-np.mean(np.log(np.clip(p, 1e-12, 1.0))))


def calibrate(proba: np.ndarray, temperature: float) -> np.ndarray:
    """(N, C) ensemble probabilities -> softmax(log(proba) / T), as the Ensemble applies it."""
    return softmax(np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-12, None)), temperature)


def fit_ensemble_temperature(proba: np.ndarray, y_true: np.ndarray) -> float:
    """The temperature of ``calibrate`` for (N, C) ensemble probabilities on held-out labels.

    Why the averaged log-probabilities and not each member's logits (``fit_temperature`` of the
    (M, N, C) logits): on the reference ensemble (20 x ResNet-34, fitted on the validation
    singers, docs/RESULTS.md) both reach the same held-out ECE (0.040 against 0.040) and NLL,
    but only this one keeps every decision: rescaling members before averaging can flip the
    argmax of the mean where members disagree, so accuracy would move with calibration. It also
    needs only probabilities (any stored ensemble output), not logits.
    """
    return fit_temperature(np.log(np.clip(np.asarray(proba, np.float64), 1e-12, None)), y_true)


def fit_temperature(member_logits: np.ndarray, y_true: np.ndarray, tol: float = 1e-4) -> float:
    """The temperature T > 0 that minimises the NLL of ``tempered_proba(member_logits, T)`` on
    held-out labels (Guo et al. 2017).

    ``member_logits``: (N, C) for one model (or log-probabilities: softmax ignores a
    per-sample constant), or (M, N, C) to scale each member before averaging (measured, not
    used: see ``fit_ensemble_temperature``). Golden-section search on log T inside
    ``T_BOUNDS``: one scalar, no gradient needed, and the NLL is unimodal in T in practice.
    Returns 1.0 for no samples (nothing to fit: the model is left as it is).
    """
    logits = np.asarray(member_logits, dtype=np.float64)
    if logits.ndim == 2:
        logits = logits[None]
    if logits.ndim != 3:
        raise ValueError(f"expected (M, N, C) member logits, got {logits.shape}")
    y = np.asarray(y_true, dtype=np.int64).ravel()
    if logits.shape[1] != y.size:
        raise ValueError(f"{logits.shape[1]} samples for {y.size} labels")
    if y.size == 0:
        return 1.0
    logits = np.clip(logits, -1e4, None)  # log(0) = -inf from probabilities: stays finite

    def loss(log_t: float) -> float:
        return nll(tempered_proba(logits, float(np.exp(log_t))), y)

    a, b = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    g = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = loss(d)
    return float(np.exp((a + b) / 2.0))
