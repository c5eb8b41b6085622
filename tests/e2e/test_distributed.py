"""Distributed mode under faults, with real processes: a private redis-server (append-only), a
private PostgreSQL server, real `scorer worker cpu|gpu|train` processes, real Spleeter.

While 100+ snippets flow, the CPU worker and the GPU worker are killed with SIGKILL, Redis is
killed and restarted, PostgreSQL crashes (`pg_ctl stop -m immediate`) and starts again, the
workers are restarted, and `scorer reconcile` runs as an operator's cron would. At the end, SQL
must show every snippet scored with exactly one prediction per window and model version, and
each snippet's work done once (`snippets.preprocess_runs`, `score_runs`), plus once more only
for a delivery a fault interrupted mid-work; messages for work already done do none. A training
job killed with SIGKILL mid-epoch is claimed again by another worker, resumes from its
checkpoints and ends with all its epochs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from redis import Redis as RedisClient
from sqlalchemy import Engine, func, select, text

from pipeline.synth import generate_dataset
from scorer.cli import main
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.migrate import upgrade
from scorer.db.models import JobStatus, ModelVersion, Snippet, SnippetStatus, TrainingJob
from worker.celery_app import INFER_TASK, PREPROCESS_TASK, QUEUES, make_celery

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
log = logging.getLogger(__name__)

SCORER = [sys.executable, "-m", "scorer"]
N_SNIPPETS = 100  # each fault below comes with more than half of them still to flow
STALL_S = 10
FRAMES = 192
"""Spleeter's segment (SCORER_SPLEETER_FRAMES): the shortest that covers a 3 s snippet, 2.4-2.7x
less separation work than 512 (docs/BENCHMARKS.md). What these tests check (messages, claims,
rows) does not depend on it; the front end's own tests cover 512."""
OUTAGE_S = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A private redis-server with append-only persistence, which the test can kill and restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.dir), "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"private redis-server on port {self.port} did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


