"""decode(): every odd or bad upload decodes exactly or fails alone with a one-line reason.

Inputs are generated here with soundfile (which also writes MP3 through libsndfile >= 1.1).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.decode import Audio, decode, downmix, to_stereo
from scorer.errors import InputError

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mir1k4"


def encode(samples: np.ndarray, sr: int, fmt: str, subtype: str | None = None) -> bytes:
    """(n, C) float -> file bytes in `fmt` (soundfile's frames-first layout)."""
    buf = io.BytesIO()
    sf.write(buf, samples, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def tone(seconds: float, sr: int, channels: int, f: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    x = 0.5 * np.sin(2 * np.pi * f * t)
    return np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)


@pytest.fixture(scope="module")
def stereo_mp3() -> bytes:
    """3 s of 44.1 kHz stereo MP3 (LAME header, so libsndfile returns exactly 132,300 samples)."""
    return encode(tone(3.0, 44_100, 2), 44_100, "MP3", "MPEG_LAYER_III")


@pytest.fixture(scope="module")
def one_hour_flac(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An hour of 8 kHz mono silence: FLAC compresses it to ~0.1 MB, written in 60 s blocks."""
    path = tmp_path_factory.mktemp("long") / "hour.flac"
    block = np.zeros(8_000 * 60, dtype=np.float32)
    with sf.SoundFile(path, "w", 8_000, 1, format="FLAC") as f:
        for _ in range(60):
            f.write(block)
    return path


# ---- inputs that decode ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sr", "channels", "fmt", "subtype"),
    [
        (8_000, 1, "WAV", "PCM_16"),
        (16_000, 1, "FLAC", None),
        (22_050, 2, "OGG", "VORBIS"),
        (44_100, 2, "WAV", "FLOAT"),
        (96_000, 6, "WAV", "PCM_24"),
        (192_000, 2, "FLAC", "PCM_24"),
    ],
)
def test_rates_and_channel_counts(sr: int, channels: int, fmt: str, subtype: str | None) -> None:
    data = encode(tone(0.5, sr, channels), sr, fmt, subtype)
    audio = decode(data, name=f"x.{fmt.lower()}")
    assert audio.sample_rate == sr
    assert audio.samples.shape == (channels, sr // 2)
    assert (audio.channels, audio.n_samples) == (channels, sr // 2)
    assert audio.duration_s == pytest.approx(0.5)
    assert audio.samples.dtype == np.float32
    assert audio.samples.flags["C_CONTIGUOUS"]
    # Channel c was written at amplitude 0.5 (c + 1) / channels: the layout is (channels, n).
    peaks = np.abs(audio.samples).max(axis=1)
    np.testing.assert_allclose(peaks, 0.5 * np.arange(1, channels + 1) / channels, atol=0.02)


def test_stereo_mp3_exact_length(stereo_mp3: bytes) -> None:
    audio = decode(stereo_mp3, name="song.mp3")
    assert audio.sample_rate == 44_100
    assert audio.samples.shape == (2, 132_300)
    np.testing.assert_allclose(np.abs(audio.samples).max(axis=1), [0.25, 0.5], atol=0.03)


def test_silence_decodes() -> None:
    audio = decode(encode(np.zeros((16_000, 1)), 16_000, "WAV"), name="quiet.wav")
    assert audio.samples.shape == (1, 16_000)
    assert not audio.samples.any()


def test_truncated_mp3_decodes_its_valid_part(stereo_mp3: bytes) -> None:
    """libsndfile/mpg123 stop at the cut: no error, fewer samples than the header promised."""
    audio = decode(stereo_mp3[: len(stereo_mp3) // 2], name="cut.mp3")
    assert audio.channels == 2
    assert 40_000 < audio.n_samples < 132_300


def test_real_mp3_exact_length() -> None:
    files = sorted((DATA / "audio").glob("*.mp3"))[:1] if DATA.is_dir() else []
    if not files:
        pytest.skip(f"real data set not present at {DATA}")
    audio = decode(files[0].read_bytes(), name=files[0].name)
    assert (audio.sample_rate, audio.samples.shape) == (16_000, (1, 48_000))


# ---- inputs that fail, each with its one-line reason -------------------------------------------


def _nan_wav() -> bytes:
    x = np.zeros((1_000, 1), dtype=np.float32)
    x[10] = np.nan
    return encode(x, 16_000, "WAV", "FLOAT")


BAD = {
    "empty": (b"", "empty file"),
    "random bytes": (
        np.random.default_rng(0).bytes(5_000),
        r"not a readable audio file \(mp3, wav, flac, ogg\): Format not recognised",
    ),
    "text": (b"title,artist\nsong,band\n", "not a readable audio file"),
    "zero samples": (encode(np.zeros((0, 1)), 16_000, "WAV"), "no audio samples"),
    "nan": (_nan_wav(), "NaN or infinite"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("name", ["song.mp3", "日本語の歌 é.mp3"])
def test_bad_input(case: str, name: str) -> None:
    data, reason = BAD[case]
    with pytest.raises(InputError, match=reason) as info:
        decode(data, name=name)
    message = str(info.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message
    assert "BytesIO" not in message


@pytest.mark.parametrize("keep", [100, 500])
def test_mp3_cut_before_its_first_frame(stereo_mp3: bytes, keep: int) -> None:
    with pytest.raises(InputError, match="no decodable audio frames") as info:
        decode(stereo_mp3[:keep], name="cut.mp3")
    assert "\n" not in str(info.value)


def test_one_hour_fails_fast_without_decoding(
    one_hour_flac: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = one_hour_flac.read_bytes()
    assert len(data) < 2_000_000

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("samples were decoded before the length check")

    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    with pytest.raises(InputError) as info:
        decode(data, name="hour.flac", max_duration_s=900)
    assert str(info.value) == "hour.flac: too long: 3600.0 s > 900 s limit (SCORER_MAX_DURATION_S)"


def test_limit_is_inclusive() -> None:
    data = encode(np.zeros((16_000, 1)), 16_000, "WAV")
    assert decode(data, max_duration_s=1.0).n_samples == 16_000
    with pytest.raises(InputError, match=r"too long: 1\.0 s > 0\.5 s"):
        decode(data, max_duration_s=0.5)


# ---- channel layout helpers --------------------------------------------------------------------


@pytest.mark.parametrize(("channels", "n"), [(1, 7), (2, 7), (6, 7), (2, 0)])
def test_downmix_is_the_channel_mean(channels: int, n: int) -> None:
    x = np.arange(channels * n, dtype=np.float32).reshape(channels, n)
    y = downmix(x)
    assert y.shape == (n,)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x.mean(axis=0))


def test_to_stereo() -> None:
    mono = np.array([[0.1, 0.2, 0.3]], dtype=np.float32)
    np.testing.assert_array_equal(to_stereo(mono), np.repeat(mono, 2, axis=0))
    stereo = np.array([[0.1, 0.2], [0.3, 0.4]], dtype=np.float32)
    assert to_stereo(stereo) is stereo
    six = np.tile(np.arange(6, dtype=np.float32)[:, None], (1, 4))  # channel c is constant c
    out = to_stereo(six)
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out, 2.5)  # mean of 0..5, duplicated


def test_helpers_reject_1d() -> None:
    with pytest.raises(ValueError, match="channels"):
        downmix(np.zeros(5, dtype=np.float32))
    with pytest.raises(ValueError, match="channels"):
        to_stereo(np.zeros(5, dtype=np.float32))


def test_audio_properties() -> None:
    audio = Audio(samples=np.zeros((2, 24_000), dtype=np.float32), sample_rate=16_000)
    assert (audio.channels, audio.n_samples, audio.duration_s) == (2, 24_000, 1.5)
