"""Training feedback: a one-line progress bar for terminals, plain log lines otherwise.

The loop calls ``progress.update(step, total, stats)`` after every step and ``progress.message``
for events. `LogProgress` (the library default) goes through ``logging`` every ``every`` steps;
`ProgressBar` redraws one line on a stream (the CLI uses it when stderr is a terminal).
"""

from __future__ import annotations

import logging
import time
from typing import Any, TextIO

__all__ = ["LogProgress", "Progress", "ProgressBar", "format_duration"]

log = logging.getLogger("wageubn.train")


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Interface: the loop reports every step; subclasses decide what to show."""

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

    def close(self) -> None:
        pass


class LogProgress(Progress):
    """``logging`` lines every ``every`` steps (non-terminal stderr, log files, CI)."""

    def __init__(self, every: int = 50) -> None:
        self.every = every

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


class ProgressBar(Progress):
    """A redrawn single line: ``epoch 0 [#####.....] 120/390 loss 0.31 acc 0.91 850 img/s eta 00:41``."""

    def __init__(self, stream: TextIO, width: int = 24, min_interval: float = 0.1) -> None:
        self.stream, self.width, self.min_interval = stream, width, min_interval
        self._last_draw = 0.0

    def update(self, step: int, epoch: int, stats: dict[str, Any]) -> None:
        now = time.perf_counter()
        if now - self._last_draw < self.min_interval and step != self.total:
            return
        self._last_draw = now
        filled = int(self.width * step / max(1, self.total))
        bar = "#" * filled + "." * (self.width - filled)
        eta = format_duration(self.eta(step)) if step > self._step0 else "?"
        self.stream.write(
            f"\repoch {epoch} [{bar}] {step}/{self.total} loss {stats['loss']:.4f} "
            f"acc {stats['acc']:.4f} {stats['images_per_s']:.0f} img/s eta {eta} "
        )
        self.stream.flush()

    def message(self, text: str) -> None:
        self.stream.write("\r\033[K" + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