class Workers:
    """Real worker processes, each in its own process group so SIGKILL takes its children too."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts = 0

    def start(self, kind: str, *args: str) -> None:
        self.starts += 1
        with (self.logs / f"{kind}-{self.starts}.log").open("w") as log:  # the child keeps its fd
            self.procs[kind] = subprocess.Popen(
                [*SCORER, "worker", kind, *args], env=self.env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def kill(self, kind: str) -> None:
        proc = self.procs.pop(kind)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def signal_all(self, sig: signal.Signals) -> None:
        for proc in self.procs.values():
            os.killpg(proc.pid, sig)

    def check_alive(self) -> None:
        """A worker that exited by itself is a failure now, not a time-out later."""
        for kind, proc in self.procs.items():
            if proc.poll() is not None:
                pytest.fail(f"the {kind} worker exited with {proc.returncode}\n{self.tail()}")

    def stop_all(self) -> None:
        for kind in list(self.procs):
            self.kill(kind)

    def tail(self) -> str:
        out = []
        for path in sorted(self.logs.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            out.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(out)


@pytest.fixture
def cluster(private_pg_server, make_settings, tmp_path: Path) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    redis = Redis(tmp_path)
    redis.start()
    pg_server = private_pg_server  # the test may crash it
    url = pg_server.create("_e2e").render_as_string(hide_password=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    env.update(
        SCORER_DATABASE_URL=url,
        SCORER_BROKER_URL=redis.url,
        SCORER_DATA_DIR=str(tmp_path / "data"),
        SCORER_DEVICE="cpu",
        SCORER_TORCH_THREADS="1",
        SCORER_INFER_BATCH="16",
        SCORER_BATCH_FLUSH_MS="300",
        SCORER_VISIBILITY_TIMEOUT_S="20",  # a killed worker's messages come back quickly
        SCORER_MAX_ATTEMPTS="6",
        SCORER_JOB_STALE_AFTER_S="4",
        SCORER_SPLEETER_FRAMES=str(FRAMES),
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    workers = Workers(env, logs)
    distributed = make_settings(
        data_dir=tmp_path / "data", database_url=url, broker_url=redis.url, visibility_timeout_s=20,
        max_attempts=6, job_stale_after_s=4, spleeter_frames=FRAMES,
    )  # fmt: skip
    embedded = make_settings(data_dir=tmp_path / "data", database_url=url, spleeter_frames=FRAMES)
    engine = make_engine(distributed)
    upgrade(engine)
    yield {
        "redis": redis, "workers": workers, "env": env, "engine": engine, "tmp": tmp_path,
        "distributed": distributed, "embedded": embedded, "postgres": pg_server,
    }  # fmt: skip
    workers.stop_all()
    engine.dispose()
    redis.kill()
    pg_server.drop(pg_server.admin_url.set(database=engine.url.database))


def counts(engine) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with make_sessionmaker(engine)() as s:
        rows = s.execute(select(Snippet.status, func.count()).group_by(Snippet.status)).all()
    return {str(st.value): n for st, n in rows}


def wait_for(predicate, timeout: float, what: str, workers: Workers, poll: float = 0.5) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        workers.check_alive()
        time.sleep(poll)
    pytest.fail(f"timed out waiting for {what}\n{workers.tail()}")


STAGE_STATUS = {"preprocess": SnippetStatus.queued, "score": SnippetStatus.preprocessed}


class Interrupted:
    """The deliveries faults interrupted mid-work, per stage: (sha, `in_flight` token) pairs read
    from SQL while no worker moves (a token is set before a stage's work and cleared with its
    result, so these are exactly the works a fault cut). Such a work may be done once more; a
    SIGKILLed worker's must be (its result was never written). Messages a killed worker had
    prefetched but not started set no token: they must do their work once, like any other."""

    def __init__(self) -> None:
        self.possible: dict[str, set[tuple[str, str]]] = {st: set() for st in STAGE_STATUS}
        self.certain: dict[str, set[tuple[str, str]]] = {st: set() for st in STAGE_STATUS}

    def note(self, engine: Engine, stages: tuple[str, ...], certain: bool) -> None:
        settle(engine)
        for stage in stages:
            with make_sessionmaker(engine)() as s:
                rows = s.execute(
                    select(Snippet.sha256, Snippet.in_flight).where(
                        Snippet.status == STAGE_STATUS[stage], Snippet.in_flight.is_not(None)
                    )
                )
                held = {(sha, token) for sha, token in rows}
            self.possible[stage] |= held
            if certain:
                self.certain[stage] |= held

    def bounds(self, stage: str) -> tuple[Counter[str], Counter[str]]:
        """Per sha, (fewest, most) extra runs of `stage` these interruptions explain."""
        return (
            Counter(sha for sha, _ in self.certain[stage]),
            Counter(sha for sha, _ in self.possible[stage]),
        )


def settle(engine: Engine, timeout: float = 30) -> None:
    """Once the workers stop moving (killed, or SIGSTOPped): wait until what they had sent the
    database is done there (no other session running a statement, twice in a row), so the rows
    read next hold every commit they will ever make before the fault."""
    deadline, quiet = time.monotonic() + timeout, 0
    while quiet < 2 and time.monotonic() < deadline:
        with engine.connect() as conn:
            busy = conn.scalar(text(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND state = 'active' AND pid <> pg_backend_pid()"
            ))  # fmt: skip
        quiet = quiet + 1 if busy == 0 else 0
        time.sleep(0.1)
    assert quiet >= 2, "the database was still busy with the stopped workers' statements"


def runs_of(engine: Engine) -> dict[str, tuple[int, int]]:
    """Per sha, (preprocess_runs, score_runs): how many times each stage's work began."""
    with make_sessionmaker(engine)() as s:
        rows = s.execute(select(Snippet.sha256, Snippet.preprocess_runs, Snippet.score_runs))
        return {sha: (p, sc) for sha, p, sc in rows}


