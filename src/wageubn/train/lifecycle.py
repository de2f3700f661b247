"""A run's life outside its numbers: the status in ``run.json`` and stop requests by signal.

``run.json`` says ``"status": "running"`` while a process trains and records that process as
``"owner": {"pid", "host", "start"}`` (``start``: its start time in clock ticks on Linux, so that
a recycled pid is not mistaken for it). Every ending writes its own status: "completed",
"stopped at max_steps=N", "interrupted ...", "failed: ..." or "crashed: ...". Only SIGKILL, a
power cut or a full disk can leave "running" behind; `describe_status` then tells a live owner
from a dead one, and the next ``--resume`` or ``eval`` reports which.

`StopSignals` turns SIGTERM (what ``kill``, batch schedulers and torchrun send) and SIGINT into a
request that the loop honours between two steps: write ``last.pt``, record "interrupted", leave
with `TrainingInterrupted` (exit status 128 + the signal number in the CLI: 143, 130). A second
signal stops at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from ..core.files import atomic_write_bytes

__all__ = [
    "StopSignals",
    "TrainingInterrupted",
    "describe_status",
    "owner_record",
    "read_run_info",
    "write_run_info",
]

log = logging.getLogger("wageubn.train")


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on signal ``signum``: after writing a checkpoint (``saved``), or at once
    on a second signal."""

    def __init__(self, message: str, signum: int, *, saved: bool = True) -> None:
        super().__init__(message)
        self.signum, self.saved = signum, saved


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) from ``/proc/PID/stat``; None if there is no such file."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)


def owner_record() -> dict[str, Any]:
    """This process, as ``run.json`` records the owner of a running run."""
    stat = _proc_stat(os.getpid())
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": stat and stat[1]}


def _alive(owner: dict[str, Any]) -> bool:
    """Whether ``owner`` (on this host) still runs: False for a gone, zombie or recycled pid."""
    pid = int(owner.get("pid") or -1)
    if pid <= 0:
        return False
    if _proc_stat(os.getpid()) is not None:  # Linux: the state and start time are known
        stat = _proc_stat(pid)
        if stat is None:
            return False
        start = owner.get("start")
        return stat[0] not in ("Z", "X") and (start is None or stat[1] == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def describe_status(info: dict[str, Any]) -> tuple[str, bool]:
    """``(status in words, known to be running)`` of a ``run.json``: a "running" status whose
    owner is gone is reported as such; one that cannot be checked (another host, no owner
    recorded) says so and does not count as running."""
    status = str(info.get("status", "unknown"))
    if status != "running":
        return status, False
    owner = info.get("owner") or {}
    if not owner:
        return "running or ended without a final status (no owner recorded)", False
    who = f"process {owner.get('pid')} on {owner.get('host')}"
    if owner.get("host") != socket.gethostname():
        return f"running or ended without a final status ({who}, not checkable here)", False
    if owner == owner_record():
        return f"ended without a final status (an earlier run in this {who})", False
    if _alive(owner):
        return f"running ({who})", True
    return f"ended without a final status: {who} is gone (crashed or killed)", False


def read_run_info(path: Path) -> dict[str, Any] | None:
    """``run.json`` as a dict; None (with a logged warning if it exists) when it cannot be read."""
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # torn by a crash, or unreadable
        log.warning("%s: cannot be read (%s); treated as absent", path, exc)
        return None
    if not isinstance(info, dict):
        log.warning("%s: not a JSON object; treated as absent", path)
        return None
    return info


def write_run_info(path: Path, info: dict[str, Any]) -> None:
    """Replace ``run.json`` atomically: a failed write (disk full) keeps the previous one."""
    atomic_write_bytes(path, (json.dumps(info, indent=2) + "\n").encode())


class StopSignals:
    """While active (a ``with`` block in the main thread), SIGTERM and SIGINT set ``signum``
    instead of killing the process; the loop checks it between steps. A second signal raises
    `TrainingInterrupted` (``saved=False``) at once. Outside the main thread it does nothing (signals go there)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise TrainingInterrupted(signal.Signals(signum).name, signum, saved=False)
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():  # None: a handler installed outside Python
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""
