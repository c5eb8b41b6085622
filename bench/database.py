"""Bulk upsert of predictions in one transaction against one committed INSERT per row.

The naive path is what a per-result writer does; scorer's stages write a batch's rows with
queries.upsert_predictions (executemany, one commit). Measured on SQLite (embedded) and
PostgreSQL (production), on fresh rows each time.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from bench import fixtures
from bench.timing import once, speedup, traced_peak_mb
from scorer.db import queries
from scorer.db.models import FILE_WINDOW, Prediction, utcnow

KEY = ["sha256", "window_index", "model_version_id"]


def _rows(shas: list[str], model_id: int) -> list[dict[str, Any]]:
    """One per-file verdict row per sha, shaped like worker/stages.py score() writes them."""
    return [
        {
            "sha256": sha,
            "window_index": FILE_WINDOW,
            "start_s": 0.0,
            "model_version_id": model_id,
            "probabilities": [0.1, 0.2, 0.3, 0.4],
            "label": "multi",
            "confidence": 0.4,
            "disagreement": 0.25,
            "entropy": 1.28,
        }
        for sha in shas
    ]


def _bulk(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with Session(engine) as s, s.begin():
        queries.upsert_predictions(s, rows)


def _row_by_row(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING and COMMIT for each row, on one connection."""
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(Prediction.__table__).on_conflict_do_nothing(index_elements=KEY)
    now = utcnow()
    with engine.connect() as conn:
        for r in rows:
            conn.execute(stmt, {"created_at": now, **r})
            conn.commit()


def _count(engine: Engine, model_id: int) -> int:
    with Session(engine) as s:
        return (
            s.scalar(
                select(func.count())
                .select_from(Prediction)
                .where(Prediction.model_version_id == model_id)
            )
            or 0
        )


def _bench(engine: Engine, settings_dir: Path, n: int) -> dict[str, Any]:
    """Fresh model versions per path so every insert is a new row, never a conflict."""
    settings = fixtures.embedded_settings(settings_dir)
    shas = [hashlib.sha256(f"bench-{i}".encode()).hexdigest() for i in range(n)]
    fixtures.add_snippets(engine, shas)
    ids = {
        name: fixtures.register_model(engine, settings, name, 1, "resnet10", seed=0)
        for name in ("warm", "naive", "bulk", "traced")
    }
    _bulk(engine, _rows(shas[:100], ids["warm"]))
    _row_by_row(engine, _rows(shas[:100], ids["warm"]))  # conflicts only: warms the statements
    _, naive_s, naive_cpu = once(lambda: _row_by_row(engine, _rows(shas, ids["naive"])))
    _, bulk_s, bulk_cpu = once(lambda: _bulk(engine, _rows(shas, ids["bulk"])))
    _, traced_mb = traced_peak_mb(lambda: _bulk(engine, _rows(shas, ids["traced"])))
    for name in ("naive", "bulk"):
        if _count(engine, ids[name]) != n:
            raise RuntimeError(f"{name} path wrote {_count(engine, ids[name])} rows, not {n}")
    return {
        "rows": n,
        "row_by_row_s": round(naive_s, 4),
        "row_by_row_cpu_s": round(naive_cpu, 4),
        "bulk_s": round(bulk_s, 4),
        "bulk_cpu_s": round(bulk_cpu, 4),
        "row_by_row_rows_per_s": round(n / naive_s),
        "bulk_rows_per_s": round(n / bulk_s),
        "speedup": speedup(naive_s, bulk_s),
        "bulk_python_peak_mb": traced_mb,
    }


def run(quick: bool) -> dict[str, Any]:
    """Both paths on a migrated SQLite file and a scratch PostgreSQL database."""
    n = 1_000 if quick else 10_000
    rows: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-db-") as tmp:
        settings = fixtures.embedded_settings(Path(tmp))
        engine = fixtures.sqlite_engine(settings)
        try:
            rows.append({"database": "sqlite", **_bench(engine, Path(tmp), n)})
        finally:
            engine.dispose()
        try:
            with fixtures.scratch_postgres() as pg:
                rows.append({"database": "postgresql", **_bench(pg, Path(tmp) / "pg", n)})
        except OperationalError as exc:
            notes.append(f"PostgreSQL skipped: not reachable ({str(exc).splitlines()[0]})")
    for r in rows:
        ratios[f"bulk_vs_row_by_row_{r['database']}"] = r["speedup"]
    notes.append("one timed run per path: thousands of commits average themselves")
    notes.append("bulk_python_peak_mb: tracemalloc, Python objects, a separate untimed bulk run")
    return {"config": {"rows": n}, "rows": rows, "ratios": ratios, "notes": notes}
