"""Query functions. Each takes a Session and never commits: the caller owns the transaction.

Writes are idempotent by content key (insert-or-ignore / upsert), so a redelivered message or a
re-run of the same command writes each row once.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypedDict, TypeVar, Unpack

import numpy as np
from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    Select,
    String,
    Table,
    case,
    exists,
    func,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from scorer.db.models import (
    FILE_WINDOW,
    LABEL_ORIGIN_REVIEW,
    Feature,
    LabelEvent,
    ModelVersion,
    Prediction,
    Snippet,
    SnippetStatus,
    SourcePath,
    utcnow,
)

T = TypeVar("T")

IN_CHUNK = 500
"""Values per IN list: far below the bound-parameter limits (SQLite 32766, psycopg 65535)."""


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """`items` in slices of `size`: every IN list over a run's shas goes through this."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _insert(session: Session, model: type) -> Any:
    """A dialect-specific INSERT that supports ON CONFLICT (SQLite and PostgreSQL)."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(model)
    if name == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"unsupported database dialect {name!r}")


def _insert_ignore(
    session: Session, model: type, rows: Sequence[dict[str, Any]], key: list[str]
) -> None:
    """INSERT ... ON CONFLICT (key) DO NOTHING for many rows, as executemany.

    Executemany compiles one statement and lets the driver batch, so no statement exceeds the
    bound-parameter limit (SQLite 32766, PostgreSQL 65535). All rows of one execution need the
    same keys, so rows are grouped by their key set (a caller may give `label` for some only).
    """
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(sorted(r)), []).append(r)
    for group in groups.values():
        stmt = _insert(session, model).on_conflict_do_nothing(index_elements=key)
        session.execute(stmt, group)


def add_snippets(session: Session, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert-or-ignore snippets by sha256; returns the shas that were new.

    A known sha keeps its status and path; a label or group given now fills or replaces the stored
    one (labels may arrive after the audio), except a label a person set on `scorer review`: the
    same labels file read again must not undo a correction (``set_label`` changes those).
    """
    if not rows:
        return set()
    shas = list({r["sha256"] for r in rows})
    known: set[str] = set()
    for start in range(0, len(shas), 500):
        chunk = shas[start : start + 500]
        known.update(session.scalars(select(Snippet.sha256).where(Snippet.sha256.in_(chunk))))
    now = utcnow()
    new = [
        {"status": SnippetStatus.queued, "attempts": 0, "created_at": now, "updated_at": now, **r}
        for r in rows
        if r["sha256"] not in known
    ]
    if new:
        _insert_ignore(session, Snippet, new, ["sha256"])
    for r in rows:
        if r["sha256"] in known and (r.get("label") or r.get("group")):
            values = {k: r[k] for k in ("label", "group") if r.get(k)}
            this = update(Snippet).where(Snippet.sha256 == r["sha256"])
            reviewed = Snippet.label_origin == LABEL_ORIGIN_REVIEW
            not_reviewed = or_(Snippet.label_origin.is_(None), not_(reviewed))
            session.execute(this.where(not_reviewed).values(**values))
            if "label" in values and "group" in values:
                session.execute(this.where(reviewed).values(group=values["group"]))
    return {r["sha256"] for r in new}


def set_status(
    session: Session,
    shas: Iterable[str],
    status: SnippetStatus,
    error: str | None = None,
    *,
    only_from: SnippetStatus | None = None,
    **values: Any,
) -> None:
    """Move `shas` to `status` (only those now in `only_from`, when given)."""
    shas = list(shas)
    now = utcnow()
    for start in range(0, len(shas), 500):
        stmt = update(Snippet).where(Snippet.sha256.in_(shas[start : start + 500]))
        if only_from is not None:
            stmt = stmt.where(Snippet.status == only_from)
        session.execute(stmt.values(status=status, error=error, updated_at=now, **values))


