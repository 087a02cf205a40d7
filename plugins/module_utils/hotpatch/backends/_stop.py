"""Internal: stop every task of a Linux process with PTRACE_SEIZE + PTRACE_INTERRUPT, and let them all go again.

Signals are never swallowed: a task found in a signal-delivery-stop gets its signal back at detach; a signal
that arrives while we run code on a task (remote syscall or call) is re-sent with tgkill after the detach.
A group-stop (SIGSTOP'ed process) survives: the kernel puts the task back into it when we detach.

The pause is kept short by doing everything that can run before the first stop first: tasks are seized (they
keep running) and their /proc stat files opened, then all are interrupted in one sweep, and stops are collected
in arrival order. Ptrace state (lingering tasks) is per tracer thread: each thread of the engine traces its own
processes.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from ..errors import BackendError
from . import _ptrace
from ._procfs import task_ids, tracer_pid

_NUM_THREADS_FIELD = 17  # /proc/PID/stat field 20 (num_threads), counted from field 3 (state)

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
    started_ns: int = 0  # first PTRACE_INTERRUPT: the pause starts here
    all_stopped_ns: int = 0  # every task seen stopped (stop_all returned)
    released: bool = False
    scheduling: Optional[Tuple[int, int]] = None  # our thread's policy and priority before the pause
    stat_fds: Dict[int, int] = field(default_factory=dict)  # tid -> open /proc/PID/task/TID/stat (-1: none)
    gc_held: bool = False

    def let_go(self, tid: int) -> None:
        """Detach one stopped task now (re-delivering its held signal unless we ran code on it) and forget it;
        ``release`` then leaves it alone. A task never seen stopped stays for ``release``."""
        task = self.tasks.pop(tid, None)
        if task is None:
            return
        with contextlib.suppress(OSError):  # gone meanwhile: nothing left to let go
            _ptrace.detach(tid, 0 if task.touched else task.held_signal)
        self.attached.discard(tid)

    def let_run(self, keep: int) -> None:
        """Let every stopped task but ``keep`` go, e.g. so that a thread holding a lock a remote call on ``keep``
        waits for can release it. ``release`` still detaches ``keep``."""
        for tid in sorted(self.attached - {keep}):
            self.let_go(tid)

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
                with contextlib.suppress(OSError):  # maybe seized and not yet interrupted
                    _ptrace.interrupt(tid)
                result = _ptrace.wait_stop(tid, time.monotonic_ns() + 200_000_000, state=self.state_of)
                if result is None:
                    _lingering().add(tid)  # still in uninterruptible sleep: detached by the next stop or release
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
        if self.gc_held:
            self.gc_held = False
            _allow_gc()
        self.close_stat_files()
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

    def open_stat_file(self, tid: int) -> None:
        """Open /proc/PID/task/TID/stat now (before the pause), so ``state_of`` costs one pread in it."""
        try:
            self.stat_fds[tid] = os.open(f"/proc/{self.pid}/task/{tid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.stat_fds[tid] = -1

    def state_of(self, tid: int) -> str:
        """The task's state letter like _ptrace.task_state, read through the file opened before the pause."""
        fd = self.stat_fds.get(tid, -1)
        if fd < 0:
            return _ptrace.task_state(tid)
        try:
            text = os.pread(fd, 512, 0)
        except OSError:  # ESRCH: the task is gone
            return "X"
        end = text.rfind(b")")
        return chr(text[end + 2]) if 0 <= end < len(text) - 2 else "X"

    def close_stat_files(self) -> None:
        for fd in self.stat_fds.values():
            if fd >= 0:
                os.close(fd)
        self.stat_fds.clear()


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
# can, and would then stay stopped until this process exits; every later stop or release detaches them. Only
# the thread that seized a task can wait for or detach it, so each tracer thread keeps its own set.
_TRACER = threading.local()


def _lingering() -> Set[int]:
    """The calling thread's lingering tasks."""
    tids: Optional[Set[int]] = getattr(_TRACER, "lingering", None)
    if tids is None:
        tids = set()
        _TRACER.lingering = tids
    return tids


def detach_lingering() -> None:
    """Detach every lingering task of the calling thread that has reached its stop (or is gone) by now."""
    lingering = _lingering()
    for tid in sorted(lingering):
        result = _ptrace.wait_stop(tid, 0, block=False)
        if result is None:
            continue
        lingering.discard(tid)
        if not result.gone:
            with contextlib.suppress(OSError):
                _ptrace.detach(tid, result.sig if result.signal_delivery else 0)


# Python's cyclic garbage collector must not run while a process is stopped: a full collection over the engine's
# objects (package, journal) takes milliseconds, and allocations in the pause (registers, wait results) can start
# one. Worker threads pause processes concurrently, so collection stays off while any of them holds a pause.
_GC_LOCK = threading.Lock()
_GC_HOLDS = [0, 0]  # pauses in progress, and 1 when the collector was enabled before the first of them


