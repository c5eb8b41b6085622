"""Cut a long signal into the 3 s windows the classifier was trained on.

The reference only ever saw the first 3 s of a snippet (FRONTEND.md step 4); the project scores
every non-overlapping 3 s window from the start, so a window's features are those of a 3 s
snippet cut at that point, zero-padded like the reference pads short files.
"""

from __future__ import annotations

import numpy as np


def count_windows(
    n_samples: int, window_samples: int = 48_000, min_tail_samples: int = 16_000
) -> int:
    """How many windows `split_windows` returns for `n_samples` samples (at least 1).

    A trailing partial window is kept only with at least `min_tail_samples` of signal, so a song's
    last few hundred ms are not scored as a mostly-silent snippet; a signal shorter than one
    window always gives one window, as the reference padded short files.
    """
    if n_samples <= 0:
        raise ValueError(f"cannot window an empty signal ({n_samples} samples)")
    if window_samples <= 0:
        raise ValueError(f"window_samples must be positive, got {window_samples}")
    full, tail = divmod(n_samples, window_samples)
    if full == 0:
        return 1
    return full + (1 if tail >= min_tail_samples else 0)


def split_windows(
    mono: np.ndarray, window_samples: int = 48_000, min_tail_samples: int = 16_000
) -> np.ndarray:
    """(n,) -> (W, window_samples) float32: non-overlapping windows from sample 0, zero-padded.

    At 16 kHz the defaults are 3 s windows and a 1 s minimum tail: 10 s gives 4 windows, 9.5 s
    gives 3, 0.1 s gives 1.
    """
    if mono.ndim != 1:
        raise ValueError(f"expected mono (n,) samples, got shape {mono.shape}")
    n = mono.shape[0]
    w = count_windows(n, window_samples, min_tail_samples)
    out = np.zeros((w, window_samples), dtype=np.float32)
    used = min(n, w * window_samples)
    out.reshape(-1)[:used] = mono[:used]
    return out


def window_starts_s(
    n_windows: int, window_samples: int = 48_000, sample_rate: int = 16_000
) -> np.ndarray:
    """(W,) float64 start time in seconds of each window, to report where in the file a score is."""
    return np.arange(n_windows, dtype=np.float64) * (window_samples / sample_rate)
