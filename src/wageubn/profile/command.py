"""``wageubn profile``: count, cost and compare one training step (docs/profile.md).

    wageubn profile --model preact_resnet20 --preset paper --preset int8 --batch 128 \\
        [--input-size 32] [--num-classes 10] [--plot energy.png] [--json energy.json]

``fp32`` is always profiled too: every preset is compared with the same step in ``fp32``.
Registered by ``wageubn.cli`` through :func:`add_parser`; user errors are :class:`ProfileError`
(listed in ``USER_ERRORS``: one line on stderr, exit status 2). Until then, or without the rest
of the CLI, ``python -m wageubn.profile.command profile ...`` runs the same command.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from ..core.progress import command_progress
from . import ProfileError

__all__ = ["USER_ERRORS", "add_parser", "main", "run"]

USER_ERRORS = (ProfileError,)


def add_parser(subparsers: Any) -> None:
    """Register ``profile`` on an ``argparse`` subparsers object."""
    from .energy import MEMORY_PJ_PER_64BIT

    p = subparsers.add_parser(
        "profile",
        help="count the MACs, elementwise ops and memory of one training step; energy and area "
        "(Horowitz, ISSCC 2014) compared with fp32",
    )
    p.add_argument("--model", required=True, metavar="NAME", help="a registered model name")
    p.add_argument("--preset", action="append", required=True, metavar="PRESET",
                   help="fp32, paper, paper_e2_16 or int8; repeat for several")  # fmt: skip
    p.add_argument("--batch", type=int, required=True, metavar="B", help="images per step")
    p.add_argument("--input-size", type=int, nargs="+", metavar="S",
                   help="S or H W (default: the model's own, 28/32/224)")  # fmt: skip
    p.add_argument("--num-classes", type=int, metavar="N", help="classifier width")
    p.add_argument("--memory", default="dram", choices=sorted(MEMORY_PJ_PER_64BIT),
                   help="where memory traffic is costed (default dram: 1.3 nJ per 64 bits)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="model init, data and rounding seed")
    p.add_argument("--plot", metavar="OUT.png", help="write a stacked bar chart")
    p.add_argument("--json", metavar="OUT.json", help="write every count and total as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Profile each preset (and ``fp32``), print the tables and the comparison; 0 on success."""
    from ..config import WAGEUBNConfig
    from . import format_comparison, format_profile, plot_profiles, profile_step

    if args.input_size is not None and len(args.input_size) not in (1, 2):
        raise ProfileError(f"--input-size takes S or H W, got {len(args.input_size)} numbers")
    if args.batch < 1:
        raise ProfileError(f"--batch must be >= 1, got {args.batch}")
    if args.plot:  # before the (slow) profiles, not after them
        from ..extras import require

        require("matplotlib", "plot", "wageubn profile --plot")
    presets = list(dict.fromkeys(args.preset))  # keep order, drop repeats
    for preset in presets:  # every name checked before the first (slow) profile
        try:
            WAGEUBNConfig.preset(preset)
        except ValueError as exc:
            raise ProfileError(f"--preset: {exc}") from None
    profiles = {}
    todo = list(dict.fromkeys(["fp32", *presets]))
    with command_progress() as progress:
        for preset in progress.track(todo, total=len(todo), desc="profile", unit="preset"):
            profiles[preset] = profile_step(
                args.model,
                preset,
                args.batch,
                input_size=args.input_size,
                num_classes=args.num_classes,
                seed=args.seed,
                memory_level=args.memory,
            )
    for preset in presets:
        print(format_profile(profiles[preset]))
        print()
    baseline = profiles["fp32"]
    shown = [profiles[p] for p in presets if p != "fp32"]
    if shown:
        print(f"Comparison with the same step in fp32 ({args.model}, batch {args.batch}; exec = "
              "as executed, quant = as quantized):")  # fmt: skip
        print(format_comparison(shown, baseline))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"command": "profile", "profiles": [p.to_dict() for p in profiles.values()]},
                      f, indent=1)  # fmt: skip
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {plot_profiles([profiles[p] for p in profiles], args.plot)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m wageubn.profile.command profile ...``: this command on its own parser."""
    parser = argparse.ArgumentParser(prog="wageubn")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_parser(subparsers)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"wageubn: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
