"""``ablate(config)``: train one recipe once per variant and compare accuracy (docs/accuracy.md).

The variants of a config whose quant section is ``Q`` (every name is a ``--variants`` choice):

=================  ==============================================================================
``baseline``       ``Q`` as given
``fp32``           every role float
``float-X``        ``Q`` with the roles of data path X left in float (one path at a time)
``only-X``         X quantized as in ``Q``, every other role float (each path alone)
``stem-head``      ``Q`` with the float first conv and last linear quantized too
=================  ==============================================================================

X is one of `GROUPS`: W, A, G, E1, E2, U (``update`` and ``weight_init``: the stored weights'
grid after each update and at initialization), momentum, BN (the five ``bn_*`` roles and
``bn_grad``) and lr. A variant that would change nothing (``float-G`` when G is already float) is
left out of the default set; asking for it is an error. ``arithmetic="int8"`` multiplies int8 codes
only: a variant that leaves W, A, G, E1 or E2 in float runs in ``"simulated"`` arithmetic, and
says so.

Each variant is an ordinary run directory ``OUT/VARIANT/`` (``OUT`` defaults to
``TRAIN.OUT_DIR/RUN_NAME-ablate``), so an interrupted ablation continues where it stopped: a
finished variant is read back from its files, an interrupted (or failed) one resumes from its
``last.pt`` like ``wageubn train --resume``, a missing one is trained. Results go to
``OUT/ablation.json``, ``OUT/ablation.txt`` (the table) and ``OUT/ablation.png`` (the bar chart,
``wageubn.train.ablation_report``).

>>> rows = ablate("configs/mnist_cnn_paper.yaml", ["--train.max_steps", "50"],
...               variants=["baseline", "fp32", "float-G"])  # doctest: +SKIP
>>> [(r["variant"], r["acc"], r["gap_to_baseline_pts"]) for r in rows]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from ..config import ROLES, WAGEUBNConfig
from ..core.progress import Progress
from ..run.config import RunConfig, RunConfigError
from ..run.overrides import apply_overrides, load_run_config, parse_overrides
from .ablation_report import require_plot, write_results
from .lifecycle import describe_status
from .loop import TrainingError, TrainingIOError, train
from .metrics import read_metrics
from .resume import recipe_differences

__all__ = ["GROUPS", "VARIANTS", "AblationError", "Variant", "ablate", "variants_for"]

log = logging.getLogger("wageubn.train")

# data path -> its roles in WAGEUBNConfig (every role is in exactly one path)
GROUPS: dict[str, tuple[str, ...]] = {
    "W": ("weight",),
    "A": ("activation",),
    "G": ("grad",),
    "E1": ("error1",),
    "E2": ("error2",),
    "U": ("update", "weight_init"),
    "momentum": ("momentum",),
    "BN": ("bn_gamma", "bn_beta", "bn_xhat", "bn_mean", "bn_std", "bn_grad"),
    "lr": ("lr",),
}
VARIANTS: tuple[str, ...] = (
    "baseline",
    "fp32",
    *(f"float-{g}" for g in GROUPS),
    *(f"only-{g}" for g in GROUPS),
    "stem-head",
)
"""Every variant name, in the order of the table."""

_GEMM_ROLES = ("weight", "activation", "grad", "error1", "error2")  # int8 arithmetic's operands


class AblationError(ValueError):
    """A bad variant name, a config with nothing to ablate, or an ablation directory that cannot
    be continued (unreadable, or written by another recipe); the message says what to do."""


@dataclass
class Variant:
    """One variant: its name, the quant keys it sets on top of the config's and what in words."""

    name: str
    changes: dict[str, Any] = field(default_factory=dict)
    changed: str = ""


def _roles_text(roles: list[str]) -> str:
    if len(roles) > 2 and all(r.startswith("bn_") for r in roles):
        return "bn_*" if len(roles) == len(GROUPS["BN"]) else f"bn_* ({len(roles)} roles)"
    return ", ".join(roles)


def _describe(cfg: RunConfig) -> str:
    extra = [f"{k}={v}" for k, v in cfg.quant.items() if k != "preset"]
    return f"preset {cfg.quant.get('preset', 'paper')}" + (f", {', '.join(extra)}" if extra else "")


