"""Embedded preprocessing on a pool of single-thread processes gives the same features as the
in-process path, and a bad file still fails alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
from sqlalchemy import select

from scorer.db import queries
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.migrate import upgrade
from scorer.db.models import Snippet, SnippetStatus
from scorer.settings import Settings
from worker import embedded
from worker.runtime import frontend_from_settings


def _files(folder: Path) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        t = np.arange(3 * 22_050) / 22_050
        x = 0.2 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.02 * rng.standard_normal(t.size)
        sf.write(folder / f"clip {i}.wav", x.astype(np.float32), 22_050)
    (folder / "broken.mp3").write_bytes(b"not audio at all")
    return sorted(folder.iterdir())


def _features(settings: Settings, files: list[Path]) -> tuple[dict, dict]:
    engine = make_engine(settings)
    upgrade(engine)
    summary = embedded.run(settings, engine, files, score_with_model=False)
    shas = list(summary.shas)
    with make_sessionmaker(engine)() as s:
        feats = queries.load_features(s, shas, frontend_from_settings(settings).version)
        status = dict(s.execute(select(Snippet.source_path, Snippet.status)).all())
    engine.dispose()
    return {summary.shas[k]: v for k, v in feats.items()}, status


def test_pool_equals_in_process(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    files = _files(tmp_path / "audio")
    pooled, pooled_status = _features(
        make_settings(data_dir=tmp_path / "pool", preprocess_processes=2), files
    )
    single, single_status = _features(
        make_settings(data_dir=tmp_path / "one", preprocess_processes=1), files
    )
    assert pooled_status == single_status
    assert pooled_status[str(tmp_path / "audio" / "broken.mp3")] == SnippetStatus.failed
    assert sorted(pooled) == sorted(single) and len(pooled) == 5
    for path, arr in pooled.items():
        np.testing.assert_allclose(arr.astype(np.float32), single[path].astype(np.float32),
                                   atol=0.05)  # fmt: skip
