"""``Profile``: the counts of one training step, their energy and area, as tables, JSON and a plot.

Two views of the same step (docs/profile.md):

* ``"executed"`` — every op typed by the dtypes it actually ran on (a float32 convolution is an
  fp32 MAC even when its operands lie on an 8-bit grid);
* ``"quantized"`` — the paper's accounting: the products of quantized conv/linear layers at their
  roles' bit widths (``A×W``, ``E2×W``, ``E2×A``), everything else as executed; memory at the
  bits its values need (roles' bits for parameters, gradients and optimizer state, the measured
  grid of each saved tensor).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from .energy import MEMORY_PJ_PER_64BIT, SOURCE, OpType, memory_energy_pj, op_area_um2, op_energy_pj

__all__ = ["MemoryItem", "Profile", "VIEWS", "format_comparison", "format_profile", "plot_profiles"]

VIEWS = ("executed", "quantized")
_OP_ORDER = {"mac": 0, "add": 1, "mul": 2}


@dataclass
class MemoryItem:
    """Bytes of one tensor role in one dtype, and the bits its values need ("as quantized")."""

    role: str  # "parameters", "gradients", "optimizer state", "saved: quant layers", "saved: other"
    dtype: str
    nbytes: int
    numel: int
    qbytes: float  # numel · quantized bits / 8 (bit-packed)

    @property
    def qbits(self) -> float:
        return 8 * self.qbytes / self.numel if self.numel else 0.0


@dataclass
class Profile:
    """Counts of one training step (forward, backward, optimizer update) and their costs."""

    model: str
    preset: str
    batch: int
    input_shape: tuple[int, ...]
    num_classes: int | None
    arithmetic: str
    executed: dict[tuple[str, str, OpType], int]  # (phase, direction, type) -> count
    quantized: dict[tuple[str, str, OpType], int]
    memory: list[MemoryItem]
    uncosted: dict[str, int] = field(default_factory=dict)  # op name -> elements
    layers: list[dict[str, Any]] = field(default_factory=list)
    memory_level: str = "dram"
    loss: float = float("nan")

    def _view(self, view: str) -> dict[tuple[str, str, OpType], int]:
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        return self.executed if view == "executed" else self.quantized

    # -- counts ----------------------------------------------------------------------------------
    def ops(self, view: str = "executed") -> dict[OpType, int]:
        """Counts per op type, summed over phases; MACs first, then by energy."""
        total: dict[OpType, int] = defaultdict(int)
        for (_, _, t), n in self._view(view).items():
            total[t] += n
        order = sorted(total, key=lambda t: (_OP_ORDER[t.op], -total[t] * op_energy_pj(t)))
        return {t: total[t] for t in order}

    def count(
        self,
        view: str = "executed",
        op: str | None = None,
        fmt: str | None = None,
        phase: str | None = None,
        direction: str | None = None,
    ) -> int:
        """Sum of counts matching every given filter (``op="mac"``, ``fmt="int"``, …)."""
        return sum(
            n
            for (ph, d, t), n in self._view(view).items()
            if (op is None or t.op == op)
            and (fmt is None or t.fmt == fmt)
            and (phase is None or ph == phase)
            and (direction is None or d == direction)
        )

    # -- energy ----------------------------------------------------------------------------------
    def compute_energy_pj(self, view: str = "executed", op: str | None = None) -> float:
        """Energy of the counted arithmetic: ``op="mac"`` the products, ``"elementwise"`` the rest."""
        return sum(
            n * op_energy_pj(t)
            for t, n in self.ops(view).items()
            if op is None or t.op == op or (op == "elementwise" and t.op != "mac")
        )

    def memory_bytes(self, view: str = "executed") -> float:
        self._view(view)
        return sum(m.nbytes if view == "executed" else m.qbytes for m in self.memory)

    def memory_energy_pj(self, view: str = "executed") -> float:
        """Every byte of ``memory`` moved once at ``memory_level`` (default: DRAM, 1.3 nJ/64 bit)."""
        return memory_energy_pj(self.memory_bytes(view), self.memory_level)

    def total_energy_pj(self, view: str = "executed") -> float:
        return self.compute_energy_pj(view) + self.memory_energy_pj(view)

    def dominant_mac(self, view: str = "executed") -> OpType | None:
        """The MAC type with the most operations."""
        macs = {t: n for t, n in self.ops(view).items() if t.op == "mac"}
        return max(macs, key=macs.__getitem__) if macs else None

    def to_dict(self) -> dict[str, Any]:
        def rows(view):
            return [
                {"phase": ph, "direction": d, **t.to_dict(), "count": n,
                 "energy_pj": n * op_energy_pj(t), "unit_area_um2": op_area_um2(t)}
                for (ph, d, t), n in sorted(self._view(view).items(), key=lambda kv: kv[0])
            ]  # fmt: skip

        return {
            "model": self.model,
            "preset": self.preset,
            "batch": self.batch,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "arithmetic": self.arithmetic,
            "loss": self.loss,
            "source": SOURCE,
            "memory_level": self.memory_level,
            "memory_pj_per_64bit": MEMORY_PJ_PER_64BIT[self.memory_level],
            "ops": {view: rows(view) for view in VIEWS},
            "memory": [asdict(m) for m in self.memory],
            "uncosted_elements": dict(self.uncosted),
            "layers": self.layers,
            "totals_pj": {
                view: {
                    "mac": self.compute_energy_pj(view, "mac"),
                    "elementwise": self.compute_energy_pj(view, "elementwise"),
                    "memory": self.memory_energy_pj(view),
                    "total": self.total_energy_pj(view),
                }
                for view in VIEWS
            },
        }


# -- text ---------------------------------------------------------------------------------------


def _uj(pj: float) -> str:
    return f"{pj * 1e-6:,.1f}"


def _ops_table(p: Profile, view: str) -> list[str]:
    lines = [f"  {'op':<4} {'type':<30} {'count':>17} {'energy µJ':>12} {'unit area µm²':>14}"]
    for t, n in p.ops(view).items():
        mark = "" if t.exact else " *"
        lines.append(
            f"  {t.op:<4} {t.label + mark:<30} {n:>17,} {_uj(n * op_energy_pj(t)):>12} "
            f"{op_area_um2(t):>14,.0f}"
        )
    mac, elem = p.compute_energy_pj(view, "mac"), p.compute_energy_pj(view, "elementwise")
    lines.append(
        f"  {'':<4} {'MACs':<30} {p.count(view, 'mac'):>17,} {_uj(mac):>12}\n"
        f"  {'':<4} {'elementwise':<30} {p.count(view) - p.count(view, 'mac'):>17,} "
        f"{_uj(elem):>12}\n"
        f"  {'':<4} {'compute total':<30} {'':>17} {_uj(mac + elem):>12}"
    )
    return lines


def format_profile(p: Profile) -> str:
    """The tables of one profile: compute in both views, memory, totals, what is not costed."""
    shape = "×".join(map(str, p.input_shape))
    lines = [
        f"== {p.model}, preset {p.preset} (arithmetic {p.arithmetic}): batch {p.batch}, input "
        f"{shape}, one training step (forward, backward, QSGD update), loss {p.loss:.4f} ==",
        "",
        "Compute as executed (the dtypes the dispatched kernels received):",
        *_ops_table(p, "executed"),
        "",
        "Compute as quantized (products of quantized layers at their roles' bits, once per "
        "product; the rest as executed):",
        *_ops_table(p, "quantized"),
        "",
        f"Memory (every byte counted once, moved at {p.memory_level}: "
        f"{MEMORY_PJ_PER_64BIT[p.memory_level]:g} pJ per 64 bits):",
        f"  {'role':<20} {'dtype':<7} {'bytes':>14} {'energy µJ':>11} {'q bits':>7} "
        f"{'q bytes':>14} {'q energy µJ':>12}",
    ]
    for m in sorted(p.memory, key=lambda m: (m.role, -m.nbytes)):
        lines.append(
            f"  {m.role:<20} {m.dtype:<7} {m.nbytes:>14,} "
            f"{_uj(memory_energy_pj(m.nbytes, p.memory_level)):>11} {m.qbits:>7.1f} "
            f"{m.qbytes:>14,.0f} {_uj(memory_energy_pj(m.qbytes, p.memory_level)):>12}"
        )
    lines += [
        f"  {'total':<20} {'':<7} {p.memory_bytes('executed'):>14,.0f} "
        f"{_uj(p.memory_energy_pj('executed')):>11} {'':>7} {p.memory_bytes('quantized'):>14,.0f} "
        f"{_uj(p.memory_energy_pj('quantized')):>12}",
        "",
    ]
    for view in VIEWS:
        lines.append(
            f"Total energy {view:<9}: {_uj(p.total_energy_pj(view)):>12} µJ  (MACs "
            f"{_uj(p.compute_energy_pj(view, 'mac'))}, elementwise "
            f"{_uj(p.compute_energy_pj(view, 'elementwise'))}, memory {_uj(p.memory_energy_pj(view))})"
        )
    unknown = sorted(k for k in p.uncosted if k.endswith("(unknown op)"))
    moved = sum(n for k, n in p.uncosted.items() if k not in unknown)
    lines.append(
        f"Not costed: {moved:,} elements of copies, casts, views, allocation, padding and random "
        "draws" + (f"; ops with no rule: {', '.join(unknown)}" if unknown else "")
    )
    if any(not t.exact for view in VIEWS for t in p.ops(view)):
        lines.append("* a width the table does not list: interpolated (see docs/profile.md)")
    return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}×" if b else "n/a"


def format_comparison(profiles: list[Profile], baseline: Profile) -> str:
    """Each profile's energy relative to ``baseline`` (the same step in ``fp32``)."""
    head = f"  {'relative to ' + baseline.preset:<26}" + "".join(
        f" {p.preset + ' exec':>14} {p.preset + ' quant':>14}" for p in profiles
    )
    lines = [head]
    rows = [
        ("MAC energy", lambda p, v: p.compute_energy_pj(v, "mac")),
        ("elementwise energy", lambda p, v: p.compute_energy_pj(v, "elementwise")),
        ("compute energy", lambda p, v: p.compute_energy_pj(v)),
        ("memory bytes", lambda p, v: p.memory_bytes(v)),
        ("memory energy", lambda p, v: p.memory_energy_pj(v)),
        ("total energy", lambda p, v: p.total_energy_pj(v)),
        ("MAC unit area (commonest)", _mac_area),
    ]
    for name, fn in rows:
        base = fn(baseline, "executed")
        lines.append(
            f"  {name:<26}"
            + "".join(
                f" {_ratio(fn(p, 'executed'), base):>14} {_ratio(fn(p, 'quantized'), base):>14}"
                for p in profiles
            )  # fmt: skip
        )
    lines.append(f"Energy and area: {SOURCE}.")
    return "\n".join(lines)


