"""Why Spleeter gains little from bf16: a profiler breakdown by kind of op, and variants of its
U-Nets that might close the gap (run in bench/stages.py; pipeline/spleeter.py is left unchanged).

The breakdown groups each profiled op's *self* CPU time by what the Python code called (the
outermost aten op, or the pipeline function it ran in: STFT, iSTFT, the two hand-written
1-channel layers), and puts dtype conversions and copies in a group of their own wherever they
happen, so the share bf16 cannot speed up is visible.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

import pipeline.spleeter as spl

GROUPS = (
    "conv2d",
    "conv_transpose2d",
    "1-channel layers (fold, shifts)",
    "batch_norm",
    "activations",
    "stft",
    "istft + overlap-add",
    "copies / dtype conversions",
    "cat / pad / crop",
    "other",
)
BF16_ELIGIBLE = ("conv2d", "conv_transpose2d")
"""What bf16 autocast runs in bf16 in Spleeter: its convolutions. (The 1-channel layers' matmul
is autocast too, but their time is mostly fold and shifted sums, which stay float32.)"""

_LABELS = {
    "_frames_spectrum": "stft",
    "_inverse_frames": "istft + overlap-add",
    "_conv_transpose_by_fold": "1-channel layers (fold, shifts)",
    "_conv_by_shifts": "1-channel layers (fold, shifts)",
    "conv_transpose2d": "conv_transpose2d",  # the variants' own transposed convolutions
}
_WRAPPED = ("_frames_spectrum", "_inverse_frames", "_conv_transpose_by_fold", "_conv_by_shifts")
_CONVERSIONS = {"aten::to", "aten::_to_copy", "aten::contiguous", "aten::copy_"}
_BY_OP = {
    "aten::conv2d": "conv2d",
    "aten::conv_transpose2d": "conv_transpose2d",
    "aten::batch_norm": "batch_norm",
    "aten::leaky_relu": "activations",
    "aten::relu": "activations",
    "aten::sigmoid": "activations",
    "aten::cat": "cat / pad / crop",
    "aten::pad": "cat / pad / crop",
    "aten::constant_pad_nd": "cat / pad / crop",
    "aten::slice": "cat / pad / crop",
    "aten::reshape": "cat / pad / crop",
    "aten::transpose": "cat / pad / crop",
}


@contextlib.contextmanager
def labelled() -> Iterator[None]:
    """Wrap Spleeter's STFT, iSTFT and 1-channel layer functions in profiler labels (the module
    looks them up at call time, so the real code runs, labelled)."""
    originals = {name: getattr(spl, name) for name in _WRAPPED}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def labelled_fn(*args: Any, **kwargs: Any) -> Any:
            with torch.profiler.record_function(f"spleeter::{name}"):
                return fn(*args, **kwargs)

        return labelled_fn

    try:
        for name, fn in originals.items():
            setattr(spl, name, wrap(name, fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(spl, name, fn)


def group_of(chain: list[str]) -> str:
    """The group of an op given its ancestor chain, outermost first, the op itself last."""
    if any(name in _CONVERSIONS for name in chain):
        return "copies / dtype conversions"
    for name in chain:
        label = _LABELS.get(name.removeprefix("spleeter::"))
        if name.startswith("spleeter::") and label:
            return label
    aten = [n for n in chain if n.startswith("aten::")]
    return _BY_OP.get(aten[0], "other") if aten else "other"


def breakdown(fn: Callable[[], object]) -> dict[str, Any]:
    """Profile one call of `fn` (warm it first); self CPU ms per group, and each group's share."""
    with warnings.catch_warnings(), labelled():
        warnings.simplefilter("ignore", UserWarning)  # "Profiler clears events at the end of ..."
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
            fn()
    ms = dict.fromkeys(GROUPS, 0.0)
    for ev in p.events():
        chain, e = [], ev
        while e is not None:
            chain.append(e.name)
            e = e.cpu_parent
        ms[group_of(chain[::-1])] += ev.self_cpu_time_total / 1e3
    total = sum(ms.values())
    untouched = total - sum(ms[g] for g in BF16_ELIGIBLE)
    return {
        "ms": {k: round(v, 2) for k, v in ms.items()},
        "total_ms": round(total, 2),
        "share_bf16_cannot_touch": round(untouched / total, 3) if total else 0.0,
    }


# --- variants of the U-Nets ---------------------------------------------------------------------


class Bf16UNet(nn.Module):
    """A U-Net held in bf16 end to end: one cast in, one cast out, no per-layer conversions."""

    def __init__(self, net: nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.net = copy.deepcopy(net).to(torch.bfloat16, memory_format=fmt)
        self.fmt = fmt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(torch.bfloat16).contiguous(memory_format=self.fmt)).float()


