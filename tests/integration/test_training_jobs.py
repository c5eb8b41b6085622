"""Training jobs on a real SQLite database with real (tiny) torch training: names never cost a
model's weights, resume survives any number of interruptions, a taken-over owner stops and
writes nothing, and the training worker survives any error (a real `scorer worker train`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from scorer.cli import main
from scorer.cli.train import _params, train_params_from_options
from scorer.db import queries
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.migrate import upgrade
from scorer.db.models import JobStatus, ModelVersion, Snippet, TrainingJob
from scorer.settings import Settings
from training.checkpoint import checkpoint_epoch
from training.ensemble import load_ensemble
from worker.runtime import Runtime, frontend_from_settings
from worker.training_job import (
    ClaimLost,
    Lease,
    claim,
    create_job,
    run_job,
    training_data,
    worker_name,
)

RECIPE = {"members": 1, "epochs": 2, "arch": "resnet10", "batch_size": 4}
TRAIN = ["train", "--members", "1", "--epochs", "2", "--arch", "resnet10", "--batch-size", "4"]


@pytest.fixture
def setup(make_settings: Callable[..., Settings]) -> tuple[Settings, Engine]:
    """Embedded settings and 8 labelled snippets (2 classes, one singer each) with features."""
    settings = make_settings(separation=False, max_attempts=3)
    engine = make_engine(settings)
    upgrade(engine)
    version = frontend_from_settings(settings).version
    rng = np.random.default_rng(0)
    with make_sessionmaker(engine).begin() as s:
        for i in range(8):
            sha = f"{i:064x}"
            s.add(Snippet(sha256=sha, source_path=f"{i}.wav", size_bytes=1, label="ab"[i % 2],
                          group=f"singer{i}", attempts=0))  # fmt: skip
            s.flush()
            windows = rng.standard_normal((1, 299, 40)).astype(np.float16)
            queries.store_features(s, sha, version, windows)
    return settings, engine


def invoke(settings: Settings, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), obj=settings)


def jobs(engine: Engine) -> list[TrainingJob]:
    with make_sessionmaker(engine)() as s:
        return list(s.scalars(select(TrainingJob).order_by(TrainingJob.id)))


def register(engine: Engine, name: str, weights_uri: str) -> None:
    with make_sessionmaker(engine).begin() as s:
        s.add(ModelVersion(name=name, classes=["a", "b"], frontend_version="x", frontend={},
                           members=1, params={}, metrics={}, weights_uri=weights_uri))  # fmt: skip


def job_with_checkpoint(settings: Settings, engine: Engine) -> tuple[int, Path]:
    """The job `scorer train` + TRAIN would make, with member 0 checkpointed after epoch 1 of 2
    (as a run killed in epoch 2 leaves it)."""
    from training.train import TrainingStopped, run

    tp = train_params_from_options("reference", RECIPE)
    with make_sessionmaker(engine).begin() as s:
        job_id = create_job(s, _params(tp, None, None, False, False)).id
    with make_sessionmaker(engine)() as s:
        x, y, groups, classes = training_data(s, frontend_from_settings(settings).version, None)
    work_dir = settings.resolved_model_dir / "jobs" / str(job_id)
    done: list[dict] = []
    with pytest.raises(TrainingStopped):
        run(tp, x, y, groups, classes, work_dir, progress=done.append,
            should_stop=lambda: bool(done), show_progress=False)  # fmt: skip
    assert checkpoint_epoch(work_dir, 0) == 1
    return job_id, work_dir


# --- item 3: model names and folders ------------------------------------------------------------


def test_a_taken_name_is_refused_before_training(setup: tuple[Settings, Engine]) -> None:
    settings, engine = setup
    weights = settings.resolved_model_dir / "keep"
    weights.mkdir(parents=True)
    (weights / "member_00.safetensors").write_bytes(b"the old model's weights")
    register(engine, "keep", "keep")

    result = invoke(settings, *TRAIN, "--name", "keep")

    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        "Error: model version name 'keep' is taken (model version 1); choose another --name"
    )
    assert jobs(engine) == []  # refused before a job existed
    assert (weights / "member_00.safetensors").read_bytes() == b"the old model's weights"
    escape = invoke(settings, *TRAIN, "--name", "../outside")
    assert escape.exit_code == 1 and "Error: model version name '../outside'" in escape.output


def test_a_new_version_gets_a_folder_of_its_own(setup: tuple[Settings, Engine]) -> None:
    """A folder named like the new version already holds another model's weights: it is kept,
    and the new version is written beside it, its row committed with its own folder."""
    settings, engine = setup
    old = settings.resolved_model_dir / "v1"
    old.mkdir(parents=True)
    (old / "member_00.safetensors").write_bytes(b"another model's weights")
    register(engine, "old", "v1")

    result = invoke(settings, *TRAIN)

    assert result.exit_code == 0, result.output
    assert (old / "member_00.safetensors").read_bytes() == b"another model's weights"
    with make_sessionmaker(engine)() as s:
        mv = s.scalars(select(ModelVersion).where(ModelVersion.name == "v1")).one()
    assert mv.weights_uri == "v1-job1" and mv.active
    ens = load_ensemble(settings.resolved_model_dir / mv.weights_uri)
    assert ens.classes == ["a", "b"]
    again = invoke(settings, *TRAIN, "--name", "v1")  # now a taken name
    assert again.exit_code == 1 and "'v1' is taken" in again.output


# --- item 4: resume after any number of interruptions -------------------------------------------


def test_the_same_command_resumes_a_failed_job(setup: tuple[Settings, Engine]) -> None:
    """Its worker died SCORER_MAX_ATTEMPTS times and it failed; running the command again
    picks up that job and its checkpoints instead of starting a new job from epoch 0."""
    settings, engine = setup
    job_id, _ = job_with_checkpoint(settings, engine)
    with make_sessionmaker(engine).begin() as s:
        job = s.get(TrainingJob, job_id)
        job.status, job.attempts, job.error = JobStatus.failed, 3, "gave up after its worker died"

    result = invoke(settings, *TRAIN)

    assert result.exit_code == 0, result.output
    assert f"resuming failed training job {job_id} from its checkpoints" in result.output
    (job,) = jobs(engine)
    assert (job.id, job.status, job.attempts) == (job_id, JobStatus.succeeded, 0)


def test_jobs_resume_picks_up_a_failed_job(setup: tuple[Settings, Engine]) -> None:
    settings, engine = setup
    job_id, _ = job_with_checkpoint(settings, engine)
    with make_sessionmaker(engine).begin() as s:
        s.get(TrainingJob, job_id).status = JobStatus.failed

    result = invoke(settings, "jobs", "resume", str(job_id))

    assert result.exit_code == 0, result.output
    assert "model version v1 (active)" in result.output
    (job,) = jobs(engine)
    assert job.status == JobStatus.succeeded
    assert invoke(settings, "jobs", "resume", "99").output.strip() == "Error: no training job 99"


def test_a_rerun_takes_over_only_a_dead_owner(setup: tuple[Settings, Engine]) -> None:
    """The same command again: a job whose process still runs is left alone; one whose process
    died is resumed at once, and that death is the one attempt counted."""
    settings, engine = setup
    job_id, _ = job_with_checkpoint(settings, engine)
    with make_sessionmaker(engine).begin() as s:
        job = claim(s, worker_name(), job_id=job_id)  # this test's process: alive
        assert job is not None and (job.attempts, job.claim) == (0, 1)

    live = invoke(settings, *TRAIN)

    assert live.exit_code == 1
    assert f"Error: training job {job_id} is being run by {worker_name()}" in live.output
    dead = subprocess.Popen(["true"])
    dead.wait()
    with make_sessionmaker(engine).begin() as s:
        s.get(TrainingJob, job_id).worker = f"{worker_name().rpartition(':')[0]}:{dead.pid}"

    result = invoke(settings, *TRAIN)

    assert result.exit_code == 0, result.output
    (job,) = jobs(engine)
    assert (job.status, job.attempts, job.claim) == (JobStatus.succeeded, 1, 2)


# --- item 5: fencing and heartbeats -------------------------------------------------------------


def test_a_taken_over_owner_stops_and_writes_nothing(setup: tuple[Settings, Engine]) -> None:
    settings, engine = setup
    tp = train_params_from_options("reference", {**RECIPE, "epochs": 60})
    sessions = make_sessionmaker(engine)
    with sessions.begin() as s:
        job_id = create_job(s, _params(tp, None, None, False, False)).id
        token = claim(s, "A", job_id=job_id).claim
    work_dir = settings.resolved_model_dir / "jobs" / str(job_id)
    errors: list[BaseException] = []

    def owner() -> None:
        try:
            run_job(engine, Runtime(settings), job_id, token, show_progress=False)
        except BaseException as exc:  # the test looks at it
            errors.append(exc)

    thread = threading.Thread(target=owner)
    thread.start()
    deadline = time.monotonic() + 60
    while not (work_dir / "member_00.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    with sessions.begin() as s:  # B takes it over while A trains
        assert claim(s, "B", job_id=job_id, stale_after_s=0).claim == token + 1
    at_takeover = checkpoint_epoch(work_dir, 0)
    thread.join(120)

    assert 1 <= at_takeover < 60, "the owner finished before the takeover"
    assert len(errors) == 1 and isinstance(errors[0], ClaimLost), errors
    assert checkpoint_epoch(work_dir, 0) == at_takeover  # no checkpoint after the takeover
    (job,) = jobs(engine)
    assert (job.status, job.worker, job.claim, job.attempts) == (JobStatus.running, "B", 2, 1)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 0


def test_the_heartbeat_runs_through_long_phases(setup: tuple[Settings, Engine]) -> None:
    """Nothing calls back for longer than the stale limit (a data load, the final validation):
    the lease's thread beats, and no one can claim the job; once claimed elsewhere, the lease
    knows it has lost it."""
    _, engine = setup
    sessions = make_sessionmaker(engine)
    with sessions.begin() as s:
        job_id = create_job(s, {}).id
        token = claim(s, "A").claim
    with Lease(engine, job_id, token, stale_after_s=1.0) as lease:
        time.sleep(1.6)  # a long phase without any callback
        with sessions.begin() as s:
            assert claim(s, "B", stale_after_s=1.0) is None
        assert not lease.should_stop()
        with sessions.begin() as s:
            assert claim(s, "B", job_id=job_id, stale_after_s=0) is not None
        time.sleep(0.6)
        assert lease.lost and lease.should_stop()


def test_the_training_worker_survives_any_error(setup: tuple[Settings, Engine]) -> None:
    """A real `scorer worker train`: a job that raises a plain bug (TypeError) is logged and
    retried up to SCORER_MAX_ATTEMPTS, then failed with the reason; the worker goes on to the
    next job, and SIGTERM ends it cleanly."""
    settings, engine = setup
    with make_sessionmaker(engine).begin() as s:
        bad = [create_job(s, {"train": RECIPE, "shas": 5, "name": f"bad{i}"}).id for i in (1, 2)]
    env = {**os.environ, "SCORER_DATA_DIR": str(settings.data_dir), "SCORER_DEVICE": "cpu",
           "SCORER_TORCH_THREADS": "1", "SCORER_MAX_ATTEMPTS": "2"}  # fmt: skip
    env.pop("SCORER_DATABASE_URL", None)
    env.pop("SCORER_BROKER_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "scorer", "worker", "train", "--poll", "0.2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if all(j.status == JobStatus.failed for j in jobs(engine)):
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the worker died:\n{proc.communicate()[0]}"
        final = jobs(engine)
        assert [(j.id, j.status, j.attempts) for j in final] == [
            (bad[0], JobStatus.failed, 2), (bad[1], JobStatus.failed, 2),
        ]  # fmt: skip
        assert all(j.error.startswith("TypeError") for j in final)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
        assert proc.returncode == 143, out
        assert "unexpected error" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
