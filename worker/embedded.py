"""Embedded mode: the whole path in this process, in batches, committing after every batch.

Same stage functions as the Celery workers (worker/stages.py); a crash loses at most the batch in
flight, and running the same command again picks up where it stopped (known content with stored
features is not preprocessed again; content already scored by the active model is not rescored).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.frontend import FrontendConfig
from scorer.db import queries
from scorer.db.engine import make_sessionmaker
from scorer.db.models import FILE_WINDOW, ModelVersion, Prediction, Snippet, SnippetStatus
from scorer.manifest import Labelled
from scorer.settings import Settings
from worker.pool import PreprocessPool, processes_for
from worker.runtime import Runtime, frontend_from_settings
from worker.stages import Item, preprocess, save_preprocessed, score

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What one enqueue run did, for the CLI's closing lines."""

    files: int = 0
    new: int = 0
    preprocessed: int = 0
    scored: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    shas: dict[str, str] = field(default_factory=dict)  # sha -> path, every file of this run
    model_name: str | None = None


def unreadable_sha(path: Path) -> str:
    """A stand-in key for a file whose bytes cannot be read, so it still gets its `failed` row."""
    return hashlib.sha256(b"unreadable:" + str(path).encode("utf-8", "surrogateescape")).hexdigest()


def read_file(path: Path) -> tuple[str, bytes | None, str | None]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return unreadable_sha(path), None, f"cannot read file: {reason}"
    return hashlib.sha256(data).hexdigest(), data, None


Read = tuple[Path, str, bytes | None, str | None]
"""(path, sha256, bytes or None, why it could not be read or None)"""


def ingest(
    sessions: sessionmaker[Session],
    chunk: Sequence[Path],
    labels: dict[Path, Labelled],
    summary: RunSummary,
    retry_failed: bool,
) -> list[Read]:
    """Read and hash `chunk`, insert-or-ignore its snippet rows (labels filled in), fail the
    unreadable ones; with `retry_failed`, failed content goes back to queued. One transaction."""
    read = [(p, *read_file(p)) for p in chunk]
    rows = []
    for path, sha, data, _ in read:
        lab = labels.get(path.resolve())
        rows.append(
            {
                "sha256": sha,
                "source_path": str(path),
                "size_bytes": len(data) if data is not None else 0,
                "label": lab.label if lab else None,
                "group": lab.group if lab else None,
            }
        )
        summary.shas.setdefault(sha, str(path))
    with sessions.begin() as s:
        summary.new += len(queries.add_snippets(s, rows))
        for _, sha, _, error in read:
            if error:
                queries.mark_failed(s, sha, error)
        if retry_failed:
            queries.set_status(
                s,
                [sha for _, sha, _, error in read if not error],
                SnippetStatus.queued,
                only_from=SnippetStatus.failed,
                attempts=0,
            )
    return read


def model_and_frontend(
    settings: Settings, sessions: sessionmaker[Session], score_with_model: bool
) -> tuple[ModelVersion | None, FrontendConfig]:
    """The active model (when scoring) and the front end its features need: the model's own,
    else the settings'."""
    with sessions() as s:
        model = queries.active_model(s) if score_with_model else None
    if model is not None:
        return model, FrontendConfig.from_dict(model.frontend)
    return None, frontend_from_settings(settings)