class FoldTranspose(nn.Module):
    """A ConvTranspose2d computed as matmul + fold (spleeter's own `_conv_transpose_by_fold`):
    the matmul is a plain GEMM, which bf16 speeds up where oneDNN's bf16 deconvolution does not."""

    def __init__(self, conv: nn.ConvTranspose2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.profiler.record_function("spleeter::conv_transpose2d"):
            return spl._conv_transpose_by_fold(x, self.conv)


conv_transpose_by_phases = spl._conv_transpose_by_phases
"""A stride-2 ConvTranspose2d as 4 stride-1 convolutions (defined in pipeline.spleeter)."""


class PhaseTranspose(nn.Module):
    """A ConvTranspose2d computed by `conv_transpose_by_phases`."""

    def __init__(self, conv: nn.ConvTranspose2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.profiler.record_function("spleeter::conv_transpose2d"):
            return conv_transpose_by_phases(x, self.conv)


def by_width(conv: nn.ConvTranspose2d) -> nn.Module:
    """Matmul + fold for the wide, small layers (up1..up3: >= 64 output channels, few frames),
    4 stride-1 convolutions for the narrow, large ones (up4, up5): the faster of the two for
    each in bf16 (bench/stages_spleeter.py's per-layer timings)."""
    return FoldTranspose(conv) if conv.out_channels >= 64 else PhaseTranspose(conv)


def with_transposes(net: nn.Module, kind: Callable[[nn.ConvTranspose2d], nn.Module]) -> nn.Module:
    """A copy of a U-Net whose up1..up5 transposed convolutions run as `kind(conv)` computes
    them."""
    net = copy.deepcopy(net)
    for k in range(1, 6):
        up = getattr(net, f"up{k}")
        up[0] = kind(up[0])
    return net


def variant(sep: spl.Separator, name: str) -> tuple[spl.Separator, bool]:
    """(separator, autocast?) for one variant name; the weights are `sep`'s."""
    out = copy.deepcopy(sep)
    if name == "float32":
        return out, False
    if name == "float32, channels_last":
        out.vocals = out.vocals.to(memory_format=torch.channels_last)
        out.accompaniment = out.accompaniment.to(memory_format=torch.channels_last)
        return out, False
    if name == "bf16 autocast (as tried)":
        return out, True
    if name == "bf16 U-Nets end to end":
        out.vocals, out.accompaniment = Bf16UNet(out.vocals), Bf16UNet(out.accompaniment)
        return out, False
    if name == "bf16 U-Nets end to end, channels_last":
        out.vocals = Bf16UNet(out.vocals, channels_last=True)
        out.accompaniment = Bf16UNet(out.accompaniment, channels_last=True)
        return out, False
    for suffix, kind in TRANSPOSES.items():
        if name.endswith(suffix):
            out.vocals = with_transposes(out.vocals, kind)
            out.accompaniment = with_transposes(out.accompaniment, kind)
            return out, name.startswith("bf16")
    raise ValueError(f"unknown variant {name!r}")


TRANSPOSES: dict[str, Callable[[nn.ConvTranspose2d], nn.Module]] = {
    ", transposed convs as matmul + fold": FoldTranspose,
    ", transposed convs as 4 stride-1 convs": PhaseTranspose,
    ", transposed convs as fold (up1-3) / 4 convs (up4-5)": by_width,
}

VARIANTS = (
    "float32",
    "float32, channels_last",
    "bf16 autocast (as tried)",
    "bf16 U-Nets end to end",
    "bf16 U-Nets end to end, channels_last",
    "bf16 autocast, transposed convs as matmul + fold",
    "float32, transposed convs as 4 stride-1 convs",
    "bf16 autocast, transposed convs as 4 stride-1 convs",
    "float32, transposed convs as fold (up1-3) / 4 convs (up4-5)",
    "bf16 autocast, transposed convs as fold (up1-3) / 4 convs (up4-5)",
)


def sdr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Signal-to-distortion ratio of `estimate` against `reference`, in dB (inf when equal)."""
    err = float(np.sum((reference.astype(np.float64) - estimate) ** 2))
    ref = float(np.sum(reference.astype(np.float64) ** 2))
    return math.inf if err == 0 else round(10 * math.log10(ref / err), 2)


def separate(sep: spl.Separator, stereo: np.ndarray, autocast: bool) -> np.ndarray:
    """The real call path (separate_vocals), optionally under CPU bf16 autocast."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return spl.separate_vocals(sep, [stereo])[0]
