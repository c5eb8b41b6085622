"""Bytes -> samples, with a one-line reason for every input a user can get wrong.

Decoding goes through libsndfile (python-soundfile): since 1.1 it reads MP3 and honours the LAME
header, so an MP3 decodes to its exact sample count with no ffmpeg and no encoder padding. Every
failure an upload can cause becomes `InputError`, so the item fails alone and its row says why.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from scorer.errors import InputError

SUPPORTED = "mp3, wav, flac, ogg"

Source = bytes | str | Path
"""A file's content held in memory, or the path to read it from (long files are not read whole)."""

# libsndfile error strings that mislead when the "file" is a byte buffer: code 7 is what an MP3
# stream too short or too damaged for mpg123 to find a frame reports.
_REASONS = {7: "no decodable audio frames (truncated or corrupt stream)"}


@dataclass(frozen=True)
class Audio:
    """Decoded audio at its native rate.

    `samples` is (channels, n) float32; integer formats land in [-1, 1), float formats (float
    WAV/FLAC) are passed through unclipped and may exceed 1.
    """

    samples: np.ndarray
    sample_rate: int

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate


def _prefix(name: str | None) -> str:
    return f"{name}: " if name else ""


def _unreadable(name: str | None, err: sf.SoundFileError) -> InputError:
    code = getattr(err, "code", None)
    reason = _REASONS.get(code) or getattr(err, "error_string", "") or str(err)
    reason = " ".join(reason.split()).rstrip(".")
    return InputError(f"{_prefix(name)}not a readable audio file ({SUPPORTED}): {reason}")


def open_source(source: Source) -> sf.SoundFile:
    """A libsndfile handle on bytes held in memory or on a path (seekable either way)."""
    return sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else str(source))


def is_empty(source: Source) -> bool:
    if isinstance(source, bytes):
        return not source
    return Path(source).stat().st_size == 0


def decode(data: Source, *, name: str | None = None, max_duration_s: float | None = None) -> Audio:
    """Decode a whole file (bytes or a path) to (channels, n) float32 at its own sample rate.

    The length limit is checked on the header before any sample is decoded, so an hour-long
    upload is refused in milliseconds. A truncated MP3 decodes to its valid frames (libsndfile
    stops at the cut); one cut before its first frame is unreadable. `name`, when given, starts
    each message (leave it out where the caller names the item itself).

    Raises:
        InputError: "<name>: <reason>" on one line, for empty, unreadable, too long, sample-less
            or non-finite input.
    """
    if is_empty(data):
        raise InputError(f"{_prefix(name)}empty file")
    # The item boundary: libsndfile reports every bad stream as a SoundFileError
    # (LibsndfileError, a RuntimeError); anything else is a bug and keeps its traceback.
    try:
        with open_source(data) as f:
            sample_rate = int(f.samplerate)
            if max_duration_s and f.frames / sample_rate > max_duration_s:
                raise InputError(
                    f"{_prefix(name)}too long: {f.frames / sample_rate:.1f} s > "
                    f"{max_duration_s:g} s limit (SCORER_MAX_DURATION_S)"
                )
            frames = f.read(dtype="float32", always_2d=True)  # (n, channels)
    except sf.SoundFileError as err:
        raise _unreadable(name, err) from err

    if frames.shape[0] == 0:
        raise InputError(f"{_prefix(name)}no audio samples")
    if not np.isfinite(frames).all():
        raise InputError(f"{_prefix(name)}contains NaN or infinite samples")
    return Audio(samples=np.ascontiguousarray(frames.T), sample_rate=sample_rate)


def downmix(samples: np.ndarray) -> np.ndarray:
    """(C, n) -> (n,): the channel mean, the mono the log-mel front end expects."""
    if samples.ndim != 2:
        raise ValueError(f"expected (channels, n) samples, got shape {samples.shape}")
    return samples.mean(axis=0, dtype=np.float32)


def to_stereo(samples: np.ndarray) -> np.ndarray:
    """(C, n) -> (2, n) for Spleeter, which only takes stereo.

    Mono is duplicated, as Spleeter's own audio loader does; stereo is kept. More than two
    channels have no agreed stereo fold-down (5.1 layouts differ), so they are averaged to mono
    and duplicated: the vocals usually sit in the centre/front channels, and every channel
    counts the same, which keeps the choice independent of channel order.
    """
    if samples.ndim != 2:
        raise ValueError(f"expected (channels, n) samples, got shape {samples.shape}")
    if samples.shape[0] == 2:
        return samples
    mono = samples[0] if samples.shape[0] == 1 else downmix(samples)
    return np.stack([mono, mono])
