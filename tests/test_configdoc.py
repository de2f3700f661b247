"""Run-config documentation: every key has a one-line doc in the code and a row in
docs/training.md, and `format_config` is YAML that loads back to the same config."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from wageubn.train import load_run_config
from wageubn.train.configdoc import format_config, key_docs
from wageubn.train.runconfig import _SECTIONS, all_keys

DOC = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def test_every_key_has_a_one_line_doc():
    docs = key_docs()
    assert set(docs) == set(all_keys())
    undocumented = [k for k, v in docs.items() if not v]
    assert undocumented == []
    assert all("\n" not in v for v in docs.values())


def test_training_md_documents_every_section_and_key():
    """docs/training.md has a `### \\`section\\`` heading per section and a table row per key."""
    text = DOC.read_text()
    sections = "`model`, `data`, `quant`, `optim`, `train`, `dist`, `diag`"
    assert f"seven sections — {sections}" in " ".join(text.split())
    assert list(_SECTIONS) == ["model", "data", "optim", "train", "dist", "diag"]  # + quant
    for section in _SECTIONS:
        match = re.search(rf"^### `{section}`.*?$(.*?)(?=^### |^## )", text, re.M | re.S)
        assert match, f"no ### `{section}` section in docs/training.md"
        rows = set(re.findall(r"^\| `(\w+)` \|", match.group(1), re.M))
        keys = {k.split(".", 1)[1] for k in all_keys() if k.startswith(section + ".")}
        assert keys <= rows, f"{section}: undocumented keys {sorted(keys - rows)}"


def test_format_config_loads_back_to_the_same_config():
    cfg = load_run_config(None, {"optim.lr": 0.125, "quant.preset": "int8", "quant.grad": 7,
                                 "model.kwargs": {"width": 8}, "diag.every": 5})  # fmt: skip
    text = format_config(cfg)
    values = yaml.safe_load(text)
    assert list(values) == ["model", "data", "quant", "optim", "train", "dist", "diag"]
    assert values["quant"] == {"preset": "int8", "grad": 7}  # resolved fields are comments
    assert load_run_config(None, _dotted(values)) == cfg
    for line in text.splitlines():
        if line.startswith("  ") and not line.startswith("  # resolved"):
            assert " # " in line and len(line.split(" # ", 1)[1]) > 10, line


def _dotted(values: dict) -> dict:
    return {
        f"{section}.{key}": value for section, keys in values.items() for key, value in keys.items()
    }
