"""Label-preserving augmentation: each transform's invariants, identity at zero, reproducibility."""

import pytest
import torch

from training.augment import (
    FLOOR_DB,
    AugmentConfig,
    augment,
    band_masks,
    random_gain,
    spec_augment,
    time_shift,
)

torch.set_num_threads(1)

FLOOR = -313.07


def _batch(b: int = 8, seed: int = 0, floor_frames: int = 10) -> torch.Tensor:
    """(b, 1, 299, 40) dB-like values around -40 dB; the first frames are digital silence."""
    g = torch.Generator().manual_seed(seed)
    x = -40.0 + 15.0 * torch.randn(b, 1, 299, 40, generator=g)
    x[:, :, :floor_frames] = FLOOR
    return x


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_gain_moves_non_floor_values_by_one_constant_per_snippet_within_range() -> None:
    x = _batch()
    out = random_gain(x, 6.0, _gen())
    live = x > FLOOR_DB
    d = out - x
    offsets = torch.stack([d[i][live[i]].mean() for i in range(len(x))])
    for i in range(len(x)):
        torch.testing.assert_close(d[i][live[i]], offsets[i].expand(int(live[i].sum())))
    assert offsets.abs().max() <= 6.0
    assert len(set(offsets.tolist())) == len(x)  # drawn per snippet, not per batch
    assert torch.equal(out[~live], x[~live])  # the floor stays at -313 dB
    assert torch.equal(x, _batch())  # the input is not modified


def test_time_shift_is_a_per_snippet_circular_roll() -> None:
    x = _batch(floor_frames=0)
    out = time_shift(x, 30, _gen())
    shifts = []
    for i in range(len(x)):
        k = next(k for k in range(-30, 31) if torch.equal(out[i], torch.roll(x[i], k, dims=1)))
        shifts.append(k)
    assert len(set(shifts)) > 1
    assert torch.equal(time_shift(x, 0, _gen()), x)


@pytest.mark.parametrize(("n", "width", "size"), [(1, 20, 299), (2, 5, 40), (3, 50, 40)])
def test_band_masks_have_at_most_n_bands_of_at_most_width(n: int, width: int, size: int) -> None:
    masks = band_masks(200, size, n, width, _gen())
    widths = []
    for row in masks.int():
        edges = torch.diff(torch.nn.functional.pad(row, (1, 1)))
        runs = (edges == 1).sum().item()
        assert runs <= n
        assert row.sum() <= n * min(width, size)
        widths.append(int(row.sum()))
    assert max(widths) > 0  # some bands are drawn
    if n == 1:  # a single band: every width 0..width appears over 200 draws
        assert set(widths) == set(range(width + 1))


def test_band_masks_with_one_band_give_exact_widths_from_the_generator() -> None:
    mask = band_masks(4, 40, 1, 5, _gen(3))
    g = _gen(3)
    w = torch.randint(0, 6, (4,), generator=g)
    start = (torch.rand(4, generator=g) * (40 - w + 1)).floor().long()
    for i in range(4):
        expected = torch.zeros(40, dtype=torch.bool)
        expected[start[i] : start[i] + w[i]] = True
        assert torch.equal(mask[i], expected)


def test_spec_augment_fills_bands_with_the_snippet_mean() -> None:
    x = _batch()
    out = spec_augment(x, _gen(), time_masks=2, time_width=20, freq_masks=2, freq_width=5)
    mean = x.mean(dim=(1, 2, 3))
    for i in range(len(x)):
        changed = out[i, 0] != x[i, 0]
        assert torch.all(out[i, 0][changed] == mean[i])
        masked_frames = (out[i, 0] == mean[i]).all(dim=1)  # whole frame = a time band
        masked_bands = (out[i, 0] == mean[i]).all(dim=0)  # whole mel band = a frequency band
        assert masked_frames.sum() <= 40 and masked_bands.sum() <= 10
        # everything changed lies in a masked frame or a masked band
        assert not (changed & ~masked_frames[:, None] & ~masked_bands[None, :]).any()
    assert (out != x).any()


def test_spec_augment_with_time_masks_only_masks_whole_frames() -> None:
    x = _batch(floor_frames=0)
    out = spec_augment(x, _gen(), time_masks=2, time_width=20, freq_masks=0)
    changed = (out != x)[:, 0]
    assert torch.equal(changed.any(dim=2), changed.all(dim=2))


def test_zero_config_is_identity_and_draws_nothing() -> None:
    x = _batch()
    g = _gen()
    assert AugmentConfig().is_identity
    assert augment(x, AugmentConfig(), g) is x
    assert torch.equal(g.get_state(), _gen().get_state())


@pytest.mark.parametrize(
    "cfg",
    [
        AugmentConfig(gain_db=6.0),
        AugmentConfig(shift_frames=30),
        AugmentConfig(spec_time_masks=2, spec_freq_masks=2),
        AugmentConfig(gain_db=6.0, shift_frames=30, spec_time_masks=2, spec_freq_masks=2),
    ],
)
def test_same_seed_same_output_other_seed_other_output(cfg: AugmentConfig) -> None:
    x = _batch()
    a = augment(x, cfg, _gen(5))
    assert torch.equal(a, augment(x, cfg, _gen(5)))
    assert not torch.equal(a, augment(x, cfg, _gen(6)))
    assert a.shape == x.shape and a.dtype == x.dtype and not torch.equal(a, x)


@pytest.mark.parametrize("fn", [random_gain, time_shift])
def test_negative_amounts_and_wrong_shapes_are_refused(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=">= 0"):
        fn(_batch(b=1), -1, _gen())
    with pytest.raises(ValueError, match=r"\(B, 1, T, F\)"):
        fn(torch.zeros(2, 299, 40), 1, _gen())
