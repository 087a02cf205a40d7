"""Host-wide engine lock: two engines never patch at once (fcntl on POSIX, msvcrt.locking on Windows).

The lock is an OS file lock on ``<state_dir>/engine.lock``: the kernel drops it when the holder dies, so a killed
engine never leaves the host locked. Waiting is bounded; on timeout LockBusyError (exit code 6) names the holder.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any, Optional

from ..errors import LockBusyError

__all__ = ["HostLock"]

_POLL_S = 0.02


class HostLock:
    """Context manager holding the host-wide lock under ``state_dir``; waits at most ``timeout_s`` seconds."""

    def __init__(self, state_dir: str, timeout_s: float) -> None:
        self.path = os.path.join(state_dir, "engine.lock")
        self.timeout_s = timeout_s
        self._handle: Optional[IO[bytes]] = None

    def acquire(self) -> None:
        """Take the lock; raises LockBusyError when another engine still holds it after ``timeout_s``."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        handle = open(self.path, "a+b")  # noqa: SIM115 - held open for the lock's lifetime
        deadline = time.monotonic() + max(self.timeout_s, 0.0)
        while True:
            if _try_lock(handle):
                break
            if time.monotonic() >= deadline:
                holder = _read_holder(handle)
                handle.close()
                raise LockBusyError(
                    f"another engine holds the host lock {self.path}{holder} for more than {self.timeout_s:g} s: "
                    "wait for it to finish or raise lock_timeout_s"
                )
            time.sleep(_POLL_S)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n".encode("ascii"))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Drop the lock (also dropped by the OS when the process dies)."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            _unlock(handle)
        finally:
            handle.close()

    def __enter__(self) -> HostLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


if sys.platform == "win32":
    import msvcrt

    def _try_lock(handle: IO[bytes]) -> bool:
        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(handle: IO[bytes]) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(handle: IO[bytes]) -> bool:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def _unlock(handle: IO[bytes]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_holder(handle: IO[bytes]) -> str:
    try:
        handle.seek(0)
        text = handle.read(64).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" ({text})" if text else ""
