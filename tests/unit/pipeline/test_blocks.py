"""Block-by-block featurising (pipeline/blocks.py) gives the whole-file path's windows, on real
songs, with memory that does not grow with the file."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline import blocks
from pipeline.decode import decode
from pipeline.frontend import FrontendConfig
from pipeline.preprocess import featurize, spleeter_input
from pipeline.spleeter import load_separator
from pipeline.windows import split_windows
from scorer.errors import InputError

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mir1k4"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def separator():
    return load_separator("cpu", 512)


def real_song(clips: int, offset: int = 0) -> np.ndarray:
    """(n, 2) float32 at 16 kHz: MIR-1K snippets end to end, other snippets on each channel."""
    files = sorted((DATA / "audio").glob("*.mp3"))[offset : offset + 2 * clips]
    audio = [sf.read(f, dtype="float32")[0] for f in files]
    return np.stack([np.concatenate(audio[:clips]), np.concatenate(audio[clips:])], axis=1)


def flac(samples: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sr, format="FLAC")
    return buf.getvalue()


def test_blocks_equal_the_whole_file_on_a_real_song(tmp_path: Path, separator) -> None:
    # 63 s: two Spleeter chunks of 2048 frames and a partial third, read in odd-sized blocks
    path = tmp_path / "song.flac"
    path.write_bytes(flac(real_song(21), 16_000))
    cfg = FrontendConfig()
    whole = featurize([decode(path.read_bytes())], cfg, separator)[0]
    got = blocks.featurize_blocks(path, cfg, separator, read_frames=30_011)
    assert got.windows.shape == whole.shape == (21, 299, 40)
    assert np.array_equal(got.windows, whole)  # the same computation, so the same bits
    assert (got.sample_rate, got.channels, got.frames) == (16_000, 2, 21 * 48_000)


def test_streaming_separator_equals_separate_at_any_feed_size(separator) -> None:
    audio = decode(flac(real_song(4, offset=100), 16_000))
    x = spleeter_input(audio)  # (2, 529200) at 44.1 kHz
    whole = separator.separate(torch.from_numpy(x)[None], chunk_segments=1)[0].numpy()
    stream = blocks.StreamingSeparator(separator, chunk_segments=1)  # chunks of 512 frames
    rng = np.random.default_rng(0)
    parts, at = [], 0
    while at < x.shape[1]:
        n = int(rng.integers(1, 200_000))
        parts.append(stream.feed(x[:, at : at + n]))
        at += n
    parts.append(stream.finish())
    assert np.array_equal(np.concatenate(parts, axis=1), whole)


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_without_separation_any_rate_and_channels(channels: int) -> None:
    rng = np.random.default_rng(channels)
    samples = (0.1 * rng.standard_normal((22_050 * 10 + 777, channels))).astype(np.float32)
    data = flac(samples, 22_050)
    cfg = FrontendConfig(separation=False)
    whole = featurize([decode(data)], cfg, None)[0]
    got = blocks.featurize_blocks(data, cfg, None, read_frames=9_999)
    assert np.array_equal(got.windows, whole)


@pytest.mark.parametrize("n", [1, 47_999, 48_000, 64_000, 63_999, 150_000])
def test_window_stream_keeps_the_min_tail_rule(n: int) -> None:
    mono = np.arange(n, dtype=np.float32)
    stream = blocks.Windows(48_000, 16_000)
    out = [stream.feed(mono[i : i + 7_001]) for i in range(0, n, 7_001)] + [stream.finish()]
    assert np.array_equal(np.concatenate(out), split_windows(mono, 48_000, 16_000))


def test_empty_signal_cannot_be_windowed() -> None:
    with pytest.raises(ValueError, match="empty signal"):
        blocks.Windows(48_000, 16_000).finish()


def test_non_finite_samples_in_a_late_block_fail_the_file(tmp_path: Path) -> None:
    samples = np.zeros(200_000, dtype=np.float32)
    samples[150_000] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, samples, 16_000, subtype="FLOAT")
    with pytest.raises(InputError, match="NaN or infinite"):
        blocks.featurize_blocks(path, FrontendConfig(separation=False), None, read_frames=50_000)


def test_the_duration_limit_is_a_policy_that_zero_turns_off() -> None:
    data = flac(np.zeros((16_000 * 20, 1), np.float32), 16_000)
    with pytest.raises(InputError, match=r"too long: 20.0 s > 10 s limit \(SCORER_MAX_DURATION_S"):
        blocks.header(data, max_duration_s=10)
    assert blocks.header(data, max_duration_s=0).duration_s == 20.0


def test_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """A 20-minute 44.1 kHz stereo WAV (212 MB; 423 MB decoded as float32) featurises within a
    few blocks' memory plus its float16 windows (400 x 24 KB)."""
    path = tmp_path / "long.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", 44_100, 2, subtype="PCM_16") as f:
        for _ in range(20):
            f.write((0.1 * rng.standard_normal((44_100 * 60, 2))).astype(np.float32))
    cfg = FrontendConfig(separation=False)
    tracemalloc.start()
    try:
        got = blocks.featurize_blocks(path, cfg, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.windows.shape == (400, 299, 40)
    assert peak < 80 * 2**20, f"peak {peak / 2**20:.0f} MB"
