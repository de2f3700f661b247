"""The ``wageubn`` command line: argparse subcommands whose commands are plain functions.

    wageubn train CONFIG.yaml [--dotted.key VALUE ...] [--resume RUN_DIR_or_CKPT]
    wageubn eval CHECKPOINT [--split test] [--root DIR] [--batch-size N] [--preset NAME]
    wageubn list-models
    wageubn plot RUN [RUN ...] [--out curves.png] [--x epoch|step]
    wageubn ablate CONFIG.yaml [--dotted.key VALUE ...] [--variants NAMES] [--out DIR]
    wageubn config show [CONFIG.yaml] [--dotted.key VALUE ...]
    wageubn --version

Adding a command (docs/training.md, "Adding a command"): write a module with

    def add_parser(subparsers) -> None:
        p = subparsers.add_parser("export", help="...")
        p.add_argument(...)
        p.set_defaults(func=export_command)      # export_command(args) -> int (exit status)

and list the module in `COMMAND_MODULES`. Import heavy or optional dependencies inside the
command function, not at module level, so that ``wageubn --help`` stays fast and works without
them. A command reports a user error by raising `UsageError` (defined in ``wageubn.core.errors``,
importable from here too) or any exception type in its module's optional ``USER_ERRORS`` tuple:
``main`` prints it as one line on stderr and returns 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .core.errors import UsageError
from .core.progress import command_progress
from .core.version import __version__

__all__ = ["COMMAND_MODULES", "UsageError", "command_progress", "console_main", "main"]

# Modules that register subcommands, in --help order. Each exposes add_parser(subparsers).
COMMAND_MODULES: tuple[str, ...] = (
    "wageubn.cli",
    "wageubn.deploy.command",
    "wageubn.diagnostics.inspect",
    "wageubn.profile.command",
)


# Seconds a failing torchrun worker other than rank 0 waits before exiting (see console_main).
RANK0_GRACE_S = 10.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line instead of usage + message
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


# -- the built-in commands ------------------------------------------------------------------------


def train_command(args: argparse.Namespace) -> int:
    from .train import load_run_config, train
    from .train.resume import config_from_checkpoint

    if args.config is None and args.resume is None:
        raise UsageError("wageubn train: give a CONFIG.yaml, or --resume RUN_DIR")
    if args.config is not None:
        cfg = load_run_config(args.config, args.overrides)
    else:
        cfg = config_from_checkpoint(args.resume, args.overrides)
    with command_progress(enabled=not args.no_progress, log_every=cfg.train.log_every) as progress:
        result = train(
            cfg,
            resume=args.resume,
            progress=progress,
            command=["wageubn", *args.argv],
            handle_signals=True,
        )
    ev = result["eval"]
    summary = f"{result['status']} after {result['step']} steps; run directory {result['run_dir']}"
    if ev is not None:
        summary += f"; {ev['split']} accuracy {ev['acc']:.4f} loss {ev['loss']:.4f}"
    if _is_rank0():
        print(summary)
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from .train import evaluate_checkpoint

    with command_progress() as progress:
        r = evaluate_checkpoint(
            args.checkpoint, args.split, root=args.root, batch_size=args.batch_size,
            progress=progress, preset=args.preset,
        )  # fmt: skip
    print(
        f"{r['split']}: accuracy {r['acc']:.4f} loss {r['loss']:.4f} "
        f"({r['images']} images; {r['checkpoint']} at step {r['step']}"
        + (f"; in preset {r['preset']}'s arithmetic" if args.preset else "")
        + ")"
    )
    if r["run_status"] is not None:
        print(f"run status: {r['run_status']}")
    return 0


def list_models_command(args: argparse.Namespace) -> int:
    from .models import list_models, model_info

    rows = [("model", "parameters", "input (C×H×W)", "classes")]
    for name in list_models():
        info = model_info(name)
        shape = "×".join(map(str, info.input_shape)) if info.input_shape else "-"
        rows.append((name, f"{info.parameters:,}", shape, str(info.num_classes or "-")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}")
    return 0


def plot_command(args: argparse.Namespace) -> int:
    from .train.plots import plot_runs

    try:
        out = plot_runs(args.runs, args.out, x=args.x)
    except ValueError as exc:  # runs without rows yet
        raise UsageError(str(exc)) from None
    print(f"wrote {out}")
    return 0


def ablate_command(args: argparse.Namespace) -> int:
    import signal

    from .train import TrainingInterrupted
    from .train.ablation import AblationError, ablate
    from .train.ablation_report import format_table

    again = "run the same wageubn ablate command again to continue (finished variants are kept)"
    try:
        with command_progress(enabled=not args.no_progress) as progress:
            rows = ablate(
                args.config, args.overrides, variants=args.variants, out=args.out,
                plot=not args.no_plot, progress=progress, command=["wageubn", *args.argv],
                handle_signals=True,
            )  # fmt: skip
    except AblationError as exc:
        raise UsageError(str(exc)) from None
    except TrainingInterrupted as exc:
        text = str(exc).split("; continue with")[0]
        raise TrainingInterrupted(f"{text}; {again}", exc.signum, saved=exc.saved) from None
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"interrupted; {again}", signal.SIGINT) from None
    out = Path(rows[0]["run_dir"]).parent
    print(format_table(rows), end="")
    written = ["ablation.json", "ablation.txt"] + ([] if args.no_plot else ["ablation.png"])
    print(f"wrote {', '.join(str(out / f) for f in written)}")
    return 0


def config_show_command(args: argparse.Namespace) -> int:
    from .train import load_run_config
    from .train.configdoc import format_config

    cfg = load_run_config(args.config, args.overrides)
    source = " ".join([args.config or "(defaults)", *args.overrides])
    print(format_config(cfg, source=source), end="")
    return 0


def add_parser(subparsers: Any) -> None:
    """Register train, eval, list-models, plot, ablate and config."""
    p = subparsers.add_parser("train", help="train a model from a YAML run config")
    p.add_argument("config", nargs="?", help="run config (YAML); optional with --resume")
    p.add_argument("--resume", metavar="RUN_DIR_or_CKPT", help="continue from a checkpoint")
    p.add_argument("--no-progress", action="store_true", help="log lines even on a terminal")
    p.set_defaults(func=train_command, takes_overrides=True)
    p.epilog = (
        "Any config key can be overridden: --optim.lr 0.0625 --train.epochs 2. Every key, its "
        "meaning and its default: wageubn config show [CONFIG.yaml] [overrides]"
    )

    p = subparsers.add_parser("eval", help="evaluate a checkpoint on a data split")
    p.add_argument("checkpoint", help="a .pt checkpoint or a run directory (its last.pt)")
    p.add_argument("--split", default=None, help="default: the run's data.eval_split")
    p.add_argument("--root", default=None, help="data root (default: the run's data.root)")
    p.add_argument("--batch-size", type=int, default=None, help="default: data.eval_batch_size")
    p.add_argument(
        "--preset", default=None,
        help="evaluate the weights in another preset's arithmetic (e.g. int8-trained weights "
        "with paper's forward); default: the run's own",
    )  # fmt: skip
    p.set_defaults(func=eval_command)

    p = subparsers.add_parser(
        "list-models", help="names accepted by model.name, with parameters and input size"
    )
    p.set_defaults(func=list_models_command)

    p = subparsers.add_parser("plot", help="training curves of one or more runs as a PNG")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--out", default="curves.png", help="PNG file to write (default curves.png)")
    p.add_argument(
        "--x",
        choices=("epoch", "step"),
        default="epoch",
        help="x axis: epochs (counted from 0, as in the logs; default) or optimizer steps",
    )
    p.set_defaults(func=plot_command)

    p = subparsers.add_parser(
        "ablate",
        help="train a config once per variant (each data path left in float, each quantized "
        "alone, fp32, stem/head quantized) and compare their accuracy",
    )
    p.add_argument("config", help="run config (YAML), with dotted overrides as for train")
    p.add_argument(
        "--variants", action="append", metavar="NAMES",
        help="comma-separated variants to run (default: every one that applies to the config)",
    )  # fmt: skip
    p.add_argument("--out", metavar="DIR", help="ablation directory (default OUT_DIR/NAME-ablate)")
    p.add_argument("--no-plot", action="store_true", help="no bar chart (no matplotlib needed)")
    p.add_argument("--no-progress", action="store_true", help="log lines even on a terminal")
    p.set_defaults(func=ablate_command, takes_overrides=True)
    p.epilog = (
        "Variants: baseline (the config), fp32, float-X (X left in float), only-X (X quantized "
        "alone), stem-head; X is W, A, G, E1, E2, U, momentum, BN or lr. An interrupted "
        "ablation continues when run again. docs/accuracy.md explains the variants."
    )

    p = subparsers.add_parser("config", help="run configs: config show prints every key")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    p = actions.add_parser(
        "show",
        help="the resolved run config as YAML, each key with its meaning and default",
        description="Print CONFIG.yaml (or the defaults) with the dotted overrides applied, as "
        "YAML that `wageubn train` accepts; each key commented with its meaning and default.",
    )
    p.add_argument("config", nargs="?", help="run config (YAML); omitted: the defaults")
    p.set_defaults(func=config_show_command, takes_overrides=True)


# -- plumbing -------------------------------------------------------------------------------------


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Pull ``--dotted.key VALUE`` / ``--dotted.key=VALUE`` tokens out of ``argv``."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        key = token[2:].partition("=")[0]
        if token.startswith("--") and "." in key and not token[2:3].isdigit():
            overrides.append(token)
            if "=" not in token:
                if i + 1 >= len(argv):
                    raise UsageError(f"override {token} needs a value")
                overrides.append(argv[i + 1])
                i += 1
        else:
            rest.append(token)
        i += 1
    return rest, overrides


def build_parser() -> tuple[argparse.ArgumentParser, tuple[type[BaseException], ...]]:
    """The parser with every command module registered, and the user-error types they declare."""
    parser = _Parser(prog="wageubn", description="WAGEUBN full 8-bit integer training")
    parser.add_argument("--version", action="version", version=f"wageubn {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    user_errors: tuple[type[BaseException], ...] = ()
    for name in COMMAND_MODULES:
        module = sys.modules[__name__] if name == __name__ else importlib.import_module(name)
        module.add_parser(subparsers)
        user_errors += tuple(getattr(module, "USER_ERRORS", ()))
    return parser, user_errors


def _is_rank0() -> bool:
    """Not a torchrun worker, or its rank 0: the process that speaks for the run."""
    return os.environ.get("RANK", "0") == "0"


def _report(text: str, *, every_rank: bool = False) -> None:
    """Print on rank 0; with ``every_rank`` (a failure during the run, which may be one rank's
    own) also on the others, naming the rank."""
    if _is_rank0():
        print(text, file=sys.stderr)
    elif every_rank:
        print(text.replace("wageubn:", f"wageubn: rank {os.environ['RANK']}:", 1), file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 training failed, 2 user error or a file
    to fix, 128 + N stopped by signal N). Under torchrun only rank 0 prints."""
    from .data import CorruptDataError, DatasetNotFoundError
    from .extras import MissingExtraError
    from .train import (
        CheckpointError,
        RunConfigError,
        TrainingError,
        TrainingInterrupted,
        TrainingIOError,
    )

    argv = list(sys.argv[1:] if argv is None else argv)
    user_errors: tuple[type[BaseException], ...] = (
        UsageError,
        RunConfigError,
        CheckpointError,
        DatasetNotFoundError,
    )
    user_errors += (MissingExtraError, CorruptDataError)
    try:
        parser, extra = build_parser()
        user_errors += extra
        rest, overrides = _split_overrides(argv)
        try:
            args = parser.parse_args(rest)
        except SystemExit as exc:  # --help, --version: printed, done
            return 0 if exc.code is None else int(exc.code)
        if overrides and not getattr(args, "takes_overrides", False):
            raise UsageError(f"wageubn {args.command}: unexpected argument {overrides[0]}")
        args.overrides, args.argv = overrides, argv
        return int(args.func(args))
    except TrainingIOError as exc:  # a file to fix, found during the run
        _report(f"wageubn: error: {_one_line(exc)}", every_rank=True)
        return 2
    except user_errors as exc:
        _report(f"wageubn: error: {_one_line(exc)}")
        return 2
    except FileNotFoundError as exc:
        _report(f"wageubn: error: {_one_line(exc)}")
        return 2
    except TrainingError as exc:
        _report(f"wageubn: {_one_line(exc)}", every_rank=True)
        return 1
    except TrainingInterrupted as exc:
        _report(f"wageubn: {_one_line(exc)}")
        return 128 + exc.signum  # 143 for SIGTERM, 130 for SIGINT, as the shell reports them
    except KeyboardInterrupt:
        _report("wageubn: interrupted; continue with wageubn train --resume RUN_DIR")
        return 130


def console_main() -> None:
    """Entry point of the ``wageubn`` console script (and of ``python -m wageubn``)."""
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if code != 0 and not _is_rank0():
            # Rank 0 reports what the ranks share (a config error all of them raised), and
            # torchrun stops every worker as soon as one fails: leave rank 0 the time to say it.
            # torchrun ends this wait when rank 0 exits.
            time.sleep(RANK0_GRACE_S)
        # A torchrun worker: gloo's threads can abort the process (SIGABRT) during interpreter
        # finalization even after destroy_process_group (pytorch/pytorch#190489), which torchrun
        # reports as a failed run. Everything is written and flushed: leave without finalizing.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)
