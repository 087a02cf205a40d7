"""Internal: stop every task of a Linux process with PTRACE_SEIZE + PTRACE_INTERRUPT, and let them all go again.

Signals are never swallowed: a task found in a signal-delivery-stop gets its signal back at detach; a signal
that arrives while we run code on a task (remote syscall or call) is re-sent with tgkill after the detach.
A group-stop (SIGSTOP'ed process) survives: the kernel puts the task back into it when we detach.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from ..errors import BackendError
from . import _ptrace
from ._procfs import task_ids, tracer_pid

__all__ = ["StoppedProcess", "StoppedTask", "detach_lingering", "stop_all"]

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
    scheduling: Optional[Tuple[int, int]] = None  # our thread's policy and priority before the pause

    def release(self) -> int:
        """Detach every task (re-delivering held signals); returns the pause in microseconds. Idempotent."""
        if self.released:
            return 0
        self.released = True
        failures: List[str] = []
        dead: List[int] = []
        for tid in sorted(self.attached):
            task = self.tasks.get(tid)
            if task is None:  # seized but never seen stopped (error path): it must stop before it can detach
                result = _ptrace.wait_stop(tid, time.monotonic_ns() + 200_000_000)
                if result is None:
                    _LINGERING.add(tid)  # still in uninterruptible sleep: detached by the next stop or release
                    continue
                if result.gone:
                    continue
                sig = result.sig if result.signal_delivery else 0
            else:
                sig = 0 if task.touched else task.held_signal
            try:
                _ptrace.detach(tid, sig)
            except OSError as exc:
                if exc.errno == errno.ESRCH:  # killed while stopped: reap it below
                    dead.append(tid)
                else:
                    failures.append(f"thread {tid}: {exc}")
        _reap(self.pid, dead)
        pause_us = (time.monotonic_ns() - self.started_ns) // 1000 if self.started_ns else 0
        _restore_scheduling(self.scheduling)
        detach_lingering()
        for tid, sig in self.resend:
            with contextlib.suppress(OSError):  # the thread is gone: nobody left to receive it
                _ptrace.tgkill(self.pid, tid, sig)
        self.attached.clear()
        if failures:
            raise BackendError(
                f"could not detach from process {self.pid} ({'; '.join(failures)}); the engine's exit detaches them"
            )
        return pause_us


def _reap(pid: int, dead: List[int]) -> None:
    """Collect the exit of tasks killed while we traced them. A traced thread stays a zombie until its tracer
    waits for it, and the process cannot be reaped by its parent before all its threads are; so reap every
    thread, and the leader too unless we are also its parent (then our caller's wait collects it)."""
    deadline = time.monotonic_ns() + 1_000_000_000
    for tid in sorted(dead, key=lambda t: t == pid):  # the leader is reportable only after its threads
        if tid == pid and _parent_of(pid) == os.getpid():
            continue
        result = _ptrace.wait_stop(tid, deadline)
        if result is not None and not result.gone:  # stopped after all (not dead): let it go
            with contextlib.suppress(OSError):
                _ptrace.detach(tid, result.sig if result.signal_delivery else 0)


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# Tasks we seized that had not stopped when we gave up on them (stuck in "D"): a seized task stops as soon as it
# can, and would then stay stopped until this process exits; every later stop or release detaches them.
_LINGERING: Set[int] = set()


def detach_lingering() -> None:
    """Detach every lingering task that has reached its stop (or is gone) by now."""
    for tid in sorted(_LINGERING):
        result = _ptrace.wait_stop(tid, 0, block=False)
        if result is None:
            continue
        _LINGERING.discard(tid)
        if not result.gone:
            with contextlib.suppress(OSError):
                _ptrace.detach(tid, result.sig if result.signal_delivery else 0)


def _realtime() -> Optional[Tuple[int, int]]:
    """Run the calling thread SCHED_FIFO for the pause; returns what to restore (None: unchanged).

    Every wait in a pause ends in a wake-up of this thread; on loaded CPUs a normal thread then queues behind
    every runnable task (the target's own busy threads included). Measured on 2 CPUs at load 50: median
    pause for 64 busy threads 256 ms normal, 67 ms at nice -20, 1.2 ms SCHED_FIFO. Every loop of the pause
    blocks or sleeps and is bounded by a deadline, so the real-time thread cannot starve the host.
    """
    try:
        before = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
        if before[0] == os.SCHED_FIFO:
            return None
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (OSError, AttributeError):  # no CAP_SYS_NICE, or not Linux: pause longer, still correct
        return None
    return before


def _restore_scheduling(before: Optional[Tuple[int, int]]) -> None:
    if before is not None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, before[0], os.sched_param(before[1]))


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


def stop_all(pid: int, timeout_ns: int = STOP_TIMEOUT_NS, limit: int = 0) -> StoppedProcess:
    """Seize and stop every task of ``pid``, re-listing /proc/PID/task until no new task appears (a task can
    only be created by a running one, so an empty round means all are stopped). With ``limit``, stop only until
    that many tasks not holding a signal are stopped (enough to borrow one for a system call; the rest run on).
    Raises BackendError (gone, EPERM, timeout) with every task already released."""
    detach_lingering()
    sp = StoppedProcess(pid)
    deadline = time.monotonic_ns() + timeout_ns
    sp.scheduling = _realtime()
    try:
        while True:
            try:
                listed = task_ids(pid)
            except OSError as exc:
                raise BackendError(f"process {pid} is gone") from exc
            new = [tid for tid in listed if tid not in sp.attached and tid not in sp.gone]
            if not new:
                break
            if limit:
                new = new[:1]
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
            if limit and sum(1 for task in sp.tasks.values() if not task.held_signal) >= limit:
                break
        if not sp.tasks:
            raise BackendError(f"process {pid} is gone (no thread left to stop)")
    except BaseException:
        sp.release()
        raise
    return sp
