"""Label-preserving augmentation of log-mel training batches: gain, time shift, SpecAugment masks.

Every function takes a batch ``x`` (B, 1, 299, 40) float32 of the front end's dB values (before
any input normalisation), returns a new tensor of the same shape, device and dtype (the input is
never modified), and draws all its randomness from the ``torch.Generator`` it is given (a CPU
generator; the draws are made on the CPU and moved to ``x``'s device), so a training epoch is
reproducible from its seeds and a resumed run equals an uninterrupted one.

Only transforms that keep the singer's gender are here. Pitch shifting is deliberately absent: it
moves the fundamental and the formants, which is what tells a male voice from a female one, so it
would change the label rather than vary the example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

FLOOR_DB = -300.0
"""Values at or below this are the front end's digital-silence floor (-313.07 dB = 20·log10 of the
float64 epsilon), not sound: a gain does not move them (silence stays silence, at every level)."""


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations a training run applies; all zero (the default) is the identity, i.e.
    the reference recipe. ``gain_db``: a per-snippet offset drawn from [-gain_db, +gain_db] in
    feature dB; ``shift_frames``: a per-snippet circular shift drawn from
    [-shift_frames, +shift_frames] frames; ``spec_time_masks`` / ``spec_freq_masks``: how many
    SpecAugment bands per snippet, each of width 0..``spec_time_width`` frames /
    0..``spec_freq_width`` mel bands."""

    gain_db: float = 0.0
    shift_frames: int = 0
    spec_time_masks: int = 0
    spec_freq_masks: int = 0
    spec_time_width: int = 20
    spec_freq_width: int = 5

    @property
    def is_identity(self) -> bool:
        return (
            self.gain_db == 0
            and self.shift_frames == 0
            and self.spec_time_masks == 0
            and self.spec_freq_masks == 0
        )


def _check(x: Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected (B, 1, T, F) features, got {tuple(x.shape)}")


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> Tensor:
    """(n,) float32 uniform in [low, high], drawn on the CPU from ``gen``."""
    return low + (high - low) * torch.rand(n, generator=gen)


def random_gain(x: Tensor, max_db: float, gen: torch.Generator) -> Tensor:
    """Add one offset d ~ U[-max_db, +max_db] to every non-floor value of each snippet.

    Why an offset: a recording made louder by an amplitude factor g has every band's power
    multiplied by g², and every feature value is 20·log10(power) (this front end takes 20·log10 of
    a power, a quirk of the reference), so every value moves by the same 20·log10(g²) = 40·log10(g).
    ``max_db`` is in these feature units: 6 means an amplitude factor of 10^(±6/40) ≈ ×0.71..×1.41
    (±3 dB in conventional 20·log10(amplitude) terms). Values <= FLOOR_DB are digital silence,
    which no gain makes audible, so they stay where they are.
    """
    _check(x)
    if max_db < 0:
        raise ValueError(f"max_db must be >= 0, got {max_db}")
    d = _uniform(x.shape[0], -max_db, max_db, gen).to(device=x.device, dtype=x.dtype)
    return torch.where(x <= FLOOR_DB, x, x + d.view(-1, 1, 1, 1))


def time_shift(x: Tensor, max_frames: int, gen: torch.Generator) -> Tensor:
    """Roll each snippet circularly along the frame axis by k ~ U{-max_frames..+max_frames}.

    The gender of a voice does not depend on where in the 3 s window a phrase starts; a circular
    roll keeps every frame (no padding that the model could learn to spot) at the price of one
    splice, which real windows cut from songs have at their edges anyway.
    """
    _check(x)
    if max_frames < 0:
        raise ValueError(f"max_frames must be >= 0, got {max_frames}")
    b, _, t, f = x.shape
    k = torch.randint(-max_frames, max_frames + 1, (b,), generator=gen)
    src = (torch.arange(t).view(1, t) - k.view(b, 1)) % t  # out[i] = x[(i - k) mod T]
    index = src.to(x.device).view(b, 1, t, 1).expand(b, 1, t, f)
    return torch.gather(x, 2, index)


def band_masks(batch: int, size: int, n_masks: int, max_width: int, gen: torch.Generator) -> Tensor:
    """(batch, size) bool: per row, the union of ``n_masks`` bands, each of a width w drawn from
    0..max_width (capped at ``size``) starting at a position drawn from 0..size - w."""
    mask = torch.zeros(batch, size, dtype=torch.bool)
    if n_masks <= 0 or max_width <= 0:
        return mask
    pos = torch.arange(size).view(1, size)
    for _ in range(n_masks):
        w = torch.randint(0, min(max_width, size) + 1, (batch,), generator=gen)
        start = (torch.rand(batch, generator=gen) * (size - w + 1)).floor().long()
        mask |= (pos >= start.view(-1, 1)) & (pos < (start + w).view(-1, 1))
    return mask


def spec_augment(
    x: Tensor,
    gen: torch.Generator,
    time_masks: int = 2,
    time_width: int = 20,
    freq_masks: int = 2,
    freq_width: int = 5,
) -> Tensor:
    """SpecAugment (Park et al. 2019) without time warping: per snippet, ``time_masks`` bands of
    0..``time_width`` frames and ``freq_masks`` bands of 0..``freq_width`` mel bands are set to
    the snippet's mean value (over all its frames and bands, taken before masking).

    The fill is the mean, not 0: in this dB domain 0 dB is a loud sound (speech sits around
    -60..+40, silence at -313), so zeros would paint bright stripes rather than hide information.
    """
    _check(x)
    b, _, t, f = x.shape
    time = band_masks(b, t, time_masks, time_width, gen).view(b, 1, t, 1)
    freq = band_masks(b, f, freq_masks, freq_width, gen).view(b, 1, 1, f)
    mask = (time | freq).to(x.device)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return torch.where(mask, mean, x)


def augment(x: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    """Apply the enabled augmentations in a fixed order: gain, time shift, SpecAugment (masks
    last, so their fill is the mean of the snippet as the model would otherwise see it).
    Returns ``x`` itself, drawing nothing from ``gen``, when ``cfg`` is the identity."""
    _check(x)
    if cfg.gain_db > 0:
        x = random_gain(x, cfg.gain_db, gen)
    if cfg.shift_frames > 0:
        x = time_shift(x, cfg.shift_frames, gen)
    if cfg.spec_time_masks > 0 or cfg.spec_freq_masks > 0:
        x = spec_augment(
            x,
            gen,
            time_masks=cfg.spec_time_masks,
            time_width=cfg.spec_time_width,
            freq_masks=cfg.spec_freq_masks,
            freq_width=cfg.spec_freq_width,
        )
    return x
