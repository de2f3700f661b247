"""``wageubn inspect RUN``: where does a run lose precision? A table (worst first) and heat maps.

The overview map has two panels on one fixed colour scale in percent (the table's unit): how
much each quantizer clips (saturation; only the clipping quantizers QC, SQ, FQ, CQ: W, E1, E2, G)
and how much it flushes to zero (underflow; for U the weights that did not move), one row per
role, one column per layer in network order, each cell the mean over the recorded steps. Colours
turn warm at a threshold that means "look here" (`SATURATION_LOOK`, `UNDERFLOW_LOOK`), and warm
cells carry their value. ``--role`` / ``--layer`` select rows for the detail map: one row per
(layer, role), one column per recorded step.
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..extras import require

__all__ = [
    "SATURATION_LOOK",
    "UNDERFLOW_LOOK",
    "USER_ERRORS",
    "DiagnosticsError",
    "add_parser",
    "detail_figure",
    "detail_map",
    "format_table",
    "load_rows",
    "overview_figure",
    "overview_map",
    "run",
    "select",
    "summarize",
]

FILE = "diagnostics.jsonl"
SATURATION_LOOK = 1.0  # percent of elements clipped: look here
UNDERFLOW_LOOK = 20.0  # percent of non-zero elements flushed to zero (U: weights that did not move)
# Fixed colour scales (percent): three calm bins below the threshold, three warm ones from it.
_SCALES = {
    "saturation": [0.0, 0.01, 0.1, SATURATION_LOOK, 5.0, 20.0, 100.0],
    "underflow": [0.0, 1.0, 5.0, UNDERFLOW_LOOK, 50.0, 90.0, 100.0],
}
_COLOURS = ["#eef2f6", "#c9d9e8", "#90b4d5", "#fdd49e", "#fc8d59", "#d7301f"]
_CLIPPING = ("QC", "SQ", "FQ", "CQ")  # the kinds whose saturation can be non-zero
_ROLE_ORDER = ["W", "A", "E1", "E2", "G", "momentum", "U",
               "bn_mean", "bn_std", "bn_xhat", "bn_gamma", "bn_beta"]  # fmt: skip


class DiagnosticsError(ValueError):
    """A damaged or empty diagnostics file, or a selection that matches nothing."""


USER_ERRORS = (DiagnosticsError,)


def load_rows(run: str | Path) -> list[dict[str, Any]]:
    """The rows of ``RUN/diagnostics.jsonl`` (or of a .jsonl file given directly)."""
    path = Path(run)
    if path.is_dir():
        path = path / FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no diagnostics at {path}; train with --diag.every N (e.g. 100) to record them"
        )
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DiagnosticsError(f"{path}:{i}: not a JSON line ({exc.msg})") from None
    if not rows:
        raise DiagnosticsError(f"{path} holds no diagnostics rows")
    return rows


def _role_key(role: str) -> tuple:
    """W, A, E1, E2, G, momentum, U, the BN roles, then the optimizer's qualified roles."""
    base, _, qualifier = role.partition("(")
    qualifier = qualifier.rstrip(")")
    order = _ROLE_ORDER.index(base) if base in _ROLE_ORDER else len(_ROLE_ORDER)
    q_order = {"": 0, "bn_gamma": 1, "bn_beta": 2}.get(qualifier, 3)
    return (q_order, qualifier, order, role)