def count_runs(session: Session, shas: Iterable[str], stage: str) -> None:
    """Add one to `<stage>_runs` ("preprocess" or "score") of `shas`: their work begins now.
    Committed before the work, so work that dies counts too (docs/DATABASE.md)."""
    column = {"preprocess": Snippet.preprocess_runs, "score": Snippet.score_runs}[stage]
    shas = list(shas)
    for start in range(0, len(shas), 500):
        stmt = update(Snippet).where(Snippet.sha256.in_(shas[start : start + 500]))
        session.execute(stmt.values({column: column + 1}))


def mark_failed(session: Session, sha: str, reason: str) -> None:
    """A final per-item failure: one line of reason on its row."""
    set_status(session, [sha], SnippetStatus.failed, error=reason.splitlines()[0][:1000])


def store_features(session: Session, sha: str, frontend_version: str, windows: np.ndarray) -> None:
    """Insert-or-ignore the (W, frames, mels) windows of one snippet as float16 bytes."""
    arr = np.ascontiguousarray(windows, dtype="<f2")  # little-endian on every host
    stmt = (
        _insert(session, Feature)
        .values(
            sha256=sha,
            frontend_version=frontend_version,
            n_windows=arr.shape[0],
            n_frames=arr.shape[1],
            n_mels=arr.shape[2],
            dtype="float16",
            data=arr.tobytes(),
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["sha256", "frontend_version"])
    )
    session.execute(stmt)


def load_features(
    session: Session, shas: Sequence[str], frontend_version: str
) -> dict[str, np.ndarray]:
    """{sha: (W, frames, mels) float16} for those shas that have features of this version."""
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(shas), 500):
        rows = session.execute(
            select(
                Feature.sha256, Feature.n_windows, Feature.n_frames, Feature.n_mels, Feature.data
            )
            .where(Feature.sha256.in_(shas[start : start + 500]))
            .where(Feature.frontend_version == frontend_version)
        )
        for sha, w, t, m, data in rows:
            arr = np.frombuffer(data, dtype="<f2").reshape(w, t, m)
            out[sha] = arr.astype(np.float16, copy=False)
    return out


def _shas_where(session: Session, column: Any, shas: Sequence[str], *conditions: Any) -> set[str]:
    """The values of `column` (a sha column) among `shas` matching `conditions`, 500 at a time."""
    found: set[str] = set()
    for start in range(0, len(shas), 500):
        stmt = select(column).where(column.in_(shas[start : start + 500]), *conditions)
        found.update(session.scalars(stmt))
    return found


def shas_with_features(session: Session, shas: Sequence[str], frontend_version: str) -> set[str]:
    return _shas_where(session, Feature.sha256, shas, Feature.frontend_version == frontend_version)


def shas_scored_by(session: Session, shas: Sequence[str], model_version_id: int) -> set[str]:
    """Shas that already have their per-file verdict from this model version."""
    return _shas_where(
        session,
        Prediction.sha256,
        shas,
        Prediction.model_version_id == model_version_id,
        Prediction.window_index == FILE_WINDOW,
    )


