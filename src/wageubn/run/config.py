"""The run config: a dataclass tree loaded from YAML plus dotted command-line overrides.

>>> from wageubn.run.overrides import load_run_config
>>> cfg = load_run_config("configs/mnist_cnn_paper.yaml", ["--optim.lr", "0.0625"])
>>> cfg.optim.lr, cfg.quant_config().error2
(0.0625, 8)

Every key, its default and its meaning is listed in docs/training.md. Unknown keys (in the YAML
file or in an override) are errors with a close-match suggestion; all errors of one config are
collected and raised together as one `RunConfigError`. Reading a YAML file and applying
``--key value`` overrides is ``wageubn.run.overrides``.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ..config import WAGEUBNConfig

__all__ = [
    "FREE_DICTS",
    "QUANT_KEYS",
    "SECTIONS",
    "DataSection",
    "ModelSection",
    "OptimSection",
    "RunConfig",
    "RunConfigError",
    "TrainSection",
    "suggest",
]


class RunConfigError(ValueError):
    """A run config is invalid; the message lists every problem found (one per line)."""


@dataclass
class ModelSection:
    name: str = "small_cnn"
    """A name from ``wageubn list-models``, or an importable model: ``torchvision:NAME`` or
    ``package.module:factory``."""
    width: int | None = None
    """``small_cnn`` only: channels of the first layer (None = the model's default, 16)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Any other keyword of the model constructor."""


@dataclass
class DataSection:
    name: str = "mnist"
    """A name from ``wageubn.data.list_datasets()``."""
    root: str | None = None
    """Where the files are (None = the data set's default; required for cifar and imagefolder)."""
    batch_size: int = 128
    """Training batch size."""
    eval_batch_size: int | None = None
    """Evaluation batch size (None = batch_size); no gradients, so it can be larger."""
    augment: bool = False
    """The data set's training augmentation (CIFAR crop+flip, ImageNet random-resized crop)."""
    image_size: int | None = None
    """Resize to image_size² (None = native; imagefolder: 224)."""
    num_workers: int = 0
    """DataLoader workers for per-file data sets (imagefolder); in-memory sets ignore it."""
    train_split: str = "train"
    """Split trained on."""
    eval_split: str = "test"
    """Split evaluated at the end of each epoch and by ``wageubn eval`` by default."""
    train_subset: int | None = None
    """Use only the first N training samples (tests, smoke runs)."""
    eval_subset: int | None = None
    """Evaluate only the first N samples of the eval split."""


@dataclass
class OptimSection:
    lr: float = 0.05
    """Base learning rate; quantized to ``quant.lr`` bits (10: a multiple of 2^-9) at each step.
    Must quantize to a non-zero value (10 bits: lr >= 2^-10)."""
    float_lr: float | None = None
    """lr of the parameters that stay float (stem, head, float biases), scheduled like lr; None = lr (the paper: one lr). Opt-in."""
    momentum: float = 0.25
    """Momentum m of QSGD: ``acc = m·acc + G`` (quantized to ``quant.momentum`` bits), in [0, 1]."""
    weight_decay: float = 1e-4
    """Added to the gradient before quantization; not on BN gamma/beta unless bn_weight_decay."""
    bn_weight_decay: bool = False
    """Also apply weight_decay to BN gamma/beta (off in the released recipe)."""
    lr_milestones: list[int] = field(default_factory=list)
    """Epochs at which the next lr multiplier and grad range take effect (strictly increasing)."""
    lr_multipliers: list[float] = field(default_factory=lambda: [1.0])
    """``len(lr_milestones) + 1`` multipliers of ``lr``; an epoch whose ``lr × multiplier``
    quantizes to 0 applies no update (QSGD warns once) and the run goes on."""
    grad_range_values: list[int] | None = None
    """``len(lr_milestones) + 1`` values of the gradient range dr (None = quant.grad_range)."""


@dataclass
class TrainSection:
    epochs: int = 1
    """Epochs to train (the schedule's epochs count from 0)."""
    seed: int = 0
    """Seeds the model init, the data order/augmentation and the stochastic-rounding generator."""
    out_dir: str = "runs"
    """Run directories are created under this folder."""
    run_name: str | None = None
    """Run directory name under out_dir (None = the config file's stem, or "run")."""
    checkpoint_every_steps: int | None = None
    """Also write last.pt every N steps (None: only at the end of each epoch and at max_steps)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps in total (None: run all epochs)."""
    log_every: int = 50
    """Steps per metrics row and log line."""
    eval_every_epochs: int = 1
    """Evaluate every N epochs (and always after the last one)."""
    threads: int | None = None
    """``torch.set_num_threads`` for the run (None: leave torch's default)."""
    channels_last: bool = False
    """NHWC memory format for the model and its inputs."""
    tensorboard: bool = False
    """Also write TensorBoard event files (needs the tensorboard package)."""

    device: str = "cpu"
    """``"cpu"`` or ``"cuda"`` (under torchrun each process takes ``cuda:LOCAL_RANK``)."""


@dataclass
class DistSection:
    """Data-parallel training under ``torchrun`` (ignored in a single process)."""

    backend: str = "auto"
    """``"auto"`` (gloo on CPU, nccl on CUDA), ``"gloo"`` or ``"nccl"``."""
    integer_allreduce: bool = True
    """Exchange gradients as integer codes with one agreed exponent per bucket (exact sums)."""
    code_bits: int = 24
    """Width of the gradient codes of the integer all-reduce (wageubn.distributed)."""
    timeout: float = 600.0
    """Seconds a process waits for the others in a collective (the all-reduce of each step, rank
    0's evaluation and checkpoint) before the run stops with an error instead of hanging on a
    process that stopped answering; raise it when rank 0's evaluation takes longer."""


@dataclass
class DiagSection:
    every: int | None = None
    """Record per-layer quantizer statistics every N steps into diagnostics.jsonl (None: off)."""


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "optim": OptimSection,
    "train": TrainSection,
    "dist": DistSection,
    "diag": DiagSection,
}
QUANT_KEYS = ["preset"] + [f.name for f in dataclasses.fields(WAGEUBNConfig) if f.name != "name"]
FREE_DICTS = {"model.kwargs"}  # sub-keys are passed through unchecked


