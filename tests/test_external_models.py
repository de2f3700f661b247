"""Importable models: ``create_model("torchvision:NAME")`` and ``"package.module:factory"``, the run
config's validation of them, and the CLI training one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wageubn import cli
from wageubn.models import create_model
from wageubn.train.metrics import read_metrics
from wageubn.train.runconfig import RunConfigError, load_run_config


class TinyNet(nn.Module):
    """A model factory of a user's own package (this test module is importable)."""

    def __init__(self, num_classes: int = 10, hidden: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, hidden, 3, padding=1)
        self.bn = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))  # a functional activation: quantized by the rewrite
        x = nn.functional.gelu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def fixed_classes():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5))


def not_a_model():
    return 42


def test_torchvision_builder_by_name_with_num_classes_and_one_channel():
    pytest.importorskip("torchvision")
    torch.manual_seed(0)
    m = create_model("torchvision:mobilenet_v2", num_classes=7, in_channels=1, width_mult=0.5)
    first = m.features[0][0]
    assert first.in_channels == 1 and first.out_channels == 16
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_package_factory_gets_num_classes_and_kwargs():
    m = create_model("test_external_models:TinyNet", num_classes=4, in_channels=3, hidden=6)
    assert isinstance(m, TinyNet) and m.fc.out_features == 4 and m.conv.out_channels == 6
    m1 = create_model("test_external_models:TinyNet", num_classes=4, in_channels=1)
    assert m1.conv.in_channels == 1  # the first conv rebuilt for the data's channels


@pytest.mark.parametrize(
    "name,match",
    [
        ("torchvision:mobilnet_v2", "did you mean 'torchvision:mobilenet_v2'"),
        ("no_such_package_xyz:f", "cannot import 'no_such_package_xyz'"),
        ("test_external_models:TinyNett", "has no attribute 'TinyNett'; did you mean 'TinyNet'"),
        ("test_external_models:", "package.module:factory"),
        ("test_external_models:not_a_model", "returned a int, not an nn.Module"),
        ("test_external_models:fixed_classes", "does not take num_classes.*5 outputs.*3 classes"),
    ],
)
def test_errors_name_the_problem(name, match):
    with pytest.raises(ValueError, match=match):
        m = create_model(name, num_classes=3)
        m(torch.randn(1, 3, 8, 8))  # LazyLinear: its size is known after a call


def test_run_config_accepts_importable_names_and_reports_bad_ones():
    cfg = load_run_config(None, ["--model.name", "test_external_models:TinyNet"])
    assert cfg.model.name == "test_external_models:TinyNet"
    with pytest.raises(RunConfigError, match="model.name: model 'test_external_models:Tiny'"):
        load_run_config(None, ["--model.name", "test_external_models:Tiny"])
    with pytest.raises(RunConfigError, match="'package.module:factory'"):
        load_run_config(None, ["--model.name", "mobilenet_v2"])


def test_cli_trains_an_importable_model(capsys, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {name: 'test_external_models:TinyNet', kwargs: {hidden: 4}}\n"
        "data: {name: mnist, batch_size: 16, train_subset: 64, eval_subset: 32}\n"
        "optim: {lr: 0.0625}\n"
        f"train: {{epochs: 1, log_every: 2, threads: 1, out_dir: '{tmp_path}', run_name: r}}\n"
    )
    code = cli.main(["train", str(config), "--quant.preset", "int8", "--model.kwargs.hidden", "5"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = read_metrics(tmp_path / "r")
    assert rows and rows[-1]["step"] == 4
    code = cli.main(["train", str(config), "--model.name", "test_external_models:fixed_classes",
                     "--model.kwargs", "{}"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 2 and "does not take num_classes" in err and "Traceback" not in err