def run(
    settings: Settings,
    engine: Engine,
    paths: Sequence[Path],
    labels: dict[Path, Labelled] | None = None,
    *,
    score_with_model: bool = True,
    retry_failed: bool = False,
    progress: Callable[[int], None] | None = None,
) -> RunSummary:
    """Ingest `paths`, preprocess what has no features yet, score with the active model."""
    labels = labels or {}
    sessions = make_sessionmaker(engine)
    summary = RunSummary(files=len(paths))
    model, frontend = model_and_frontend(settings, sessions, score_with_model)
    rt = Runtime(settings, frontend_override=frontend)
    summary.model_name = model.name if model else None
    pending: list[str] = []
    pending_windows = 0

    def flush() -> None:
        nonlocal pending, pending_windows
        if model is None or not pending:
            return
        with sessions.begin() as s:
            summary.scored += len(score(s, rt, model, pending))
        pending, pending_windows = [], 0

    n_procs = processes_for(settings, len(paths))
    pool = PreprocessPool(settings, rt.frontend, n_procs) if n_procs > 1 else None
    step = max(settings.preprocess_batch, 4 * n_procs)
    try:
        for start in range(0, len(paths), step):
            chunk = paths[start : start + step]
            read = ingest(sessions, chunk, labels, summary, retry_failed)
            with sessions() as s:
                state = snippet_state(s, [sha for _, sha, _, _ in read], rt.frontend.version, model)
            todo: dict[str, Item] = {}
            where: dict[str, str] = {}
            for path, sha, data, error in read:
                status, has_features, _, reason = state[sha]
                where.setdefault(sha, str(path))
                if error or status == SnippetStatus.failed:
                    summary.failures.append((str(path), error or reason or "failed"))
                elif not has_features and sha not in todo:
                    todo[sha] = Item(sha, data or b"", path.name)
            items = list(todo.values())
            results = pool.map(items) if pool is not None else preprocess(rt, items)
            with sessions.begin() as s:
                save_preprocessed(s, rt.frontend.version, results)
            fresh: dict[str, int] = {}
            for r in results:
                if r.error is not None:
                    summary.failures.append((where[r.sha256], r.error))
                elif r.windows is not None:
                    fresh[r.sha256] = int(r.windows.shape[0])
            summary.preprocessed += len(fresh)
            for sha in dict.fromkeys(sha for _, sha, _, error in read if not error):
                _, has_features, scored, _ = state[sha]
                if scored or sha in pending or not (has_features or sha in fresh):
                    continue
                if state[sha][0] == SnippetStatus.failed:
                    continue
                pending.append(sha)
                pending_windows += fresh.get(sha, 1)
            if pending_windows >= settings.infer_batch:
                flush()
            if progress:
                progress(len(chunk))
        flush()
    finally:
        if pool is not None:
            pool.close()
    return summary


def snippet_state(
    s: Session, shas: list[str], frontend_version: str, model: ModelVersion | None
) -> dict[str, tuple[SnippetStatus, bool, bool, str | None]]:
    """{sha: (status, has features of this front end, scored by `model`, error)}."""
    rows = s.execute(
        select(Snippet.sha256, Snippet.status, Snippet.error).where(Snippet.sha256.in_(shas))
    ).all()
    feats = queries.shas_with_features(s, shas, frontend_version)
    scored = queries.shas_scored_by(s, shas, model.id) if model else set()
    return {sha: (st, sha in feats, sha in scored, err) for sha, st, err in rows}


def accuracy_against_labels(
    engine: Engine, shas: Sequence[str], model_version_id: int
) -> tuple[int, int]:
    """(correct, total) of per-file verdicts against stored labels, over the labelled `shas`."""
    with make_sessionmaker(engine)() as s:
        rows = s.execute(
            select(Snippet.label, Prediction.label)
            .join(Prediction, Prediction.sha256 == Snippet.sha256)
            .where(Snippet.sha256.in_(list(shas)))
            .where(Snippet.label.is_not(None))
            .where(Prediction.window_index == FILE_WINDOW)
            .where(Prediction.model_version_id == model_version_id)
        ).all()
    return sum(a == b for a, b in rows), len(rows)


def failures_of(engine: Engine, shas: dict[str, str]) -> list[tuple[str, str]]:
    """(path, reason) of the failed ones among `shas` (sha -> path)."""
    out: list[tuple[str, str]] = []
    keys = list(shas)
    with make_sessionmaker(engine)() as s:
        for start in range(0, len(keys), 500):
            rows = s.execute(
                select(Snippet.sha256, Snippet.error).where(
                    Snippet.sha256.in_(keys[start : start + 500]),
                    Snippet.status == SnippetStatus.failed,
                )
            )
            out.extend((shas[sha], err or "failed") for sha, err in rows)
    return out
