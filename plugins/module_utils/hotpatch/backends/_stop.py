"""Internal: stop every task of a Linux process with PTRACE_SEIZE + PTRACE_INTERRUPT, and let them all go again.

Signals are never swallowed: a task found in a signal-delivery-stop gets its signal back at detach; a signal
that arrives while we run code on a task (remote syscall or call) is re-sent with tgkill after the detach.
A group-stop (SIGSTOP'ed process) survives: the kernel puts the task back into it when we detach.
"""

from __future__ import annotations

import contextlib
import errno
import time
from dataclasses import dataclass, field
from typing import Dict, List, Set, Tuple

from ..errors import BackendError
from . import _ptrace
from ._procfs import task_ids, tracer_pid

__all__ = ["StoppedProcess", "StoppedTask", "stop_all"]

STOP_TIMEOUT_NS = 2_000_000_000


@dataclass
class StoppedTask:
    """One task under our ptrace stop: registers as found, the signal it was stopped with (re-delivered at
    detach), and whether we ran code on it (then its stop is our own SIGTRAP and nothing is re-delivered)."""

    tid: int
    regs: _ptrace.Regs
    held_signal: int = 0
    touched: bool = False

    @property
    def in_syscall(self) -> bool:
        """Stopped inside a system call (orig_rax holds its number; -1 means user code)."""
        return int(self.regs.orig_rax) < (1 << 63)


@dataclass
class StoppedProcess:
    """Every task of ``pid`` seized and stopped (``tasks``), plus bookkeeping to release them exactly once."""

    pid: int
    tasks: Dict[int, StoppedTask] = field(default_factory=dict)
    attached: Set[int] = field(default_factory=set)
    gone: Set[int] = field(default_factory=set)
    resend: List[Tuple[int, int]] = field(default_factory=list)
    started_ns: int = 0
    released: bool = False

    def release(self) -> int:
        """Detach every task (re-delivering held signals); returns the pause in microseconds. Idempotent."""
        if self.released:
            return 0
        self.released = True
        for tid in sorted(self.attached):
            task = self.tasks.get(tid)
            if task is None:  # seized but never seen stopped (error path): it must stop before it can detach
                result = _ptrace.wait_stop(tid, time.monotonic_ns() + 200_000_000)
                if result is None or result.gone:
                    continue
                sig = result.sig if result.signal_delivery else 0
            else:
                sig = 0 if task.touched else task.held_signal
            try:
                _ptrace.detach(tid, sig)
            except OSError as exc:
                if exc.errno != errno.ESRCH:  # ESRCH: the task exited meanwhile
                    raise BackendError(f"could not detach thread {tid} of process {self.pid}: {exc}") from exc
        pause_us = (time.monotonic_ns() - self.started_ns) // 1000 if self.started_ns else 0
        for tid, sig in self.resend:
            with contextlib.suppress(OSError):  # the thread is gone: nobody left to receive it
                _ptrace.tgkill(self.pid, tid, sig)
        self.attached.clear()
        return pause_us


def _seize(sp: StoppedProcess, tid: int) -> bool:
    try:
        _ptrace.seize(tid)
    except OSError as exc:
        if exc.errno == errno.ESRCH:  # exited (or a zombie) since we listed it
            sp.gone.add(tid)
            return False
        if exc.errno == errno.EPERM and _ptrace.task_state(tid) in ("Z", "X"):
            sp.gone.add(tid)  # an exited thread not yet reaped (e.g. a leader after ExitThread): nothing to stop
            return False
        if exc.errno == errno.EPERM:
            try:
                tracer = tracer_pid(tid)
            except OSError:
                tracer = 0
            if tracer:
                raise BackendError(
                    f"ptrace refused on process {sp.pid} (thread {tid}): it is already traced by PID {tracer} (a "
                    "debugger or another engine?); detach it and try again"
                ) from exc
            raise BackendError(
                f"ptrace refused on process {sp.pid} (thread {tid}): this engine lacks CAP_SYS_PTRACE (run it as "
                "root) or kernel.yama.ptrace_scope forbids attaching"
            ) from exc
        raise BackendError(f"cannot attach to thread {tid} of process {sp.pid}: {exc}") from exc
    sp.attached.add(tid)
    if not sp.started_ns:
        sp.started_ns = time.monotonic_ns()
    try:
        _ptrace.interrupt(tid)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise BackendError(f"cannot interrupt thread {tid} of process {sp.pid}: {exc}") from exc
    return True


def stop_all(pid: int, timeout_ns: int = STOP_TIMEOUT_NS) -> StoppedProcess:
    """Seize and stop every task of ``pid``, re-listing /proc/PID/task until no new task appears (a task can
    only be created by a running one, so an empty round means all are stopped). Raises BackendError (gone,
    EPERM, timeout) with every task already released."""
    sp = StoppedProcess(pid)
    deadline = time.monotonic_ns() + timeout_ns
    try:
        while True:
            try:
                listed = task_ids(pid)
            except OSError as exc:
                raise BackendError(f"process {pid} is gone") from exc
            new = [tid for tid in listed if tid not in sp.attached and tid not in sp.gone]
            if not new:
                break
            seized = [tid for tid in new if _seize(sp, tid)]
            for tid in seized:
                result = _ptrace.wait_stop(tid, deadline)
                if result is None:
                    raise BackendError(
                        f"thread {tid} of process {pid} did not stop within {timeout_ns // 1_000_000} ms "
                        "(uninterruptible sleep?): try again later"
                    )
                if result.gone:
                    sp.attached.discard(tid)
                    sp.gone.add(tid)
                    continue
                try:
                    regs = _ptrace.get_regs(tid)
                except OSError:  # killed while stopped
                    sp.attached.discard(tid)
                    sp.gone.add(tid)
                    continue
                sp.tasks[tid] = StoppedTask(tid, regs, result.sig if result.signal_delivery else 0)
        if not sp.tasks:
            raise BackendError(f"process {pid} is gone (no thread left to stop)")
    except BaseException:
        sp.release()
        raise
    return sp
