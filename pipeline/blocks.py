"""A whole file -> its feature windows in bounded blocks, so memory does not grow with its length.

Why: decoding a 2-hour file whole is 2.5 GB of float32 at 44.1 kHz stereo before Spleeter starts.
Here the file is read from its path (or bytes) in blocks, and every stage after the decoder is a
stream that keeps only what the next block needs:

  decode (libsndfile, seekable)  -> resample to 44.1 kHz (soxr stream)
  -> Spleeter, one chunk of `chunk_segments` x T frames at a time (the chunks of
     `Separator.separate`, so each chunk is the same computation), carrying the 3072 samples that
     a chunk's last frames overlap-add onto the next
  -> down-mix, resample to 16 kHz (soxr stream) -> 3 s windows from sample 0 -> log-mel per block.

Every stage is the one the whole-file path (pipeline/preprocess.py) applies, cut where it gives
the same numbers: soxr's stream equals its one-shot output exactly, Spleeter's segments are
independent and its chunks start on segment boundaries, windows and log-mel are per window. So
the windows are those of the whole-file path (tests/unit/pipeline/test_blocks.py, real audio).
Peak memory is one block's decoded audio, one Spleeter chunk's spectrogram and activations,
and the float16 features (24 KB per 3 s window: 29 MB for an hour).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import soxr
import torch

from pipeline.decode import Source, _prefix, _unreadable, downmix, is_empty, open_source
from pipeline.frontend import FrontendConfig
from pipeline.mel import log_mel
from pipeline.preprocess import window_voice
from pipeline.spleeter import (
    DEFAULT_CHUNK_SEGMENTS,
    FRAME_LENGTH,
    HOP_LENGTH,
    MASK_EPS,
    N_BINS,
    OFFICIAL_FRAMES,
    SPLEETER_SAMPLE_RATE,
    Separator,
    _frames_spectrum,
    _inverse_frames,
    n_frames,
    segment_frames,
)
from scorer.errors import InputError

if TYPE_CHECKING:
    from pipeline.voice import VoiceConfig

READ_FRAMES = 1 << 20
"""Samples per channel decoded at a time (24 s at 44.1 kHz; 34 MB for 8 channels float32)."""


@dataclass(frozen=True)
class Header:
    """What the container says before any sample is decoded."""

    sample_rate: int
    channels: int
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def header(
    source: Source, *, name: str | None = None, max_duration_s: float | None = None
) -> Header:
    """The header of `source`; too long for the policy limit, empty or unreadable -> InputError."""
    if is_empty(source):
        raise InputError(f"{_prefix(name)}empty file")
    try:
        with open_source(source) as f:
            head = Header(int(f.samplerate), int(f.channels), int(f.frames))
    except sf.SoundFileError as err:
        raise _unreadable(name, err) from err
    if max_duration_s and head.duration_s > max_duration_s:
        raise InputError(
            f"{_prefix(name)}too long: {head.duration_s:.1f} s > {max_duration_s:g} s limit "
            "(SCORER_MAX_DURATION_S)"
        )
    return head


def read_blocks(
    source: Source, *, name: str | None = None, frames: int = READ_FRAMES
) -> Iterator[np.ndarray]:
    """(channels, n) float32 blocks of the decoded file, in order, each finite (else InputError)."""
    try:
        with open_source(source) as f:
            while True:
                block = f.read(frames, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    return
                if not np.isfinite(block).all():
                    raise InputError(f"{_prefix(name)}contains NaN or infinite samples")
                yield np.ascontiguousarray(block.T)
    except sf.SoundFileError as err:
        raise _unreadable(name, err) from err


class Resampler:
    """`pipeline.resample.resample` as a stream over (channels, n) blocks; equal rates pass."""

    def __init__(self, sr_in: int, sr_out: int, channels: int) -> None:
        self._stream = (
            None
            if sr_in == sr_out
            else soxr.ResampleStream(sr_in, sr_out, channels, dtype="float32", quality="HQ")
        )

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        block = np.ascontiguousarray(block, dtype=np.float32)
        if self._stream is None:
            return block
        y = self._stream.resample_chunk(np.ascontiguousarray(block.T), last=last)
        return np.ascontiguousarray(y.reshape(-1, block.shape[0]).T, dtype=np.float32)


class StreamingSeparator:
    """`Separator.separate` of a (2, N) signal fed in blocks: the vocals come out in blocks.

    The signal is framed as Spleeter frames it (4096 zeros first, frames of 4096 every 1024,
    zeros after the end); frames are taken `chunk_segments` x T at a time from frame 0, the
    chunks `Separator._run` takes, so the U-Nets see the same segments. A chunk's inverse
    overlaps the next chunk's first 3072 samples; those are carried and added to first, as
    `_run` adds them, so the output is the same to the last bit. Everything before the next
    chunk's first frame is final and is returned.

    A separator by need (T = 0) runs 512-frame segments while the input streams (a chunk is
    taken only once more than 512 frames have come, so the whole input is long and `_run`
    would choose 512 too) and, at the end, the T that `segment_frames` gives for the total: a
    short file gets the T it gets on the whole-file path.
    """

    def __init__(self, separator: Separator, chunk_segments: int = DEFAULT_CHUNK_SEGMENTS) -> None:
        self.separator = separator
        self._long_t = separator.frames or OFFICIAL_FRAMES
        self.chunk_frames = chunk_segments * self._long_t
        self._device = separator.window.device
        self._padded = np.zeros((2, FRAME_LENGTH), dtype=np.float32)  # from frame `_frame` on
        self._frame = 0  # first frame not yet separated
        self._carry = np.zeros((2, FRAME_LENGTH - HOP_LENGTH), dtype=np.float32)
        self._length = 0  # input samples seen
        self._emitted = 0  # output samples (before the cut of the leading zeros) returned

    def feed(self, stereo: np.ndarray) -> np.ndarray:
        """Add (2, n) samples; returns the (2, m) vocals that are now final (m may be 0)."""
        self._length += stereo.shape[1]
        self._padded = np.concatenate([self._padded, stereo], axis=1)
        span = (self.chunk_frames - 1) * HOP_LENGTH + FRAME_LENGTH
        out = []
        while self._padded.shape[1] >= span:
            out.append(self._chunk(self.chunk_frames, self._long_t))
        return self._cut(out)

    def finish(self) -> np.ndarray:
        """The rest of the vocals, once the whole signal has been fed."""
        total = n_frames(self._length)
        t = segment_frames(self.separator.frames, total)
        out = []
        while self._frame < total:
            count = min(self.chunk_frames, total - self._frame)
            span = (count - 1) * HOP_LENGTH + FRAME_LENGTH
            if self._padded.shape[1] < span:
                pad = span - self._padded.shape[1]
                self._padded = np.pad(self._padded, ((0, 0), (0, pad)))
            out.append(self._chunk(count, t))
        out.append(self._carry)  # the last frames' tail: nothing is added to it any more
        return self._cut(out, final=True)

    @torch.inference_mode()
    def _chunk(self, count: int, t: int) -> np.ndarray:
        """Separate frames [_frame, _frame + count) in segments of `t`; returns the samples now
        final."""
        span = (count - 1) * HOP_LENGTH + FRAME_LENGTH
        x = torch.from_numpy(np.ascontiguousarray(self._padded[None, :, :span])).to(self._device)
        window = self.separator.window
        spectrum = _frames_spectrum(x, window)[..., :N_BINS]
        vocals, accompaniment = self.separator._estimates(spectrum.abs(), t)
        v2, a2 = vocals.square(), accompaniment.square()
        mask = (v2 + MASK_EPS / 2) / (v2 + a2 + MASK_EPS)
        chunk = torch.zeros(2, span, dtype=torch.float32, device=self._device)
        carried = FRAME_LENGTH - HOP_LENGTH
        chunk[:, :carried] += torch.from_numpy(self._carry).to(self._device)
        chunk += _inverse_frames(spectrum * mask, window)[0]
        done = count * HOP_LENGTH
        samples = chunk.cpu().numpy()
        self._carry = np.ascontiguousarray(samples[:, done:])
        self._padded = self._padded[:, done:]
        self._frame += count
        return samples[:, :done]

    def _cut(self, parts: list[np.ndarray], final: bool = False) -> np.ndarray:
        """Drop the 4096 leading zeros' output and anything past the input's end."""
        joined = np.concatenate(parts, axis=1) if parts else np.zeros((2, 0), np.float32)
        start, stop = self._emitted, self._emitted + joined.shape[1]
        self._emitted = stop
        lo = max(FRAME_LENGTH - start, 0)
        hi = joined.shape[1] if not final else max(FRAME_LENGTH + self._length - start, lo)
        return np.ascontiguousarray(joined[:, lo:hi])


class Windows:
    """`pipeline.windows.split_windows` as a stream: full 3 s windows as soon as they are
    complete, and at the end the padded tail under the same rule (kept with at least
    `min_tail` samples, or when the signal is shorter than one window)."""

    def __init__(self, window_samples: int, min_tail: int) -> None:
        self.window_samples = window_samples
        self.min_tail = min_tail
        self._buffer = np.zeros(0, dtype=np.float32)
        self.count = 0  # windows returned
        self.samples = 0  # samples seen

    def feed(self, mono: np.ndarray) -> np.ndarray:
        self.samples += mono.shape[0]
        self._buffer = np.concatenate([self._buffer, mono])
        full = self._buffer.shape[0] // self.window_samples
        out = self._buffer[: full * self.window_samples].reshape(full, self.window_samples)
        self._buffer = self._buffer[full * self.window_samples :]
        self.count += full
        return out

    def finish(self) -> np.ndarray:
        if self.samples <= 0:
            raise ValueError(f"cannot window an empty signal ({self.samples} samples)")
        tail = self._buffer.shape[0]
        if self.count and tail < self.min_tail:
            return np.zeros((0, self.window_samples), dtype=np.float32)
        out = np.zeros((1, self.window_samples), dtype=np.float32)
        out[0, :tail] = self._buffer
        self.count += 1
        return out


def _mels(windows: np.ndarray, cfg: FrontendConfig, device: str) -> np.ndarray:
    if windows.shape[0] == 0:
        return np.zeros((0, cfg.n_frames, cfg.n_mels), dtype=np.float16)
    x = torch.from_numpy(np.ascontiguousarray(windows)).to(device)
    return log_mel(x, cfg).to("cpu").numpy().astype(np.float16)


@dataclass
class Featurised:
    """A file's windows and what was decoded."""

    windows: np.ndarray  # (W, n_frames, n_mels) float16
    sample_rate: int
    channels: int
    frames: int  # decoded samples per channel
    voice: np.ndarray | None = None  # (W, D) float16 voice features, when asked for

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def featurize_blocks(
    source: Source,
    cfg: FrontendConfig,
    separator: Separator | None,
    *,
    device: str = "cpu",
    min_tail_s: float = 1.0,
    name: str | None = None,
    read_frames: int = READ_FRAMES,
    voice: VoiceConfig | None = None,
) -> Featurised:
    """`pipeline.preprocess.featurize` of one file, block by block (module docstring).

    Raises:
        InputError: unreadable, sample-less or non-finite audio (one line, like `decode`).
        ValueError: a signal too short to give one sample at cfg.sample_rate.
    """
    if cfg.separation and separator is None:
        raise ValueError("the front end separates vocals but no separator was given")
    head = header(source, name=name)
    sr, channels = head.sample_rate, head.channels
    mono_in = not cfg.separation or channels > 2
    rate = SPLEETER_SAMPLE_RATE if cfg.separation else cfg.sample_rate
    to_model = Resampler(sr, rate, 1 if mono_in else channels)
    to_16k = Resampler(SPLEETER_SAMPLE_RATE, cfg.sample_rate, 1) if cfg.separation else None
    stream = StreamingSeparator(separator) if separator is not None and cfg.separation else None
    windows = Windows(cfg.window_samples, round(min_tail_s * cfg.sample_rate))
    parts: list[np.ndarray] = []
    voice_parts: list[np.ndarray] = []
    decoded = 0

    def featurise(w: np.ndarray) -> None:
        parts.append(_mels(w, cfg, device))
        if voice is not None:
            voice_parts.append(window_voice(w, voice, device))

    def to_windows(mono: np.ndarray) -> None:
        featurise(windows.feed(mono))

    def through(block: np.ndarray, last: bool) -> None:
        x = to_model(downmix(block)[None, :] if mono_in and block.shape[0] > 1 else block, last)
        if stream is None:  # no separation: x is the mono mixture at cfg.sample_rate
            to_windows(x[0])
            return
        if x.shape[0] == 1:
            x = np.repeat(x, 2, axis=0)
        vocals = stream.feed(x)
        if last:
            vocals = np.concatenate([vocals, stream.finish()], axis=1)
        assert to_16k is not None
        to_windows(to_16k(downmix(vocals)[None, :], last)[0])

    for block in read_blocks(source, name=name, frames=read_frames):
        decoded += block.shape[1]
        through(block, last=False)
    if decoded == 0:
        raise InputError(f"{_prefix(name)}no audio samples")
    through(np.zeros((1 if mono_in else channels, 0), dtype=np.float32), last=True)
    featurise(windows.finish())
    return Featurised(
        np.concatenate(parts, axis=0),
        sr,
        channels,
        decoded,
        np.concatenate(voice_parts, axis=0) if voice is not None else None,
    )
