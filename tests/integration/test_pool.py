"""Embedded preprocessing on a pool of single-thread processes gives the same features as the
in-process path, a bad file still fails alone, and a pool process killed mid-item costs no
other item."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
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
from worker.pool import PreprocessPool
from worker.runtime import frontend_from_settings
from worker.stages import Item


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


def test_a_pool_process_killed_mid_item_costs_no_other_item(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """SIGKILL one of the pool's processes while the pool works through a batch: the batch is
    finished item by item on a new pool, every file gets its features, and nothing raises."""
    settings = make_settings(preprocess_processes=2, separation=False)
    clips = _files(tmp_path / "audio")
    files = []
    rng = np.random.default_rng(1)
    for i in range(2):  # long files (~1 s of work each): the kill lands mid-item
        x = 0.1 * rng.standard_normal(180 * 22_050).astype(np.float32)
        sf.write(tmp_path / "audio" / f"long {i}.wav", x, 22_050)
        files.append(tmp_path / "audio" / f"long {i}.wav")
    items = [Item(hashlib.sha256(f.read_bytes()).hexdigest(), f.read_bytes(), f.name)
             for f in [*files, *clips[1:3]]]  # fmt: skip
    pool = PreprocessPool(settings, frontend_from_settings(settings), 2)
    try:
        assert all(r.error is None for r in pool.map(items[-2:]))  # both processes warm
        first = pool._executor
        killed: list[int] = []

        def kill_one() -> None:
            time.sleep(0.3)  # the batch below is under way: both processes hold an item
            pid = next(iter(first._processes))
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        killer = threading.Thread(target=kill_one)
        killer.start()
        items = items[:-2]
        results = pool.map(items)
        killer.join()
        assert killed and pool._executor is not first  # the kill broke the pool; rebuilt
    finally:
        pool.close()
    assert [r.sha256 for r in results] == [i.sha256 for i in items]  # every item answered
    errors = {i.name: r.error for i, r in zip(items, results, strict=True) if r.error}
    assert not errors, errors  # the killed item was retried and went through
    assert all(r.windows is not None and len(r.windows) > 0 for r in results if not r.error)
