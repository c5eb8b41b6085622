"""Training as a job queue in SQL: create, claim, heart-beat, run, register the model version.

A job's checkpoints live under <model_dir>/jobs/<id>; a job whose heartbeat went stale (its
worker died) can be claimed again and resumes from its last member-epoch checkpoint. Every claim
moves the job's fencing token (`claim`) on; the owner writes only while the token is still its
own, so a worker taken over while stalled stops instead of writing beside the new owner. Each
model version is moved into a new folder of its own: no model's weights are ever replaced.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
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
    return f"{socket.gethostname()}:{os.getpid()}"


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A model version name: also its folder's name under the model dir, so no `/` and no `..`."""


class ClaimLost(ScorerError):
    """Another worker took the job over (its fencing token moved on): this one stopped and wrote
    nothing more, neither to the job row nor to its checkpoints."""


def check_name(name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise ScorerError(
            f"model version name {name!r}: use up to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def name_conflict(
    session: Session, name: str, job_id: int | None = None, *, jobs: bool = True
) -> str | None:
    """Why `name` cannot be the model version name of job `job_id` (None: it can).

    A name is taken by a registered model version, or (`jobs`) by another unfinished job that
    will register it: checked before a job starts, so a taken name never costs a training run.
    """
    mv = session.scalars(select(ModelVersion).where(ModelVersion.name == name)).first()
    if mv is not None:
        return (
            f"model version name {name!r} is taken (model version {mv.id}); choose another --name"
        )
    if not jobs:
        return None
    unfinished = session.scalars(
        select(TrainingJob).where(TrainingJob.status.in_([JobStatus.pending, JobStatus.running]))
    )
    for job in unfinished:
        if job.id != job_id and job.params.get("name") == name:
            return (
                f"model version name {name!r} is taken by training job {job.id} "
                f"({job.status.value}); choose another --name or `scorer jobs cancel {job.id}`"
            )
    return None


def create_job(session: Session, params: dict[str, Any]) -> TrainingJob:
    job = TrainingJob(params=params, status=JobStatus.pending, progress=0.0, attempts=0)
    session.add(job)
    session.flush()
    return job


def find_resumable(session: Session, params: dict[str, Any]) -> TrainingJob | None:
    """The newest pending, running or failed job with exactly these parameters (the same
    command run again). A failed one is picked up on purpose: running the command again is
    asking for it, and its checkpoints are kept. Cancelled jobs stay cancelled."""
    jobs = session.scalars(
        select(TrainingJob)
        .where(TrainingJob.status.in_([JobStatus.pending, JobStatus.running, JobStatus.failed]))
        .order_by(TrainingJob.id.desc())
    )
    return next((j for j in jobs if j.params == params), None)


def reopen(session: Session, job_id: int) -> TrainingJob:
    """Make a failed or cancelled job pending again, its death count at zero: it resumes from
    its checkpoints. A pending or running job is returned as it is."""
    job = session.get(TrainingJob, job_id)
    if job is None:
        raise ScorerError(f"no training job {job_id}")
    if job.status == JobStatus.succeeded:
        raise ScorerError(f"training job {job_id} has already succeeded: {job.message}")
    if job.status in (JobStatus.failed, JobStatus.cancelled):
        job.status = JobStatus.pending
        job.attempts = 0
        job.error = None
        job.worker = None
        job.heartbeat_at = None
        job.finished_at = None
        job.message = "reopened: resumes from its checkpoints"
        session.flush()
    return job


def claim(
    session: Session,
    worker: str,
    job_id: int | None = None,
    stale_after_s: float = HEARTBEAT_STALE_S,
) -> TrainingJob | None:
    """Atomically take a pending job, or a running one whose heartbeat is stale.

    PostgreSQL: `SELECT ... FOR UPDATE SKIP LOCKED`, so concurrent workers never take the same
    row. SQLite has a single writer: the caller's transaction serialises claims. Every claim
    moves the fencing token `claim` on (the previous owner, if alive, notices and stops);
    `attempts` counts only deaths: a running job taken over because its owner went silent.
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
    if job.status == JobStatus.running:
        job.attempts += 1  # its owner died (or hung): that counts towards SCORER_MAX_ATTEMPTS
    job.status = JobStatus.running
    job.worker = worker
    job.heartbeat_at = now
    job.started_at = job.started_at or now
    job.claim = (job.claim or 0) + 1
    job.error = None
    session.flush()
    return job


def owner_is_dead_here(worker: str | None) -> bool:
    """True when `worker` ("host:pid") names a process of this host that no longer exists."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def claim_here(
    session: Session, worker: str, job_id: int, stale_after_s: float
) -> TrainingJob | None:
    """Claim job `job_id` for this process (`scorer train` without workers): a running job whose
    owner was a process of this host that has died is taken at once (a killed run resumes
    without waiting); one whose owner still runs is not."""
    job = session.get(TrainingJob, job_id)
    if job is not None and job.status == JobStatus.running and owner_is_dead_here(job.worker):
        stale_after_s = 0
    return claim(session, worker, job_id=job_id, stale_after_s=stale_after_s)


