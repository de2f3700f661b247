"""Cost accounting: count the arithmetic and memory of one real WAGEUBN training step.

>>> from wageubn.profile import profile_step, format_profile
>>> p = profile_step("small_cnn", "int8", batch=8)
>>> p.count("executed", op="mac", fmt="int") > 0
True

``profile_step`` builds the model, quantizes it with the preset, runs one uncounted warm-up step
(kernel probes, momentum buffers) and then one counted step — forward, backward, ``QSGD.step`` —
under :class:`~wageubn.profile.counter.OpCounter`. See docs/profile.md for what is counted and how.
"""

from __future__ import annotations

import copy
import numbers
from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import WAGEUBNConfig
from ..convert import quantize_
from ..models import create_model, list_models, model_info
from ..optim import QSGD
from .counter import OpCounter, dtype_label, grid_bits
from .energy import MEMORY_PJ_PER_64BIT, SOURCE, TABLE, OpType
from .report import MemoryItem, Profile, format_comparison, format_profile, plot_profiles

__all__ = [
    "SOURCE",
    "TABLE",
    "OpType",
    "Profile",
    "ProfileError",
    "format_comparison",
    "format_profile",
    "grid_bits",
    "plot_profiles",
    "profile_step",
]


class ProfileError(ValueError):
    """A bad argument to ``profile_step`` or ``wageubn profile`` (the CLI prints it as one line)."""


def _config(preset: str | WAGEUBNConfig) -> WAGEUBNConfig:
    if isinstance(preset, WAGEUBNConfig):
        return preset
    if not isinstance(preset, str):
        raise TypeError(f"preset must be a preset name or a WAGEUBNConfig, got {preset!r}")
    try:
        return WAGEUBNConfig.preset(preset)
    except ValueError as exc:
        raise ProfileError(str(exc)) from None


def _input_shape(model: nn.Module, name: str, input_size) -> tuple[int, ...]:
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if first is None:
        raise ProfileError(f"profile_step: {name} has no Conv2d or Linear layer to profile")
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    if input_size is None:
        # a registered model's own image size (wageubn list-models); any other needs input_size
        shape = model_info(name).input_shape if name in list_models() else None
        if shape is None:
            raise ProfileError(
                f"profile_step: give input_size=(H, W) for {name} (no default input size)"
            )
        input_size = shape[1]
    size = (
        (input_size, input_size) if isinstance(input_size, numbers.Integral) else tuple(input_size)
    )
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or not all(isinstance(s, numbers.Integral) and int(s) >= 1 for s in size):
        raise ProfileError(
            f"profile_step: input_size must be S or (H, W) with positive ints, got {input_size!r}"
        )
    return (first.in_channels, int(size[0]), int(size[1]))