def _variant(name: str, q: WAGEUBNConfig, cfg: RunConfig) -> Variant | str:
    """The variant ``name`` of quant config ``q``, or why it does not apply."""
    quantized = [r for r in ROLES if getattr(q, r) is not None]
    if name == "baseline":
        return Variant(name, {}, f"none ({_describe(cfg)})")
    if name == "fp32":
        v = Variant(name, {r: None for r in quantized}, "every role float")
    elif name == "stem-head":
        if q.quantize_stem and q.quantize_head:
            return "stem-head: the config quantizes the stem and the head already"
        v = Variant(name, {"quantize_stem": True, "quantize_head": True}, "stem and head quantized")
    else:
        kind, _, group = name.partition("-")
        roles = [r for r in GROUPS[group] if r in quantized]
        if not roles:
            return f"{name}: the config keeps {group} ({', '.join(GROUPS[group])}) in float"
        if kind == "float":
            v = Variant(name, {r: None for r in roles}, f"{_roles_text(roles)} float")
        else:
            others = [r for r in quantized if r not in roles]
            if not others:
                return f"{name}: the config quantizes nothing but {group}; that is the baseline"
            bits = sorted({getattr(q, r) for r in roles})
            what = f"only {_roles_text(roles)} quantized ({'/'.join(map(str, bits))} bits)"
            v = Variant(name, {r: None for r in others}, what)
    if q.arithmetic == "int8" and any(v.changes.get(r, getattr(q, r)) is None for r in _GEMM_ROLES):
        v.changes["arithmetic"] = "simulated"
        v.changed += "; arithmetic simulated (int8 needs W, A, G, E1, E2 quantized)"
    return v


def variants_for(config: RunConfig) -> dict[str, Variant | str]:
    """Every name of `VARIANTS` -> its `Variant`, or the reason it does not apply to ``config``."""
    q = config.quant_config()
    return {name: _variant(name, q, config) for name in VARIANTS}