def training_data(
    session: Session, frontend_version: str, shas: list[str] | None
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(x (N, 299, 40) float16, y (N,), groups, classes) from labelled snippets' features.

    Every window of a labelled file is a sample with the file's label; a file without a group is
    its own group, so its windows never straddle the validation split.
    """
    x, y, groups, classes, _ = training_data_with_voice(session, frontend_version, shas, None)
    return x, y, groups, classes


def training_data_with_voice(
    session: Session, frontend_version: str, shas: list[str] | None, voice_version: str | None
) -> tuple[np.ndarray, np.ndarray, list[str], list[str], np.ndarray | None]:
    """``training_data`` and, where ``voice_version`` is given and every training snippet has
    voice features of it, their (N, D) voice features aligned with x; else None (logged: the
    snippets were featurised before SCORER_VOICE_FEATURES was on, and the model gets no head)."""
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
    voice = None
    if voice_version is not None:
        vf = queries.load_features(session, [r[0] for r in rows], voice_version)
        missing = [
            r[0] for r in rows if r[0] not in vf or vf[r[0]].shape[0] != feats[r[0]].shape[0]
        ]
        if missing:
            log.warning(
                "%d of %d training snippets have no voice features %s (featurised before "
                "SCORER_VOICE_FEATURES was on): training without a voice head",
                len(missing), len(rows), voice_version,
            )  # fmt: skip
        else:
            voice = np.concatenate([vf[r[0]].reshape(feats[r[0]].shape[0], -1) for r in rows])
    return (
        np.concatenate(xs), np.asarray(ys, dtype=np.int64), groups, classes,
        None if voice is None else voice.astype(np.float32),
    )  # fmt: skip


class Lease:
    """This worker's hold on a claimed job: (job id, fencing token), heart-beaten by a thread.

    The thread beats every few seconds through every phase (loading data, each epoch, the final
    validation of every member), so a running job never looks dead. Every write to the job row
    is `UPDATE ... WHERE claim = token`; once another worker's claim moved the token on, the
    first write that finds it sets `lost`, training stops at its next batch, and nothing more
    is written (checkpoints are fenced too, by `fence`).
    """

    def __init__(self, engine: Engine, job_id: int, token: int, stale_after_s: float) -> None:
        self.sessions = make_sessionmaker(engine)
        self.job_id = job_id
        self.token = token
        self.stale_after_s = stale_after_s
        self.interval = max(0.2, min(5.0, stale_after_s / 4))
        self.lost = False
        self.cancelled = False
        self._confirmed = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat_forever, daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def _mine(self) -> Any:
        return (TrainingJob.id == self.job_id) & (TrainingJob.claim == self.token)

    def touch(self, **values: Any) -> bool:
        """Heartbeat (and `values`) if this claim still holds the running job; else note why."""
        with self.sessions.begin() as s:
            n = s.execute(
                update(TrainingJob)
                .where(self._mine(), TrainingJob.status == JobStatus.running)
                .values(heartbeat_at=utcnow(), **values)
            ).rowcount
            if n:
                self._confirmed = time.monotonic()
                return True
            row = s.execute(
                select(TrainingJob.status, TrainingJob.claim).where(TrainingJob.id == self.job_id)
            ).first()
        if row is not None and row.claim == self.token and row.status == JobStatus.cancelled:
            self.cancelled = True
        else:
            self.lost = True
        return False

    def _beat_forever(self) -> None:
        while not self._done.wait(self.interval):
            try:
                if not self.touch():
                    return
            except SQLAlchemyError as exc:  # the database is away for a moment: beat again
                log.warning("heartbeat of training job %d failed: %s", self.job_id, exc)

    def beat(self, record: dict[str, Any]) -> None:
        """Progress callback of training: progress and message, fenced like every write."""
        msg = (
            f"epoch {record['epoch']}/{record['epochs']} member {record['member'] + 1}/"
            f"{record['members']}: loss {record['train_loss']:.4f}, val acc {record['val_acc']}"
        )
        try:
            self.touch(progress=record["fraction_done"], message=msg)
        except SQLAlchemyError as exc:
            log.warning("progress of training job %d not recorded: %s", self.job_id, exc)

    def should_stop(self) -> bool:
        return self.lost or self.cancelled

    def fence(self) -> None:
        """Called before a checkpoint replaces the last one: refuse (TrainingStopped) unless
        this claim still holds the job. With the database away, trust the last beat while it
        is younger than half the stale limit (no one can have claimed the job since)."""
        from training.train import TrainingStopped

        try:
            self.touch()
        except SQLAlchemyError:
            if time.monotonic() - self._confirmed > self.stale_after_s / 2:
                raise TrainingStopped(0, 0) from None
        if self.lost:
            raise TrainingStopped(0, 0)


def run_job(
    engine: Engine,
    rt: Runtime,
    job_id: int,
    token: int,
    show_progress: bool | None = None,
) -> ModelVersion:
    """Train the job `job_id` claimed with fencing token `token` to the end (resuming from its
    checkpoints) and register the result as a model version in a folder of its own, activated
    unless the job says otherwise.

    Raises ScorerError when the job fails or is cancelled, ClaimLost when another worker took
    it over. Any other exception (or an interrupt) releases the job before it propagates: an
    interrupt puts it back to pending as it is; an error counts like a death of its worker.
    """
    settings = rt.settings
    with Lease(engine, job_id, token, settings.job_stale_after_s) as lease:
        try:
            return _run_claimed(engine, rt, job_id, lease, show_progress)
        except ScorerError:
            raise
        except (KeyboardInterrupt, SystemExit):
            _release(lease, None, settings.max_attempts)
            raise
        except Exception as exc:
            _release(lease, f"{type(exc).__name__}: {exc}", settings.max_attempts)
            raise


def _run_claimed(
    engine: Engine, rt: Runtime, job_id: int, lease: Lease, show_progress: bool | None
) -> ModelVersion:
    from training.train import TrainingStopped, TrainParams, run

    sessions = make_sessionmaker(engine)
    with sessions() as s:
        job = s.get(TrainingJob, job_id)
        if job is None:
            raise ScorerError(f"no training job {job_id}")
        params = dict(job.params)
        if job.attempts >= rt.settings.max_attempts:
            reason = (
                f"gave up after its worker died {job.attempts} times; `scorer jobs resume "
                f"{job_id}` (or the same `scorer train` command) resumes from its checkpoints"
            )
            _fail(lease, reason)
            raise ScorerError(f"training job {job_id} failed: {reason}")
        name = params.get("name")
        conflict = name and name_conflict(s, name, job_id)
        if conflict:
            _fail(lease, conflict)
            raise ScorerError(f"training job {job_id} failed: {conflict}")
        x, y, groups, classes, voice = training_data_with_voice(
            s, rt.frontend.version, params.get("shas"), rt.voice_version
        )
    train_params = TrainParams.from_dict(params["train"])
    work_dir = rt.settings.resolved_model_dir / "jobs" / str(job_id)
    meta: dict[str, Any] = {
        "frontend": rt.frontend.to_dict(),
        "frontend_version": rt.frontend.version,
    }
    if voice is not None and rt.voice is not None:
        meta["voice"] = {"version": rt.voice_version, "config": rt.voice.to_dict()}
    try:
        result = run(
            train_params, x, y, groups, classes, work_dir, device=rt.device,
            progress=lease.beat, should_stop=lease.should_stop, meta=meta,
            show_progress=show_progress, stack=rt.settings.train_stack or None,
            processes=rt.settings.train_processes, amp=rt.settings.train_amp,
            fence=lease.fence, voice=voice,
        )  # fmt: skip
    except TrainingStopped:
        if lease.lost:
            raise ClaimLost(
                f"training job {job_id} was taken over by another worker; this one stopped"
            ) from None
        _write(lease, JobStatus.cancelled, finished_at=utcnow(), message="cancelled")
        raise ScorerError(f"training job {job_id} was cancelled") from None
    except ValueError as exc:
        _fail(lease, str(exc))
        raise ScorerError(f"training job {job_id} failed: {exc}") from exc
    mv = _register(engine, rt, job_id, lease, params, train_params, classes, result)
    if not params.get("keep_checkpoints"):
        shutil.rmtree(work_dir, ignore_errors=True)
    return mv


def _register(
    engine: Engine,
    rt: Runtime,
    job_id: int,
    lease: Lease,
    params: dict[str, Any],
    train_params: Any,
    classes: list[str],
    result: Any,
) -> ModelVersion:
    """Move the new ensemble into a folder of its own and commit its row, in one transaction
    that first checks the claim: a lost claim registers nothing, and no folder of another
    version is ever replaced or deleted."""
    try:
        return _register_once(engine, rt, job_id, lease, params, train_params, classes, result)
    except _NameTaken as exc:
        _fail(lease, f"{exc}; its checkpoints are kept")
        raise ScorerError(f"training job {job_id} failed: {exc}") from None


class _NameTaken(Exception):
    pass


def _register_once(
    engine: Engine,
    rt: Runtime,
    job_id: int,
    lease: Lease,
    params: dict[str, Any],
    train_params: Any,
    classes: list[str],
    result: Any,
) -> ModelVersion:
    model_dir = rt.settings.resolved_model_dir
    metrics = {**result.metrics(), "history": result.history}
    with make_sessionmaker(engine).begin() as s:
        # The fence, holding the job row (PostgreSQL row lock, SQLite's write lock) until commit.
        owned = s.execute(
            update(TrainingJob)
            .where(lease._mine(), TrainingJob.status == JobStatus.running)
            .values(heartbeat_at=utcnow())
        ).rowcount
        if not owned:
            raise ClaimLost(f"training job {job_id} was taken over or stopped; nothing registered")
        name = params.get("name") or _free_default_name(s, job_id)
        conflict = name_conflict(s, name, job_id)
        if conflict:  # taken while the job ran (rolled back here): fail it, below
            raise _NameTaken(conflict)
        folder = new_model_folder(model_dir, name, f"job{job_id}")
        os.replace(result.ensemble_dir, folder)
        mv = ModelVersion(
            name=name,
            classes=list(classes),
            frontend_version=rt.frontend.version,
            frontend=rt.frontend.to_dict(),
            members=train_params.members,
            params=train_params.to_dict(),
            metrics=metrics,
            weights_uri=folder.name,
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
    return mv


def _free_default_name(session: Session, job_id: int) -> str:
    """v<job id>, or v<job id>-2, -3, ... when a user already named a version so."""
    taken = set(
        session.scalars(select(ModelVersion.name).where(ModelVersion.name.like(f"v{job_id}%")))
    )
    name, k = f"v{job_id}", 1
    while name in taken:
        k += 1
        name = f"v{job_id}-{k}"
    return name


def new_model_folder(model_dir: Path, name: str, tag: str = "") -> Path:
    """A new, empty folder for a version's weights (created here, exclusively): <name>, or
    <name>-<tag>, <name>-<tag>-2, ... (without a tag: <name>-2, -3, ...) when a folder of that
    name is already there (an older model's, kept). Training jobs tag with job<id>; the
    distilled student (scorer distill) has no tag."""
    model_dir.mkdir(parents=True, exist_ok=True)
    base = f"{name}-{tag}" if tag else name
    firsts = [name, base] if tag else [name]
    for candidate in firsts + [f"{base}-{k}" for k in range(2, 100)]:
        folder = model_dir / candidate
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise ScorerError(f"no free folder for model version {name} under {model_dir}")


def _write(lease: Lease, status: JobStatus | None = None, **values: Any) -> bool:
    """A fenced update of the job row: written only while this claim holds it."""
    if status is not None:
        values["status"] = status
    with lease.sessions.begin() as s:
        return bool(
            s.execute(
                update(TrainingJob)
                .where(
                    lease._mine(),
                    TrainingJob.status.in_([JobStatus.running, JobStatus.cancelled]),
                )
                .values(**values)
            ).rowcount
        )


def _fail(lease: Lease, reason: str) -> None:
    _write(lease, JobStatus.failed, error=reason, finished_at=utcnow())


def _release(lease: Lease, error: str | None, max_attempts: int) -> None:
    """Give the job back after an interrupt (error None: pending, nothing counted) or an
    unexpected error (counted like a death; failed once SCORER_MAX_ATTEMPTS is reached)."""
    try:
        with lease.sessions.begin() as s:
            job = s.scalars(
                select(TrainingJob).where(lease._mine(), TrainingJob.status == JobStatus.running)
            ).first()
            if job is None:
                return
            job.worker = None
            job.heartbeat_at = None
            if error is None:
                job.status = JobStatus.pending
                job.message = "interrupted; resumes from its checkpoints"
                return
            job.attempts += 1
            job.error = error
            if job.attempts >= max_attempts:
                job.status = JobStatus.failed
                job.finished_at = utcnow()
            else:
                job.status = JobStatus.pending
    except SQLAlchemyError as exc:  # the job is found again when its heartbeat goes stale
        log.warning("training job %d not released: %s", lease.job_id, exc)
