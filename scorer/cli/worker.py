"""`scorer worker cpu|gpu|train`: the processes of distributed mode."""

from __future__ import annotations

import os
import time

import click

from scorer.cli.common import ready_engine, settings_of, stderr


def _celery(ctx: click.Context):  # type: ignore[no-untyped-def]
    from worker.celery_app import make_celery

    settings = settings_of(ctx)
    ready_engine(settings)  # fail early, with a clear line, if the database is away or old
    app = make_celery(settings)
    import worker.tasks  # noqa: F401  (registers the tasks with this app)

    return settings, app


def _serve_metrics(settings, app) -> None:  # type: ignore[no-untyped-def]
    """SCORER_METRICS_PORT: this worker's Prometheus endpoint, queue depths read on scrape."""
    from worker import metrics
    from worker.celery_app import queue_depths

    metrics.serve(settings, lambda: queue_depths(app))


def _multiprocess_metrics() -> None:
    """Prefork children count in files the parent sums (prometheus-client's multiprocess mode).
    Must run before prometheus_client is imported: it picks its value store at import."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    import atexit
    import shutil
    import tempfile

    path, parent = tempfile.mkdtemp(prefix="scorer-metrics-"), os.getpid()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    # Only the parent removes it: a forked child inherits atexit handlers.
    atexit.register(lambda: os.getpid() == parent and shutil.rmtree(path, ignore_errors=True))


@click.group("worker")
def worker_group() -> None:
    """Start a worker process (needs SCORER_BROKER_URL and SCORER_DATABASE_URL)."""


@worker_group.command("cpu")
@click.option(
    "-c", "--concurrency", type=click.IntRange(min=1), help="Processes (default: one per core)."
)
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_context
def worker_cpu(ctx: click.Context, concurrency: int | None, loglevel: str) -> None:
    """Preprocessing: decode -> Spleeter -> log-mel, one prefork child per core.

    Each child loads Spleeter once, after the fork, with one torch thread (two threads per child
    on a busy machine made OpenMP spin and run 6x slower; docs/SEPARATION.md).
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if settings_of(ctx).metrics_port:
        _multiprocess_metrics()
    settings, app = _celery(ctx)
    # Separation runs on the CPU here: a CUDA context per prefork child would multiply GPU memory
    # by the number of children (GPU work belongs to the solo-pool `scorer worker gpu`).
    update: dict[str, object] = {"device": "cpu"}
    if not settings.torch_threads:
        update["torch_threads"] = 1
    app.conf.scorer_settings = settings.model_copy(update=update)
    n = concurrency or os.cpu_count() or 1
    _serve_metrics(settings, app)
    app.worker_main(
        ["worker", "-Q", "preprocess", "-P", "prefork", "-c", str(n), "-n", "cpu@%h",
         "--prefetch-multiplier", "1", "-O", "fair", f"--loglevel={loglevel}"]
    )  # fmt: skip


@worker_group.command("gpu")
@click.option(
    "--preprocess",
    "also_preprocess",
    is_flag=True,
    help="Also take preprocessing tasks, separating on this worker's device (the GPU): for "
    "hosts whose CPUs are too few for the GPU's pace.",
)
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_context
def worker_gpu(ctx: click.Context, also_preprocess: bool, loglevel: str) -> None:
    """Inference: batches of up to SCORER_INFER_BATCH snippets (or what arrived within
    SCORER_BATCH_FLUSH_MS), one ensemble forward each. Solo pool: CUDA never in a forked child.
    Uses the GPU when there is one, else the CPU. With --preprocess it also decodes, separates
    and featurises, one snippet per task, in between batches."""
    settings, app = _celery(ctx)
    task = app.tasks["scorer.infer"]
    task.flush_every = settings.infer_batch
    task.flush_interval = settings.batch_flush_ms / 1000
    from worker.runtime import configure_threads

    configure_threads(settings)
    _serve_metrics(settings, app)
    # Prefetch must exceed the batch size, or a batch could never fill. Prefetched messages are
    # unacknowledged (acks_late): if this worker dies they are delivered again.
    queues = "infer,preprocess" if also_preprocess else "infer"
    app.worker_main(
        ["worker", "-Q", queues, "-P", "solo", "-n", "gpu@%h",
         "--prefetch-multiplier", str(2 * settings.infer_batch), f"--loglevel={loglevel}"]
    )  # fmt: skip


@worker_group.command("train")
@click.option("--poll", default=5.0, show_default=True, help="Seconds between looks for jobs.")
@click.option("--once", is_flag=True, help="Run at most one job, then exit.")
@click.pass_context
def worker_train(ctx: click.Context, poll: float, once: bool) -> None:
    """Run training jobs: claim a pending job (or one whose worker died: its heartbeat is older
    than SCORER_JOB_STALE_AFTER_S), resume it from its checkpoints, register the model.

    Survives any error of a job (logged; the job is retried, then failed) or of the database
    (it tries again after --poll). SIGTERM or Ctrl-C gives the running job back, uncounted.
    """
    import logging
    import signal
    import sys

    from scorer.db.engine import make_sessionmaker
    from scorer.errors import ScorerError
    from worker import metrics
    from worker.runtime import Runtime, configure_threads
    from worker.training_job import claim, run_job, worker_name

    log = logging.getLogger("scorer.worker.train")
    settings = settings_of(ctx)
    engine = ready_engine(settings)
    configure_threads(settings)
    # `docker stop` sends SIGTERM: unwind (run_job puts the job back to pending) instead of dying.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sessions = make_sessionmaker(engine)
    metrics.serve(settings)
    me = worker_name()
    stderr(f"training worker {me} waiting for jobs")
    while True:
        try:
            with sessions.begin() as s:
                job = claim(s, me, stale_after_s=settings.job_stale_after_s)
                job_id, token = (job.id, job.claim) if job else (None, 0)
        except Exception as exc:  # the database is away: look again later
            log.warning("cannot claim a training job: %s", exc)
            job_id = None
        if job_id is None:
            if once:
                return
            time.sleep(poll)
            continue
        stderr(f"running training job {job_id}")
        try:
            mv = run_job(engine, Runtime(settings), job_id, token, show_progress=False)
            stderr(f"training job {job_id} done: model version {mv.name}")
            metrics.TRAINING_JOBS.labels("done").inc()
        except ScorerError as exc:
            stderr(f"training job {job_id}: {exc}")
            metrics.TRAINING_JOBS.labels("stopped").inc()
        except Exception as exc:
            metrics.TRAINING_JOBS.labels("error").inc()
            log.exception("training job %d: unexpected error", job_id)
            stderr(f"training job {job_id}: {type(exc).__name__}: {exc} (logged; job released)")
        if once:
            return


COMMANDS = [worker_group]
