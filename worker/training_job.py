"""Training as a job queue in SQL: create, claim, heart-beat, run, register the model version.

A job's checkpoints live under <model_dir>/jobs/<id>; a job whose heartbeat went stale (its
worker died) can be claimed again and resumes from its last member-epoch checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, or_, select, update
from sqlalchemy.orm import Session

from scorer.db import queries
from scorer.db.engine import make_sessionmaker
from scorer.db.models import JobStatus, ModelVersion, Snippet, TrainingJob, utcnow
from scorer.errors import ScorerError
from scorer.manifest import order_classes
from worker.runtime import Runtime

log = logging.getLogger(__name__)

HEARTBEAT_STALE_S = 120.0
"""A running job whose heartbeat is older than this is taken to be dead and may be claimed."""


def worker_name() -> str:
    import os

    return f"{socket.gethostname()}:{os.getpid()}"


def create_job(session: Session, params: dict[str, Any]) -> TrainingJob:
    job = TrainingJob(params=params, status=JobStatus.pending, progress=0.0, attempts=0)
    session.add(job)
    session.flush()
    return job


def find_resumable(session: Session, params: dict[str, Any]) -> TrainingJob | None:
    """An unfinished job with exactly these parameters (the same command run again)."""
    jobs = session.scalars(
        select(TrainingJob)
        .where(TrainingJob.status.in_([JobStatus.pending, JobStatus.running]))
        .order_by(TrainingJob.id.desc())
    )
    return next((j for j in jobs if j.params == params), None)


def claim(
    session: Session,
    worker: str,
    job_id: int | None = None,
    stale_after_s: float = HEARTBEAT_STALE_S,
) -> TrainingJob | None:
    """Atomically take a pending job, or a running one whose heartbeat is stale.

    PostgreSQL: `SELECT ... FOR UPDATE SKIP LOCKED`, so concurrent workers never take the same
    row. SQLite has a single writer: the caller's transaction serialises claims.
    """
    stale = utcnow() - timedelta(seconds=stale_after_s)
    stmt = (
        select(TrainingJob)
        .where(
            or_(
                TrainingJob.status == JobStatus.pending,
                (TrainingJob.status == JobStatus.running)
                & (or_(TrainingJob.heartbeat_at.is_(None), TrainingJob.heartbeat_at < stale)),
            )
        )
        .order_by(TrainingJob.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if job_id is not None:
        stmt = stmt.where(TrainingJob.id == job_id)
    job = session.scalars(stmt).first()
    if job is None:
        return None
    now = utcnow()
    job.status = JobStatus.running
    job.worker = worker
    job.heartbeat_at = now
    job.started_at = job.started_at or now
    job.attempts += 1
    job.error = None
    return job


def training_data(
    session: Session, frontend_version: str, shas: list[str] | None
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(x (N, 299, 40) float16, y (N,), groups, classes) from labelled snippets' features.

    Every window of a labelled file is a sample with the file's label; a file without a group is
    its own group, so its windows never straddle the validation split.
    """
    # Ordered: the training data's fingerprint (checked on resume) depends on the order.
    stmt = (
        select(Snippet.sha256, Snippet.label, Snippet.group)
        .where(Snippet.label.is_not(None))
        .order_by(Snippet.sha256)
    )
    rows = session.execute(stmt).all()
    if shas is not None:
        wanted = set(shas)
        rows = [r for r in rows if r[0] in wanted]
    feats = queries.load_features(session, [r[0] for r in rows], frontend_version)
    rows = [r for r in rows if r[0] in feats]
    if not rows:
        raise ScorerError(
            "no labelled snippets with features to train on: give --data (a labels CSV or a "
            "folder per class), or enqueue labelled audio first"
        )
    classes = order_classes({r[1] for r in rows})
    if len(classes) < 2:
        raise ScorerError(f"training needs at least two classes, found only {classes}")
    xs, ys, groups = [], [], []
    for sha, label, group in rows:
        f = feats[sha]
        xs.append(f)
        ys.extend([classes.index(label)] * f.shape[0])
        groups.extend([group or sha] * f.shape[0])
    return np.concatenate(xs), np.asarray(ys, dtype=np.int64), groups, classes


