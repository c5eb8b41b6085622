"""`scorer jobs` and `scorer jobs cancel` on a real SQLite database."""

from __future__ import annotations

import json
from collections.abc import Callable

from click.testing import CliRunner

from scorer.cli import main
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.migrate import upgrade
from scorer.db.models import JobStatus, TrainingJob
from scorer.settings import Settings
from worker.training_job import claim, create_job


def test_list_and_cancel_jobs(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    engine = make_engine(settings)
    upgrade(engine)
    with make_sessionmaker(engine).begin() as s:
        first = create_job(s, {"train": {"members": 2, "epochs": 3}}).id
        second = create_job(s, {"train": {"members": 20, "epochs": 20}}).id
    run = CliRunner().invoke
    listed = json.loads(run(main, ["jobs", "--json"], obj=settings).output)
    assert [(j["id"], j["status"], j["members"]) for j in listed] == [
        (second, "pending", 20), (first, "pending", 2),
    ]  # fmt: skip
    result = run(main, ["jobs", "cancel", str(first)], obj=settings)
    assert result.exit_code == 0 and f"training job {first} cancelled" in result.output
    again = run(main, ["jobs", "cancel", str(first)], obj=settings)
    assert again.exit_code == 1
    assert again.output.strip() == f"Error: no pending or running training job {first}"
    with make_sessionmaker(engine).begin() as s:  # a cancelled job is never claimed
        job = claim(s, "w1")
        assert job is not None and job.id == second
    with make_sessionmaker(engine)() as s:
        assert s.get(TrainingJob, first).status == JobStatus.cancelled
    engine.dispose()
