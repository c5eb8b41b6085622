"""One ensemble member: a ResNet (torchvision's, built without importing it: training/resnet.py)
with a 1-channel stem, and its input convention.

A snippet's log-mel features, (299 frames, 40 mel bands) float16 in dB, are fed as a one-channel
image of shape (B, 1, 299, 40) float32: frames on the height axis, mel bands on the width axis
(the reference's layout). Every member, whatever its depth, is built by the same code path so the
small archs used by tests and demos exercise exactly what production trains.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from training.resnet import resnet10, resnet18, resnet34

INPUT_LAYOUT = "B1TF"
"""(batch, 1 channel, T = frames, F = mel bands): the order of a member's input axes."""
N_FRAMES = 299
N_MELS = 40
INPUT_SHAPE = (1, N_FRAMES, N_MELS)

Arch = Literal["resnet34", "resnet18", "resnet10"]
ARCHS: tuple[str, ...] = get_args(Arch)

Normalize = Literal["none", "per_snippet"]
NORMALIZE_MODES: tuple[str, ...] = get_args(Normalize)

# A snippet whose std is below this (e.g. pure digital silence at the -313 dB floor) is only
# centred: dividing by ~0 would turn float noise into huge values.
_MIN_STD = 1e-3


def build_member(n_classes: int, arch: str = "resnet34") -> nn.Module:
    """A freshly initialised member (no pretrained weights, nothing downloaded).

    Input (B, 1, 299, 40) float32 -> logits (B, n_classes). The stem takes one channel instead of
    RGB; the head has dropout 0.2 as in the reference. Initialisation draws from torch's global
    RNG, so seed it (``torch.manual_seed``) before calling for reproducible members.
    """
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if arch == "resnet34":
        net = resnet34()
    elif arch == "resnet18":
        net = resnet18()
    elif arch == "resnet10":
        net = resnet10()
    else:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, n_classes))
    return net


def prepare_input(x: Tensor, normalize: str = "none") -> Tensor:
    """Features -> member input, the one place both training and inference go through.

    ``x``: (B, 299, 40) or (B, 1, 299, 40), any float dtype, on any device. Returns
    (B, 1, 299, 40) float32 on the same device. ``normalize``: "none" feeds dB values as they are
    (the reference: roughly -320..+100, silence at the -313 dB floor); "per_snippet" subtracts
    each snippet's mean and divides by its std, so loudness differences between recordings do not
    reach the model. The mode is part of a trained model: it is stored in its meta.json.
    """
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] != 1 or x.shape[-1] != N_MELS:
        # The mel axis is checked because a transposed (B, 1, 40, 299) input would still run
        # through the fully convolutional ResNet and silently give wrong answers.
        raise ValueError(
            f"expected (B, 1, T, {N_MELS}) or (B, T, {N_MELS}) features, got {tuple(x.shape)}"
        )
    x = x.float()
    if normalize == "none":
        return x
    if normalize == "per_snippet":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
        std = torch.where(std < _MIN_STD, torch.ones_like(std), std)
        return (x - mean) / std
    raise ValueError(f"unknown normalize {normalize!r}; choose one of {', '.join(NORMALIZE_MODES)}")
