"""Every registered model and torchvision's resnet18/34/50: convert, forward, backward, step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision  # CI installs it (requirements-dev.txt): these tests must not be skipped

from wageubn import QSGD, quantize_
from wageubn.models import create_model, list_models
from wageubn.models.preact_resnet import PreActBasicBlock, PreActBottleneck
from wageubn.nn import QuantBatchNorm2d, QuantConv2d, QuantReLU

INPUT = {  # (in_channels, size): small inputs keep the ImageNet models fast on CPU
    "small_cnn": (1, 28),
    "preact_resnet20": (3, 32),
    "preact_resnet32": (3, 16),
    "preact_resnet56": (3, 16),
    "preact_resnet18": (3, 64),
    "preact_resnet34": (3, 64),
    "preact_resnet50": (3, 64),
}


def test_registry():
    assert set(list_models()) == set(INPUT)
    with pytest.raises(ValueError, match="did you mean 'preact_resnet20'"):
        create_model("preact_resnt20")
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        create_model("small_cnn", num_classes=0)


def _train_step(model, x, num_classes):
    quantize_(model, "paper")
    opt = QSGD(
        model.parameters(), lr=0.05, config="paper", generator=torch.Generator().manual_seed(0)
    )
    before = [p.detach().clone() for p in model.parameters()]
    y = torch.arange(x.shape[0]) % num_classes
    logits = model(x)
    assert logits.shape == (x.shape[0], num_classes) and bool(torch.isfinite(logits).all())
    F.cross_entropy(logits, y).backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    moved = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert moved > len(before) // 2
    return model


@pytest.mark.parametrize("name", sorted(INPUT))
def test_registered_model_trains_one_step(name):
    torch.manual_seed(0)
    cin, size = INPUT[name]
    model = _train_step(
        create_model(name, num_classes=7, in_channels=cin), torch.randn(2, cin, size, size), 7
    )
    assert type(model.stem) is torch.nn.Conv2d  # float stem, as the released code
    assert type(model.fc) is torch.nn.Linear  # float classifier
    assert any(isinstance(m, QuantConv2d) for m in model.modules())


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_torchvision_resnet_trains_one_step(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=5)
    _train_step(model, torch.randn(2, 3, 64, 64), 5)
    assert type(model.conv1) is torch.nn.Conv2d and type(model.fc) is torch.nn.Linear
    assert type(model.layer1[0].conv1) is QuantConv2d
    assert type(model.layer1[0].bn1) is QuantBatchNorm2d and type(model.relu) is QuantReLU


def test_preact_layout_matches_released_code():
    m = create_model("preact_resnet18")
    stages = list(m.stages)
    assert [len(s) for s in stages] == [2, 2, 2, 2]
    for s in stages:  # a 1×1 projection on every stage's first block, also the first stage
        assert s[0].shortcut is not None and s[0].shortcut.kernel_size == (1, 1)
        assert all(b.shortcut is None for b in list(s)[1:])
    assert stages[1][0].conv1.stride == (2, 2) and stages[1][0].shortcut.stride == (2, 2)
    assert m.stem.kernel_size == (7, 7) and m.stem.stride == (2, 2)
    assert isinstance(stages[0][0], PreActBasicBlock)
    r50 = create_model("preact_resnet50")
    assert isinstance(r50.stages[0][0], PreActBottleneck) and r50.fc.in_features == 2048
    assert r50.stages[1][0].conv2.stride == (2, 2)  # the stride sits on the 3×3
    r20 = create_model("preact_resnet20")
    assert [len(s) for s in r20.stages] == [3, 3, 3] and r20.fc.in_features == 64
    n_params = sum(p.numel() for p in m.parameters())
    assert 11_000_000 < n_params < 12_500_000