def extra_work(runs: dict[str, tuple[int, int]], interrupted: Interrupted) -> list[str]:
    """Every snippet whose work count is not 1 plus what the faults explain."""
    bad = []
    for k, stage in enumerate(STAGE_STATUS):
        fewest, most = interrupted.bounds(stage)
        for sha, counted in runs.items():
            if not 1 + fewest[sha] <= counted[k] <= 1 + most[sha]:
                bad.append(f"{sha[:12]} {stage} x{counted[k]} (faults explain {1 + most[sha]})")
    return bad


def waiting(client: RedisClient) -> set[str]:
    """Task ids of the messages in a queue or delivered but not acknowledged yet."""
    raw = [json.loads(m) for q in QUEUES for m in client.lrange(q, 0, -1)]
    raw += [json.loads(v)[0] for v in client.hvals("unacked")]
    return {m["headers"]["id"] for m in raw}


def taken(redis_url: str, ids: set[str]) -> Callable[[], bool]:
    """True once a worker has taken and acknowledged every message of `ids` (twice in a row:
    a message between its queue and the unacknowledged hash is in neither for a moment)."""
    client = RedisClient.from_url(redis_url)
    seen: list[bool] = []

    def check() -> bool:
        seen.append(not ids & waiting(client))
        return seen[-2:] == [True, True]

    return check


