"""Evaluation figures as PNG files: the confusion matrix and the reliability diagram.

matplotlib is imported inside the functions and drives a `Figure` with the Agg canvas directly
(no pyplot, no global backend switch), so importing this module is free, nothing needs a
display, and a worker or test process keeps whatever backend it had.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.calibration import ReliabilityBin


def _figure(width: float, height: float):  # type: ignore[no-untyped-def]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def confusion_png(
    cm: np.ndarray, classes: Sequence[str], path: Path, title: str = "Confusion matrix"
) -> Path:
    """Write the (C, C) count matrix (rows true, columns predicted) as a heat map with each
    cell's count and its share of the true class, so small classes are readable too."""
    cm = np.asarray(cm, dtype=np.int64)
    n = len(classes)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix {cm.shape} does not match {n} classes")
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    fig = _figure(1.2 * n + 2.5, 1.1 * n + 1.8)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true class")
    ax.set_xticks(range(n), labels=list(classes))
    ax.set_yticks(range(n), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for t in range(n):
        for p in range(n):
            colour = "white" if share[t, p] > 0.6 else "black"
            ax.text(p, t, f"{cm[t, p]}\n{share[t, p]:.0%}", ha="center", va="center", color=colour)
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def reliability_png(
    bins: Sequence[ReliabilityBin], path: Path, ece: float, title: str = "Reliability"
) -> Path:
    """Write a reliability diagram: accuracy per confidence bin against the diagonal (perfect
    calibration), with the gap shaded and the number of samples per bin underneath."""
    fig = _figure(5.5, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    centres = np.array([(b.lower + b.upper) / 2 for b in bins])
    widths = np.array([b.upper - b.lower for b in bins])
    filled = np.array([b.count > 0 for b in bins])
    acc = np.array([b.accuracy if b.count else 0.0 for b in bins])
    conf = np.array([b.confidence if b.count else 0.0 for b in bins])
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.bar(
        centres[filled], acc[filled], width=widths[filled], edgecolor="black",
        color="tab:blue", label="accuracy",
    )  # fmt: skip
    top.bar(
        centres[filled], conf[filled] - acc[filled], bottom=acc[filled], width=widths[filled],
        color="tab:red", alpha=0.3, label="gap to confidence",
    )  # fmt: skip
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"{title} (ECE {ece:.3f})")
    top.legend(loc="upper left")
    bottom.bar(centres, [b.count for b in bins], width=widths, color="grey", edgecolor="black")
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("samples")
    path = Path(path)
    fig.savefig(path, format="png")
    return path
