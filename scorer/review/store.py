"""The review page's reads: the queue (keyset-paginated), one snippet, the summary.

Pure functions of a Session; the caller owns the transaction. The queue reads
ix_predictions_version_window_{entropy,disagreement}, so page 10 000 costs what page 1 does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from scorer.db import queries
from scorer.db.models import (
    FILE_WINDOW,
    LABEL_ORIGIN_REVIEW,
    LabelEvent,
    ModelVersion,
    Prediction,
    Snippet,
)

SORTS = {"entropy": Prediction.entropy, "disagreement": Prediction.disagreement}
"""Least certain first: highest entropy of the verdict, or highest member disagreement."""

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
SELECTIVE = 5_000
"""Up to this many snippets match a snippet-side filter: pages are read by their shas."""


class BadRequest(ValueError):
    """A query parameter the page never sends (a hand-made URL): 400, one line why."""


@dataclass(frozen=True)
class QueueFilter:
    """What the queue shows: one model version's per-file verdicts, filtered and sorted."""

    model_version_id: int
    sort: str = "entropy"
    predicted: str | None = None
    truth: str | None = None  # a class, or "unlabelled"
    reviewed: bool | None = None


def parse_cursor(text: str) -> tuple[float, int]:
    """`<sort value>_<prediction id>` -> (value, id); anything else is a BadRequest."""
    value, sep, pid = text.rpartition("_")
    try:
        parsed = (float(value), int(pid))
    except ValueError:
        raise BadRequest(f"bad cursor {text[:40]!r}") from None
    if not sep or not math.isfinite(parsed[0]) or parsed[1] < 0:
        raise BadRequest(f"bad cursor {text[:40]!r}")
    return parsed


def cursor_of(value: float, prediction_id: int) -> str:
    return f"{value!r}_{prediction_id}"


def _queue_stmt(f: QueueFilter) -> Any:
    key = SORTS[f.sort]
    stmt = (
        select(
            Snippet.id, Snippet.source_path, Snippet.duration_s, Snippet.label.label("truth"),
            Snippet.label_origin, Prediction.id.label("prediction_id"), Prediction.label,
            Prediction.confidence, Prediction.entropy, Prediction.disagreement,
        )
        .join(Snippet, Snippet.sha256 == Prediction.sha256)
        .where(Prediction.model_version_id == f.model_version_id)
        .where(Prediction.window_index == FILE_WINDOW)
    )  # fmt: skip
    if f.predicted:
        stmt = stmt.where(Prediction.label == f.predicted)
    if f.truth == "unlabelled":
        stmt = stmt.where(Snippet.label.is_(None))
    elif f.truth:
        stmt = stmt.where(Snippet.label == f.truth)
    if f.reviewed is True:
        stmt = stmt.where(Snippet.label_origin == LABEL_ORIGIN_REVIEW)
    elif f.reviewed is False:
        stmt = stmt.where(
            (Snippet.label_origin.is_(None)) | (Snippet.label_origin != LABEL_ORIGIN_REVIEW)
        )
    return stmt.order_by(key.desc(), Prediction.id.desc())


def page_statement(f: QueueFilter, after: str | None, limit: int) -> Any:
    """The SELECT of one page: `limit` + 1 rows (the extra one says whether there is more)."""
    stmt = _queue_stmt(f)
    if after:
        value, pid = parse_cursor(after)
        stmt = stmt.where(tuple_(SORTS[f.sort], Prediction.id) < tuple_(value, pid))
    return stmt.limit(limit + 1)


def selective_shas(session: Session, f: QueueFilter) -> list[str] | None:
    """The shas a snippet-side filter leaves (reviewed, or a true label), when they are at most
    SELECTIVE; else None. Few matches spread over a million verdicts would make the ordered
    index walk most of its rows for one page (10 s at 100 reviewed in 1 M rows on SQLite)."""
    if f.reviewed is not True and (f.truth is None or f.truth == "unlabelled"):
        return None
    stmt = select(Snippet.sha256)
    if f.reviewed is True:
        stmt = stmt.where(Snippet.label_origin == LABEL_ORIGIN_REVIEW)
    if f.truth is not None and f.truth != "unlabelled":
        stmt = stmt.where(Snippet.label == f.truth)
    shas = list(session.scalars(stmt.limit(SELECTIVE + 1)))
    return None if len(shas) > SELECTIVE else shas


def queue_page(
    session: Session, f: QueueFilter, after: str | None = None, limit: int = PAGE_SIZE
) -> dict[str, Any]:
    """One page of the queue and the cursor of the next (None at the end). Keyset: the page
    after `after` is `WHERE (value, id) < cursor ORDER BY value DESC, id DESC LIMIT n`, read in
    index order; under a selective snippet-side filter, the page of each IN_CHUNK of the few
    matching shas (each verdict found by its sha), merged."""
    stmt = page_statement(f, after, limit)
    shas = selective_shas(session, f)
    if shas is None:
        rows = [dict(r._mapping) for r in session.execute(stmt)]
    else:
        rows = [
            dict(r._mapping)
            for part in queries.chunks(shas)
            for r in session.execute(stmt.where(Prediction.sha256.in_(part)))
        ]
        rows.sort(key=lambda r: (r[f.sort], r["prediction_id"]), reverse=True)
        rows = rows[: limit + 1]
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {
            "id": r["id"],
            "path": r["source_path"],
            "duration_s": r["duration_s"],
            "predicted": r["label"],
            "confidence": r["confidence"],
            "entropy": r["entropy"],
            "disagreement": r["disagreement"],
            "truth": r["truth"],
            "reviewed": r["label_origin"] == LABEL_ORIGIN_REVIEW,
            "cursor": cursor_of(r[f.sort], r["prediction_id"]),
        }
        for r in rows
    ]
    return {"items": items, "next": items[-1]["cursor"] if more else None}


