"""Run configs from files and command lines: YAML in and out, ``--section.key value`` overrides.

``load_run_config(path, overrides)`` reads a YAML file (or nothing: all defaults), applies the
overrides and validates the result as a ``RunConfig`` (``wageubn.run.config``); every unknown key
is an error with a close-match suggestion, all collected into one ``RunConfigError``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .config import FREE_DICTS, QUANT_KEYS, SECTIONS, RunConfig, RunConfigError, suggest

__all__ = ["all_keys", "apply_overrides", "dump_yaml", "load_run_config", "parse_overrides"]


def all_keys() -> list[str]:
    """Every dotted key a run config accepts (``quant.*`` included)."""
    keys = [f"{s}.{f.name}" for s, c in SECTIONS.items() for f in dataclasses.fields(c)]
    return keys + [f"quant.{k}" for k in QUANT_KEYS]


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """``["--optim.lr", "0.05", "--train.epochs=2"]`` -> ``{"optim.lr": 0.05, "train.epochs": 2}``.

    Values are parsed as YAML scalars (``null``, ``true``, ``[30, 60]`` all work).
    """
    import yaml

    out: dict[str, Any] = {}
    errors: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            errors.append(f"unexpected argument {token!r}; overrides look like --optim.lr 0.05")
            i += 1
            continue
        key, sep, raw = token[2:].partition("=")
        if not sep:
            if i + 1 >= len(tokens):
                errors.append(f"override --{key} needs a value")
                break
            raw = tokens[i + 1]
            i += 1
        i += 1
        try:
            out[key] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            errors.append(f"override --{key}: cannot parse {raw!r} as a YAML value")
    if errors:
        raise RunConfigError("; ".join(errors))
    return out


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` with dotted ``overrides`` set; unknown keys are errors (collected)."""
    import copy

    values = copy.deepcopy(values)
    keys = all_keys()
    errors = []
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        free = any(dotted.startswith(p + ".") for p in FREE_DICTS)
        if dotted not in keys and not free:
            errors.append(f"unknown key {dotted!r}{suggest(dotted, keys)}")
            continue
        node = values
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    if errors:
        raise RunConfigError("override: " + "; ".join(errors))
    return values


def load_run_config(
    path: str | Path | None, overrides: list[str] | dict[str, Any] | None = None
) -> RunConfig:
    """Read ``path`` (YAML; None = all defaults), apply ``overrides``, validate.

    ``run_name`` defaults to the file's stem. Raises `RunConfigError` (every problem in one
    message) or ``FileNotFoundError``.
    """
    import yaml

    values: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise RunConfigError(f"{path}: no such config file")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise RunConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
        if not isinstance(values, dict):
            raise RunConfigError(f"{path}: expected a mapping at the top level")
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    values = apply_overrides(values, overrides or {})
    cfg = RunConfig.from_dict(values, source=source)
    if cfg.train.run_name is None and path is not None:
        cfg.train.run_name = path.stem
    return cfg


def dump_yaml(cfg: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
