"""bench.stages: the per-stage table against the machine's peak, run end to end with real weights
(--quick), and its FLOP counts checked against counts made another way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bench import stages
from bench import stages_spleeter as sps
from training.model import build_member


def hand_count(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of `model(x)`'s convolutions and linear layers from their output shapes (forward
    hooks), 2 per multiply-add, biases left out as FlopCounterMode leaves them out."""
    total = 0

    def conv(m: nn.Conv2d, _: object, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += 2 * out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear(m: nn.Linear, _: object, out: torch.Tensor) -> None:
        nonlocal total
        total += 2 * out.numel() * m.in_features

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear)
    with torch.no_grad():
        model(x)
    return total


def test_flop_count_of_a_matmul_is_2mnk() -> None:
    a, b = torch.randn(7, 11), torch.randn(11, 5)
    assert stages.count_flops(lambda: a @ b) == stages.matmul_flops(7, 5, 11) == 2 * 7 * 5 * 11


def test_lstm_flops_are_added_where_the_counter_sees_none() -> None:
    lstm = nn.LSTM(40, 256, 3, batch_first=True)
    x = torch.randn(3, 160, 40)
    want = 2 * 3 * 160 * 1024 * (40 + 256) + 2 * (2 * 3 * 160 * 1024 * 512)
    assert stages.lstm_flops(lstm, 3, 160) == want
    with torch.no_grad():
        assert stages.count_flops(lambda: lstm(x)) < want / 100  # not counted by torch
        assert stages.count_flops(lambda: lstm(x), lstm) >= want


def test_transposed_conv_by_phases_equals_conv_transpose() -> None:
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(8, 3, kernel_size=5, stride=2)
    x = torch.randn(2, 8, 6, 10)
    with torch.no_grad():
        want = conv(x)
        got = sps.conv_transpose_by_phases(x, conv)
        fold = sps.FoldTranspose(conv)(x)
    assert got.shape == want.shape == (2, 3, 15, 23)
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(fold, want, atol=1e-5)


def test_ops_are_grouped_by_what_the_code_called() -> None:
    assert sps.group_of(["aten::conv2d", "aten::convolution", "aten::_convolution"]) == "conv2d"
    assert sps.group_of(["aten::conv2d", "aten::_to_copy", "aten::copy_"]) == (
        "copies / dtype conversions"
    )
    assert sps.group_of(["spleeter::_frames_spectrum", "aten::fft_rfft"]) == "stft"
    assert sps.group_of(["spleeter::_conv_by_shifts", "aten::mul"]) == (
        "1-channel layers (fold, shifts)"
    )
    assert sps.group_of(["aten::leaky_relu"]) == "activations"
    assert sps.group_of(["aten::square"]) == "other"


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    out = tmp_path / "stages.json"
    try:
        assert stages.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())

    for stage in stages.STAGES:
        assert f"| {stage} |" in printed
    rows = {(r["stage"], r["dtype"]): r for r in result["rows"]}
    for stage in stages.STAGES:
        dtypes = stages.DTYPES if stage in stages.TORCH_STAGES else ("-",)
        for dtype in dtypes:
            row = rows[stage, dtype]
            assert row["ms_per_snippet"] > 0
            if stage in stages.TORCH_STAGES:
                assert row["gflop_per_snippet"] > 0 and row["pct_of_peak"] > 0
    assert result["peak"]["float32"]["gflops"] > 0 and result["peak"]["bf16"]["gflops"] > 0

    # A member's counted FLOPs equal a count from its layers' output shapes.
    torch.manual_seed(0)
    member = build_member(4, "resnet10").eval()
    x = torch.randn(1, 1, 299, 40)
    assert rows["member resnet10, batch 1", "float32"]["flops_per_call"] == hand_count(member, x)
    # Spleeter's work is U-Net convolutions: ~24 GFLOP at T = 512, by need (192) ~ 192/512 of it.
    t512 = rows["spleeter T=512", "float32"]["gflop_per_snippet"]
    by_need = rows["spleeter T=by need (192)", "float32"]["gflop_per_snippet"]
    assert by_need == pytest.approx(t512 * 192 / 512, rel=0.05)

    assert all("error" not in r for r in result["first_call"]), result["first_call"]
    sp = result["spleeter"][0]
    assert set(sp["profiles"]["float32"]["ms"]) == set(sps.GROUPS)
    assert 0 < sp["profiles"]["float32"]["share_bf16_cannot_touch"] < 1
    assert sp["variants"][0]["vocals_sdr_vs_float32_db"] == float("inf")  # float32 vs itself
    assert "### Spleeter T=by need: profile" in printed


def test_unet_with_replaced_transposed_convs_computes_the_same() -> None:
    """The proposed Spleeter patch's layers (fold for wide, 4 convolutions for narrow ones) in
    the real U-Net: float32 output equal to the unchanged U-Net's to float32 rounding."""
    from pipeline.spleeter import UNet

    torch.manual_seed(0)
    net = UNet().eval()
    x = torch.rand(1, 2, 64, 1024)
    patched = sps.with_transposes(net, sps.by_width)
    kinds = [type(getattr(patched, f"up{k}")[0]) for k in range(1, 6)]
    assert kinds == [sps.FoldTranspose] * 3 + [sps.PhaseTranspose] * 2
    with torch.inference_mode():
        want, got = net(x), patched(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
