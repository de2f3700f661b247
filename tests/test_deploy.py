"""Integer deployment: export → IntegerModel round trip, integer-only data path, golden tensors."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from wageubn import UnsupportedModuleError, WAGEUBNConfig, quantize_
from wageubn.data import load_dataset
from wageubn.deploy import DeployError, IntegerModel, command, dump_step, export_model, verify_dump
from wageubn.models import create_model

N_IMAGES = 64
_MODELS: dict = {}


@pytest.fixture(scope="module")
def mnist():
    try:
        ds = load_dataset("mnist", "test")
    except FileNotFoundError as exc:  # the data set is a test dependency; say so if it is gone
        pytest.skip(str(exc))
    idx = torch.arange(N_IMAGES)
    x, y = ds.batch(idx)
    return ds.images[idx], x, y


def _model(preset: str, full: bool, x: torch.Tensor) -> nn.Module:
    """A small CNN with non-trivial BN statistics (a few train-mode forwards, no updates); built
    once per configuration (no test changes it: export reads, dump_step restores)."""
    if (preset, full) not in _MODELS:
        _MODELS[preset, full] = _build(preset, full, x)
    return _MODELS[preset, full]


def _build(preset: str, full: bool, x: torch.Tensor, width: int = 4) -> nn.Module:
    cfg = WAGEUBNConfig.preset(preset)
    if full:
        cfg = cfg.replace(quantize_stem=True, quantize_head=True)
    torch.manual_seed(0)
    model = quantize_(create_model("small_cnn", width=width), cfg)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = 0.5
    model.train()
    with torch.no_grad():
        for chunk in x.split(32):
            model(chunk)
        for mod in model.modules():  # a bias on the head, and γ, β away from 1, 0
            if isinstance(mod, nn.BatchNorm2d):  # on the 24-bit storage grid, as after a step
                mod.weight.uniform_(0.5, 1.5).mul_(2.0**23).round_().mul_(2.0**-23)
                mod.bias.uniform_(-0.25, 0.25).mul_(2.0**23).round_().mul_(2.0**-23)
    return model.eval()


@pytest.mark.parametrize(
    ("preset", "full"), [("paper", True), ("paper", False), ("int8", True), ("int8", False)]
)
def test_round_trip_predictions_equal_eval_model(mnist, tmp_path, preset, full):
    """export → load → predict gives the eval-mode quantized model's predictions on MNIST images
    when every layer is quantized (logits to float32 rounding of the reference); with the float
    stem and classifier rounded to 8-bit power-of-two weights, nearly all of them (this untrained
    model has near-tied logits; docs/deploy.md has the trained-model numbers)."""
    images, x, _ = mnist
    model = _model(preset, full, x)
    path = export_model(model, tmp_path / "m.safetensors", data="mnist")
    integer = IntegerModel.load(path)
    logits = integer(images)
    with torch.no_grad():
        ref = model(x)
    agreement = (logits.argmax() == ref.argmax(1)).double().mean().item()
    # default: this untrained model's logits are near ties, and its 3136-input float classifier
    # is rounded to 8-bit power-of-two weights; trained-model numbers are in docs/deploy.md
    assert agreement == 1.0 if full else agreement >= 0.9, agreement
    diff = (logits.to_float() - ref.double()).abs().max().item()
    # full: only the float32 rounding of the stem input / pool mean / logits differs; default:
    # the stem and classifier weights are rounded to 8-bit power-of-two for deployment
    assert diff < (1e-3 if full else 0.2), diff


def test_16_bit_deployment_weights_for_the_float_stem_and_head(mnist, tmp_path):
    """float_weight_bits=16 stores the float stem/classifier as int16 codes run as two int8
    digits: the integer logits move much closer to the float model's than with 8 bits."""
    images, x, _ = mnist
    model = _model("paper", False, x)
    with torch.no_grad():
        ref = model(x).double()
    diffs = {}
    for bits in (8, 16):
        path = export_model(
            model, tmp_path / f"m{bits}.safetensors", data="mnist", float_weight_bits=bits
        )
        with safe_open(str(path), "pt") as f:
            assert f.get_tensor("stem.weight").dtype == (torch.int8 if bits == 8 else torch.int16)
        logits = IntegerModel.load(path)(images)
        diffs[bits] = (logits.to_float() - ref).abs().max().item()
    assert diffs[16] < diffs[8] / 10, diffs


