"""build_member shapes per arch and the input preparation both training and inference use."""

import pytest
import torch

from training.model import ARCHS, INPUT_LAYOUT, INPUT_SHAPE, build_member, prepare_input

torch.set_num_threads(1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("n_classes", [2, 4])
def test_build_member_maps_snippets_to_logits(arch: str, n_classes: int) -> None:
    torch.manual_seed(0)
    model = build_member(n_classes, arch).eval()
    assert model.conv1.in_channels == 1
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    assert model.conv1.bias is None
    assert isinstance(model.fc[0], torch.nn.Dropout) and model.fc[0].p == 0.2
    assert model.fc[1].out_features == n_classes
    with torch.no_grad():
        out = model(torch.randn(3, *INPUT_SHAPE))
    assert out.shape == (3, n_classes)
    assert torch.isfinite(out).all()


def test_arch_depths_differ_as_named() -> None:
    n = {a: sum(p.numel() for p in build_member(4, a).parameters()) for a in ARCHS}
    assert n["resnet10"] < n["resnet18"] < n["resnet34"]
    # torchvision's resnet34 has 21.80M parameters with 3 input channels and 1000 classes.
    assert 21.2e6 < n["resnet34"] < 21.4e6


def test_build_member_rejects_unknown_arch() -> None:
    with pytest.raises(ValueError, match="unknown arch"):
        build_member(4, "resnet50")


def test_layout_constant_matches_shape() -> None:
    assert INPUT_LAYOUT == "B1TF"
    assert INPUT_SHAPE == (1, 299, 40)


def test_prepare_input_none_keeps_db_values_as_float32() -> None:
    x = (torch.randn(2, 299, 40) * 40 - 100).half()
    out = prepare_input(x, "none")
    assert out.shape == (2, 1, 299, 40) and out.dtype == torch.float32
    assert torch.equal(out[:, 0], x.float())


def test_prepare_input_per_snippet_standardises_each_snippet() -> None:
    x = torch.randn(3, 1, 299, 40) * torch.tensor([5.0, 20.0, 40.0]).view(3, 1, 1, 1) - 80
    x[2] = -313.0  # digital silence: constant, std 0
    out = prepare_input(x, "per_snippet")
    assert torch.allclose(out[:2].mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-4)
    assert torch.allclose(out[:2].std(dim=(1, 2, 3), unbiased=False), torch.ones(2), atol=1e-4)
    assert torch.equal(out[2], torch.zeros_like(out[2]))


@pytest.mark.parametrize("shape", [(2, 40, 299), (2, 3, 299, 40), (299, 40)])
def test_prepare_input_rejects_other_layouts(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        prepare_input(torch.zeros(shape), "none")


def test_prepare_input_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown normalize"):
        prepare_input(torch.zeros(1, 1, 299, 40), "global")
