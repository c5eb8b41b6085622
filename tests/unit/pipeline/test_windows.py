"""split_windows(): non-overlapping 3 s windows from the start; a short tail is dropped."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.windows import count_windows, split_windows, window_starts_s

SR = 16_000


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, 1),  # a single sample: still one (padded) window
        (1_600, 1),  # 0.1 s
        (40_000, 1),  # 2.5 s
        (48_000, 1),  # exactly 3 s
        (48_001, 1),  # 1-sample tail: dropped
        (63_999, 1),  # tail 15,999 < 16,000: dropped
        (64_000, 2),  # tail exactly min_tail: kept
        (160_000, 4),  # 10 s: 3 full + 1 s tail
        (152_000, 3),  # 9.5 s: 0.5 s tail dropped
        (144_000, 3),  # 9 s: no tail
    ],
)
def test_window_count(n: int, expected: int) -> None:
    mono = np.ones(n, dtype=np.float32)
    w = split_windows(mono)
    assert w.shape == (expected, 48_000)
    assert w.dtype == np.float32
    assert count_windows(n) == expected


def test_content_and_padding() -> None:
    n = 48_000 * 2 + 20_000
    mono = np.arange(1, n + 1, dtype=np.float32)
    w = split_windows(mono)
    assert w.shape == (3, 48_000)
    np.testing.assert_array_equal(w[0], mono[:48_000])
    np.testing.assert_array_equal(w[1], mono[48_000:96_000])
    np.testing.assert_array_equal(w[2, :20_000], mono[96_000:])
    assert not w[2, 20_000:].any()


def test_short_input_is_padded() -> None:
    w = split_windows(np.full(1_600, 0.5, dtype=np.float32))
    assert w.shape == (1, 48_000)
    assert (w[0, :1_600] == 0.5).all()
    assert not w[0, 1_600:].any()


def test_dropped_tail_is_not_in_any_window() -> None:
    mono = np.zeros(48_000 + 100, dtype=np.float32)
    mono[-100:] = 1.0
    assert not split_windows(mono).any()


def test_custom_sizes() -> None:
    w = split_windows(np.ones(25, dtype=np.float32), window_samples=10, min_tail_samples=5)
    assert w.shape == (3, 10)
    assert w[2].sum() == 5
    assert split_windows(np.ones(24, dtype=np.float32), 10, 5).shape == (2, 10)


def test_window_starts() -> None:
    np.testing.assert_allclose(window_starts_s(4), [0.0, 3.0, 6.0, 9.0])
    starts = window_starts_s(2, window_samples=44_100, sample_rate=44_100)
    np.testing.assert_allclose(starts, [0.0, 1.0])
    assert window_starts_s(0).shape == (0,)


@pytest.mark.parametrize("shape", [(0,), (2, 10)])
def test_rejects_empty_or_multichannel(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"empty|mono"):
        split_windows(np.zeros(shape, dtype=np.float32))
