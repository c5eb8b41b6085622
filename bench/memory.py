"""Does a CPU worker grow over a long run? RSS while one process preprocesses many snippets.

The body of a CPU worker's task, as a Celery prefork child runs it (one torch thread, Spleeter
loaded once): decode -> separate -> features -> features row in SQLite, snippet after snippet.
RSS is sampled after the first snippet (everything loaded) and then every `every` snippets; the
case reports the growth from the first sample to the last and a least-squares slope per 1,000
snippets. The baseline is the process right after loading (the ratio is last / first RSS).
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from bench import fixtures
from bench.timing import rss_mb
from scorer.db import queries
from scorer.db.engine import make_sessionmaker
from worker.runtime import Runtime
from worker.stages import Item, preprocess, save_preprocessed


def _wav(i: int) -> bytes:
    clip = fixtures.clips(1, seed=10_000 + i)[0]
    buf = io.BytesIO()
    sf.write(buf, np.round(clip.T * 32767).astype(np.int16), 44_100, format="WAV",
             subtype="PCM_16")  # fmt: skip
    return buf.getvalue()


def run(quick: bool) -> dict[str, Any]:
    n, every = (120, 20) if quick else (2000, 100)
    torch.set_num_threads(1)
    samples: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        settings = fixtures.embedded_settings(Path(tmp) / "data")
        engine = fixtures.sqlite_engine(settings)
        sessions = make_sessionmaker(engine)
        rt = Runtime(settings)
        try:
            for i in range(n):
                data = _wav(i)
                sha = hashlib.sha256(data).hexdigest()
                with sessions.begin() as s:
                    queries.add_snippets(s, [{"sha256": sha, "source_path": f"{i}.wav",
                                              "size_bytes": len(data)}])  # fmt: skip
                results = preprocess(rt, [Item(sha, data, f"{i}.wav")])
                with sessions.begin() as s:
                    save_preprocessed(s, rt.frontend.version, results)
                if results[0].error:
                    raise RuntimeError(results[0].error)
                if i == 0 or (i + 1) % every == 0:
                    samples.append((i + 1, rss_mb("VmRSS") or 0.0))
        finally:
            engine.dispose()
    xs = np.array([x for x, _ in samples[1:]], dtype=float)
    ys = np.array([y for _, y in samples[1:]], dtype=float)
    slope = float(np.polyfit(xs, ys, 1)[0] * 1000) if len(xs) > 1 else 0.0
    first, last = samples[0][1], samples[-1][1]
    return {
        "config": {"snippets": n, "threads": 1, "sample_every": every},
        "rows": [{"after_snippets": x, "rss_mb": y} for x, y in samples],
        "ratios": {"last_vs_first_rss": round(last / first, 3) if first else float("nan")},
        "notes": [
            f"RSS {first} MB after the first snippet, {last} MB after {n}; "
            f"slope after warm-up {slope:+.1f} MB per 1,000 snippets"
        ],
    }