def model_versions(session: Session) -> list[dict[str, Any]]:
    rows = session.scalars(select(ModelVersion).order_by(ModelVersion.id))
    return [
        {"id": m.id, "name": m.name, "classes": list(m.classes), "active": m.active} for m in rows
    ]


def snippet_detail(session: Session, snippet_id: int, model: ModelVersion) -> dict[str, Any] | None:
    """Everything the snippet page shows, or None when no snippet has this id. Verdict and
    windows are `model`'s (absent when it has not scored this snippet)."""
    snippet = session.get(Snippet, snippet_id)
    if snippet is None:
        return None
    rows = session.scalars(
        select(Prediction)
        .where(Prediction.sha256 == snippet.sha256, Prediction.model_version_id == model.id)
        .order_by(Prediction.window_index)
    ).all()
    verdict = next((p for p in rows if p.window_index == FILE_WINDOW), None)
    windows = [p for p in rows if p.window_index != FILE_WINDOW]
    return {
        "id": snippet.id,
        "sha256": snippet.sha256,
        "paths": queries.paths_of(session, [snippet.sha256]).get(snippet.sha256, []),
        "duration_s": snippet.duration_s,
        "status": str(snippet.status.value if hasattr(snippet.status, "value") else snippet.status),
        "truth": snippet.label,
        "label_origin": snippet.label_origin,
        "labelled_at": snippet.labelled_at.isoformat() if snippet.labelled_at else None,
        "model": {"id": model.id, "name": model.name, "classes": list(model.classes)},
        "verdict": None
        if verdict is None
        else {
            "label": verdict.label,
            "probabilities": list(verdict.probabilities),
            "confidence": verdict.confidence,
            "entropy": verdict.entropy,
            "disagreement": verdict.disagreement,
            "cursors": {k: cursor_of(getattr(verdict, k), verdict.id) for k in SORTS},
        },
        "windows": [
            {
                "index": w.window_index,
                "start_s": w.start_s,
                "label": w.label,
                "confidence": w.confidence,
                "probabilities": list(w.probabilities),
            }
            for w in windows
        ],
    }


def summary(session: Session, model: ModelVersion) -> dict[str, Any]:
    """Class counts, and `model`'s accuracy and confusion matrix against the reviewed labels:
    its stored per-file verdicts, which are what `scorer evaluate` computes again from the
    features (the same windows, calibration and file rule)."""
    from training.metrics import accuracy, confusion_matrix

    classes = list(model.classes)
    verdicts = (
        select(Prediction.label, func.count())
        .where(Prediction.model_version_id == model.id, Prediction.window_index == FILE_WINDOW)
        .group_by(Prediction.label)
    )
    truths = (
        select(Snippet.label, Snippet.label_origin, func.count())
        .where(Snippet.label.is_not(None))
        .group_by(Snippet.label, Snippet.label_origin)
    )
    truth_counts: dict[str, dict[str, int]] = {}
    for label, origin, n in session.execute(truths):
        by = truth_counts.setdefault(label, {"data": 0, "review": 0})
        by["review" if origin == LABEL_ORIGIN_REVIEW else "data"] += n
    pairs = session.execute(
        select(Snippet.label, Prediction.label)
        .join(Prediction, Prediction.sha256 == Snippet.sha256)
        .where(Prediction.model_version_id == model.id, Prediction.window_index == FILE_WINDOW)
        .where(Snippet.label_origin == LABEL_ORIGIN_REVIEW, Snippet.label.is_not(None))
    ).all()
    known = [(t, p) for t, p in pairs if t in classes and p in classes]
    import numpy as np

    y_true = np.array([classes.index(t) for t, _ in known], dtype=np.int64)
    y_pred = np.array([classes.index(p) for _, p in known], dtype=np.int64)
    acc = accuracy(y_true, y_pred)
    return {
        "model": {"id": model.id, "name": model.name, "classes": classes},
        "predicted": dict(session.execute(verdicts).all()),
        "labels": truth_counts,
        "reviewed": len(known),
        "reviewed_outside_classes": len(pairs) - len(known),
        "corrections": session.scalar(
            select(func.count())
            .select_from(LabelEvent)
            .where(LabelEvent.origin == LABEL_ORIGIN_REVIEW)
        ),
        "accuracy": None if math.isnan(acc) else acc,
        "confusion_matrix": confusion_matrix(y_true, y_pred, len(classes)).tolist(),
    }
