"""Embedded mode: the whole path in this process, in batches, committing after every batch.

Same stage functions as the Celery workers (worker/stages.py); a crash loses at most the batch in
flight, and running the same command again picks up where it stopped (known content with stored
features is not preprocessed again; content already scored by the active model is not rescored).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.frontend import FrontendConfig
from scorer.db import queries
from scorer.db.engine import make_sessionmaker
from scorer.db.models import (
    FILE_WINDOW,
    ModelVersion,
    Prediction,
    Snippet,
    SnippetStatus,
    utcnow,
)
from scorer.db.students import scoring_model
from scorer.manifest import Labelled
from scorer.settings import Settings
from worker.inputs import (
    MB,
    Content,
    Skipped,
    absolute,
    find_source,
    read_input,
    size_of,
    unreadable_sha,
)
from worker.runtime import Runtime, frontend_from_settings, scoring_frontend

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What one enqueue run did, for the CLI's closing lines."""

    files: int = 0
    new: int = 0
    preprocessed: int = 0
    scored: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): no row
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (path, why left queued)
    recovered: int = 0  # rows an earlier run left unfinished, taken up by this one
    shas: dict[str, str] = field(default_factory=dict)  # sha -> path, every file of this run
    model_name: str | None = None


def read_file(path: Path, max_bytes: int = 1 << 62) -> tuple[str, bytes | None, str | None]:
    """`read_input` for callers that have no use for a skip: a skip becomes the error."""
    got = read_input(path, max_bytes)
    if isinstance(got, Skipped):
        return unreadable_sha(path), None, got.reason
    return got


Read = tuple[Path, str, Content | None, str | None]
"""(path, sha256, bytes or a FileRef or None, why it could not be read or None)"""


def label_key(path: Path) -> Path:
    """The key of `path` in a labels manifest (resolved paths); a loop resolves to itself."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path


def ingest(
    sessions: sessionmaker[Session],
    chunk: Sequence[Path],
    labels: dict[Path, Labelled],
    summary: RunSummary,
    retry_failed: bool,
    *,
    max_bytes: int,
    keep_bytes: int | None = None,
) -> list[Read]:
    """Read and hash `chunk` (regular files of at most `max_bytes`; the others go to
    `summary.skipped`), insert-or-ignore its snippet rows (labels filled in) and its
    (path, sha) records, fail the unreadable ones; with `retry_failed`, failed content goes back
    to queued. Paths are stored absolute, so reconcile finds them from any working directory.
    A file over `keep_bytes` is hashed in blocks and read as a `FileRef`. One transaction."""
    read: list[Read] = []
    for given in chunk:
        path = absolute(given)
        got = read_input(path, max_bytes, keep_bytes)
        if isinstance(got, Skipped):
            summary.skipped.append((str(got.path), got.reason))
        else:
            read.append((path, *got))
    rows = []
    for path, sha, data, _ in read:
        lab = labels.get(label_key(path))
        rows.append(
            {
                "sha256": sha,
                "source_path": str(path),
                "size_bytes": size_of(data) if data is not None else 0,
                "label": lab.label if lab else None,
                "group": lab.group if lab else None,
            }
        )
        summary.shas.setdefault(sha, str(path))
    with sessions.begin() as s:
        summary.new += len(queries.add_snippets(s, rows))
        queries.add_source_paths(s, [(str(path), sha) for path, sha, _, _ in read])
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
    """The model that scores (when scoring) and the front end its features need: the model's own,
    else the settings'. Embedded, the fast profile's choices apply (scorer.db.students, its
    newest student; runtime.scoring_frontend, its segment); the Celery workers score with the
    active model's own front end, so a distributed enqueue keeps to that."""
    if settings.profile != "reference" and not settings.embedded:
        log.warning(
            "SCORER_PROFILE=%s applies to embedded runs; the workers score with the active "
            "model and its own front end", settings.profile,
        )  # fmt: skip
        settings = settings.model_copy(update={"prefer_student": False, "profile": "reference"})
    with sessions() as s:
        model = scoring_model(s, settings) if score_with_model else None
    if model is not None:
        return model, scoring_frontend(FrontendConfig.from_dict(model.frontend), settings)
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
    recover: Sequence[SnippetStatus] = (),
    recover_older_than_s: float = 0.0,
) -> RunSummary:
    """Ingest `paths`, preprocess what has no features yet, score with the active model.

    `recover`: also finish the rows in these states that an earlier run left behind (a crash;
    embedded mode has no broker to redeliver them), read again from where they were seen; one
    whose source cannot be reached stays queued with a warning."""
    # Here, not at the top: they import torch, which the distributed enqueue (worker/publish.py
    # imports this module) never needs (docs/BENCHMARKS.md, CLI start-up).
    from worker.pool import PreprocessPool, processes_for
    from worker.stages import Item, preprocess, save_preprocessed, score

    labels = labels or {}
    sessions = make_sessionmaker(engine)
    summary = RunSummary(files=len(paths))
    model, frontend = model_and_frontend(settings, sessions, score_with_model)
    rt = Runtime(settings, frontend_override=frontend)
    summary.model_name = model.name if model else None
    max_bytes = int(settings.max_file_mb * MB)
    keep_bytes = int(settings.max_message_mb * MB)  # larger files are read in blocks
    leftovers = leftover_shas(sessions, recover, recover_older_than_s) if recover else []
    pending: list[str] = []
    pending_windows = 0

    def flush() -> None:
        nonlocal pending, pending_windows
        if model is None or not pending:
            return
        with sessions.begin() as s:
            queries.count_runs(s, pending, "score")
        with sessions.begin() as s:
            summary.scored += len(score(s, rt, model, pending))
        pending, pending_windows = [], 0

    def process(read: list[Read]) -> None:
        """Preprocess what has no features of this front end, queue the rest for scoring."""
        nonlocal pending_windows
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
        if items:
            with sessions.begin() as s:
                queries.count_runs(s, todo, "preprocess")
        results = pool.map(items) if pool is not None else preprocess(rt, items)
        with sessions.begin() as s:
            save_preprocessed(s, rt.frontend.version, results, rt.voice_version)
        fresh: dict[str, int] = {}
        for r in results:
            if r.error is not None:
                summary.failures.append((where[r.sha256], r.error))
            elif r.windows is not None:
                fresh[r.sha256] = int(r.windows.shape[0])
        summary.preprocessed += len(fresh)
        for sha in dict.fromkeys(sha for _, sha, _, error in read if not error):
            status, has_features, scored, _ = state[sha]
            if scored or sha in pending or not (has_features or sha in fresh):
                continue
            if status == SnippetStatus.failed:
                continue
            pending.append(sha)
            pending_windows += fresh.get(sha, 1)
        if pending_windows >= settings.infer_batch:
            flush()

    n_procs = processes_for(settings, len(paths) + len(leftovers))
    pool = PreprocessPool(settings, rt.frontend, n_procs) if n_procs > 1 else None
    step = max(settings.preprocess_batch, 4 * n_procs)
    try:
        for start in range(0, len(paths), step):
            chunk = paths[start : start + step]
            read = ingest(
                sessions, chunk, labels, summary, retry_failed, max_bytes=max_bytes,
                keep_bytes=keep_bytes,
            )  # fmt: skip
            process(read)
            if progress:
                progress(len(chunk))
        for start in range(0, len(leftovers), step):
            read = reread(sessions, leftovers[start : start + step], rt, max_bytes, summary)
            summary.recovered += len(read)
            process(read)
        flush()
    finally:
        if pool is not None:
            pool.close()
    return summary