def test_int8_full_model_codes_match_layer_by_layer(mnist, tmp_path):
    """int8 arithmetic, every layer quantized: every BN/ReLU/conv value of the integer path equals
    the float model's value exactly (both are exact; only the pooled mean and logits round)."""
    images, x, _ = mnist
    model = _model("int8", True, x)
    integer = IntegerModel.load(export_model(model, tmp_path / "m.safetensors", data="mnist"))
    seen = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
        for n, m in model.named_modules()
        if n
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    values = integer.intermediates(images)
    for name in ("stem", "bn1", "relu1", "conv1", "bn2", "relu2", "conv2", "bn3", "relu3"):
        v = values[name]
        got = v.v.double() * float(v.scale)
        assert torch.equal(got, seen[name].double()), name


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.float_ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
                self.float_ops.append(str(func))
        return out


@pytest.mark.parametrize(("preset", "full"), [("paper", False), ("int8", True)])
def test_data_path_is_integer_only(mnist, tmp_path, preset, full):
    """No floating-point tensor is produced between the uint8 pixels and the integer logits
    (the reference kernels; constants are prepared on the first call and cached)."""
    images, x, _ = mnist
    model = _model(preset, full, x)
    integer = IntegerModel.load(
        export_model(model, tmp_path / "m.safetensors", data="mnist"), backend="reference"
    )
    integer(images[:1])  # per-shape constants (valid-tap sums, byte tables)
    with _Recorder() as rec:
        logits = integer(images[:4])
    assert rec.float_ops == []
    assert logits.values.dtype == torch.int64