def upsert_predictions(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Bulk insert-or-ignore on (sha256, window_index, model_version_id): redelivery is harmless."""
    if not rows:
        return
    now = utcnow()
    values = [{"created_at": now, **r} for r in rows]
    _insert_ignore(session, Prediction, values, ["sha256", "window_index", "model_version_id"])


def active_model(session: Session) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion).where(ModelVersion.active.is_(True)).order_by(ModelVersion.id.desc())
    ).first()


def model_by_name_or_id(session: Session, key: str) -> ModelVersion | None:
    stmt = select(ModelVersion).where(ModelVersion.name == key)
    found = session.scalars(stmt).first()
    if found is None and key.isdigit():
        found = session.get(ModelVersion, int(key))
    return found


def activate_model(session: Session, model_version_id: int) -> None:
    """Exactly one active version: deactivate the others in the same transaction."""
    session.execute(update(ModelVersion).values(active=False))
    session.execute(
        update(ModelVersion).where(ModelVersion.id == model_version_id).values(active=True)
    )


def status_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Snippet.status, func.count()).group_by(Snippet.status))
    return {str(s.value if hasattr(s, "value") else s): n for s, n in rows}


class ResultOptions(TypedDict, total=False):
    """`results_query`'s keyword options, spelled once for the functions that pass them on."""

    windows: bool
    label: str | None
    uncertain: bool
    limit: int | None
    by_content: bool


def results(
    session: Session, model_version_id: int, **options: Unpack[ResultOptions]
) -> list[dict[str, Any]]:
    """`iter_results` as a list (small result sets: tests, callers that need them all)."""
    return list(iter_results(session, model_version_id, **options))


RESULTS_BATCH = 1000
"""Rows fetched per round trip while streaming results (a server-side cursor on PostgreSQL)."""


def iter_results(
    session: Session, model_version_id: int, **options: Unpack[ResultOptions]
) -> Iterator[dict[str, Any]]:
    """Predictions joined with their snippets, per-file verdicts or every window, streamed
    `RESULTS_BATCH` rows at a time: memory stays flat however many rows there are."""
    stmt = results_query(model_version_id, **options)
    for r in session.execute(stmt.execution_options(yield_per=RESULTS_BATCH)):
        yield dict(r._mapping)


def results_query(
    model_version_id: int,
    *,
    windows: bool = False,
    label: str | None = None,
    uncertain: bool = False,
    limit: int | None = None,
    by_content: bool = False,
) -> Select[Any]:
    """The SELECT behind `iter_results`. Its filter (model version, then window = -1 or >= 0)
    is the prefix of ix_predictions_version_window_sha.

    One row per path a content was enqueued at (its newest content per path, from
    `source_paths`; a snippet with no such row under its `source_path`), so every copy of a
    song is listed under its own name; `by_content`: one row per content, under the path it
    was first seen at."""
    path = (
        Snippet.source_path
        if by_content
        else func.coalesce(SourcePath.path, Snippet.source_path).label("source_path")
    )
    stmt = (
        select(
            path,
            Snippet.sha256,
            Snippet.duration_s,
            Snippet.label.label("true_label"),
            Prediction.window_index,
            Prediction.start_s,
            Prediction.label,
            Prediction.confidence,
            Prediction.disagreement,
            Prediction.entropy,
            Prediction.probabilities,
        )
        .join(Prediction, Prediction.sha256 == Snippet.sha256)
        .where(Prediction.model_version_id == model_version_id)
    )
    if not by_content:
        newer = aliased(SourcePath)
        stmt = stmt.outerjoin(SourcePath, SourcePath.sha256 == Snippet.sha256).where(
            ~exists().where(newer.path == SourcePath.path, newer.seen_at > SourcePath.seen_at)
        )
    if windows:
        stmt = stmt.where(Prediction.window_index > FILE_WINDOW)
    else:
        stmt = stmt.where(Prediction.window_index == FILE_WINDOW)
    if label:
        stmt = stmt.where(Prediction.label == label)
    if uncertain:
        stmt = stmt.order_by(Prediction.entropy.desc(), Prediction.confidence.asc())
    else:
        stmt = stmt.order_by(path, Prediction.window_index)
    if limit:
        stmt = stmt.limit(limit)
    return stmt


def failures(session: Session, limit: int = 50) -> list[tuple[str, str]]:
    rows = session.execute(
        select(Snippet.source_path, Snippet.error)
        .where(Snippet.status == SnippetStatus.failed)
        .order_by(Snippet.updated_at.desc())
        .limit(limit)
    )
    return [(p, e or "") for p, e in rows]


@contextmanager
def sha_table(conn: Connection, shas: Iterable[str]) -> Iterator[Table]:
    """A temporary table of `shas` on this connection, dropped on exit: a whole run's shas in one
    set-based query (`pending_among`) instead of an IN list per `IN_CHUNK`. Commits `conn`."""
    table = Table(
        f"run_shas_{secrets.token_hex(4)}",
        MetaData(),
        Column("sha256", String(64), primary_key=True),
        prefixes=["TEMPORARY"],
    )
    table.create(conn)
    rows = [{"sha256": sha} for sha in set(shas)]
    if rows:
        conn.execute(table.insert(), rows)
    conn.commit()
    try:
        yield table
    finally:
        conn.rollback()
        table.drop(conn)
        conn.commit()


def pending_among(conn: Connection, table: Table, model_version_id: int | None) -> int:
    """How many shas of `table` are not final yet, in one query. Final: failed, or scored by
    the model (per-file verdict stored); without a model: failed or preprocessed/scored."""
    sha = table.c.sha256
    if model_version_id is None:
        final = exists().where(
            Snippet.sha256 == sha,
            Snippet.status.in_(
                [SnippetStatus.failed, SnippetStatus.preprocessed, SnippetStatus.scored]
            ),
        )
        return conn.scalar(select(func.count()).select_from(table).where(not_(final))) or 0
    failed = exists().where(Snippet.sha256 == sha, Snippet.status == SnippetStatus.failed)
    scored = exists().where(
        Prediction.model_version_id == model_version_id,
        Prediction.window_index == FILE_WINDOW,
        Prediction.sha256 == sha,
    )
    stmt = select(func.count()).select_from(table).where(not_(failed), not_(scored))
    return conn.scalar(stmt) or 0


def label_accuracy(conn: Connection, table: Table, model_version_id: int) -> tuple[int, int]:
    """(correct, total) of per-file verdicts against stored labels over the labelled shas of
    `table` (a `sha_table`): one query, however many shas the run has."""
    n, right = conn.execute(
        select(func.count(), func.sum(case((Snippet.label == Prediction.label, 1), else_=0)))
        .select_from(table)
        .join(Snippet, Snippet.sha256 == table.c.sha256)
        .join(Prediction, Prediction.sha256 == table.c.sha256)
        .where(Prediction.model_version_id == model_version_id)
        .where(Prediction.window_index == FILE_WINDOW)
        .where(Snippet.label.is_not(None))
    ).one()
    return right or 0, n


def add_source_paths(session: Session, pairs: Sequence[tuple[str, str]]) -> None:
    """Record where each content was seen: insert (path, sha256), or refresh `seen_at` of a
    known pair, so `scorer results` lists every path a user enqueued, the newest content first."""
    if not pairs:
        return
    now = utcnow()
    rows = [{"path": p, "sha256": sha, "seen_at": now} for p, sha in dict.fromkeys(pairs)]
    stmt = _insert(session, SourcePath)
    stmt = stmt.on_conflict_do_update(
        index_elements=["path", "sha256"], set_={"seen_at": stmt.excluded.seen_at}
    )
    session.execute(stmt, rows)


def paths_of(session: Session, shas: Sequence[str]) -> dict[str, list[str]]:
    """{sha: the paths it was seen at, newest first, its first source_path last}."""
    out: dict[str, list[str]] = {}
    for part in chunks(list(shas)):
        rows = session.execute(
            select(SourcePath.sha256, SourcePath.path)
            .where(SourcePath.sha256.in_(part))
            .order_by(SourcePath.seen_at.desc(), SourcePath.id.desc())
        )
        for sha, path in rows:
            out.setdefault(sha, []).append(path)
        for sha, path in session.execute(
            select(Snippet.sha256, Snippet.source_path).where(Snippet.sha256.in_(part))
        ):
            if path not in out.setdefault(sha, []):
                out[sha].append(path)
    return out


def set_label(
    session: Session,
    sha: str,
    label: str | None,
    *,
    origin: str,
    model_version_id: int | None = None,
    predicted_label: str | None = None,
) -> LabelEvent | None:
    """Write a snippet's true label (None clears it) and log the write in `label_events`; returns
    the event, or None when no snippet has this sha. Last write wins: two writers at once (two
    browsers) each take the row's write lock first (the UPDATE of `labelled_at`: a row lock on
    PostgreSQL, the database's write lock on SQLite), so each event's `previous_label` is the
    label the write before it left, and every write is logged."""
    now = utcnow()
    this = Snippet.sha256 == sha
    if session.execute(update(Snippet).where(this).values(labelled_at=now)).rowcount == 0:
        return None
    previous = session.scalar(select(Snippet.label).where(this))
    session.execute(update(Snippet).where(this).values(label=label, label_origin=origin))
    event = LabelEvent(
        sha256=sha, label=label, previous_label=previous, origin=origin,
        model_version_id=model_version_id, predicted_label=predicted_label, created_at=now,
    )  # fmt: skip
    session.add(event)
    session.flush()
    return event