class _Heart:
    """Progress callback: writes progress and heartbeat, and notices cancellation."""

    def __init__(self, engine: Engine, job_id: int) -> None:
        self.sessions = make_sessionmaker(engine)
        self.job_id = job_id
        self._last_check = 0.0
        self._cancelled = False

    def beat(self, record: dict[str, Any]) -> None:
        msg = (
            f"epoch {record['epoch']}/{record['epochs']} member {record['member'] + 1}/"
            f"{record['members']}: loss {record['train_loss']:.4f}, val acc {record['val_acc']}"
        )
        with self.sessions.begin() as s:
            s.execute(
                update(TrainingJob)
                .where(TrainingJob.id == self.job_id)
                .values(progress=record["fraction_done"], message=msg, heartbeat_at=utcnow())
            )

    def should_stop(self) -> bool:
        now = time.monotonic()
        if now - self._last_check > 5.0:
            self._last_check = now
            with self.sessions() as s:
                status = s.scalar(select(TrainingJob.status).where(TrainingJob.id == self.job_id))
            self._cancelled = status == JobStatus.cancelled
            if not self._cancelled:
                with self.sessions.begin() as s:
                    s.execute(
                        update(TrainingJob)
                        .where(TrainingJob.id == self.job_id)
                        .values(heartbeat_at=utcnow())
                    )
        return self._cancelled


def run_job(
    engine: Engine, rt: Runtime, job_id: int, show_progress: bool | None = None
) -> ModelVersion:
    """Train the claimed job `job_id` to the end (resuming from its checkpoints) and register
    the result as a model version, activated unless the job says otherwise."""
    from training.train import TrainingStopped, TrainParams, run

    sessions = make_sessionmaker(engine)
    with sessions() as s:
        job = s.get(TrainingJob, job_id)
        if job is None:
            raise ScorerError(f"no training job {job_id}")
        params = dict(job.params)
        if job.attempts > rt.settings.max_attempts:
            reason = f"gave up after {job.attempts - 1} attempts: its worker died each time"
            _fail(engine, job_id, reason)
            raise ScorerError(f"training job {job_id} failed: {reason}")
        x, y, groups, classes = training_data(s, rt.frontend.version, params.get("shas"))
    train_params = TrainParams.from_dict(params["train"])
    name = params.get("name") or f"v{job_id}"
    model_dir = rt.settings.resolved_model_dir
    work_dir = model_dir / "jobs" / str(job_id)
    heart = _Heart(engine, job_id)
    meta = {"frontend": rt.frontend.to_dict(), "frontend_version": rt.frontend.version}
    try:
        result = run(
            train_params, x, y, groups, classes, work_dir, device=rt.device,
            progress=heart.beat, should_stop=heart.should_stop, meta=meta,
            show_progress=show_progress, stack=rt.settings.train_stack or None,
            processes=rt.settings.train_processes, amp=rt.settings.train_amp,
        )  # fmt: skip
    except TrainingStopped:
        with sessions.begin() as s:
            s.execute(
                update(TrainingJob)
                .where(TrainingJob.id == job_id)
                .values(finished_at=utcnow(), message="cancelled")
            )
        raise ScorerError(f"training job {job_id} was cancelled") from None
    except ValueError as exc:
        _fail(engine, job_id, str(exc))
        raise ScorerError(f"training job {job_id} failed: {exc}") from exc
    target = model_dir / name
    if target.exists():
        shutil.rmtree(target)
    Path(result.ensemble_dir).replace(target)
    metrics = {**result.metrics(), "history": result.history}
    with sessions.begin() as s:
        mv = ModelVersion(
            name=name,
            classes=list(classes),
            frontend_version=rt.frontend.version,
            frontend=rt.frontend.to_dict(),
            members=train_params.members,
            params=train_params.to_dict(),
            metrics=metrics,
            weights_uri=name,
            active=False,
            training_job_id=job_id,
        )
        s.add(mv)
        s.flush()
        if params.get("activate", True):
            queries.activate_model(s, mv.id)
            mv.active = True
        s.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id)
            .values(
                status=JobStatus.succeeded,
                progress=1.0,
                finished_at=utcnow(),
                message=f"model version {name}: ensemble val acc {metrics['ensemble_val_acc']}",
            )
        )
    if not params.get("keep_checkpoints"):
        shutil.rmtree(work_dir, ignore_errors=True)
    return mv


def _fail(engine: Engine, job_id: int, reason: str) -> None:
    with make_sessionmaker(engine).begin() as s:
        s.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id)
            .values(status=JobStatus.failed, error=reason, finished_at=utcnow())
        )