def test_missing_and_corrupt_exports(mnist, tmp_path):
    """A missing, truncated, foreign or incomplete file is a DeployError naming the file."""
    _, x, _ = mnist
    with pytest.raises(DeployError, match="no such exported model"):
        IntegerModel.load(tmp_path / "absent.safetensors")
    path = export_model(_model("paper", True, x), tmp_path / "m.safetensors", data="mnist")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DeployError, match="cut.safetensors"):
        IntegerModel.load(tmp_path / "cut.safetensors")
    save_file({"a": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"x": "y"})
    with pytest.raises(DeployError, match="not a wageubn integer model"):
        IntegerModel.load(tmp_path / "other.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "conv1.weight"}  # noqa: SIM118
    save_file(tensors, str(tmp_path / "partial.safetensors"), metadata=meta)
    with pytest.raises(DeployError, match="conv1.weight is missing"):
        IntegerModel.load(tmp_path / "partial.safetensors")


def test_unsupported_models_are_named(mnist, tmp_path):
    """A float (fp32) model, an unsupported module and an unsupported function each fail clearly."""
    _, x, _ = mnist
    fp32 = quantize_(create_model("small_cnn", width=4), "fp32")
    with pytest.raises(UnsupportedModuleError, match="not quantized"):
        export_model(fp32, tmp_path / "a.safetensors", data="mnist")
    wrapped = nn.Sequential(_model("paper", True, x), nn.Sigmoid())  # its layers hold "paper"
    with pytest.raises(UnsupportedModuleError, match="Sigmoid"):
        export_model(wrapped, tmp_path / "b.safetensors", data="mnist")

    class Doubled(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) * 2

    doubled = Doubled(_model("paper", True, x))
    with pytest.raises(UnsupportedModuleError, match="mul"):
        export_model(doubled, tmp_path / "c.safetensors", data="mnist")
    with pytest.raises(ValueError, match="normalization is unknown"):
        export_model(_model("paper", True, x), tmp_path / "d.safetensors")


@pytest.mark.parametrize("preset", ["paper", "int8"])
def test_dump_step_reads_back_and_verifies(mnist, tmp_path, preset):
    """Every role is stored as codes + exponent on its grid; the dump re-verifies bit for bit
    against a recomputation and the integer re-derivations; a flipped code is caught; the model
    passed to dump_step is left unchanged."""
    _, x, y = mnist
    model = _model(preset, False, x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = dump_step(
        model,
        (x[:8], y[:8]),
        {"lr": 0.0625, "seed": 3},
        tmp_path / "s.safetensors",
        model_name="small_cnn",
        model_kwargs={"width": 4},
    )
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        names = set(f.keys())
        w = f.get_tensor("conv1.W.codes")
        g = f.get_tensor("conv1.G.codes")
    for role in (
        "conv1.W",
        "conv1.Z",
        "conv1.E2",
        "conv1.G",
        "conv1.U0",
        "conv1.U",
        "conv1.momentum",
        "relu1.A",
        "relu1.E1",
        "bn2.mu",
        "bn2.sigma",
        "bn2.xhat",
        "bn2.gamma",
        "bn2.beta",
        "bn2.y",
        "bn2.gamma.G",
        "bn2.beta.U",
    ):
        assert f"{role}.codes" in names and f"{role}.exp" in meta, role
    assert w.dtype == torch.int8 and meta["conv1.W.exp"] == "-7" and int(w.abs().max()) <= 127
    assert g.dtype == torch.int8 and meta["conv1.G.exp"] == "-14"
    assert json.loads(meta["config"])["arithmetic"] == ("int8" if preset == "int8" else "simulated")
    result = verify_dump(path)
    assert result["mismatches"] == [] and result["compared"] == len(names)
    assert result["arithmetic_checks"] >= 6
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["conv2.U.codes"][0, 0, 0, 0] += 1
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(DeployError, match="conv2.U"):
        verify_dump(tmp_path / "bad.safetensors")


def _checkpoint(model: nn.Module, path) -> None:
    """A checkpoint in the trainer's format (wageubn.train.checkpoint) holding ``model``."""
    from wageubn.train.checkpoint import atomic_write_bytes, serialize_checkpoint
    from wageubn.train.runconfig import RunConfig

    cfg = RunConfig.from_dict(
        {
            "model": {"name": "small_cnn", "width": 4},
            "quant": {"preset": "paper", "quantize_stem": True, "quantize_head": True},
        }
    )
    payload = {
        "model": model.state_dict(),
        "optimizer": {},
        "batches": {},
        "rng": {},
        "epoch": 1,
        "step": 10,
        "accumulators": {},
        "run_config": cfg.to_dict(),
    }
    atomic_write_bytes(path, serialize_checkpoint(payload))


def test_cli_export_predict_dump(mnist, tmp_path, capsys):
    """The three commands through an argparse parser: export a checkpoint, predict on a .npy of
    images with 100% agreement against the checkpoint, dump a step that verifies."""
    images, x, y = mnist
    model = _model("paper", True, x)
    ckpt = tmp_path / "last.pt"
    _checkpoint(model, ckpt)
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers(dest="command"))

    def run(*argv: str) -> str:
        args = parser.parse_args(argv)
        assert args.func(args) == 0
        return capsys.readouterr().out

    out = tmp_path / "m.safetensors"
    assert "wrote" in run("export", str(ckpt), "--out", str(out))
    np.save(tmp_path / "x.npy", images[:32, 0].numpy())
    np.save(tmp_path / "y.npy", y[:32].numpy())
    text = run(
        "predict",
        str(out),
        "--images",
        str(tmp_path / "x.npy"),
        "--labels",
        str(tmp_path / "y.npy"),
        "--compare",
        str(ckpt),
    )
    assert "32 images" in text and "agreement" in text and "100.00%" in text and "images/s" in text
    step = tmp_path / "step.safetensors"
    run(
        "dump-step",
        "--model",
        "small_cnn",
        "--preset",
        "int8",
        "--width",
        "4",
        "--batch",
        "4",
        "--out",
        str(step),
    )
    assert verify_dump(step)["mismatches"] == []


def test_cli_export_into_a_missing_or_unwritable_directory(mnist, tmp_path, capsys, monkeypatch):
    """`wageubn export --out` into a missing directory, or one that refuses the write: one line,
    exit 2, nothing written, an existing export left as it was."""
    import errno
    import tempfile

    from wageubn import cli

    images, x, y = mnist
    ckpt = tmp_path / "last.pt"
    _checkpoint(_model("paper", True, x), ckpt)

    def error(*argv: str) -> str:
        assert cli.main(list(argv)) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("wageubn: error: --out "), lines
        return lines[0]

    missing = tmp_path / "no" / "such" / "m.safetensors"
    line = error("export", str(ckpt), "--out", str(missing))
    assert f"the directory {missing.parent} does not exist" in line and "mkdir -p" in line
    assert not (tmp_path / "no").exists()
    previous = tmp_path / "m.safetensors"
    previous.write_bytes(b"the previous export")

    def refuse(*args, **kwargs):  # a read-only directory (root ignores chmod)
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    line = error("export", str(ckpt), "--out", str(previous))
    assert "cannot write it (Permission denied)" in line and "existing file is unchanged" in line
    assert previous.read_bytes() == b"the previous export"
