"""worker.embedded.run with a breakdown of where its time goes, for rescoring and end_to_end.

The breakdown wraps the functions the stages call (see bench.timing.Stopwatch), so the code under
test is scorer's own, unchanged; what no wrapper covers (hashing, decoding, SQL, bookkeeping) is
reported as `db_decode_other`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

import pipeline.preprocess
import pipeline.spleeter
import training.ensemble
import worker.stages
from bench.timing import Stopwatch, once
from scorer.settings import Settings
from worker import embedded


def run(settings: Settings, engine: Engine, paths: Sequence[Path]) -> dict[str, Any]:
    """One embedded run over `paths`; wall and CPU seconds, the summary and the breakdown.

    The cached separator is dropped first, so a run pays its one load like a fresh process does.
    """
    pipeline.spleeter.load_separator.cache_clear()
    sw = Stopwatch()
    with contextlib.ExitStack() as stack:
        for owner, name, bucket in (
            (pipeline.spleeter, "load_separator", "model_loading"),
            (training.ensemble, "load_ensemble", "model_loading"),
            (pipeline.preprocess, "featurize", "_featurize"),
            (pipeline.preprocess, "separate_vocals", "separation"),
            (worker.stages, "predict_windows", "inference"),
        ):
            stack.enter_context(sw.wrap(owner, name, bucket))
        summary, wall, cpu = once(lambda: embedded.run(settings, engine, list(paths)))
    s = sw.seconds
    separation = s.get("separation", 0.0)
    features = s.get("_featurize", 0.0) - separation
    accounted = separation + features + s.get("inference", 0.0) + s.get("model_loading", 0.0)
    breakdown = {
        "model_loading": s.get("model_loading", 0.0),
        "separation": separation,
        "features": features,
        "inference": s.get("inference", 0.0),
        "db_decode_other": wall - accounted,
    }
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "summary": summary,
        "separation_calls": sw.calls.get("separation", 0),
        "breakdown": {k: round(v, 3) for k, v in breakdown.items()},
    }
