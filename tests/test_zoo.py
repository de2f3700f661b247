"""Every classification model the installed torchvision builds: converted by ``quantize_`` and one
QSGD step taken at a small input size, with every activation quantized and every module traced.

The first model of each family runs always; the other variants are marked ``slow`` (``make
test`` runs them too; ``pytest -m "not slow"`` leaves them out for a quick look)."""

from __future__ import annotations

import ctypes
import gc

import pytest
import torch
import torch.nn.functional as F

from wageubn import QSGD, quantize_
from wageubn.convert import QUANT_MODULES, float_calls
from wageubn.nn import QuantConv2d, QuantLinear
from wageubn.optim import parameter_roles

torchvision = pytest.importorskip("torchvision")

NAMES = torchvision.models.list_models(module=torchvision.models)
FAMILY_FIRST = {  # the variant of each family that runs in the quick tier
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
    "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_large",
    "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf", "resnet18", "resnext50_32x4d",
    "shufflenet_v2_x0_5", "squeezenet1_0", "squeezenet1_1", "swin_t", "swin_v2_t", "vgg11_bn",
    "vit_b_32", "wide_resnet50_2",
}  # fmt: skip
SIZE = {  # the smallest inputs they take (ViTs: the image_size they are built for, KWARGS)
    "alexnet": 63, "inception_v3": 75, "maxvit_t": 224,
    **{n: 28 for n in NAMES if n.startswith("vit_") and n.endswith("14")},
}  # fmt: skip
KWARGS = {
    "inception_v3": {"aux_logits": False, "init_weights": False},
    "googlenet": {"init_weights": False},
    **{n: {"image_size": 28 if n.endswith("14") else 32} for n in NAMES if n.startswith("vit_")},
}
HUGE = 400e6  # parameters: needs ~4 bytes x 4 copies (weights, grads, momentum, U) of memory


@pytest.fixture(autouse=True)
def _return_freed_memory():
    """After each model, hand the freed heap back to the system: glibc keeps it otherwise, and
    the process that steps vgg after vgg then meets vit_h_14 (~17 GB) already ~8 GB large."""
    yield
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _available_memory() -> float:
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return float(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return float("inf")


# The torchvision 0.29 models above 100M parameters (listed: regnet's constructors cannot be
# counted on the meta device): from ~3 GB (vgg11) to ~17 GB (regnet_y_128gf, vit_h_14) while
# they step. `make test` runs them (marker `bigmem`) in a process of their own after the
# parallel run, never beside another test's memory.
BIGMEM_NAMES = {
    "convnext_large", "efficientnet_v2_l", "regnet_x_32gf", "regnet_y_32gf", "regnet_y_128gf",
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "vit_h_14", "vit_l_16", "vit_l_32", "wide_resnet101_2",
}  # fmt: skip


def _params(name):
    if name in FAMILY_FIRST:
        return name
    marks = [pytest.mark.slow] + ([pytest.mark.bigmem] if name in BIGMEM_NAMES else [])
    return pytest.param(name, marks=marks)


# Under pytest-xdist (`make test`) these run one after another on one worker.
@pytest.mark.xdist_group("zoo")
@pytest.mark.parametrize("name", [_params(n) for n in NAMES])
def test_torchvision_model_converts_and_steps(name):
    torch.manual_seed(0)
    try:  # count without allocating; some constructors read values (regnet) and cannot
        with torch.device("meta"):
            count = sum(p.numel() for p in torchvision.models.get_model(name, num_classes=10,
                                                                        **KWARGS.get(name, {})).parameters())  # fmt: skip
    except NotImplementedError:
        count = 0  # such a model is built for real below
    if count > HUGE and _available_memory() < count * 4 * 5:
        pytest.skip(f"{name}: {count / 1e6:.0f}M parameters need more memory than is available")
    model = torchvision.models.get_model(name, num_classes=10, **KWARGS.get(name, {}))
    quantize_(model, "paper")
    assert any(isinstance(m, QuantConv2d | QuantLinear) for m in model.modules())
    left = [n for n, m in model.named_modules() if type(m) in QUANT_MODULES]
    assert len(left) <= 2, left  # only the float stem and head, as the released code
    calls = float_calls(model)
    assert not [c for c in calls if c.kind == "activation"], calls  # every activation quantized
    assert not [c for c in calls if c.kind == "untraced"], calls  # every forward was read
    size = SIZE.get(name, 32)
    x = torch.randn(2, 3, size, size)
    opt = QSGD(model.parameters(), lr=0.05, config="paper",
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    weights = [n for n, r in parameter_roles(model).items() if r == "weight"]
    named = dict(model.named_parameters())
    for _ in range(2):  # a second step where the first reached no weight (ViT's zero head)
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        logits = logits[0] if isinstance(logits, tuple) else logits  # googlenet: (logits, aux...)
        assert logits.shape == (2, 10) and bool(torch.isfinite(logits).all())
        F.cross_entropy(logits, torch.tensor([1, 2])).backward()
        got = [n for n in weights if named[n].grad is not None and bool(named[n].grad.any())]
        before = {n: named[n].detach().clone() for n in got}
        opt.step()
        if got:
            break
    # every quantized weight that got a gradient moves: CQ maps its largest gradient element to
    # dr - 1 steps of 2^-14 (x lr), far above U's grid. (Other parameters may legitimately stay:
    # a gradient under Q(g, 15)'s step, a branch behind a layer scale that quantizes to 0.)
    assert got, "no quantized weight received a gradient in two steps"
    still = [n for n in got if torch.equal(before[n], named[n])]
    assert not still, still
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "convnext_tiny", "vit_b_32",
                                  "efficientnet_b0"])  # fmt: skip
def test_int8_step_on_modern_families(name):
    """int8 arithmetic through Hardswish/Hardsigmoid (mobilenet_v3), LayerNorm2d + CNBlock + GELU
    (convnext), LayerNorm + MultiheadAttention (vit), SiLU + Sigmoid (efficientnet)."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10, **KWARGS.get(name, {}))
    quantize_(model, "int8")
    opt = QSGD(model.parameters(), lr=0.05, config="int8")
    logits = model(torch.randn(2, 3, 32, 32))
    assert bool(torch.isfinite(logits).all())
    F.cross_entropy(logits, torch.tensor([3, 4])).backward()
    opt.step()
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
