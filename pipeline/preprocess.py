"""Decoded audio -> feature windows: the whole front end for a batch of snippets.

Both modes call this: the embedded CLI in-process, and the CPU Celery workers.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.decode import Audio, downmix
from pipeline.frontend import FrontendConfig
from pipeline.mel import log_mel
from pipeline.resample import resample
from pipeline.spleeter import SPLEETER_SAMPLE_RATE, Separator, separate_vocals
from pipeline.windows import split_windows


def spleeter_input(audio: Audio) -> np.ndarray:
    """(2, n) float32 at 44.1 kHz, as Spleeter expects: mono is duplicated, > 2 channels are
    down-mixed to mono first (resampling one channel instead of six)."""
    x = audio.samples if audio.channels <= 2 else downmix(audio.samples)[None, :]
    x = resample(x, audio.sample_rate, SPLEETER_SAMPLE_RATE)
    if x.shape[0] == 1:
        x = np.repeat(x, 2, axis=0)
    return np.ascontiguousarray(x, dtype=np.float32)


def vocals_mono(
    audios: list[Audio],
    cfg: FrontendConfig,
    separator: Separator | None,
    device: str = "cpu",
) -> list[np.ndarray]:
    """Each snippet's vocals (or the mixture when separation is off), mono at cfg.sample_rate."""
    if not cfg.separation:
        return [resample(downmix(a.samples), a.sample_rate, cfg.sample_rate) for a in audios]
    if separator is None:
        raise ValueError("the front end separates vocals but no separator was given")
    vocals = separate_vocals(separator, [spleeter_input(a) for a in audios], device=device)
    return [resample(downmix(v), SPLEETER_SAMPLE_RATE, cfg.sample_rate) for v in vocals]


def featurize(
    audios: list[Audio],
    cfg: FrontendConfig,
    separator: Separator | None,
    device: str = "cpu",
    min_tail_s: float = 1.0,
) -> list[np.ndarray]:
    """One (W_i, n_frames, n_mels) float16 array per snippet; all windows in one log-mel call."""
    if not audios:
        return []
    return mel_windows(vocals_mono(audios, cfg, separator, device), cfg, device, min_tail_s)


def mel_windows(
    mono: list[np.ndarray], cfg: FrontendConfig, device: str = "cpu", min_tail_s: float = 1.0
) -> list[np.ndarray]:
    """Mono signals at cfg.sample_rate -> one (W_i, n_frames, n_mels) float16 array each."""
    if not mono:
        return []
    min_tail = round(min_tail_s * cfg.sample_rate)
    windows = [split_windows(m, cfg.window_samples, min_tail) for m in mono]
    counts = [w.shape[0] for w in windows]
    stacked = torch.from_numpy(np.concatenate(windows, axis=0)).to(device)
    mels = log_mel(stacked, cfg).to("cpu").numpy().astype(np.float16)
    return list(np.split(mels, np.cumsum(counts)[:-1], axis=0))
