"""resample(): band-limited, length n·sr_out/sr_in, float32, any leading channel axes."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.resample import resample


def sine(f: float, sr: int, seconds: float = 1.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * f * np.arange(round(sr * seconds)) / sr)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.shape[-1])))
    return float(np.argmax(spectrum)) * sr / x.shape[-1]


@pytest.mark.parametrize(
    ("sr_in", "sr_out"), [(44_100, 16_000), (8_000, 16_000), (192_000, 16_000), (16_000, 44_100)]
)
def test_keeps_a_tone_and_the_length(sr_in: int, sr_out: int) -> None:
    y = resample(sine(1_000.0, sr_in), sr_in, sr_out)
    assert y.dtype == np.float32
    assert y.shape == (sr_out,)
    assert peak_hz(y, sr_out) == pytest.approx(1_000.0, abs=2.0)
    # Away from the edges the amplitude is preserved.
    assert np.abs(y[sr_out // 4 : -sr_out // 4]).max() == pytest.approx(0.5, abs=0.01)


def test_removes_content_above_the_new_nyquist() -> None:
    # 10 kHz cannot exist at 16 kHz: a band-limited resampler removes it instead of aliasing it
    # down to 6 kHz (edges excluded: the filter rings on the sudden start and stop).
    y = resample(sine(10_000.0, 44_100), 44_100, 16_000)[1_000:-1_000]
    assert np.sqrt(np.mean(y**2)) < 1e-4


def test_equal_rates_is_identity() -> None:
    x = np.random.default_rng(0).standard_normal((2, 100)).astype(np.float32)
    y = resample(x, 16_000, 16_000)
    np.testing.assert_array_equal(y, x)
    assert resample(x.astype(np.float64), 8_000, 8_000).dtype == np.float32


@pytest.mark.parametrize("shape", [(3, 44_100), (2, 3, 44_100)])
def test_channels_are_resampled_independently(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    y = resample(x, 44_100, 16_000)
    assert y.shape == (*shape[:-1], 16_000)
    assert y.dtype == np.float32
    flat_x, flat_y = x.reshape(-1, shape[-1]), y.reshape(-1, 16_000)
    for cx, cy in zip(flat_x, flat_y, strict=True):
        np.testing.assert_allclose(cy, resample(cx, 44_100, 16_000), atol=1e-6)


def test_non_contiguous_input() -> None:
    x = np.random.default_rng(2).standard_normal((4_000, 2)).astype(np.float32).T  # (2, n) view
    np.testing.assert_allclose(
        resample(x, 48_000, 16_000), resample(np.ascontiguousarray(x), 48_000, 16_000)
    )


def test_rejects_bad_rates() -> None:
    with pytest.raises(ValueError, match="positive"):
        resample(np.zeros(10, dtype=np.float32), 0, 16_000)
