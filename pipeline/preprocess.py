"""Decoded audio -> feature windows: the whole front end for a batch of snippets.

Both modes call this: the embedded CLI in-process, and the CPU Celery workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.decode import Audio, downmix
from pipeline.frontend import FrontendConfig
from pipeline.mel import log_mel
from pipeline.resample import resample
from pipeline.spleeter import SPLEETER_SAMPLE_RATE, Separator, separate_vocals
from pipeline.windows import split_windows

if TYPE_CHECKING:
    from pipeline.voice import VoiceConfig


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
    return [m for m, _ in featurize_all(audios, cfg, separator, device, min_tail_s)]


def featurize_all(
    audios: list[Audio],
    cfg: FrontendConfig,
    separator: Separator | None,
    device: str = "cpu",
    min_tail_s: float = 1.0,
    voice: VoiceConfig | None = None,
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """``featurize``, and with ``voice`` each snippet's (W_i, D) float16 voice features of the
    same windows of the same vocals (pipeline/voice.py); None without."""
    if not audios:
        return []
    return window_features(
        vocals_mono(audios, cfg, separator, device), cfg, device, min_tail_s, voice
    )


def window_features(
    mono: list[np.ndarray],
    cfg: FrontendConfig,
    device: str = "cpu",
    min_tail_s: float = 1.0,
    voice: VoiceConfig | None = None,
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Mono signals at cfg.sample_rate -> per signal its (W_i, n_frames, n_mels) float16
    log-mel windows and, with ``voice``, their (W_i, D) float16 voice features (else None)."""
    if not mono:
        return []
    min_tail = round(min_tail_s * cfg.sample_rate)
    windows = [split_windows(m, cfg.window_samples, min_tail) for m in mono]
    counts = np.cumsum([w.shape[0] for w in windows])[:-1]
    stacked = np.concatenate(windows, axis=0)
    mels = np.split(window_mels(stacked, cfg, device), counts, axis=0)
    if voice is None:
        return [(m, None) for m in mels]
    feats = np.split(window_voice(stacked, voice, device), counts, axis=0)
    return list(zip(mels, feats, strict=True))


def window_mels(windows: np.ndarray, cfg: FrontendConfig, device: str = "cpu") -> np.ndarray:
    """(W, window_samples) -> (W, n_frames, n_mels) float16 log-mel."""
    if windows.shape[0] == 0:
        return np.zeros((0, cfg.n_frames, cfg.n_mels), dtype=np.float16)
    x = torch.from_numpy(np.ascontiguousarray(windows)).to(device)
    return log_mel(x, cfg).to("cpu").numpy().astype(np.float16)


def window_voice(windows: np.ndarray, voice: VoiceConfig, device: str = "cpu") -> np.ndarray:
    """(W, window_samples) -> (W, voice.dim) float16 voice features, in batches of 64 windows
    (CREPE's activations for a batch are ~90 MB), so an hour of windows stays bounded."""
    from pipeline.voice import voice_features

    if windows.shape[0] == 0:
        return np.zeros((0, voice.dim), dtype=np.float16)
    out = [
        voice_features(torch.from_numpy(np.ascontiguousarray(windows[i : i + 64])), voice, device)
        .cpu()
        .numpy()
        .astype(np.float16)
        for i in range(0, windows.shape[0], 64)
    ]
    return np.concatenate(out, axis=0)


def mel_windows(
    mono: list[np.ndarray], cfg: FrontendConfig, device: str = "cpu", min_tail_s: float = 1.0
) -> list[np.ndarray]:
    """Mono signals at cfg.sample_rate -> one (W_i, n_frames, n_mels) float16 array each."""
    return [m for m, _ in window_features(mono, cfg, device, min_tail_s)]
