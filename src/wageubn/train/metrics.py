"""Per-run metrics files: ``metrics.jsonl`` (one JSON object a row) and ``metrics.csv``; with
``train.tensorboard`` also TensorBoard events in ``RUN/tensorboard`` (rows and diagnostics).

Rows have ``kind`` "train" (every ``log_every`` steps, means over the window), "epoch" (means over
the epoch) or "eval" (after an evaluation), and the columns in `COLUMNS` (absent ones empty).
On resume, rows after the checkpoint's step are dropped first, so the files of an interrupted
and resumed run hold the same rows as those of an uninterrupted one (timing columns aside).
`NoMetrics` stands in on the processes that write none (ranks other than 0); `new_accumulator` is
the trainer's running sums behind the "train" and "epoch" rows.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from ..core.files import atomic_write_bytes

__all__ = [
    "COLUMNS",
    "TIMING_COLUMNS",
    "MetricsWriter",
    "NoMetrics",
    "new_accumulator",
    "read_metrics",
    "role_rates",
]

log = logging.getLogger(__name__)

COLUMNS = (
    "kind",
    "epoch",
    "step",
    "loss",
    "acc",
    "lr",
    "lr_q",
    "grad_range",
    "eval_split",
    "images_per_s",
    "elapsed_s",
)
TIMING_COLUMNS = ("images_per_s", "elapsed_s")  # differ between otherwise identical runs


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl`` (a torn last line from a crash is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: skipping a torn line", path)
    return rows


class MetricsWriter:
    """Appends rows to metrics.jsonl / metrics.csv (and TensorBoard when asked)."""

    def __init__(self, run_dir: str | Path, *, keep_until_step: int | None, tensorboard: bool):
        self.run_dir = Path(run_dir)
        self.jsonl = self.run_dir / "metrics.jsonl"
        self.csv = self.run_dir / "metrics.csv"
        kept = []
        if keep_until_step is not None:  # resume: drop what came after the checkpoint
            kept = [r for r in read_metrics(self.run_dir) if r.get("step", 0) <= keep_until_step]
        # rewritten atomically: a failed write (disk full) keeps the rows already there
        atomic_write_bytes(self.jsonl, "".join(json.dumps(r) + "\n" for r in kept).encode())
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_bytes(self.csv, table.getvalue().encode())
        self._jsonl = self.jsonl.open("a")
        self._csv_file = self.csv.open("a", newline="")
        self._csv = csv.DictWriter(self._csv_file, COLUMNS, extrasaction="ignore")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def write(self, row: dict[str, Any]) -> None:
        row = {k: _plain(v) for k, v in row.items()}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        self._csv.writerow(row)
        self._csv_file.flush()
        if self._tb is not None:
            for key in ("loss", "acc", "lr_q", "grad_range", "images_per_s"):
                if isinstance(row.get(key), int | float):
                    self._tb.add_scalar(f"{row['kind']}/{key}", row[key], row["step"])

    def diagnostics(
        self, step: int, rows: list[dict[str, Any]], histograms: dict[str, Any]
    ) -> None:
        """One recorded diagnostics step to TensorBoard (nothing without it): per role, the
        saturation and underflow (U: unchanged) of all its elements in the model, in percent,
        and the histogram of its integer codes (``wageubn.diagnostics.Diagnostics`` sink)."""
        if self._tb is None:
            return
        for role, rates in sorted(role_rates(rows).items()):
            for metric, value in rates.items():
                self._tb.add_scalar(f"{metric} %/{role}", 100.0 * value, step)
        for role, h in sorted(histograms.items()):
            if h.num == 0:
                continue
            self._tb.add_histogram_raw(
                f"codes/{role}",
                min=h.min,
                max=h.max,
                num=h.num,
                sum=h.total,
                sum_squares=h.total_squares,
                bucket_limits=h.bucket_limits(),
                bucket_counts=h.counts.tolist(),
                global_step=step,
            )
        self._tb.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._csv_file.close()
        if self._tb is not None:
            self._tb.close()


class NoMetrics:
    """Ranks other than 0 write no metrics."""

    def write(self, row: dict[str, Any]) -> None:
        pass

    def diagnostics(
        self, step: int, rows: list[dict[str, Any]], histograms: dict[str, Any]
    ) -> None:
        pass

    def close(self) -> None:
        pass


def new_accumulator() -> dict[str, float | int]:
    """Empty running sums of a window or an epoch of training steps."""
    return {"loss_sum": 0.0, "steps": 0, "correct": 0, "count": 0}


def role_rates(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per role, the element-weighted mean of ``saturation`` and ``underflow`` (U: ``unchanged``)
    over ``rows`` (diagnostics rows of one step): the fractions of all the role's elements."""
    sums: dict[str, dict[str, float]] = {}
    for r in rows:
        # U's saturation is 0 by definition: its loss shows as weights that did not move
        metrics = ("unchanged",) if "unchanged" in r else ("saturation", "underflow")
        acc = sums.setdefault(r["role"], {"numel": 0.0})
        acc["numel"] += r["numel"]
        for m in metrics:
            acc[m] = acc.get(m, 0.0) + r.get(m, 0.0) * r["numel"]
    return {
        role: {m: v / acc["numel"] for m, v in acc.items() if m != "numel"}
        for role, acc in sums.items()
        if acc["numel"] > 0
    }


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf
    return value