@dataclass
class RunConfig:
    """Everything one training run needs; ``to_dict()`` round-trips through ``from_dict``."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    quant: dict[str, Any] = field(default_factory=lambda: {"preset": "paper"})
    """``preset`` plus any `WAGEUBNConfig` field overriding it (e.g. ``error2: 16``)."""
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    dist: DistSection = field(default_factory=DistSection)
    diag: DiagSection = field(default_factory=DiagSection)

    def quant_config(self) -> WAGEUBNConfig:
        return WAGEUBNConfig.from_dict(dict(self.quant))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> RunConfig:
        """Build and validate; raises `RunConfigError` listing every problem."""
        errors: list[str] = []
        if not isinstance(values, dict):
            raise RunConfigError(f"{source}: expected a mapping at the top level, got {values!r}")
        top = ["model", "data", "quant", "optim", "train", "dist", "diag"]
        for key in values:
            if key not in top:
                errors.append(f"unknown key {key!r}{suggest(str(key), top)}")
        sections: dict[str, Any] = {}
        for name, section_cls in SECTIONS.items():
            sections[name] = _build(section_cls, values.get(name) or {}, name, errors)
        quant = values.get("quant") or {"preset": "paper"}
        if not isinstance(quant, dict):
            errors.append(f"quant: expected a mapping, got {quant!r}")
            quant = {"preset": "paper"}
        for key in quant:
            if key not in QUANT_KEYS:
                errors.append(f"unknown key 'quant.{key}'{suggest(str(key), QUANT_KEYS, 'quant.')}")
        quant = {"preset": "paper", **{k: v for k, v in quant.items() if k in QUANT_KEYS}}
        cfg = cls(quant=quant, **sections)
        if not errors:
            errors.extend(cfg._semantic_errors())
        if errors:
            raise RunConfigError(f"{source}: " + "; ".join(errors))
        return cfg

    def _semantic_errors(self) -> list[str]:
        from ..data import list_datasets
        from ..models import list_models
        from ..models.registry import is_external, resolve_factory
        from ..optim.qsgd import quantized_lr
        from ..quant import check_grad_range

        errors: list[str] = []
        m, d, o, t = self.model, self.data, self.optim, self.train
        if is_external(m.name):
            try:
                resolve_factory(m.name)
            except ValueError as exc:
                errors.append(f"model.name: {exc}")
        elif m.name not in list_models():
            errors.append(
                f"model.name {m.name!r} is not a model{suggest(m.name, list_models())} (an "
                "importable model is written 'package.module:factory', e.g. "
                "'torchvision:mobilenet_v2')"
            )
        if d.name not in list_datasets():
            errors.append(
                f"data.name {d.name!r} is not a data set{suggest(d.name, list_datasets())}"
            )
        if d.name in ("imagefolder", "cifar10", "cifar100") and d.root is None:
            errors.append(f"data.root is required for {d.name}; pass --data.root DIR")
        positive = {
            "data.batch_size": d.batch_size,
            "data.eval_batch_size": d.eval_batch_size,
            "data.image_size": d.image_size,
            "data.train_subset": d.train_subset,
            "data.eval_subset": d.eval_subset,
            "model.width": m.width,
            "train.epochs": t.epochs,
            "train.checkpoint_every_steps": t.checkpoint_every_steps,
            "train.max_steps": t.max_steps,
            "train.log_every": t.log_every,
            "train.eval_every_epochs": t.eval_every_epochs,
            "train.threads": t.threads,
            "diag.every": self.diag.every,
        }
        for key, value in positive.items():
            if value is not None and value < 1:
                errors.append(f"{key} must be >= 1, got {value}")
        for key, value in (("data.num_workers", d.num_workers), ("train.seed", t.seed)):
            if value < 0:
                errors.append(f"{key} must be >= 0, got {value}")
        if not o.lr > 0:
            errors.append(f"optim.lr must be > 0, got {o.lr}; the paper's base lr is 0.05")
        if o.float_lr is not None and not o.float_lr > 0:
            errors.append(f"optim.float_lr must be > 0 or null (= optim.lr), got {o.float_lr}")
        if not 0 <= o.momentum <= 1:
            errors.append(
                f"optim.momentum must be in [0, 1], got {o.momentum}; the paper uses 0.25"
            )
        if not o.weight_decay >= 0:
            errors.append(f"optim.weight_decay must be >= 0, got {o.weight_decay}")
        if m.width is not None and m.name != "small_cnn":
            errors.append(f"model.width applies to small_cnn only, not {m.name!r}")
        ms = o.lr_milestones
        if any(b <= a for a, b in zip(ms, ms[1:], strict=False)) or any(e < 1 for e in ms):
            errors.append(f"optim.lr_milestones must be increasing epochs >= 1, got {ms}")
        if len(o.lr_multipliers) != len(ms) + 1:
            errors.append(
                f"optim.lr_multipliers needs len(lr_milestones) + 1 = {len(ms) + 1} values, "
                f"got {len(o.lr_multipliers)}"
            )
        drs = o.grad_range_values
        if drs is not None and len(drs) != len(ms) + 1:
            errors.append(
                f"optim.grad_range_values needs len(lr_milestones) + 1 = {len(ms) + 1} values, "
                f"got {len(drs)}"
            )
        try:
            qcfg = self.quant_config()
        except (TypeError, ValueError) as exc:
            errors.append("quant: " + " ".join(str(exc).split()))
            return errors
        for dr in drs or []:
            try:
                check_grad_range(dr)
                if qcfg.arithmetic == "int8" and dr > 128:
                    raise ValueError(f"arithmetic='int8' needs grad_range <= 128, got {dr}")
            except (TypeError, ValueError) as exc:
                errors.append(f"optim.grad_range_values: {exc}")
        # The base lr must train; a scheduled lr (lr × a multiplier) may decay to one that
        # quantizes to 0: those epochs apply no update (QSGD warns once) and the run finishes.
        for key, lr in (("lr", o.lr), ("float_lr", o.float_lr)):
            if lr is None or not lr > 0:
                continue
            try:
                lr_q = quantized_lr(lr, qcfg)
            except ValueError as exc:
                errors.append(f"optim.{key} {lr:g}: {exc}")
            else:  # whether quantized_lr raises for a zero result or returns it
                if lr_q == 0 and qcfg.lr is not None:  # (with lr bits: lr_q == lr > 0 otherwise)
                    errors.append(
                        f"optim.{key} {lr:g} quantizes to 0 with {qcfg.lr} lr bits; use "
                        f"{key} >= {2.0**-qcfg.lr:g} or more lr bits (--quant.lr)"
                    )
        if any(not m >= 0 for m in o.lr_multipliers):
            errors.append(f"optim.lr_multipliers must be >= 0, got {o.lr_multipliers}")
        if t.device not in ("cpu", "cuda"):
            errors.append(f"train.device must be 'cpu' or 'cuda', got {t.device!r}")
        if self.dist.backend not in ("auto", "gloo", "nccl"):
            errors.append(
                f"dist.backend must be 'auto', 'gloo' or 'nccl', got {self.dist.backend!r}"
                + suggest(str(self.dist.backend), ["auto", "gloo", "nccl"], "")
            )
        if not 2 <= self.dist.code_bits <= 31:
            errors.append(f"dist.code_bits must be in [2, 31], got {self.dist.code_bits}")
        if not 0 < self.dist.timeout < float("inf"):
            errors.append(f"dist.timeout must be a number of seconds > 0, got {self.dist.timeout}")
        if t.tensorboard:
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                errors.append(
                    "train.tensorboard: true needs the tensorboard package: "
                    'pip install "torch-wageubn[tensorboard]"'
                )
        return errors


def suggest(name: str, options: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def _check_type(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, value coerced to ``tp``) for the few types run configs use."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return type(None) in args, None
        return _check_type(value, next(a for a in args if a is not type(None)))
    if origin is list:
        if not isinstance(value, list | tuple):
            return False, value
        out = []
        for item in value:
            ok, item = _check_type(item, args[0])
            if not ok:
                return False, value
            out.append(item)
        return True, out
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                return False, value
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    return True, value


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _build(cls: type, values: Any, prefix: str, errors: list[str]) -> Any:
    if not isinstance(values, dict):
        errors.append(f"{prefix}: expected a mapping, got {values!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            errors.append(f"unknown key '{prefix}.{key}'{suggest(str(key), names, prefix + '.')}")
            continue
        ok, value = _check_type(value, hints[key])
        if not ok:
            errors.append(f"{prefix}.{key} must be {_type_name(hints[key])}, got {value!r}")
            continue
        kwargs[key] = value
    return cls(**kwargs)
