"""The file lock: one sender per lock file (per host / data dir). Defence in depth, not the guarantee.

A second `sendguard run` (a hot-reloaded twin, a second terminal, a Streamlit rerun) fails at once and
names the holder. filelock gives the OS-level lock; the holder's pid goes in a sidecar file, because the
lock file's own content is filelock's business.
"""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock, Timeout

from sender.errors import LockHeld


class SenderFileLock:
    def __init__(self, path: str) -> None:
        self.path = path
        self.pid_path = path + ".pid"
        self._lock = FileLock(path)

    def acquire(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise LockHeld(
                f"another sender (pid {self.holder_pid() or 'unknown'}) holds the lock file {self.path}"
            ) from None
        Path(self.pid_path).write_text(f"{os.getpid()}\n")

    def holder_pid(self) -> int | None:
        try:
            return int(Path(self.pid_path).read_text().strip())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._lock.is_locked:
            try:
                if self.holder_pid() == os.getpid():
                    os.unlink(self.pid_path)
            except OSError:
                pass
            self._lock.release()

    def __enter__(self) -> SenderFileLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()
