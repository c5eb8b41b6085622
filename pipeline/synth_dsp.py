"""Signal pieces shared by the voice and backing synthesisers: scales, pitch conversion and
band-shaped noise (fricatives, snares, hi-hats)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)


def shape_noise(noise: np.ndarray, sr: int, center: float, octaves: float) -> np.ndarray:
    """Filter noise with a log-frequency Gaussian band: fricatives, snares, hi-hats."""
    spec = np.fft.rfft(noise)
    f = np.fft.rfftfreq(len(noise), 1 / sr)
    gain = np.exp(-0.5 * (np.log2(np.maximum(f, 1.0) / center) / octaves) ** 2)
    return np.fft.irfft(spec * gain, len(noise))


def degree_to_midi(degree: int, tonic: int, scale: Sequence[int]) -> int:
    """MIDI note of a scale degree (any integer, octaves wrap) above the tonic."""
    return tonic + 12 * (degree // 7) + scale[degree % 7]


def midi_to_hz(midi: np.ndarray | float) -> np.ndarray:
    """Equal-tempered frequency, A4 = MIDI 69 = 440 Hz."""
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=float) - 69.0) / 12.0)


def hz_to_midi(hz: float) -> float:
    """Fractional MIDI note of a frequency; the inverse of `midi_to_hz`."""
    return 69.0 + 12.0 * float(np.log2(hz / 440.0))