def _loss(out: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Cross-entropy on random labels for (N, classes) logits; else ``mean(out²)/2``."""
    if out.dim() == 2:
        target = torch.randint(0, out.shape[1], (out.shape[0],), generator=generator)
        return F.cross_entropy(out, target)
    return out.square().mean() / 2


def profile_step(
    model: str | nn.Module,
    preset: str | WAGEUBNConfig,
    batch: int,
    input_size: int | Sequence[int] | None = None,
    num_classes: int | None = None,
    *,
    lr: float = 0.0625,
    seed: int = 0,
    memory_level: str = "dram",
) -> Profile:
    """Count the ops, saved tensors, parameters and optimizer state of one training step.

    Args:
        model: a registered model name (``wageubn.models.list_models()``) or a float (or already
            quantized) ``nn.Module``; a module is deep-copied, never changed.
        preset: ``"fp32"``, ``"paper"``, ``"paper_e2_16"``, ``"int8"`` or a ``WAGEUBNConfig``.
        batch: images per step.
        input_size: ``S`` or ``(H, W)``; defaults to the registered model's size (28 or 32 or 224).
        num_classes: classifier width for a registered model (its default when ``None``).
        lr: the QSGD learning rate (must survive 10-bit quantization); momentum 1/4, wd 1e-4.
        seed: seeds the model init, the data, the labels and QSGD's generator (the caller's global
            RNG state is left untouched).
        memory_level: where memory traffic is costed: ``"dram"`` (1.3 nJ/64 bit, default),
            ``"dram-high"`` (2.6 nJ), ``"sram-1mb"``, ``"sram-32kb"``, ``"sram-8kb"``.

    The step is the second of two: the first (uncounted) runs the kernels' one-time probes and
    creates the momentum buffers, so the counted one is a steady-state step.
    """
    config = _config(preset)
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
        raise ProfileError(f"profile_step: batch must be a positive int, got {batch!r}")
    if memory_level not in MEMORY_PJ_PER_64BIT:
        raise ProfileError(
            f"profile_step: memory_level {memory_level!r} is not one of {sorted(MEMORY_PJ_PER_64BIT)}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(model, str):
            try:
                net = create_model(model, num_classes=num_classes)
            except ValueError as exc:
                raise ProfileError(f"profile_step: {exc}") from None
            name = model
        elif isinstance(model, nn.Module):
            net, name = copy.deepcopy(model), type(model).__name__
        else:
            raise TypeError(f"profile_step: model must be a name or an nn.Module, got {model!r}")
        shape = _input_shape(net, name, input_size)
        quantize_(net, config)
        net.train()
        gen = torch.Generator().manual_seed(seed)
        opt = QSGD(net.parameters(), lr=lr, config=config,
                   generator=torch.Generator().manual_seed(seed))  # fmt: skip
        x = torch.randn((batch, *shape), generator=gen)

        # warm-up: kernel probes run, momentum buffers exist; then the counted step
        opt.zero_grad(set_to_none=True)
        _loss(net(x), gen).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        counter = OpCounter()
        counter.track(net)
        try:
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t), counter:
                counter.phase = "forward"
                out = net(x)
                loss = _loss(out, gen)
                counter.phase = "backward"
                loss.backward()
                memory = _memory(net, opt, config)  # the gradients are complete here
                counter.phase = "update"
                opt.step()
        finally:
            counter.untrack()
        counter.finish()
    return Profile(
        model=name,
        preset=config.name,
        batch=int(batch),
        input_shape=shape,
        num_classes=int(out.shape[1]) if out.dim() == 2 else None,
        arithmetic=config.arithmetic,
        executed=dict(counter.executed),
        quantized=dict(counter.quantized),
        memory=memory + _saved_memory(counter),
        uncosted=dict(counter.uncosted),
        layers=[vars(c) for c in counter.layers],
        memory_level=memory_level,
        loss=loss.detach().item(),
    )


def _memory(net: nn.Module, opt: QSGD, config: WAGEUBNConfig) -> list[MemoryItem]:
    """Parameters, gradients and optimizer state by dtype; "as quantized" at their roles' bits
    (stored weights ``update``, G ``grad`` / BN ``bn_grad``, momentum ``momentum``; float roles
    at their dtype's width)."""
    acc: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0])
    grad_bits = {"weight": config.grad, "bn": config.bn_grad, "float": None}

    def add(role: str, t: torch.Tensor, bits: int | None) -> None:
        _, width, dname = dtype_label(t.dtype)
        row = acc[role, dname]
        row[0] += t.numel() * t.element_size()
        row[1] += t.numel()
        row[2] += t.numel() * (bits or width) / 8

    for group in opt.param_groups:
        for p in group["params"]:
            role = opt.role_of(p, group)
            quantized = role != "float"
            add("parameters", p, config.update if quantized else None)
            if p.grad is not None:
                add("gradients", p.grad, grad_bits[role])
            for buf in opt.state.get(p, {}).values():
                if isinstance(buf, torch.Tensor):
                    add("optimizer state", buf, config.momentum if quantized else None)
    return [MemoryItem(role, dname, int(b), int(n), q) for (role, dname), (b, n, q) in acc.items()]


def _saved_memory(counter: OpCounter) -> list[MemoryItem]:
    """Tensors saved for backward (one per storage, parameters excluded) by where they were saved
    (inside a quantized conv/linear layer or elsewhere) and dtype; "as quantized" at the measured
    grid width of each tensor (``grid_bits``)."""
    acc: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for s in counter.saved.values():
        _, width, dname = dtype_label(s.dtype)
        row = acc["saved: quant layers" if s.in_layer else "saved: other", dname]
        row[0] += s.nbytes
        row[1] += s.numel
        row[2] += s.numel * min(s.bits if s.bits is not None else width, width) / 8
    return [MemoryItem(role, d, int(b), int(n), q) for (role, d), (b, n, q) in acc.items()]
