"""The schema: SQLAlchemy 2 typed models. Alembic migrations are the only way it is created.

The database is the source of truth for where every snippet is; Redis is only transport.
docs/DATABASE.md describes these tables for people who query them with plain SQL.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

FILE_WINDOW = -1
"""`predictions.window_index` of the per-file verdict (windows themselves count from 0)."""


LABEL_ORIGIN_REVIEW = "review"
"""`snippets.label_origin` / `label_events.origin` of a label a person set on `scorer review`."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar = {dict[str, Any]: JSON, list[Any]: JSON}


class SnippetStatus(enum.StrEnum):
    queued = "queued"  # known, waiting for decode/separation/features
    preprocessed = "preprocessed"  # features stored, waiting for the ensemble
    scored = "scored"  # predictions stored for the active model version
    failed = "failed"  # a final, per-item error; `error` says why


class JobStatus(enum.StrEnum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as plain strings (no native PG enum type) so adding a state is a data change only.
    return Enum(cls, name=name, native_enum=False, length=16, validate_strings=True)


class Snippet(Base):
    """One distinct audio content (by sha256), however many paths it was found at."""

    __tablename__ = "snippets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    source_path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    duration_s: Mapped[float | None] = mapped_column(Float)
    sample_rate: Mapped[int | None] = mapped_column(Integer)
    channels: Mapped[int | None] = mapped_column(Integer)
    n_windows: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[SnippetStatus] = mapped_column(
        _enum(SnippetStatus, "snippet_status"), default=SnippetStatus.queued, index=True
    )
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The Celery delivery now working on this snippet ("task id:retries"), set before the work
    # and cleared after it: found set by another delivery, the one that set it died mid-work, and
    # only that counts in `attempts` (a retry after a transient error does not; worker/tasks.py).
    in_flight: Mapped[str | None] = mapped_column(String(255))
    # Work done on it: how many times a stage's work began (counted with `in_flight`, before the
    # work, so a delivery that died mid-work counts too; embedded runs count alike). 1 when
    # nothing went wrong; a message for work already done (a redelivery, a re-publish by
    # reconcile) adds nothing. Scoring with another model version adds to `score_runs`.
    preprocess_runs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    score_runs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    label: Mapped[str | None] = mapped_column(String(64), index=True)
    # Where `label` came from: null = with the data (a labels CSV or a folder per class),
    # "review" = a person listening on `scorer review`; and when it was set by a labelling
    # write (null for labels that came with the data). Every labelling write is in label_events.
    label_origin: Mapped[str | None] = mapped_column(String(16), index=True)
    labelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    group: Mapped[str | None] = mapped_column("group_name", String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, index=True
    )


class Feature(Base):
    """Log-mel windows of one snippet under one front-end version: (W, 299, 40) float16 bytes."""

    __tablename__ = "features"
    __table_args__ = (UniqueConstraint("sha256", "frontend_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("snippets.sha256", ondelete="CASCADE"))
    frontend_version: Mapped[str] = mapped_column(String(32))
    n_windows: Mapped[int] = mapped_column(Integer)
    n_frames: Mapped[int] = mapped_column(Integer)
    n_mels: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16), default="float16")
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersion(Base):
    """A trained ensemble: its classes, front end, members, metrics and where its weights are."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    classes: Mapped[list[Any]] = mapped_column(JSON)
    frontend_version: Mapped[str] = mapped_column(String(32))
    frontend: Mapped[dict[str, Any]] = mapped_column(JSON)
    members: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    weights_uri: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    training_job_id: Mapped[int | None] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SourcePath(Base):
    """Where a content was seen: one row per (absolute path, sha256). The same bytes under two
    names are two rows and both are listed by `scorer results`; a path whose file changed holds
    one row per content, the newest by ``seen_at``."""

    __tablename__ = "source_paths"
    __table_args__ = (UniqueConstraint("path", "sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(
        ForeignKey("snippets.sha256", ondelete="CASCADE"), index=True
    )
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Prediction(Base):
    """One window's (or, at window_index -1, the whole file's) ensemble output."""

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("sha256", "window_index", "model_version_id"),
        # The result and accuracy queries: one version's per-file verdicts (window -1), by sha.
        Index("ix_predictions_version_window_sha", "model_version_id", "window_index", "sha256"),
        # The review queue: one version's verdicts, least certain first, keyset-paginated.
        Index(
            "ix_predictions_version_window_entropy",
            "model_version_id",
            "window_index",
            "entropy",
            "id",
        ),
        Index(
            "ix_predictions_version_window_disagreement",
            "model_version_id",
            "window_index",
            "disagreement",
            "id",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("snippets.sha256", ondelete="CASCADE"))
    window_index: Mapped[int] = mapped_column(Integer)
    start_s: Mapped[float] = mapped_column(Float)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    probabilities: Mapped[list[Any]] = mapped_column(JSON)
    label: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)
    disagreement: Mapped[float] = mapped_column(Float)
    entropy: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TrainingJob(Base):
    """A queued or running `scorer train`; claimed by one worker, heart-beaten, resumable."""

    __tablename__ = "training_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[JobStatus] = mapped_column(
        _enum(JobStatus, "job_status"), default=JobStatus.pending, index=True
    )
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Fencing token: incremented by every claim. The owner's heartbeats and checkpoint writes
    # check it, so a worker whose claim was taken over stops instead of writing beside the new one.
    claim: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LabelEvent(Base):
    """One labelling write, append-only, so every correction can be traced and counted. The
    snippet's `label` is the last write (last write wins); this table keeps every one."""

    __tablename__ = "label_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(
        ForeignKey("snippets.sha256", ondelete="CASCADE"), index=True
    )
    label: Mapped[str | None] = mapped_column(String(64))
    previous_label: Mapped[str | None] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(String(16))
    # The model version whose verdict the person saw, and that verdict (null outside review).
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    predicted_label: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