def _layer_order(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Layer -> position in the network (``layer_index``; else order of first appearance)."""
    order: dict[str, float] = {}
    for i, r in enumerate(rows):
        if r["layer"] not in order:
            order[r["layer"]] = r.get("layer_index", i)
    return order


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (layer, role): mean saturation/underflow over steps, last exponent and distinct
    codes, unchanged fraction for U; sorted worst first (by the larger of the two loss rates)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["layer"], r["role"])].append(r)
    out = []
    for (layer, role), rs in groups.items():
        rs.sort(key=lambda r: r["step"])
        sat = sum(r.get("saturation", 0.0) for r in rs) / len(rs)
        und = sum(r.get("underflow", 0.0) for r in rs) / len(rs)
        row = {"layer": layer, "role": role, "kind": rs[-1]["kind"], "bits": rs[-1]["bits"],
               "steps": len(rs), "saturation": sat, "underflow": und,
               "exponent": rs[-1]["exponent"], "distinct": rs[-1]["distinct"]}  # fmt: skip
        if "unchanged" in rs[-1]:
            row["unchanged"] = sum(r.get("unchanged", 0.0) for r in rs) / len(rs)
        out.append(row)
    out.sort(key=lambda r: -max(r["saturation"], r["underflow"], r.get("unchanged", 0.0)))
    return out


def _look(r: dict[str, Any]) -> bool:
    lost = r.get("unchanged", r["underflow"])
    return 100 * r["saturation"] >= SATURATION_LOOK or 100 * lost >= UNDERFLOW_LOOK


def format_table(summary: list[dict[str, Any]], limit: int | None = None) -> str:
    """The worst ``limit`` rows; ``!`` marks a rate at or above its look-here threshold."""
    head = (f"  {'layer':<24} {'role':<18} {'q':<4} {'bits':>4} {'R':>5} {'satur.':>8} "
            f"{'underfl.':>8} {'codes':>6} {'still':>6}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in summary[:limit]:
        exp = "-" if r["exponent"] is None else str(r["exponent"])
        still = f"{r['unchanged']:.1%}" if "unchanged" in r else ""
        und = "" if "unchanged" in r else f"{r['underflow']:.2%}"
        lines.append(
            f"{'!' if _look(r) else ' '} {r['layer'][:24]:<24} {r['role']:<18} {r['kind']:<4} "
            f"{r['bits']:>4} {exp:>5} {r['saturation']:>8.2%} {und:>8} {r['distinct']:>6} "
            f"{still:>6}"
        )
    lines.append(
        f"! = saturation >= {SATURATION_LOOK:g}% or underflow (U: still) >= {UNDERFLOW_LOOK:g}%; "
        "means over the recorded steps"
    )
    return "\n".join(lines)


def select(
    rows: list[dict[str, Any]], roles: list[str] | None = None, layers: list[str] | None = None
) -> list[dict[str, Any]]:
    """The rows whose role and layer match any of the shell patterns (``E2``, ``G*``,
    ``stages.2.*``); a pattern that matches nothing is a `DiagnosticsError` naming the options."""
    for key, patterns in (("role", roles), ("layer", layers)):
        if not patterns:
            continue
        names = sorted({r[key] for r in rows}, key=_role_key if key == "role" else None)
        for p in patterns:
            if not any(fnmatch.fnmatchcase(n, p) for n in names):
                close = difflib.get_close_matches(p, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
                raise DiagnosticsError(f"--{key} {p!r} matches no {key}{hint} ({key}s: {shown})")
        rows = [r for r in rows if any(fnmatch.fnmatchcase(r[key], p) for p in patterns)]
    return rows


# -- heat maps -------------------------------------------------------------------------------------


def _cmap(metric: str):
    from matplotlib.colors import BoundaryNorm, ListedColormap

    # no such quantizer here: transparent, the hatched background shows
    cmap = ListedColormap(_COLOURS).with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    return cmap, BoundaryNorm(_SCALES[metric], cmap.N)


def _draw(
    fig, ax, grid, metric: str, title: str, annotate: bool = True, aspect: float = 20
) -> None:
    """One heat map (values in percent, NaN = empty) with its labelled, fixed colour scale."""
    import numpy as np

    cmap, norm = _cmap(metric)
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", interpolation="nearest",
                   cmap=cmap, norm=norm)  # fmt: skip
    look = SATURATION_LOOK if metric == "saturation" else UNDERFLOW_LOOK
    if annotate:
        for (i, j), v in np.ndenumerate(grid):
            if v == v and v >= look:  # warm cells say how much
                ax.text(j, i, f"{v:.0f}" if v >= 10 else f"{v:.1f}", ha="center", va="center",
                        fontsize=6, color="white" if v >= _SCALES[metric][-2] else "black")  # fmt: skip
    ax.patch.set_facecolor("white")
    ax.patch.set_hatch("////")
    ax.patch.set_edgecolor("0.88")
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xticks(np.arange(grid.shape[1] + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(grid.shape[0] + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="0.85", lw=0.5)
    ax.tick_params(which="minor", length=0)
    bar = fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01, aspect=aspect, ticks=_SCALES[metric])
    bar.ax.set_yticklabels([f"{b:g}%" for b in _SCALES[metric]], fontsize=7)
    bar.ax.axhline(look, color="black", lw=1.5)
    what = "clipped" if metric == "saturation" else "flushed to 0"
    bar.set_label(f"% {what}; look here ≥ {look:g}%", fontsize=8)


def _save(fig, out: str | Path) -> Path:
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def overview_map(rows: list[dict[str, Any]], out: str | Path, *, title: str = "") -> Path:
    """The overview PNG: roles × layers (network order), saturation and underflow in percent,
    means over the recorded steps, on fixed scales with a look-here threshold."""
    return _save(overview_figure(rows, title=title), out)


def overview_figure(rows: list[dict[str, Any]], *, title: str = "") -> Any:
    """The matplotlib figure of `overview_map` (axes: saturation, underflow, two colorbars)."""
    matplotlib = require("matplotlib", "plot", "the heat maps of wageubn inspect")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    summary = summarize(rows)
    order = _layer_order(rows)
    layers = sorted({r["layer"] for r in summary}, key=order.__getitem__)
    col = {name: j for j, name in enumerate(layers)}
    clipping = sorted({r["role"] for r in summary if r["kind"] in _CLIPPING}, key=_role_key)
    roles = sorted({r["role"] for r in summary}, key=_role_key)
    panels = [("saturation", clipping), ("underflow", roles)]
    grids = []
    for metric, names in panels:
        grid = np.full((len(names), len(layers)), math.nan)
        at = {name: i for i, name in enumerate(names)}
        for r in summary:
            if r["role"] in at:
                value = r.get("unchanged", r["underflow"]) if metric == "underflow" else r[metric]
                grid[at[r["role"]], col[r["layer"]]] = 100 * value
        grids.append(grid)
    heights = [max(len(n), 6) for _, n in panels]  # room for the colour scale's labels
    width = min(30.0, max(10.0, 3.5 + 0.2 * len(layers)))
    fig, axes = plt.subplots(
        2, 1, figsize=(width, 2.6 + 0.24 * sum(heights)), sharex=True,
        gridspec_kw={"height_ratios": heights},
    )  # fmt: skip
    steps = sorted({r["step"] for r in rows})
    titles = [
        "saturation: % of elements clipped (clipping quantizers: QC, SQ, FQ, CQ)",
        "underflow: % of non-zero elements flushed to 0 (U: % of weights that did not move)",
    ]
    for ax, grid, (metric, names), text in zip(axes, grids, panels, titles, strict=True):
        _draw(fig, ax, grid, metric, text)
        ax.set_yticks(range(len(names)), names, fontsize=8)
    axes[-1].set_xticks(range(len(layers)), layers, rotation=90, fontsize=7)
    axes[-1].set_xlabel("layer (network order)")
    head = title + ": " if title else ""
    fig.suptitle(
        f"{head}mean over {len(steps)} recorded steps ({steps[0]}…{steps[-1]}); hatched: no such "
        "quantizer in the layer; detail: wageubn inspect RUN --role R --layer 'PATTERN'",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def detail_map(rows: list[dict[str, Any]], out: str | Path, *, title: str = "") -> Path:
    """The detail PNG of (selected) rows: one row per (layer, role), one column per step."""
    return _save(detail_figure(rows, title=title), out)


def detail_figure(rows: list[dict[str, Any]], *, title: str = "") -> Any:
    """The matplotlib figure of `detail_map` (axes: saturation, underflow, two colorbars)."""
    matplotlib = require("matplotlib", "plot", "the heat maps of wageubn inspect")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    order = _layer_order(rows)
    keys = sorted({(r["layer"], r["role"]) for r in rows},
                  key=lambda k: (order[k[0]], _role_key(k[1])))  # fmt: skip
    steps = sorted({r["step"] for r in rows})
    at = {k: i for i, k in enumerate(keys)}
    col = {s: j for j, s in enumerate(steps)}
    grids = {m: np.full((len(keys), len(steps)), math.nan) for m in ("saturation", "underflow")}
    for r in rows:
        i, j = at[(r["layer"], r["role"])], col[r["step"]]
        if r.get("kind") in _CLIPPING:
            grids["saturation"][i, j] = 100 * r.get("saturation", 0.0)
        lost = r.get("unchanged", r.get("underflow"))
        if lost is not None:
            grids["underflow"][i, j] = 100 * lost
    fig, axes = plt.subplots(
        1, 2, figsize=(min(24.0, 7.0 + 0.5 * len(steps)), 1.8 + 0.22 * len(keys)), sharey=True
    )
    names = [f"{layer}  {role}" for layer, role in keys]
    titles = ["saturation (% clipped)", "underflow (% flushed to 0; U: % not moved)"]
    for ax, (metric, grid), text in zip(axes, grids.items(), titles, strict=True):
        _draw(fig, ax, grid, metric, text, annotate=len(steps) <= 40, aspect=40)
        ticks = list(range(0, len(steps), max(1, len(steps) // 10)))
        ax.set_xticks(ticks, [str(steps[i]) for i in ticks], fontsize=7)
        ax.set_xlabel("step")
    axes[0].set_yticks(range(len(keys)), names, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# -- the command ---------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="per-layer quantization diagnostics of a run (table + heat maps)",
        description="Summarize RUN/diagnostics.jsonl (recorded with --diag.every N): the worst "
        "layers first, and an overview heat map (roles × layers, % saturation and underflow). "
        "--role / --layer select rows of the table and write the detail map (layer·role × "
        "steps) instead.",
    )
    p.add_argument("run", help="run directory (or a diagnostics.jsonl file)")
    p.add_argument("--top", type=int, default=25, help="rows of the table (default 25)")
    p.add_argument("--role", action="append", metavar="ROLE",
                   help="only this role (shell pattern: E2, 'G*'); repeatable")  # fmt: skip
    p.add_argument("--layer", action="append", metavar="PATTERN",
                   help="only layers matching this shell pattern ('stages.2.*'); repeatable")  # fmt: skip
    p.add_argument("--out", default=None,
                   help="PNG to write (default RUN/diagnostics.png, with a selection "
                        "RUN/diagnostics-detail.png)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require("matplotlib", "plot", "the heat maps of wageubn inspect")  # before any output
    rows = load_rows(args.run)
    detail = bool(args.role or args.layer)
    if detail:
        rows = select(rows, args.role, args.layer)
    print(format_table(summarize(rows), args.top))
    run_path = Path(args.run)
    base = run_path / "diagnostics" if run_path.is_dir() else run_path.with_suffix("")
    name = run_path.name if run_path.is_dir() else run_path.parent.name
    if detail:
        out = args.out or f"{base}-detail.png"
        print(f"detail map: {detail_map(rows, out, title=name)}")
    else:
        print(f"overview map: {overview_map(rows, args.out or f'{base}.png', title=name)}")
    return 0
