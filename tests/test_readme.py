"""Every ```python block of README.md runs as written (on the bundled MNIST, a few steps)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of every fenced ```python block."""
    blocks = []
    for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.M | re.S):
        blocks.append((text.count("\n", 0, m.start()) + 2, m.group(1)))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks():
    """The extraction finds the blocks (so the test below cannot pass by finding none)."""
    assert len(BLOCKS) >= 1
    assert python_blocks("x\n```python\na = 1\n```\n```console\n$ b\n```\n") == [(3, "a = 1\n")]


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_python_block_runs(line, code, tmp_path, monkeypatch):
    """Run in a fresh namespace in an empty directory: an exception fails the test."""
    for module in ("torchvision", "matplotlib", "tensorboard", "safetensors"):
        if re.search(rf"\b{module}\b", code):
            pytest.importorskip(module, reason=f"README.md:{line} needs {module}")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
