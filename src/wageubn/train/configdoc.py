"""``wageubn config show``: a resolved run config as commented YAML, one line per key.

>>> print(format_config(load_run_config("configs/mnist_cnn_paper.yaml")))  # doctest: +SKIP
model:
  name: small_cnn     # A name from ``wageubn list-models``. [default: small_cnn]
  ...

Every key's comment is its attribute docstring in `wageubn.train.runconfig` (or, for ``quant``,
in `wageubn.config.WAGEUBNConfig`) cut to its first sentence, and its default. The output is
valid YAML that loads back to the same config (``wageubn config show X > my.yaml``).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from functools import cache
from typing import Any

from ..config import WAGEUBNConfig
from ..run.config import SECTIONS, RunConfig

__all__ = ["attribute_docs", "format_config", "key_docs"]


@cache
def attribute_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` for the string literals that follow a class's field assignments."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in zip(body, body[1:], strict=False):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            text = " ".join(following.value.value.split())
            docs[node.target.id] = text.replace("``", "`")  # reST literals read as Markdown
    return docs


def _one_line(doc: str) -> str:
    """The first sentence of ``doc`` (a period followed by a space ends it)."""
    head, sep, _ = doc.partition(". ")
    return head + "." if sep else doc


def key_docs() -> dict[str, str]:
    """One-line documentation of every dotted run-config key (``quant.*`` included)."""
    out = {}
    for section, cls in SECTIONS.items():
        docs = attribute_docs(cls)
        for f in dataclasses.fields(cls):
            out[f"{section}.{f.name}"] = _one_line(docs.get(f.name, ""))
    out["quant.preset"] = "paper, paper_e2_16, fp32 or int8; the other quant keys override it."
    qdocs = attribute_docs(WAGEUBNConfig)
    for f in dataclasses.fields(WAGEUBNConfig):
        if f.name != "name":
            out[f"quant.{f.name}"] = _one_line(qdocs.get(f.name, ""))
    return out


def _yaml(value: Any) -> str:
    """``value`` as a one-line YAML flow scalar or collection."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def _line(key: str, value: Any, comment: str, indent: str = "  ") -> str:
    return f"{indent}{key + ': ' + _yaml(value):<34} # {comment}"


def format_config(cfg: RunConfig, *, source: str | None = None) -> str:
    """``cfg`` as YAML, each key commented with its one-line doc and default.

    ``quant`` lists the keys that are set (``preset`` and its overrides) as YAML, then every
    field of the resolved `WAGEUBNConfig` as comments (they can be set there too).
    """
    docs = key_docs()
    values = cfg.to_dict()
    lines = [
        f"# The resolved run config{' of ' + source if source else ''}: every key, its value, "
        "what it means [its default].",
        "# Valid YAML: save it and pass it to `wageubn train`; override any key as --section.key VALUE.",
    ]
    for section, cls in SECTIONS.items():
        if section == "optim":  # the shipped configs' order: quant between data and optim
            lines += _quant_lines(cfg, docs)
        lines.append(f"{section}:")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]  # a field without a default has a factory
            key = f"{section}.{f.name}"
            lines.append(
                _line(f.name, values[section][f.name], f"{docs[key]} [default: {_yaml(default)}]")
            )
    return "\n".join(lines) + "\n"


def _quant_lines(cfg: RunConfig, docs: dict[str, str]) -> list[str]:
    preset = cfg.quant.get("preset", "paper")
    base = WAGEUBNConfig.preset(preset)
    resolved = cfg.quant_config()
    lines = ["quant:", _line("preset", preset, f"{docs['quant.preset']} [default: paper]")]
    for key, value in cfg.quant.items():
        if key != "preset":
            lines.append(
                _line(
                    key,
                    value,
                    f"{docs['quant.' + key]} [preset {preset}: {_yaml(getattr(base, key))}]",
                )  # fmt: skip
            )
    lines.append(f"  # resolved (preset {preset} + the keys above); any of these can be set here:")
    for f in dataclasses.fields(WAGEUBNConfig):
        if f.name == "name" or f.name in cfg.quant:
            continue
        lines.append(_line("# " + f.name, getattr(resolved, f.name), docs[f"quant.{f.name}"]))
    return lines