def _hold_gc() -> None:
    with _GC_LOCK:
        if _GC_HOLDS[0] == 0:
            _GC_HOLDS[1] = 1 if gc.isenabled() else 0
            gc.disable()
        _GC_HOLDS[0] += 1


def _allow_gc() -> None:
    with _GC_LOCK:
        _GC_HOLDS[0] -= 1
        if _GC_HOLDS[0] == 0 and _GC_HOLDS[1]:
            gc.enable()


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
    sp.open_stat_file(tid)
    return True


def _interrupt(sp: StoppedProcess, tids: List[int]) -> None:
    """PTRACE_INTERRUPT each seized task; the pause starts with the first (a seized task runs on until then)."""
    if not sp.started_ns and tids:
        sp.started_ns = time.monotonic_ns()
    for tid in tids:
        try:
            _ptrace.interrupt(tid)
        except OSError as exc:
            if exc.errno != errno.ESRCH:  # ESRCH: exited meanwhile; its wait reports it gone
                raise BackendError(f"cannot interrupt thread {tid} of process {sp.pid}: {exc}") from exc


def _collect(sp: StoppedProcess, tids: List[int], deadline: int, timeout_ns: int) -> None:
    """Wait for every interrupted task's stop, taking them in the order they arrive: one WNOHANG sweep over the
    pending tasks, and a blocking wait on one of them only when none has stopped yet. Registers are read as each
    stop is seen; a task found gone moves to ``sp.gone``."""
    pending = list(tids)
    while pending:
        waiting = []
        for tid in pending:
            result = _ptrace.wait_stop(tid, 0, block=False)  # a single waitpid(WNOHANG)
            if result is None:
                waiting.append(tid)
            else:
                _stopped(sp, tid, result)
        if not waiting:
            return
        first = waiting.pop(0)
        result = _ptrace.wait_stop(first, deadline, state=sp.state_of)
        if result is None:
            raise BackendError(
                f"thread {first} of process {sp.pid} did not stop within {timeout_ns // 1_000_000} ms "
                "(uninterruptible sleep?): try again later"
            )
        _stopped(sp, first, result)
        pending = waiting


def _stopped(sp: StoppedProcess, tid: int, result: _ptrace.WaitResult) -> None:
    if result.gone:
        sp.attached.discard(tid)
        sp.gone.add(tid)
        return
    try:
        regs = _ptrace.get_regs(tid)
    except OSError:  # killed while stopped
        sp.attached.discard(tid)
        sp.gone.add(tid)
        return
    sp.tasks[tid] = StoppedTask(tid, regs, result.sig if result.signal_delivery else 0)


def _open_stat(pid: int) -> int:
    """/proc/PID/stat opened before the pause (-1 when it cannot be), for ``_threads_in_group``."""
    try:
        return os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def _threads_in_group(stat_fd: int) -> int:
    """num_threads of /proc/PID/stat: live threads plus those exited and not yet reaped; -1 when unreadable."""
    if stat_fd < 0:
        return -1
    try:
        text = os.pread(stat_fd, 1024, 0)
        return int(text[text.rindex(b")") + 2 :].split()[_NUM_THREADS_FIELD])
    except (OSError, ValueError, IndexError):
        return -1


def stop_all(pid: int, timeout_ns: int = STOP_TIMEOUT_NS, limit: int = 0) -> StoppedProcess:
    """Seize and stop every task of ``pid``, re-listing /proc/PID/task until no new task appears (a task can
    only be created by a running one, so an empty round means all are stopped). With ``limit``, stop only until
    that many tasks not holding a signal are stopped (enough to borrow one for a system call; the rest run on).
    Raises BackendError (gone, EPERM, timeout) with every task already released."""
    detach_lingering()
    sp = StoppedProcess(pid)
    deadline = time.monotonic_ns() + timeout_ns
    sp.scheduling = _realtime()
    _hold_gc()
    sp.gc_held = True
    stat_fd = _open_stat(pid) if not limit else -1
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
            _interrupt(sp, seized)
            _collect(sp, seized, deadline, timeout_ns)
            if limit and sum(1 for task in sp.tasks.values() if not task.held_signal) >= limit:
                break
            # A task can only be created by a running one, and a clone in progress completes before its caller
            # stops: once every task is stopped, a thread count equal to ours means there is no new task, and
            # the kernel tells that cheaper than a listing does (the listing runs when the counts differ).
            if not limit and _threads_in_group(stat_fd) == len(sp.tasks):
                break
        if not sp.tasks:
            raise BackendError(f"process {pid} is gone (no thread left to stop)")
    except BaseException:
        sp.release()
        raise
    finally:
        if stat_fd >= 0:
            os.close(stat_fd)
    sp.all_stopped_ns = time.monotonic_ns()
    return sp