def _select(requested: list[str] | str | None, table: dict[str, Variant | str]) -> list[str]:
    if requested is None:
        return [n for n in VARIANTS if isinstance(table[n], Variant)]
    if isinstance(requested, str):
        requested = [requested]
    if not isinstance(requested, list | tuple) or not all(isinstance(r, str) for r in requested):
        raise TypeError(f"ablate: variants must be a list of names, got {requested!r}")
    names = [n.strip() for item in requested for n in item.split(",") if n.strip()]
    if not names:
        raise AblationError(f"ablate: no variant named; choose from {', '.join(VARIANTS)}")
    by_lower = {n.lower(): n for n in VARIANTS}
    out: list[str] = []
    for raw in names:
        name = by_lower.get(raw.lower())
        if name is None:
            close = difflib.get_close_matches(raw, VARIANTS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise AblationError(
                f"ablate: unknown variant {raw!r}{hint}; variants: {', '.join(VARIANTS)}"
            )
        if isinstance(table[name], str):
            raise AblationError(f"ablate: variant {table[name]}; leave it out of --variants")
        if name not in out:
            out.append(name)
    return out


def _as_run_config(
    config: RunConfig | dict[str, Any] | str | Path | None,
    overrides: list[str] | dict[str, Any] | None,
) -> RunConfig:
    if isinstance(config, str | Path) or config is None:
        return load_run_config(config, overrides)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    if isinstance(config, RunConfig):
        values = config.to_dict()
    elif isinstance(config, dict):
        values = copy.deepcopy(config)
    else:
        raise TypeError(
            f"ablate: config must be a RunConfig, dict or path, got {type(config).__name__}"
        )
    return RunConfig.from_dict(apply_overrides(values, overrides or {}))


def variant_config(config: RunConfig, variant: Variant, out: Path) -> RunConfig:
    """``config`` with the variant's quant keys, training into ``out/variant.name``."""
    values = config.to_dict()
    values["quant"] = {**config.quant, **variant.changes}
    values["train"].update(out_dir=str(out), run_name=variant.name)
    try:
        return RunConfig.from_dict(values, source=f"variant {variant.name}")
    except RunConfigError as exc:
        raise AblationError(f"ablate: {exc}") from None


# -- a variant's run directory ---------------------------------------------------------------


def _read(path: Path, what: str) -> Any:
    import yaml

    try:
        text = path.read_text()
        value = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise AblationError(
            f"{path}: cannot be read ({' '.join(str(exc).split())[:120]}); remove "
            f"{path.parent} to train {what} again, or pass another --out"
        ) from None
    if not isinstance(value, dict):
        raise AblationError(f"{path}: not a mapping; remove {path.parent} to train {what} again")
    return value


def _state(run_dir: Path, vcfg: RunConfig, name: str) -> str:
    """ "new", "finished", "resume" (has last.pt) or "restart" (stopped before its first
    checkpoint); raises `AblationError` for a directory that cannot be continued."""
    if not run_dir.exists():
        return "new"
    if not run_dir.is_dir():
        raise AblationError(f"{run_dir}: not a directory; remove it or pass another --out")
    if not any(run_dir.iterdir()):
        return "new"
    if not (run_dir / "run.json").is_file() or not (run_dir / "config.yaml").is_file():
        raise AblationError(
            f"{run_dir}: not a run directory (no run.json or config.yaml); remove it or pass "
            "another --out"
        )
    info = _read(run_dir / "run.json", name)
    try:
        saved = RunConfig.from_dict(_read(run_dir / "config.yaml", name), source="config.yaml")
    except RunConfigError as exc:
        raise AblationError(f"{run_dir}/{exc}; remove {run_dir} to train {name} again") from None
    length = ("train.epochs", "train.max_steps")  # a longer run continues the variant
    diffs = recipe_differences(vcfg, saved.to_dict(), also=length)
    recipe = [f"{k} {then!r} there vs {now!r} now" for k, then, now in diffs if k not in length]
    if recipe:
        raise AblationError(
            f"{run_dir} was trained with another recipe ({'; '.join(recipe)}); pass another "
            f"--out for this one, or remove {run_dir} to train {name} again"
        )
    status, running = describe_status(info)
    if running:
        raise AblationError(f"{run_dir}: {status}; wait for it to end or stop it, then rerun")
    finished = status == "completed" or status.startswith("stopped at max_steps=")
    if finished and not diffs:
        return "finished"
    return "resume" if (run_dir / "last.pt").is_file() else "restart"


def _row(variant: Variant, run_dir: Path, *, reused: bool) -> dict[str, Any]:
    """The table row of a variant from its run directory (run.json and metrics.jsonl)."""
    status = str(_read(run_dir / "run.json", variant.name).get("status", "unknown"))
    rows = read_metrics(run_dir)
    evals = [r for r in rows if r.get("kind") == "eval"]
    ok = status == "completed" or status.startswith("stopped at max_steps=")
    if ok and (not evals or evals[-1]["step"] != rows[-1]["step"]):
        raise AblationError(
            f"{run_dir}/metrics.jsonl has no evaluation at the end of the run although run.json "
            f"says {status!r}; remove {run_dir} to train {variant.name} again"
        )
    last = evals[-1] if ok else None
    # the training loss it ended at (the last epoch's mean, or the last logged window): a variant
    # that tests worse *and* trains to a higher loss underfits, one that trains lower overfits
    logged = [r for r in rows if r.get("kind") in ("train", "epoch") and "loss" in r]
    return {
        "variant": variant.name,
        "changed": variant.changed,
        "quant": dict(variant.changes),
        "status": status,
        "acc": last["acc"] if last else None,
        "loss": last["loss"] if last else None,
        "train_loss": logged[-1]["loss"] if ok and logged else None,
        "eval_split": last.get("eval_split") if last else None,
        "gap_to_baseline_pts": None,
        "gap_to_fp32_pts": None,
        "step": rows[-1]["step"] if rows else 0,
        "wall_s": rows[-1].get("elapsed_s") if rows else None,
        "run_dir": str(run_dir),
        "reused": reused,
    }


def _run_variant(
    config: RunConfig, variant: Variant, out: Path, train_kwargs: dict[str, Any]
) -> dict[str, Any]:
    vcfg = variant_config(config, variant, out)
    run_dir = out / variant.name
    state = _state(run_dir, vcfg, variant.name)
    if state == "finished":
        log.info("ablate %s: finished earlier, read back from %s", variant.name, run_dir)
        return _row(variant, run_dir, reused=True)
    if state == "restart":  # no checkpoint: nothing to keep but its logs
        log.warning("ablate %s: %s stopped before its first checkpoint; starting over",
                    variant.name, run_dir)  # fmt: skip
        shutil.rmtree(run_dir)
    log.info("ablate %s (%s): %s %s", variant.name, variant.changed,
             "resuming" if state == "resume" else "training", run_dir)  # fmt: skip
    try:
        train(vcfg, resume=run_dir if state == "resume" else None, **train_kwargs)
    except TrainingIOError:
        raise  # a file to fix: the ablation stops
    except TrainingError as exc:  # the variant diverged: that is a result too
        log.warning("ablate %s: %s", variant.name, exc)
    return _row(variant, run_dir, reused=False)


def _reference(name: str, rows: list[dict[str, Any]], config: RunConfig, out: Path) -> Any:
    """The accuracy of ``baseline`` or ``fp32``: from this call's rows, else from a finished run
    of an earlier call in the same directory, else None."""
    for r in rows:
        if r["variant"] == name:
            return r["acc"]
    variant = variants_for(config)[name]
    if not isinstance(variant, Variant) or not (out / name).is_dir():
        return None
    try:
        if _state(out / name, variant_config(config, variant, out), name) == "finished":
            return _row(variant, out / name, reused=True)["acc"]
    except AblationError as exc:
        log.warning("ablate: %s is not used as a reference: %s", name, exc)
    return None


def _with_gaps(rows: list[dict[str, Any]], config: RunConfig, out: Path) -> None:
    for name in ("baseline", "fp32"):
        ref = _reference(name, rows, config, out)
        for r in rows:
            if ref is not None and r["acc"] is not None:
                r[f"gap_to_{name}_pts"] = round(100 * (r["acc"] - ref), 6)


def ablate(
    config: RunConfig | dict[str, Any] | str | Path | None,
    overrides: list[str] | dict[str, Any] | None = None,
    variants: list[str] | str | None = None,
    out: str | Path | None = None,
    *,
    plot: bool = True,
    progress: Progress | None = None,
    command: list[str] | None = None,
    handle_signals: bool = False,
) -> list[dict[str, Any]]:
    """Train ``config`` (a run config, its dict or a YAML path, plus dotted ``overrides`` as for
    ``wageubn train``) once per variant and return one row per variant, in `VARIANTS` order.

    ``variants``: names (or one comma-separated string) from `VARIANTS`; None = every variant
    that applies. ``out``: the ablation directory (default ``TRAIN.OUT_DIR/RUN_NAME-ablate``).
    A row: ``variant``, ``changed`` (in words), ``quant`` (the keys set on the config's quant
    section), ``status`` (run.json's), ``acc``/``loss`` (the last evaluation on ``eval_split``,
    None when the run failed), ``train_loss`` (the last logged training loss: the last epoch's
    mean), ``gap_to_baseline_pts``/``gap_to_fp32_pts`` (accuracy minus the
    reference's, in percentage points; None without that reference), ``step``, ``wall_s``
    (training seconds over all resumes), ``run_dir``, ``reused`` (read back, not trained now).
    Writes ``OUT/ablation.json``, ``OUT/ablation.txt`` and, with ``plot``, ``OUT/ablation.png``
    (needs matplotlib, checked before training). A variant whose training fails (non-finite loss)
    is a row with status ``failed: ...``; a failed write raises `TrainingIOError`. Raises
    `AblationError` for bad names, an fp32 config (nothing to ablate) or an ablation directory
    that cannot be continued; ``progress``, ``command``, ``handle_signals``: as for `train`.
    """
    cfg = _as_run_config(config, overrides)
    if not cfg.quant_config().quantizes_anything:
        raise AblationError(
            f"ablate: the config quantizes nothing ({_describe(cfg)}): nothing to ablate; ablate "
            "a quantizing config (e.g. --quant.preset paper)"
        )
    table = variants_for(cfg)
    names = _select(variants, table)
    if plot:
        require_plot()
    if out is None:
        out = Path(cfg.train.out_dir).expanduser() / f"{cfg.train.run_name or 'run'}-ablate"
    out = Path(out)
    log.info("ablate: %d variant(s) into %s: %s", len(names), out, ", ".join(names))
    kwargs = {"progress": progress, "command": command, "handle_signals": handle_signals}
    rows: list[dict[str, Any]] = []
    for name in names:
        variant = cast(Variant, table[name])  # _select returns applicable names only
        rows.append(_run_variant(cfg, variant, out, kwargs))
        _with_gaps(rows, cfg, out)
        write_results(out, cfg.to_dict(), rows, final=False)  # partial results survive a stop
    write_results(out, cfg.to_dict(), rows, plot=plot)
    return rows
