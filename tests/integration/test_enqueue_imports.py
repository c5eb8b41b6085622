"""CLI start-up of the distributed `scorer enqueue` (SCORER_BROKER_URL set): it only hashes files,
writes rows and publishes bytes, so its whole run, against a real Redis, loads no torch or
torchvision (2-4 s of imports: docs/BENCHMARKS.md, CLI start-up)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import soundfile as sf

from worker.celery_app import PREPROCESS_QUEUE, make_celery, queue_depths

ROOT = Path(__file__).resolve().parents[2]
REDIS_DB = 14
HEAVY = ("torch", "torchvision")

RUN = (
    "import json, sys\n"
    "from scorer.cli import main\n"
    "main(sys.argv[1:], standalone_mode=False)\n"
    f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)\n"
)


@pytest.fixture
def broker_url() -> Iterator[str]:
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    client.flushdb()
    yield f"redis://127.0.0.1:6379/{REDIS_DB}"
    client.flushdb()
    client.close()


def test_distributed_enqueue_publishes_without_torch(
    broker_url: str, make_settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    song = tmp_path / "songs" / "one.wav"
    song.parent.mkdir()
    t = np.arange(3 * 44_100) / 44_100
    sf.write(song, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 44_100)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    env.update(SCORER_BROKER_URL=broker_url, SCORER_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.run(
        [sys.executable, "-c", RUN, "enqueue", "--no-wait", str(song.parent)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "1 published" in proc.stderr, proc.stderr  # it did the whole publish path
    app = make_celery(make_settings(broker_url=broker_url))
    assert queue_depths(app)[PREPROCESS_QUEUE] == 1
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
