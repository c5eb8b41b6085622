"""A preprocess task's time limit fits its audio: the rule, and the length read from the header."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from scorer.db.models import utcnow
from scorer.settings import Settings
from worker.celery_app import TASK_OVERHEAD_S, time_limits
from worker.inputs import FileRef
from worker.publish import audio_seconds, preprocess_limits, still_running


def wav(seconds: float, sr: int = 16_000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * sr), np.float32), sr, format="WAV")
    return buf.getvalue()


def test_the_limit_grows_with_the_audio_never_below_the_default() -> None:
    assert time_limits(900, 1.0) == (900, 870)
    assert time_limits(900, 1.0, 0.0) == (900, 870)
    assert time_limits(900, 1.0, 180.0) == (900, 870)  # 60 + 180 < 900
    assert time_limits(900, 1.0, 7200.0) == (TASK_OVERHEAD_S + 7200, TASK_OVERHEAD_S + 7170)
    assert time_limits(900, 0.25, 7200.5) == (1861, 1831)  # rounded up
    assert time_limits(900, 0.0, 7200.0) == (900, 870)  # 0 s per audio second: the default
    assert time_limits(2, 1.0) == (2, 1)  # the soft limit stays inside the task


def test_the_length_comes_from_the_header_of_bytes_or_a_shared_path(tmp_path: Path) -> None:
    assert audio_seconds(wav(2.5)) == 2.5
    path = tmp_path / "a.wav"
    path.write_bytes(wav(7.0, 44_100))
    assert audio_seconds(FileRef(str(path), path.stat().st_size)) == 7.0


@pytest.mark.parametrize(
    "content",
    [b"", b"RIFF....WAVEfmt not audio" * 50, wav(3.0)[:30]],
    ids=["empty", "garbage", "truncated-header"],
)
def test_a_header_that_cannot_be_read_gives_no_length(content: bytes) -> None:
    assert audio_seconds(content) is None


def test_a_missing_shared_path_gives_no_length(tmp_path: Path) -> None:
    assert audio_seconds(FileRef(str(tmp_path / "gone.wav"), 10)) is None


def test_limits_from_settings_cap_the_length_at_the_policy_limit(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(task_time_limit_s=100, task_time_per_audio_s=2.0, max_duration_s=60)
    assert preprocess_limits(settings, wav(10.0)) == {"time_limit": 100, "soft_time_limit": 70}
    # 90 s of audio is over the 60 s policy (the worker refuses it at once): counted as 60 s
    want = TASK_OVERHEAD_S + 120
    assert preprocess_limits(settings, wav(90.0)) == {
        "time_limit": want,
        "soft_time_limit": want - 30,
    }
    assert preprocess_limits(settings, b"junk") == {"time_limit": 100, "soft_time_limit": 70}


def test_still_running_reads_regular_files_only(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    """A path that became a FIFO would block the reconciler in open(): it gives no length."""
    settings = make_settings(task_time_limit_s=100, task_time_per_audio_s=1.0)
    long = tmp_path / "long.wav"
    long.write_bytes(wav(200.0))
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    began = utcnow() - timedelta(seconds=150)  # past the default 100 s, within 60 + 200 s
    assert still_running(settings, [str(fifo), str(long)], began)
    assert not still_running(settings, [str(fifo)], began)
    assert not still_running(settings, [str(tmp_path / "gone.wav")], began)
    assert still_running(settings, [str(long)], began.replace(tzinfo=None))  # SQLite's naive UTC
