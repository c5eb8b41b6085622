"""Long files through the CLI and the worker stage (issue 10, item 8): a 20-minute FLAC is
featurised (it failed `too long` at the old 900 s default), read from its path in blocks, and a
path whose bytes changed fails with the reason."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from sqlalchemy import select

from pipeline.decode import decode
from pipeline.frontend import FrontendConfig
from pipeline.preprocess import featurize
from scorer.cli import main
from scorer.db import queries
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.models import Snippet, SnippetStatus
from scorer.errors import InputError
from scorer.settings import Settings
from worker.inputs import MB, FileRef, read_input
from worker.runtime import Runtime
from worker.sources import load
from worker.stages import Item, preprocess

SR = 16_000


def settings_for(data_dir: Path, **values: object) -> Settings:
    return Settings(data_dir=data_dir, device="cpu", torch_threads=1, **values)  # type: ignore[arg-type]


def twenty_minutes(path: Path) -> Path:
    """A 20-minute 16 kHz mono FLAC: a tone whose pitch steps every 3 s, and a little noise."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", SR, 1, format="FLAC", subtype="PCM_16") as f:
        for minute in range(20):
            t = np.arange(60 * SR) / SR
            f0 = 150 + 10 * ((minute * 20 + np.floor(t / 3)) % 30)
            x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.01 * rng.standard_normal(t.size)
            f.write(x.astype(np.float32))
    return path


def test_a_twenty_minute_flac_is_featurised_from_its_path(tmp_path: Path) -> None:
    """Separation off keeps this quick; the blocks' Spleeter path is equal to the whole-file one
    (tests/unit/pipeline/test_blocks.py). With a 1 MB message cap the file is never held whole."""
    (tmp_path / "inbox").mkdir()
    song = twenty_minutes(tmp_path / "inbox" / "concert.flac")
    settings = settings_for(tmp_path / "data", separation=False, max_message_mb=1)
    result = CliRunner().invoke(main, ["enqueue", str(song.parent)], obj=settings)
    assert result.exit_code == 0, result.output
    assert "1 preprocessed" in result.output and "0 failed" in result.output, result.output
    engine = make_engine(settings)
    sha = hashlib.sha256(song.read_bytes()).hexdigest()
    with make_sessionmaker(engine)() as s:
        row = s.scalars(select(Snippet).where(Snippet.sha256 == sha)).one()
        assert (row.status, row.n_windows, row.duration_s) == (SnippetStatus.preprocessed, 400,
                                                               1200.0)  # fmt: skip
        stored = queries.load_features(s, [sha], FrontendConfig(separation=False).version)[sha]
    whole = featurize([decode(song)], FrontendConfig(separation=False), None)[0]
    assert np.array_equal(stored, whole)
    engine.dispose()


def test_a_path_that_no_longer_holds_the_sha_fails_with_the_reason(tmp_path: Path) -> None:
    song = tmp_path / "a.wav"
    sf.write(song, np.zeros(SR * 70, np.float32), SR)
    sha, ref, error = read_input(song, 100 * MB, keep_bytes=0)
    assert error is None and isinstance(ref, FileRef) and ref.size == song.stat().st_size
    rt = Runtime(settings_for(tmp_path, separation=False))
    assert load(rt, sha, ref).windows.shape == (24, 299, 40)  # type: ignore[union-attr]
    sf.write(song, np.ones(SR * 70, np.float32) * 0.1, SR)  # same size, other bytes
    with pytest.raises(InputError, match="no longer holds the content that was enqueued"):
        load(rt, sha, ref)
    (result,) = preprocess(rt, [Item(sha, ref, song.name)])
    assert result.error is not None and "no longer holds" in result.error


def test_a_file_over_its_task_time_limit_fails_saying_so(tmp_path: Path) -> None:
    """Celery's pool raises SoftTimeLimitExceeded in the task when the soft limit passes (by a
    signal); here a real timer does the same in the middle of featurising a long file. The row
    says what happened and what to raise, not "cannot decode"."""
    import signal

    from celery.exceptions import SoftTimeLimitExceeded

    song = tmp_path / "long.wav"
    sf.write(song, np.random.default_rng(0).normal(0, 0.1, SR * 600).astype(np.float32), SR)
    sha, ref, error = read_input(song, 100 * MB, keep_bytes=0)
    assert error is None
    rt = Runtime(settings_for(tmp_path, separation=False))

    def soft_limit(signum: int, frame: object) -> None:
        raise SoftTimeLimitExceeded()

    old = signal.signal(signal.SIGALRM, soft_limit)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        (result,) = preprocess(rt, [Item(sha, ref, song.name)])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert result.error is not None and "time limit" in result.error, result.error
    assert "SCORER_TASK_TIME_PER_AUDIO_S" in result.error
