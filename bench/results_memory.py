"""Does `scorer results` stay flat in memory? Peak RSS of `scorer results --json` over many rows.

A SQLite database gets N scored snippets with their per-file verdicts by two INSERT ... SELECT
statements (no Python rows), then `scorer results --json` runs in a fresh process with stdout
to /dev/null, and that process reports its own peak RSS (ru_maxrss). The baseline is the same
command over 10,000 rows; the ratio is peak(N) / peak(10,000): 1.0 is flat, the old
build-the-list-three-times code grew with N.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, bindparam, text

from scorer.db.engine import make_engine
from scorer.db.migrate import upgrade
from scorer.db.models import utcnow
from scorer.settings import Settings

CHILD = """
import resource, sys
from scorer.cli import main
try:
    main(["results", "--json"], standalone_mode=False)
finally:
    sys.stdout.flush()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def _fill(db: Path, n: int) -> None:
    engine = make_engine(Settings(data_dir=db.parent, database_url=f"sqlite:///{db}"))
    upgrade(engine)
    series = f"WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {n - 1}) "
    now = bindparam("now", utcnow(), type_=DateTime(timezone=True))
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO model_versions (name, classes, frontend_version, frontend, members,"
                " params, metrics, weights_uri, active, created_at) VALUES ('bench',"
                " '[\"female\", \"male\"]', 'fe', '{}', 1, '{}', '{}', 'bench', 1, :now)"
            ).bindparams(now)
        )
        conn.execute(
            text(
                f"{series}INSERT INTO snippets (sha256, source_path, size_bytes, status, attempts,"
                " created_at, updated_at) SELECT printf('%064x', i),"
                " '/music/artist ' || (i % 997) || '/song ' || i || '.mp3', 1, 'scored', 0, :now,"
                " :now FROM n"
            ).bindparams(now)
        )
        conn.execute(
            text(
                f"{series}INSERT INTO predictions (sha256, window_index, start_s, model_version_id,"
                " probabilities, label, confidence, disagreement, entropy, created_at)"
                " SELECT printf('%064x', i), -1, 0.0, 1, '[0.7, 0.3]', 'female', 0.7, 0.01,"
                " 0.61, :now FROM n"
            ).bindparams(now)
        )
        conn.execute(  # where each content was enqueued (`scorer results` lists per path)
            text(
                "INSERT INTO source_paths (path, sha256, seen_at)"
                " SELECT source_path, sha256, :now FROM snippets"
            ).bindparams(now)
        )
    engine.dispose()


def _peak_mb(db: Path) -> tuple[float, float, int]:
    """(peak RSS in MB, seconds, rows printed) of `scorer results --json` over `db`."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("SCORER_DATABASE_URL", "SCORER_BROKER_URL")
    }
    env["SCORER_DATA_DIR"] = str(db.parent)
    out = db.parent / "results.json"
    start = time.perf_counter()
    with out.open("w") as f:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD], env=env, stdout=f, stderr=subprocess.PIPE, text=True,
            check=True,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    with out.open() as f:
        printed = sum(1 for line in f if line.lstrip().startswith("{"))
    out.unlink()
    return int(proc.stderr.strip().splitlines()[-1]) / 1024, seconds, printed


def run(quick: bool) -> dict[str, Any]:
    sizes = (10_000, 200_000) if quick else (10_000, 1_000_000)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            db = Path(tmp) / str(n) / "scorer.db"
            db.parent.mkdir()
            _fill(db, n)
            peak, seconds, printed = _peak_mb(db)
            assert printed == n, f"scorer results printed {printed} of {n} rows"
            rows.append({"rows": n, "peak_rss_mb": round(peak, 1), "seconds": round(seconds, 1)})
            db.unlink()
    return {
        "config": {"database": "sqlite", "format": "json", "sizes": sizes},
        "rows": rows,
        "ratios": {
            f"peak_rss_{sizes[1]}_vs_{sizes[0]}": round(
                rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3
            )
        },
        "notes": ["1.0 = flat: rows are streamed (yield_per) and written as they come"],
    }
