"""Scoring snippets the first time against rescoring them with a new model version.

Features are cached by (sha, front-end version), so a new model runs only the ensemble: the
issue's target is >= 5x. Both runs are worker.embedded.run on the same files and database.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench import embedded_run, fixtures
from bench.timing import speedup

MEMBERS, ARCH = 2, "resnet10"  # a tiny model: the case measures what caching saves


def run(quick: bool) -> dict[str, Any]:
    """First run (decode, Spleeter, features, ensemble, DB) vs a rescoring run (ensemble, DB)."""
    n = 8 if quick else 40
    with tempfile.TemporaryDirectory(prefix="bench-rescore-") as tmp:
        settings = fixtures.embedded_settings(Path(tmp) / "data")
        engine = fixtures.sqlite_engine(settings)
        try:
            paths = fixtures.write_wavs(Path(tmp) / "audio", n, seed=1)
            fixtures.register_model(engine, settings, "v1", MEMBERS, ARCH, seed=1)
            first = embedded_run.run(settings, engine, paths)
            fixtures.register_model(engine, settings, "v2", MEMBERS, ARCH, seed=2)
            again = embedded_run.run(settings, engine, paths)
        finally:
            engine.dispose()
    for name, r in (("first", first), ("rescore", again)):
        if r["summary"].scored != n or r["summary"].failures:
            raise RuntimeError(f"{name} run scored {r['summary'].scored}/{n}: {r['summary']}")
    if again["separation_calls"]:
        raise RuntimeError("the rescoring run separated audio: features were not reused")
    ratio = speedup(first["wall_s"], again["wall_s"])
    rows = [
        {
            "run": name,
            "wall_s": round(r["wall_s"], 3),
            "cpu_s": round(r["cpu_s"], 3),
            "snippets_per_s": round(n / r["wall_s"], 2),
            "preprocessed": r["summary"].preprocessed,
            "scored": r["summary"].scored,
            **r["breakdown"],
        }
        for name, r in (("first (new audio)", first), ("rescore (new model)", again))
    ]
    return {
        "config": {"snippets": n, "members": MEMBERS, "arch": ARCH, "target": ">= 5x"},
        "rows": rows,
        "ratios": {
            "rescore_vs_first": ratio,
            "rescore_vs_first_cpu": speedup(first["cpu_s"], again["cpu_s"]),
        },
        "notes": [f"target >= 5x: {'met' if ratio >= 5 else 'NOT met'} ({ratio}x)"],
    }
