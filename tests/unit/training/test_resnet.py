"""training/resnet.py is torchvision's ResNet without the import: a member built by build_member
has the state-dict keys, the seeded initial weights and the outputs of torchvision's ResNet
adapted the way training/model.py adapted it before, so models saved then load and score the same.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from training.model import ARCHS, INPUT_SHAPE, build_member

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[3]


def torchvision_member(n_classes: int, arch: str) -> nn.Module:
    """What build_member built before training/resnet.py: torchvision's net, 1-channel stem,
    dropout + linear head."""
    from torchvision.models import resnet18, resnet34
    from torchvision.models.resnet import BasicBlock, ResNet

    net = {
        "resnet34": lambda: resnet34(weights=None),
        "resnet18": lambda: resnet18(weights=None),
        "resnet10": lambda: ResNet(BasicBlock, [1, 1, 1, 1]),
    }[arch]()
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, n_classes))
    return net


@pytest.mark.parametrize("arch", ARCHS)
def test_same_keys_same_seeded_weights_same_output(arch: str) -> None:
    torch.manual_seed(3)
    ours = build_member(4, arch)
    torch.manual_seed(3)
    theirs = torchvision_member(4, arch)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same draws from the same seed

    # Other weights (a trained model's, BatchNorm statistics included): loaded into both.
    torch.manual_seed(4)
    trained = torchvision_member(4, arch)
    with torch.no_grad():
        for name, t in trained.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t) * 0.05 + (1.0 if name.endswith("running_var") else 0))
    ours.load_state_dict(trained.state_dict())
    x = torch.randn(3, *INPUT_SHAPE) * 20 - 60
    ours.eval(), trained.eval()
    with torch.no_grad():
        assert torch.equal(ours(x), trained(x))
    ours.train(), trained.train()
    torch.manual_seed(5)
    out_ours = ours(x)
    torch.manual_seed(5)
    out_theirs = trained(x)
    assert torch.equal(out_ours, out_theirs)  # training mode too: batch statistics, dropout
    out_ours.sum().backward()
    out_theirs.sum().backward()
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), trained.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1.grad, p2.grad), n1


def test_building_a_member_does_not_import_torchvision() -> None:
    code = (
        "import sys\n"
        "from training.model import build_member\n"
        "build_member(4, 'resnet34')\n"
        "assert 'torchvision' not in sys.modules, 'torchvision was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
