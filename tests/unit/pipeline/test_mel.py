"""log_mel against a plain NumPy reference written from ../shared/FRONTEND.md steps 5-10.

The reference below is deliberately naive (Python loops, float64, np.fft) so that it reads like the
recipe; the production code is batched float32 torch and must agree to float32 precision.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.decode import decode, downmix
from pipeline.frontend import FrontendConfig
from pipeline.mel import log_mel, mel_filterbank
from pipeline.resample import resample
from pipeline.windows import split_windows

torch.set_num_threads(1)

CFG = FrontendConfig()
SR = 16_000
EPS32 = float(np.finfo(np.float32).eps)
FLOOR_DB = 20 * math.log10(np.finfo(np.float64).eps)  # -313.07 dB
DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mir1k4"


# ---- reference, from FRONTEND.md ---------------------------------------------------------------


def ref_filterbank() -> np.ndarray:
    """Step 9: 40 triangles, HTK mel, 42 points 0..8000 Hz, bins floor(1024 f / 16000)."""
    top = 2595 * math.log10(1 + 8000 / 700)
    mel_points = [top * i / 41 for i in range(42)]
    hz = [700 * (10 ** (m / 2595) - 1) for m in mel_points]
    b = [math.floor(1024 * f / 16000) for f in hz]
    fb = np.zeros((40, 513))
    for m in range(1, 41):
        for k in range(b[m - 1], b[m]):
            fb[m - 1, k] = (k - b[m - 1]) / (b[m] - b[m - 1])
        for k in range(b[m], b[m + 1]):
            fb[m - 1, k] = (b[m + 1] - k) / (b[m + 1] - b[m])
    return fb


def ref_log_mel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Steps 5-10 for one 48,000-sample window -> ((299, 40) dB, (299,) total frame power)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.empty(48_080)
    y[0] = x[0]
    for t in range(1, 48_000):
        y[t] = x[t] - 0.97 * x[t - 1]
    y[48_000:] = 0.0
    n_frames = math.ceil((48_000 - 400) / 160) + 1
    window = np.hamming(400)
    fb = ref_filterbank()
    out = np.empty((n_frames, 40))
    frame_power = np.empty(n_frames)
    for i in range(n_frames):
        frame = y[i * 160 : i * 160 + 400] * window
        power = np.abs(np.fft.rfft(frame, n=1024)) ** 2 / 1024
        energies = power @ fb.T
        energies[energies == 0] = np.finfo(np.float64).eps
        out[i] = 20 * np.log10(energies)
        frame_power[i] = power.sum()
    return out, frame_power


def assert_agrees(window: np.ndarray) -> float:
    """Check one window, return the max abs dB difference.

    float32 FFT rounding is about eps32 x the frame's total power in absolute energy, whatever
    the band, so a band 90 dB below its frame carries ~1e-9/1e-7 relative error: the honest
    check is in energy with that absolute term (measured worst ratio ~4.5 on real audio; 32 here),
    plus a dB check (< 1e-3) on bands within 60 dB of their frame's power.
    """
    got = log_mel(torch.from_numpy(window[None]), CFG)[0].numpy().astype(np.float64)
    want, frame_power = ref_log_mel(window)
    assert got.shape == want.shape == (299, 40)
    e_got, e_want = 10 ** (got / 20), 10 ** (want / 20)
    bound = 1e-5 * e_want + 32 * EPS32 * frame_power[:, None]
    assert np.all(np.abs(e_got - e_want) <= bound)
    loud = e_want >= 1e-6 * frame_power[:, None]
    assert loud.mean() > 0.5
    assert np.abs(got - want)[loud].max() < 1e-3
    return float(np.abs(got - want).max())


# ---- filterbank --------------------------------------------------------------------------------


def test_filterbank_matches_recipe() -> None:
    fb = mel_filterbank(CFG)
    assert fb.shape == (40, 513)
    assert fb.dtype == np.float64
    np.testing.assert_array_equal(fb, ref_filterbank())
    assert np.allclose(fb.max(axis=1), 1.0)  # peak 1, no area normalisation
    assert fb[:, 513 - 1].sum() == 0.0  # the top edge, 8 kHz = bin 512, is every filter's zero


# ---- agreement ---------------------------------------------------------------------------------


@pytest.mark.parametrize("colour", ["white", "brown"])
def test_agrees_with_reference_on_noise(colour: str) -> None:
    rng = np.random.default_rng(7)
    noise = rng.standard_normal(48_000)
    if colour == "brown":  # steep spectrum: the top bands sit ~60 dB below the bottom ones
        noise = np.cumsum(noise)
        noise -= noise.mean()
    x = (0.3 * noise / np.abs(noise).max()).astype(np.float32)
    assert_agrees(x)


def real_files(n: int) -> list[Path]:
    if not (DATA / "labels.csv").is_file():
        pytest.skip(f"real data set not present at {DATA}")
    with (DATA / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_label: dict[str, list[Path]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(DATA / row["file"])
    # A few per class, the same ones every run.
    return [p for label in sorted(by_label) for p in sorted(by_label[label])[:n]]


def test_agrees_with_reference_on_real_audio() -> None:
    worst = 0.0
    for path in real_files(2):
        audio = decode(path.read_bytes(), name=path.name)
        mono = resample(downmix(audio.samples), audio.sample_rate, SR)
        windows = split_windows(mono)
        assert windows.shape == (1, 48_000)  # the snippets are exactly 3.000 s
        worst = max(worst, assert_agrees(windows[0]))
    assert worst < 1e-3  # every band, even the quiet ones, on these files


# ---- shapes and frame counts -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "n_windows"),
    [
        (2.5, 1),  # shorter than a window: one zero-padded window
        (3.0, 1),  # exactly one window
        (10.0, 4),  # 3 full windows + a 1.0 s tail, kept because it reaches min_tail (1 s)
    ],
)
def test_frame_count(seconds: float, n_windows: int) -> None:
    """'Frame count' = frames per window x windows: every window is 48,000 samples, so each gives
    ceil((48000 - 400) / 160) + 1 = 299 frames whatever the input length; the input length
    only decides the number of windows."""
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(round(seconds * SR))).astype(np.float32)
    out = log_mel(torch.from_numpy(split_windows(x)), CFG)
    assert out.shape == (n_windows, 299, 40)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_short_input_padding_reaches_the_floor() -> None:
    # 2.5 s of signal then 0.5 s of zero padding: frames wholly in the padding are silent.
    x = np.full(40_000, 0.1, dtype=np.float32)
    out = log_mel(torch.from_numpy(split_windows(x)), CFG)[0]
    first_silent = math.ceil(40_001 / 160)  # first frame starting after the pre-emphasis tail
    assert torch.all(out[first_silent:] == torch.tensor(FLOOR_DB, dtype=torch.float32))
    assert torch.all(out[:200] > FLOOR_DB + 100)


def test_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="48000"):
        log_mel(torch.zeros(1, 47_999), CFG)


# ---- tones and silence -------------------------------------------------------------------------


def band_centre_hz(m: int) -> float:
    """Frequency of the FFT bin where filter m (0-based) peaks, from the reference filterbank."""
    return float(np.argmax(ref_filterbank()[m])) * SR / 1024


@pytest.mark.parametrize("band", [2, 10, 20, 30, 38])
def test_tone_at_band_centre_lands_in_that_band(band: int) -> None:
    f = band_centre_hz(band)
    t = np.arange(48_000) / SR
    x = (0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32)
    out = log_mel(torch.from_numpy(x[None]), CFG)[0]
    assert int(out.mean(dim=0).argmax()) == band


@pytest.mark.parametrize("f", [110.0, 440.0, 1000.0, 3520.0, 7000.0])
def test_tone_lands_in_a_band_containing_it(f: float) -> None:
    t = np.arange(48_000) / SR
    x = (0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32)
    out = log_mel(torch.from_numpy(x[None]), CFG)[0]
    best = int(out.mean(dim=0).argmax())
    fb = ref_filterbank()
    k = f * 1024 / SR
    # The winning triangle covers the tone's bin, with the larger weight of the (<= 2) that do.
    weights = fb[:, math.floor(k)] + fb[:, math.ceil(k)]
    assert weights[best] > 0
    assert weights[best] == weights.max()


def test_silence_is_the_epsilon_floor() -> None:
    out = log_mel(torch.zeros(2, 48_000), CFG)
    assert out.shape == (2, 299, 40)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.full_like(out, FLOOR_DB))
    assert abs(FLOOR_DB - (-313.0712)) < 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(3)
    x = torch.from_numpy((0.2 * rng.standard_normal((3, 48_000))).astype(np.float32))
    on_gpu = log_mel(x.cuda(), CFG)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), log_mel(x, CFG), atol=1e-3, rtol=0)