def _mac_area(p: Profile, view: str) -> float:
    t = p.dominant_mac(view)
    return op_area_um2(t) if t is not None else 0.0


# -- plot ---------------------------------------------------------------------------------------


def plot_profiles(profiles: list[Profile], path: str) -> str:
    """Stacked bars: compute energy by op type, and memory energy by tensor role, per preset and
    view (matplotlib with the Agg backend, imported here). Returns ``path``."""
    from ..extras import require

    matplotlib = require("matplotlib", "plot", "plot_profiles (wageubn profile --plot)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_c, ax_m) = plt.subplots(1, 2, figsize=(13, 5.5))
    labels = [f"{p.preset}\n{v}" for p in profiles for v in VIEWS]
    x = range(len(labels))
    compute = [{f"{t.op} {t.label}": n * op_energy_pj(t) * 1e-6 for t, n in p.ops(v).items()}
               for p in profiles for v in VIEWS]  # fmt: skip
    memory = []
    for p in profiles:
        for v in VIEWS:
            by_role: dict[str, float] = defaultdict(float)
            for m in p.memory:
                by_role[m.role] += memory_energy_pj(m.nbytes if v == "executed" else m.qbytes,
                                                    p.memory_level) * 1e-6  # fmt: skip
            memory.append(by_role)
    for ax, bars, title in ((ax_c, compute, "compute energy by op type"),
                            (ax_m, memory, f"memory energy by tensor role ({profiles[0].memory_level})")):  # fmt: skip
        keys = sorted({k for b in bars for k in b}, key=lambda k: -sum(b.get(k, 0) for b in bars))
        bottom = [0.0] * len(bars)
        for i, k in enumerate(keys):
            h = [b.get(k, 0.0) for b in bars]
            ax.bar(x, h, bottom=bottom, label=k, color=plt.cm.tab20(i % 20))
            bottom = [b0 + h0 for b0, h0 in zip(bottom, h, strict=True)]
        ax.set_xticks(list(x), labels)
        ax.set_ylabel("µJ per training step")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle(f"{profiles[0].model}, batch {profiles[0].batch}: one training step "
                 "(Horowitz 2014, 45 nm)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