def leftover_shas(
    sessions: sessionmaker[Session], statuses: Sequence[SnippetStatus], older_than_s: float
) -> list[str]:
    """Shas in `statuses` not touched for `older_than_s` seconds (taken before this run's own
    rows exist, so only what earlier runs left behind)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with sessions() as s:
        return list(
            s.scalars(
                select(Snippet.sha256)
                .where(Snippet.status.in_(list(statuses)), Snippet.updated_at <= cutoff)
                .order_by(Snippet.id)
            )
        )


def reread(
    sessions: sessionmaker[Session],
    shas: Sequence[str],
    rt: Runtime,
    max_bytes: int,
    summary: RunSummary,
) -> list[Read]:
    """Reads for left-over `shas`: no bytes needed where features exist, else read again from
    a path that still holds them. Unreachable: a warning, the row stays queued. Changed at every
    path that could be read: the content is gone, the row fails."""
    with sessions() as s:
        feats = queries.shas_with_features(s, list(shas), rt.frontend.version)
        paths = queries.paths_of(s, list(shas))
    out: list[Read] = []
    gone: dict[str, str] = {}
    for sha in shas:
        known = paths.get(sha, [])
        if sha in feats:
            out.append((Path(known[0] if known else sha), sha, None, None))
            continue
        found = find_source(known, sha, max_bytes, int(rt.settings.max_message_mb * MB))
        if found.data is not None and found.path is not None:
            out.append((found.path, sha, found.data, None))
        elif found.changed:
            gone[sha] = f"{found.reason}; enqueue it again"
            summary.failures.append((known[0], gone[sha]))
        else:
            shown = known[0] if known else sha
            summary.warnings.append((shown, f"source unreachable, left queued: {found.reason}"))
    if gone:
        with sessions.begin() as s:
            for sha, reason in gone.items():
                queries.mark_failed(s, sha, reason)
    return out


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
