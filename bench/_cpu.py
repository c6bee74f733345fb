"""CPU per message, by role: where a run's CPU went, read from /proc while the bench runs (Linux only).

A rate alone cannot say why two figures differ on a small machine: sendguard's sender, its database
server and the SMTP sink share the same cores that a floor's single loop has to itself. The sampler
reads every process's CPU time (utime + stime) every `interval` seconds and files it under a role by
its command line:

- `sendguard`: `python -m sender run` (the senders; SQLite works inside them);
- `sink`: `python -m sender sink`;
- `postgres`: the PostgreSQL server's processes (its backends do the database's work);
- `floor`: the floors' `multiprocessing` workers;
- `machine`: every core's busy time (`/proc/stat`), whatever ran.

`per_message(start, end, messages)` gives each role's CPU milliseconds per message between two
instants, by linear interpolation between samples: given the window a rate was measured on, it counts
neither start-up nor the idle check. A process that
exited keeps the last CPU time read of it. The sampler costs about 1 ms of CPU per sample.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
ROLES = ("sendguard", "postgres", "sink", "floor", "machine")


def _role(pid: str) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().replace(b"\0", b" ")
    except OSError:
        return None
    if b"-m sender run" in cmd:
        return "sendguard"
    if b"-m sender sink" in cmd:
        return "sink"
    if cmd.startswith(b"postgres") or b"/bin/postgres" in cmd:
        return "postgres"
    if b"multiprocessing" in cmd:
        return "floor"
    return None


def _stat(pid: str) -> tuple[str, float] | None:
    """(the process's start time, its CPU seconds): the start time tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19], (int(fields[11]) + int(fields[12])) / _TICK  # starttime; utime + stime


def _machine_busy() -> float:
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle, iowait
    return (sum(values[:8]) - idle) / _TICK  # user..steal; guest time is already in user


class CpuSampler:
    """Samples in a thread from `start()` to `stop()`; `per_message` reads the samples."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.available = os.path.exists("/proc/stat")
        self._roles: dict[str, str | None] = {}  # process -> role (None: not ours), learnt once
        self._last: dict[str, tuple[str, float]] = {}  # process -> (role, CPU seconds last read)
        self._times: list[float] = []  # time.time() of each sample
        self._monotonic: list[float] = []
        self._totals: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def start(self) -> CpuSampler:
        if self.available:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                self._sample()
                return

    def _sample(self) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            stat = _stat(pid)
            if stat is None:  # exited meanwhile
                continue
            process = f"{pid}.{stat[0]}"
            if process not in self._roles:
                self._roles[process] = _role(pid)
            role = self._roles[process]
            if role is not None:
                self._last[process] = (role, stat[1])
        totals = dict.fromkeys(ROLES, 0.0)
        for role, cpu in self._last.values():
            totals[role] += cpu
        totals["machine"] = _machine_busy()
        self._times.append(time.time())
        self._monotonic.append(time.monotonic())
        self._totals.append(totals)

    def per_message(
        self, start: float, end: float, messages: int, *, clock: str = "monotonic"
    ) -> dict[str, Any] | None:
        """Each role's CPU ms per message between `start` and `end` (`clock`: "monotonic" or "wall",
        time.time()), and the cores the machine kept busy on average. None without samples around it."""
        times = self._monotonic if clock == "monotonic" else self._times
        if messages <= 0 or end <= start or len(times) < 2 or start < times[0] or end > times[-1]:
            return None
        out: dict[str, Any] = {}
        for role in ROLES:
            per = round((self._at(times, end, role) - self._at(times, start, role)) / messages * 1000, 3)
            if per > 0:  # a role with no process in this phase is left out
                out[role] = per
        out["cores_busy"] = round(
            (self._at(times, end, "machine") - self._at(times, start, "machine")) / (end - start), 2
        )
        return out

    def _at(self, times: list[float], t: float, role: str) -> float:
        i = min(max(bisect_left(times, t), 1), len(times) - 1)
        t0, t1 = times[i - 1], times[i]
        v0, v1 = self._totals[i - 1][role], self._totals[i][role]
        return v0 + (v1 - v0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