def make_library(root: Path) -> list[Path]:
    """N_SNIPPETS 3 s snippets plus a few longer files (several windows each)."""
    generate_dataset(root / "lib", n_per_class=N_SNIPPETS // 4, seed=7, test_fraction=0.0)
    files = sorted((root / "lib").rglob("*.wav"))[:N_SNIPPETS]
    longer = root / "lib" / "longer"
    longer.mkdir()
    for i in range(4):
        parts = [sf.read(f, dtype="float32")[0] for f in files[i * 3 : i * 3 + 3]]
        sf.write(longer / f"medley {i}.wav", np.concatenate(parts)[: 44_100 * (7 + i)], 44_100)
    return sorted((root / "lib").rglob("*.wav"))


def test_nothing_lost_nothing_doubled_under_faults(cluster: dict) -> None:
    tmp, engine, workers = cluster["tmp"], cluster["engine"], cluster["workers"]
    run = CliRunner().invoke
    # a tiny model, trained in-process on its own small labelled set
    generate_dataset(tmp / "train", n_per_class=3, seed=1, test_fraction=0.0)
    args = ["train", "--data", str(tmp / "train" / "train"), "--members", "2", "--epochs", "1",
            "--arch", "resnet10"]  # fmt: skip
    result = run(main, args, obj=cluster["embedded"])
    assert result.exit_code == 0, result.output
    files = make_library(tmp)
    assert len(files) >= N_SNIPPETS

    workers.start("cpu", "-c", "1", "--loglevel", "WARNING")
    workers.start("gpu", "--loglevel", "WARNING")
    result = run(main, ["enqueue", "--no-wait", str(tmp / "lib")], obj=cluster["distributed"])
    assert result.exit_code == 0, result.output
    interrupted = Interrupted()

    def preprocessed_at_least(n: int):  # type: ignore[no-untyped-def]
        return lambda: sum(v for k, v in counts(engine).items() if k != "queued") >= n

    # 1. SIGKILL the CPU worker while it separates; start another
    wait_for(preprocessed_at_least(20), 300, "20 snippets preprocessed", workers)
    log.info("fault 1 at %s", counts(engine))
    workers.kill("cpu")
    interrupted.note(engine, ("preprocess",), certain=True)
    workers.start("cpu", "-c", "1", "--loglevel", "WARNING")
    # 2. SIGKILL the GPU worker while it holds a batch of prefetched, unacknowledged messages
    wait_for(lambda: counts(engine).get("scored", 0) >= 10, 300, "10 scored", workers)
    log.info("fault 2 at %s", counts(engine))
    workers.kill("gpu")
    interrupted.note(engine, ("score",), certain=True)
    # 3. kill Redis and bring it back on the same port and append-only file (a running task
    # finishes; its acknowledgement is lost and the redelivery finds the work done)
    wait_for(preprocessed_at_least(60), 300, "60 snippets preprocessed", workers)
    log.info("fault 3 at %s", counts(engine))
    cluster["redis"].kill()
    time.sleep(2)
    cluster["redis"].start()
    workers.start("gpu", "--loglevel", "WARNING")
    # 4. crash PostgreSQL while both workers work, and start it again on the same data: the
    # workers stay up (their statements fail, the tasks retry, the pool reconnects)
    scored = counts(engine).get("scored", 0)
    wait_for(lambda: counts(engine).get("scored", 0) > scored, 300, "scoring again", workers)
    log.info("fault 4 at %s", counts(engine))
    workers.signal_all(signal.SIGSTOP)  # what is in flight at the crash, read exactly
    interrupted.note(engine, ("preprocess", "score"), certain=False)
    cluster["postgres"].crash()
    workers.signal_all(signal.SIGCONT)
    time.sleep(OUTAGE_S)
    workers.check_alive()
    cluster["postgres"].start()
    log.info("PostgreSQL crashed and restarted at %s", counts(engine))

    # what an operator's cron does: re-publish whatever waited too long, here once nothing has
    # moved for STALL_S (a worker's restart under load is ~5-8 s; and a reconcile that comes
    # early only re-publishes, which must not double anything either)
    total = len(files)
    deadline = time.monotonic() + 1200
    last_progress, last_counts = time.monotonic(), {}
    while time.monotonic() < deadline:
        c = counts(engine)
        done = c.get("scored", 0) + c.get("failed", 0)
        if done >= total + 12:  # + the 12 labelled training snippets, scored via reconcile
            break
        if c != last_counts:
            last_progress, last_counts = time.monotonic(), c
        elif time.monotonic() - last_progress > STALL_S:
            r = run(main, ["reconcile", "--older-than", "25"], obj=cluster["distributed"])
            assert r.exit_code == 0, r.output
            log.info("reconcile at %s: %s", counts(engine), r.output.strip())
            last_progress = time.monotonic()
        time.sleep(1)
    else:
        pytest.fail(f"not everything was scored: {counts(engine)}\n{workers.tail()}")

    with make_sessionmaker(engine)() as s:
        model_id = s.scalar(select(ModelVersion.id).where(ModelVersion.active.is_(True)))
        statuses = dict(
            s.execute(select(Snippet.status, func.count()).group_by(Snippet.status)).all()
        )
        assert statuses == {SnippetStatus.scored: total + 12}, statuses
        missing = s.execute(text(
            "SELECT s.sha256, s.n_windows, count(p.id) FROM snippets s "
            "LEFT JOIN predictions p ON p.sha256 = s.sha256 AND p.model_version_id = :m "
            "GROUP BY s.sha256, s.n_windows HAVING count(p.id) != s.n_windows + 1"
        ), {"m": model_id}).all()  # fmt: skip
        assert missing == [], missing
        windows = s.scalar(text("SELECT sum(n_windows) FROM snippets"))
        assert windows > total  # the medleys have several windows each
        n_pred = s.scalar(text("SELECT count(*) FROM predictions WHERE model_version_id = :m"),
                          {"m": model_id})  # fmt: skip
        assert n_pred == windows + total + 12
    # Work done, not rows (the unique constraints would hide a second computation): once per
    # snippet and stage, plus once for each delivery a fault interrupted mid-work.
    runs = runs_of(engine)
    cut = {st: (len(interrupted.certain[st]), len(interrupted.possible[st])) for st in STAGE_STATUS}
    log.info("deliveries interrupted mid-work per stage (certainly, possibly redone): %s", cut)
    assert extra_work(runs, interrupted) == [], f"interrupted: {cut}\n{workers.tail()}"

    # 5. every message again for work already done (what a reconcile racing the workers, a
    # redelivery or a restored unacknowledged message brings): no work at all
    app = make_celery(cluster["distributed"])
    with make_sessionmaker(engine)() as s:
        names = {sha: path for sha, path in s.execute(select(Snippet.sha256, Snippet.source_path))}
    sent = set()
    for sha, path in names.items():
        if Path(path).is_file():
            audio = Path(path).read_bytes()
            sent.add(app.send_task(PREPROCESS_TASK, args=(sha, audio, Path(path).name)).id)
        sent.add(app.send_task(INFER_TASK, args=(sha,)).id)
    wait_for(taken(cluster["redis"].url, sent), 300, "the messages sent again", workers)
    log.info("every message sent again was taken")
    again = runs_of(engine)
    assert {sha[:12]: (runs[sha], n) for sha, n in again.items() if n != runs[sha]} == {}
    assert counts(engine) == {"scored": total + 12}


def test_killed_training_job_resumes_with_all_its_epochs(cluster: dict) -> None:
    tmp, engine, workers = cluster["tmp"], cluster["engine"], cluster["workers"]
    generate_dataset(tmp / "train", n_per_class=4, seed=2, test_fraction=0.0)
    members, epochs = 2, 3  # 6 member-epochs: killed after the first, resumed for the rest
    workers.start("cpu", "-c", "1", "--loglevel", "WARNING")  # features of the training data
    result = CliRunner().invoke(
        main,
        ["train", "--data", str(tmp / "train" / "train"), "--members", str(members),
         "--epochs", str(epochs), "--arch", "resnet10", "--batch-size", "4", "--no-wait"],
        obj=cluster["distributed"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert _job(engine).status == JobStatus.pending  # queued in SQL for a training worker

    workers.start("train")
    wait_for(lambda: _job(engine).progress > 0, 300, "a first member-epoch", workers)
    workers.kill("train")  # SIGKILL in the middle of the next member-epoch
    job = _job(engine)
    assert job.status == JobStatus.running and job.progress < 1
    killed_at = job.progress

    workers.start("train")  # claims the job once its heartbeat is stale, resumes it
    wait_for(lambda: _job(engine).status in (JobStatus.succeeded, JobStatus.failed), 600,
             "the resumed job to end", workers)  # fmt: skip
    job = _job(engine)
    assert job.status == JobStatus.succeeded, job.error
    # two claims (the fencing token), one death of an owner (the only attempt counted)
    assert (job.claim, job.attempts) == (2, 1) and job.progress == 1.0 and killed_at < 1
    with make_sessionmaker(engine)() as s:
        mv = s.scalars(select(ModelVersion).where(ModelVersion.training_job_id == job.id)).one()
    history = mv.metrics["history"]
    assert sorted((h["member"], h["epoch"]) for h in history) == [
        (m, e) for m in range(members) for e in range(1, epochs + 1)
    ]
    assert mv.active and mv.members == members


def _job(engine) -> TrainingJob:  # type: ignore[no-untyped-def]
    with make_sessionmaker(engine)() as s:
        job = s.scalars(select(TrainingJob).order_by(TrainingJob.id.desc())).first()
        assert job is not None
        return job


def test_gpu_worker_can_preprocess_too(cluster: dict) -> None:
    """`scorer worker gpu --preprocess` alone (no CPU worker) takes snippets from bytes to
    predictions: separation on its own device (the CPU here, the GPU in production)."""
    tmp, engine, workers = cluster["tmp"], cluster["engine"], cluster["workers"]
    run = CliRunner().invoke
    generate_dataset(tmp / "train", n_per_class=2, seed=3, test_fraction=0.0)
    args = ["train", "--data", str(tmp / "train" / "train"), "--members", "1", "--epochs", "1",
            "--arch", "resnet10"]  # fmt: skip
    result = run(main, args, obj=cluster["embedded"])
    assert result.exit_code == 0, result.output
    generate_dataset(tmp / "lib", n_per_class=2, seed=4, test_fraction=0.0)
    workers.start("gpu", "--preprocess", "--loglevel", "WARNING")
    result = run(main, ["enqueue", str(tmp / "lib")], obj=cluster["distributed"])
    assert result.exit_code == 0, result.output
    c = counts(engine)
    assert c == {"scored": 8, "preprocessed": 8}, c  # the training snippets are not enqueued
