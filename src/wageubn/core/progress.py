"""Feedback of long loops: a ``tqdm`` bar on a terminal, plain ``logging`` lines otherwise.

A `Progress` serves two kinds of loop:

* the training loop calls ``start(step, total)``, then ``update(step, epoch, stats)`` after every
  step, ``message(text)`` for events (an evaluation's result) and ``close()``;
* any other loop that can take more than a few seconds (evaluation, ``predict``, ``profile``)
  wraps its iterable: ``for x, y in progress.track(batches, total=len(batches), desc="eval")``.

`LogProgress` (the library default) logs through ``logging`` (logger ``wageubn.train``): a
training line every ``every`` steps and, for tracked loops, a line every ``interval`` seconds.
`BarProgress` draws ``tqdm`` bars on a stream (the CLI uses it when stderr is a terminal).
`progress_for(stream)` picks one of the two the way the CLI does; `command_progress()` is that
choice for a CLI command (``wageubn.cli`` and the command modules of the layers above).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

__all__ = [
    "BarProgress",
    "LogProgress",
    "Progress",
    "command_progress",
    "configure_logging",
    "format_duration",
    "progress_for",
]

log = logging.getLogger("wageubn.train")

T = TypeVar("T")


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Interface and silent default: reports nothing but ``message`` (to ``logging``)."""

    def start(self, step: int, total: int) -> None:
        self._t0, self._step0, self.total = time.perf_counter(), step, total

    def eta(self, step: int) -> float:
        done = step - self._step0
        if done <= 0:
            return float("nan")
        return (time.perf_counter() - self._t0) / done * (self.total - step)

    def update(self, step: int, epoch: int, stats: dict[str, float]) -> None:
        pass

    def message(self, text: str) -> None:
        log.info("%s", text)

    def track(
        self, iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it"
    ) -> Iterable[T]:
        """``iterable`` itself, with feedback as the subclass gives it."""
        return iterable

    def close(self) -> None:
        pass


class LogProgress(Progress):
    """``logging`` lines: training every ``every`` steps; tracked loops every ``interval`` s."""

    def __init__(self, every: int = 50, *, interval: float = 10.0) -> None:
        self.every, self.interval = every, interval

    def update(self, step: int, epoch: int, stats: dict[str, float]) -> None:
        if step % self.every and step != self.total:
            return
        log.info(
            "epoch %d step %d/%d loss %.4f acc %.4f lr_q %g dr %d %.0f img/s eta %s",
            epoch,
            step,
            self.total,
            stats["loss"],
            stats["acc"],
            stats["lr_q"],
            stats["grad_range"],
            stats["images_per_s"],
            format_duration(self.eta(step)) if step > self._step0 else "?",
        )

    def track(
        self, iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it"
    ) -> Iterator[T]:
        """Yields from ``iterable``; logs ``desc done/total unit, elapsed, eta`` every
        ``interval`` seconds (a loop shorter than that logs nothing)."""
        t0 = last = time.perf_counter()
        for done, item in enumerate(iterable):
            now = time.perf_counter()
            if now - last >= self.interval:
                last = now
                eta = (now - t0) / done * (total - done) if total and done else float("nan")
                log.info(
                    "%s %d%s %s, %s elapsed, eta %s",
                    desc,
                    done,
                    f"/{total}" if total else "",
                    unit,
                    format_duration(now - t0),
                    format_duration(eta) if eta == eta else "?",
                )
            yield item


class BarProgress(Progress):
    """``tqdm`` bars on ``stream``: ``epoch 0:  31%|███      | 120/390 [00:14<00:31, 8.5step/s,
    loss 0.3100 acc 0.9100 850 img/s]``; tracked loops get their own bar below, removed when done."""

    def __init__(self, stream: TextIO, *, mininterval: float = 0.1) -> None:
        self.stream, self.mininterval = stream, mininterval
        self._bar: Any = None

    def start(self, step: int, total: int) -> None:
        from tqdm.auto import tqdm

        super().start(step, total)
        self._bar = tqdm(total=total, initial=step, unit="step", file=self.stream, desc="train",
                         mininterval=self.mininterval, dynamic_ncols=True)  # fmt: skip

    def update(self, step: int, epoch: int, stats: dict[str, Any]) -> None:
        bar = self._bar
        bar.set_description_str(f"epoch {epoch}", refresh=False)
        bar.set_postfix_str(
            f"loss {stats['loss']:.4f} acc {stats['acc']:.4f} {stats['images_per_s']:.0f} img/s",
            refresh=False,
        )
        bar.update(step - bar.n)

    def message(self, text: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(text, file=self.stream)

    def track(
        self, iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it"
    ) -> Iterable[T]:
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, file=self.stream, leave=False,
                    mininterval=self.mininterval, dynamic_ncols=True)  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def progress_for(stream: TextIO, *, enabled: bool = True, log_every: int = 50) -> Progress:
    """`BarProgress` on ``stream`` when it is a terminal and ``enabled``, else `LogProgress`."""
    if enabled and stream.isatty():
        return BarProgress(stream)
    return LogProgress(log_every)


def configure_logging() -> None:
    """Log records of level INFO and up as bare lines on stderr, unless logging is configured."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


@contextlib.contextmanager
def command_progress(*, enabled: bool = True, log_every: int = 50) -> Iterator[Progress]:
    """The feedback of a command's long loops (a `Progress`): tqdm bars when stderr is a terminal
    (and ``enabled``), else log lines on stderr. While bars are drawn, log records go through
    ``tqdm.write`` so that they do not tear the bars."""
    configure_logging()
    progress = progress_for(sys.stderr, enabled=enabled, log_every=log_every)
    if isinstance(progress, BarProgress):
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():
            yield progress
    else:
        yield progress
