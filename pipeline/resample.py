"""Band-limited sample-rate conversion (soxr, HQ) for the two rates the pipeline needs.

Spleeter wants 44.1 kHz and the log-mel front end 16 kHz; FRONTEND.md allows any good band-limited
resampler, and soxr's HQ setting is one (the reference used librosa's default, also soxr HQ).
"""

from __future__ import annotations

import numpy as np
import soxr


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample along the last axis: (..., n) at `sr_in` Hz -> (..., round(n·sr_out/sr_in)) float32.

    Equal rates return the input as float32 without filtering, so already-16 kHz audio is
    bit-exact. Leading axes are channels and are resampled independently.
    """
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if sr_in == sr_out:
        return x
    if x.ndim == 1:
        return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)
    lead, n = x.shape[:-1], x.shape[-1]
    # soxr takes (frames, channels); flatten any leading axes into channels.
    frames = np.ascontiguousarray(x.reshape(-1, n).T)
    y = soxr.resample(frames, sr_in, sr_out, quality="HQ")
    return np.ascontiguousarray(y.T, dtype=np.float32).reshape(*lead, y.shape[0])
