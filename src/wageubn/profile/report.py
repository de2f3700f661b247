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

__all__ = [
    "MemoryItem",
    "Profile",
    "VIEWS",
    "format_comparison",
    "format_profile",
    "group_small",
    "plot_profiles",
]

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


GROUP_BELOW = 0.03  # a category under 3 % of every bar's height joins "other"
MAX_CATEGORIES = 8  # at most this many named categories per panel (tab10 colours stay distinct)


def group_small(
    bars: list[dict[str, float]], *, below: float = GROUP_BELOW, keep: int = MAX_CATEGORIES
) -> tuple[list[str], list[dict[str, float]]]:
    """Fold the small categories of stacked bars into one ``"other (N)"`` category.

    A category stays when it is at least ``below`` of some bar's total; at most ``keep`` stay (the
    largest first). Returns the kept names, largest first (then ``other`` if any), and the bars
    with the folded ones summed into ``other``; every bar's total is unchanged."""
    share: dict[str, float] = defaultdict(float)
    for b in bars:
        total = sum(b.values())
        for k, v in b.items():
            share[k] = max(share[k], v / total if total else 0.0)
    order = sorted(share, key=lambda k: -sum(b.get(k, 0.0) for b in bars))
    kept = [k for k in order if share[k] >= below][:keep]
    folded = [k for k in order if k not in kept]
    if not folded:
        return kept, [dict(b) for b in bars]
    other = f"other ({len(folded)} types)" if len(folded) > 1 else folded[0]
    grouped = []
    for b in bars:
        g = {k: b.get(k, 0.0) for k in kept}
        g[other] = sum(b.get(k, 0.0) for k in folded)
        grouped.append(g)
    return [*kept, other], grouped


def plot_profiles(profiles: list[Profile], path: str) -> str:
    """Three panels of stacked bars per preset and view (matplotlib with the Agg backend,
    imported here): the total energy of one step (MACs, elementwise, memory; labelled with µJ and
    the ratio to fp32 as executed), compute energy by op type and memory energy by tensor role,
    small categories folded into "other" (`group_small`). Returns ``path``."""
    from ..extras import require

    matplotlib = require("matplotlib", "plot", "plot_profiles (wageubn profile --plot)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{p.preset}\n{v}" for p in profiles for v in VIEWS]
    x = list(range(len(labels)))
    total = [{"MACs": p.compute_energy_pj(v, "mac") * 1e-6,
              "elementwise": p.compute_energy_pj(v, "elementwise") * 1e-6,
              "memory": p.memory_energy_pj(v) * 1e-6} for p in profiles for v in VIEWS]  # fmt: skip
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
    level = profiles[0].memory_level
    panels = [
        (total, f"total energy (memory at {level})", ["#08306b", "#6baed6", "#fdae6b"]),
        (compute, "compute energy by op type", None),
        (memory, f"memory energy by tensor role ({level})", None),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(18, 6.4))
    for ax, (bars, title, fixed) in zip(axes, panels, strict=True):
        keys, bars = group_small(bars) if fixed is None else (list(bars[0]), bars)
        bottom = [0.0] * len(bars)
        for i, k in enumerate(keys):
            h = [b.get(k, 0.0) for b in bars]
            color: Any  # a name, a grey level or a colormap's RGBA
            if fixed is not None:
                color = fixed[i]
            elif k.startswith("other"):
                color = "0.75"
            else:  # tab10 without its grey, which is other's
                color = plt.cm.tab10([0, 1, 2, 3, 4, 5, 6, 8, 9][i % 9])
            ax.bar(x, h, bottom=bottom, label=k, color=color, edgecolor="white", linewidth=0.5)
            bottom = [b0 + h0 for b0, h0 in zip(bottom, h, strict=True)]
        if fixed is not None:  # the total and its ratio to fp32 as executed on every bar
            base = bottom[0] if profiles[0].preset == "fp32" else None
            for xi, top in zip(x, bottom, strict=True):
                ratio = f"\n{top / base:.2f}× fp32" if base else ""
                ax.text(xi, top, f"{top:,.0f}{ratio}", ha="center", va="bottom", fontsize=7)
            ax.set_ylim(0, 1.15 * max(bottom))
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel("µJ per training step")
        ax.set_title(title, fontsize=10)
        handles, names = ax.get_legend_handles_labels()
        ax.legend(handles[::-1], names[::-1], fontsize=7, loc="upper center",
                  bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)  # fmt: skip
    fig.suptitle(f"{profiles[0].model}, batch {profiles[0].batch}: one training step "
                 "(Horowitz 2014, 45 nm)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
