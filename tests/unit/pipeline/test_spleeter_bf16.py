"""Spleeter with bf16 U-Nets (the fast profile's `Separator(bf16=True)`): its rewritten transposed
convolutions are exact in float32, its vocals stay close to float32's on a real sung clip, the
float32 path is untouched, and the front-end version tells the two apart without moving any
version made before the option existed."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline import spleeter
from pipeline.frontend import FrontendConfig

SR = spleeter.SPLEETER_SAMPLE_RATE
DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mir1k4"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def float32() -> spleeter.Separator:
    return spleeter.load_separator("cpu", spleeter.BY_NEED)


@pytest.fixture(scope="module")
def bf16() -> spleeter.Separator:
    return spleeter.load_separator("cpu", spleeter.BY_NEED, bf16=True)


def sdr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    err = np.sum((reference.astype(np.float64) - estimate) ** 2)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / err))


def sung_clip() -> np.ndarray:
    """A real 3 s MIR-1K snippet with a singer, (2, 132300) at 44.1 kHz; else a synthesised
    voice over noise (the shared data are absent)."""
    if (DATA / "labels.csv").is_file():
        sf = pytest.importorskip("soundfile")
        soxr = pytest.importorskip("soxr")
        with open(DATA / "labels.csv", newline="") as f:
            row = next(r for r in csv.DictReader(f) if r["label"] == "female")
        y, sr = sf.read(DATA / row["file"], dtype="float32")
        y = soxr.resample(y, sr, SR).astype(np.float32)[: 3 * SR]
        return np.stack([y, y])
    t = np.arange(3 * SR) / SR
    phase = 2 * np.pi * np.cumsum(220 * (1 + 0.03 * np.sin(2 * np.pi * 5.5 * t))) / SR
    tone = 0.2 * sum(np.sin(k * phase) / k for k in range(1, 15))
    rng = np.random.default_rng(0)
    return (tone + 0.3 * rng.standard_normal((2, t.size))).astype(np.float32)


@pytest.mark.parametrize(("c_in", "c_out"), [(512, 256), (256, 64), (128, 32), (64, 16)])
def test_rewritten_transposed_conv_equals_conv_transpose(c_in: int, c_out: int) -> None:
    """Fold (>= 64 output channels) and 4 stride-1 convolutions (fewer) both equal
    ConvTranspose2d in float32, on the real weights' layer shapes."""
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(c_in, c_out, kernel_size=5, stride=2)
    x = torch.randn(2, c_in, 4, 16)
    with torch.inference_mode():
        want = conv(x)
        got = spleeter._conv_transpose_rewritten(x, conv)
        phases = spleeter._conv_transpose_by_phases(x, conv)
    assert got.shape == phases.shape == want.shape == (2, c_out, 11, 35)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    assert torch.allclose(phases, want, rtol=1e-4, atol=1e-5)


def test_real_unet_with_rewritten_up_layers_computes_the_same(float32: spleeter.Separator) -> None:
    net = float32.vocals
    x = torch.rand(1, 2, 64, 1024, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = net(x)
        net.rewrite_transposed = True
        try:
            got = net(x)
        finally:
            net.rewrite_transposed = False
    assert not torch.equal(got, want)  # another computation...
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)  # ...of the same thing


def test_bf16_vocals_are_close_to_float32_but_not_equal(
    float32: spleeter.Separator, bf16: spleeter.Separator
) -> None:
    clip = sung_clip()
    want = spleeter.separate_vocals(float32, [clip])[0]
    got = spleeter.separate_vocals(bf16, [clip])[0]
    assert got.dtype == np.float32 and got.shape == want.shape
    assert not np.array_equal(got, want)
    assert sdr_db(want, got) > 25  # measured 34-43 dB on real clips (bench/stages_spleeter.py)


def _old_unet_forward(net: spleeter.UNet, x: torch.Tensor) -> torch.Tensor:
    """UNet.forward as it was before the bf16 option: the up-layers called as modules."""
    c1 = net.down1_conv(x)
    c2 = net.down2_conv(net.down1_act(c1))
    c3 = net.down3_conv(net.down2_act(c2))
    c4 = net.down4_conv(net.down3_act(c3))
    c5 = net.down5_conv(net.down4_act(c4))
    c6 = net.down6_conv(net.down5_act(c5))
    u = net.up1(c6)
    u = net.up2(torch.cat([c5, u], dim=1))
    u = net.up3(torch.cat([c4, u], dim=1))
    u = net.up4(torch.cat([c3, u], dim=1))
    u = net.up5(torch.cat([c2, u], dim=1))
    u = net.up6[1:](spleeter._conv_transpose_by_fold(torch.cat([c1, u], dim=1), net.up6[0]))
    return torch.sigmoid(spleeter._conv_by_shifts(u, net.up7[0])) * x


def test_float32_path_is_bit_identical_to_before(float32: spleeter.Separator) -> None:
    assert not float32.bf16 and not float32.vocals.rewrite_transposed
    assert spleeter.Separator().bf16 is False  # the default stays float32
    x = torch.rand(1, 2, 64, 1024, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(float32.vocals(x), _old_unet_forward(float32.vocals, x))
        magnitude = torch.rand(1, 2, 100, 1024, generator=torch.Generator().manual_seed(2))
        vocals, _ = float32._estimates(magnitude, 64)
        old = magnitude.new_zeros(1, 2, 128, 1024)
        old[:, :, :100] = magnitude
        segments = old.reshape(1, 2, 2, 64, 1024).transpose(1, 2).reshape(2, 2, 64, 1024)
        want = _old_unet_forward(float32.vocals, segments)
        want = want.reshape(1, 2, 2, 64, 1024).transpose(1, 2).reshape(1, 2, 128, 1024)
    assert torch.equal(vocals, want[:, :, :100])


# Front-end versions at the commit before `spleeter_bf16` existed: models and caches on disk are
# keyed by them, so they must never move.
VERSIONS_BEFORE = {
    "fe-2587ea00": FrontendConfig(),
    "fe-c10cb1c7": FrontendConfig(spleeter_frames=0),
    "fe-43f663cd": FrontendConfig(spleeter_frames=256),
    "fe-eda1f061": FrontendConfig(separation=False),
}


def test_existing_front_end_versions_are_unchanged() -> None:
    for version, cfg in VERSIONS_BEFORE.items():
        assert cfg.version == version
        assert "spleeter_bf16" not in cfg.to_dict()


def test_bf16_separation_is_its_own_front_end_version() -> None:
    cfg = FrontendConfig(spleeter_frames=0, spleeter_bf16=True)
    assert cfg.version not in VERSIONS_BEFORE
    assert cfg.version != FrontendConfig(spleeter_frames=0).version
    assert FrontendConfig.from_dict(cfg.to_dict()) == cfg


def test_an_old_dict_without_the_field_loads_as_float32() -> None:
    old = FrontendConfig().to_dict()
    assert "spleeter_bf16" not in old
    cfg = FrontendConfig.from_dict(old)
    assert cfg.spleeter_bf16 is False and cfg.version == "fe-2587ea00"
