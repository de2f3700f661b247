"""Imports go one way: the layer table of docs/ARCHITECTURE.md, checked on every import of src/wageubn.

Each module of ``src/wageubn`` is parsed (``ast``, nothing imported) and every ``import`` /
``from ... import`` in it — at module level, inside functions, under ``TYPE_CHECKING`` — is resolved
to the unit it reaches (``wageubn.<unit>``). A unit may import its own modules and units of lower
layers, nothing else.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "wageubn"
DOC = ROOT / "docs" / "ARCHITECTURE.md"

# module -> modules of its own unit it must not import (the rules inside a unit, in the doc)
FORBIDDEN_WITHIN = {
    "wageubn.deploy.runtime": (
        "wageubn.deploy.export",
        "wageubn.deploy.capture",
        "wageubn.deploy.golden",
        "wageubn.deploy.verify",
        "wageubn.deploy.command",
    ),
    "wageubn.deploy.format": (
        "wageubn.deploy.export",
        "wageubn.deploy.capture",
        "wageubn.deploy.runtime",
    ),
}
FACADE = "wageubn"  # the package root re-exports the public API: it may import any unit


def read_layers(text: str) -> dict[str, int]:
    """``{unit: layer}`` from the table of docs/ARCHITECTURE.md (rows ``| n | `a`, `b` | ... |``)."""
    layers: dict[str, int] = {}
    for m in re.finditer(r"^\| (\d+) \| ((?:`[\w.]+`(?:, )?)+) \|", text, re.M):
        for unit in re.findall(r"`([\w.]+)`", m.group(2)):
            layers[unit] = int(m.group(1))
    return layers


LAYERS = read_layers(DOC.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. wageubn.deploy.export
    target: str  # the imported module, e.g. wageubn.train.checkpoint
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool) -> list[Import]:
    """Every import of ``wageubn`` modules in ``source`` (the text of ``module``), resolved."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            prefix = ".".join(base + ([node.module] if node.module else []))
            # ``from pkg import name`` may import the submodule pkg.name: count both; from the
            # root (``from .. import kernels``) only the names: the unit, or a root attribute
            names = [f"{prefix}.{a.name}" for a in node.names if a.name != "*"]
            targets = names if prefix == "wageubn" and names else [prefix, *names]
        else:
            continue
        for target in targets:
            if target == "wageubn" or target.startswith("wageubn."):
                found.append(Import(module, target, node.lineno))
    return found


def unit_of(name: str) -> str:
    """``wageubn.deploy.export`` -> ``deploy``; the package root itself -> ``wageubn``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else FACADE


def violations(imports: list[Import], layers: dict[str, int]) -> list[str]:
    """The imports that go against the layers (or reach a unit the table does not list)."""
    bad = []
    seen = set()
    for imp in imports:
        here, there = unit_of(imp.module), unit_of(imp.target)
        if (imp.module, imp.line, there) in seen and imp.target not in FORBIDDEN_WITHIN.get(
            imp.module, ()
        ):
            continue  # ``from ..train.checkpoint import x`` is one import of train, not two
        seen.add((imp.module, imp.line, there))
        where = f"{imp.module}:{imp.line} imports {imp.target}"
        if here == FACADE or here == there:
            if imp.target in FORBIDDEN_WITHIN.get(imp.module, ()):
                bad.append(f"{where}: forbidden inside {here} (docs/ARCHITECTURE.md)")
            continue
        if there == FACADE or there not in layers:  # the root, or a name it defines
            bad.append(f"{where}: only the root imports the root (the version is core.version)")
            continue
        if layers[there] >= layers[here]:
            bad.append(
                f"{where}: {here} (layer {layers[here]}) may import only layers below it, and "
                f"{there} is layer {layers[there]}"
            )
    return bad


def _package_imports() -> list[Import]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        out += imports_of(
            path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py"
        )
    return out


def test_the_doc_table_lists_every_unit():
    """Every top-level module and subpackage has a layer in docs/ARCHITECTURE.md (so the check
    below covers all of them), and the table has no stale name."""
    units = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    units |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert units == set(LAYERS), (sorted(units - set(LAYERS)), sorted(set(LAYERS) - units))
    assert LAYERS["core"] == 0 and LAYERS["cli"] == max(LAYERS.values()) - 1


def test_imports_go_down_the_layers():
    """No module of src/wageubn imports a unit of its own layer or one above it."""
    imports = _package_imports()
    assert len(imports) > 200  # the parse found the package's imports
    assert violations(imports, LAYERS) == []


@pytest.mark.parametrize(
    "module, source, what",
    [
        (
            "wageubn.deploy.command",
            "from ..cli import UsageError\n",
            "deploy (layer 9) may import only",
        ),
        (
            "wageubn.deploy.export",
            "def f():\n    from ..train.checkpoint import x\n",
            "train is layer 9",
        ),
        ("wageubn.nn.layers", "from .. import optim\n", "optim is layer 6"),
        ("wageubn.train.loop", "import wageubn\n", "only the root imports the root"),
        ("wageubn.cli", "from . import __version__\n", "only the root imports the root"),
        ("wageubn.deploy.runtime", "from .export import FORMAT\n", "forbidden inside deploy"),
    ],
)
def test_an_import_against_the_direction_is_caught(module, source, what):
    """The checker fails on each kind of wrong import (so the test above can fail)."""
    found = violations(imports_of(source, module, is_package=False), LAYERS)
    assert len(found) == 1 and what in found[0], found


def test_allowed_imports_pass():
    ok = "from ..core.errors import UsageError\nfrom ..run import model_from_checkpoint\nfrom .format import FORMAT\n"
    assert violations(imports_of(ok, "wageubn.deploy.runtime", is_package=False), LAYERS) == []


MAX_LINES = 400


def test_every_module_says_what_it_owns_and_stays_short():
    """Each module opens with a docstring (what it owns) and has at most 400 lines."""
    missing, long = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = module_name(path)
        if not ast.get_docstring(ast.parse(text)):
            missing.append(name)
        if len(text.splitlines()) > MAX_LINES:
            long.append(f"{name}: {len(text.splitlines())} lines")
    assert missing == [] and long == [], (missing, long)
