"""Internal: run one Linux system call, or call one function, on a task stopped by _stop.stop_all.

Both borrow existing bytes of the target instead of writing code: a syscall executes a ``0f 05`` found in an
executable mapping (single-stepped, so exactly one instruction runs), a call returns onto a ``cc`` found the
same way. Every register (general and the full XSAVE state) is put back afterwards, so the task resumes
exactly where it was stopped, and an interrupted system call of its own is restarted as the kernel would have.
"""

from __future__ import annotations

import contextlib
import signal
import struct
import time
from typing import Callable, Sequence

from ..errors import BackendError
from . import _ptrace
from ._stop import StoppedProcess, StoppedTask

__all__ = ["remote_call", "remote_syscall"]

NO_SYSCALL = (1 << 64) - 1  # orig_rax = -1: the kernel must not restart an interrupted syscall under our regs
_MASK64 = (1 << 64) - 1
_FAULTS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE)
_EFLAGS_TF = 0x100
_EFLAGS_DF = 0x400
RED_ZONE = 128
CALL_TIMEOUT_NS = 2_000_000_000


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= (1 << 63) else value


def _restore(task: StoppedTask, saved: _ptrace.Regs) -> None:
    try:
        _ptrace.set_regs(task.tid, saved)
    except OSError as exc:
        raise BackendError(f"thread {task.tid}: could not restore registers ({exc}); the process is gone") from exc


def _stop_runaway(task: StoppedTask) -> None:
    """Bring a task we let run back to a ptrace stop (after a timeout) so its registers can be restored."""
    try:
        _ptrace.interrupt(task.tid)
    except OSError:
        return
    _ptrace.wait_stop(task.tid, time.monotonic_ns() + 1_000_000_000)


def remote_syscall(sp: StoppedProcess, task: StoppedTask, gadget: int, number: int, args: Sequence[int]) -> int:
    """Run Linux system call ``number`` with up to six ``args`` on ``task``, executing the ``0f 05`` at
    ``gadget``; returns the raw result as a signed int (-errno on failure). Raises BackendError when the
    process dies or the task does not come back."""
    saved = _ptrace.get_regs(task.tid)
    regs = saved.copy()
    regs.rax = number
    for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
        setattr(regs, name, value & _MASK64)
    regs.rip = gadget
    regs.orig_rax = NO_SYSCALL
    regs.eflags &= ~_EFLAGS_TF
    task.touched = True
    deadline = time.monotonic_ns() + CALL_TIMEOUT_NS
    try:
        _ptrace.set_regs(task.tid, regs)
        for _attempt in range(64):
            _ptrace.singlestep(task.tid, 0)
            result = _ptrace.wait_stop(task.tid, deadline)
            if result is None:
                _stop_runaway(task)
                raise BackendError(f"remote system call {number} on thread {task.tid} timed out")
            if result.gone:
                raise BackendError(f"process {sp.pid} exited during a remote system call")
            now = _ptrace.get_regs(task.tid)
            if now.rip == gadget + 2:
                return _signed(now.rax)
            if result.signal_delivery and result.sig != signal.SIGTRAP:
                sp.resend.append((task.tid, result.sig))  # not ours: deliver it after we let go
        raise BackendError(f"remote system call {number} on thread {task.tid} never completed")
    except OSError as exc:
        raise BackendError(f"remote system call on process {sp.pid} failed: {exc} (process gone?)") from exc
    finally:
        _restore(task, saved)


def remote_call(
    sp: StoppedProcess,
    task: StoppedTask,
    function: int,
    args: Sequence[int],
    trap: int,
    write: Callable[[int, bytes], None],
    timeout_ns: int = CALL_TIMEOUT_NS,
    stack: int = 0,
) -> int:
    """Call ``function(args...)`` (Windows x64 ABI: rcx, rdx, r8, r9) on ``task`` and return rax.

    The frame goes below the red zone of ``stack`` (default: the task's rsp), 16-byte aligned with 32 bytes of shadow space, and returns onto
    the ``cc`` at ``trap``. Only this task runs; every other task stays stopped, so a function that waits for
    a lock a stopped task holds times out (BackendError) instead of hanging. Faults inside the call
    (SIGSEGV, ...) are not delivered: the registers are restored and BackendError is raised.
    """
    saved = _ptrace.get_regs(task.tid)
    fpstate = _ptrace.get_xstate(task.tid)
    shadow = ((stack or saved.rsp) - RED_ZONE - 256) & ~0xF
    regs = saved.copy()
    for name, value in zip(("rcx", "rdx", "r8", "r9"), args):
        setattr(regs, name, value & _MASK64)
    regs.rax = 0
    regs.rip = function
    regs.rsp = shadow - 8
    regs.orig_rax = NO_SYSCALL
    regs.eflags &= ~(_EFLAGS_TF | _EFLAGS_DF)
    task.touched = True
    try:
        write(shadow - 8, struct.pack("<Q", trap) + b"\0" * 32)
        _ptrace.set_regs(task.tid, regs)
        _ptrace.cont(task.tid, 0)
        deadline = time.monotonic_ns() + timeout_ns
        while True:
            result = _ptrace.wait_stop(task.tid, deadline, block=False)
            if result is None:
                _stop_runaway(task)
                raise BackendError(
                    f"remote call at {function:#x} on thread {task.tid} of process {sp.pid} timed out after "
                    f"{timeout_ns // 1_000_000} ms (a lock held by a stopped thread?); registers were restored"
                )
            if result.gone:
                raise BackendError(f"process {sp.pid} exited during a remote call")
            if not result.signal_delivery:  # group-stop or a stray interrupt: keep the call going
                _ptrace.cont(task.tid, 0)
                continue
            if result.sig == signal.SIGTRAP:
                now = _ptrace.get_regs(task.tid)
                if now.rip == trap + 1:
                    return int(now.rax)
                raise BackendError(f"remote call at {function:#x} hit a breakpoint at {now.rip - 1:#x}")
            if result.sig in _FAULTS:
                now = _ptrace.get_regs(task.tid)
                raise BackendError(
                    f"remote call at {function:#x} faulted ({signal.Signals(result.sig).name} at {now.rip:#x}); "
                    "registers were restored"
                )
            sp.resend.append((task.tid, result.sig))  # asynchronous signal: deliver it after we let go
            _ptrace.cont(task.tid, 0)
    except OSError as exc:
        raise BackendError(f"remote call on process {sp.pid} failed: {exc} (process gone?)") from exc
    finally:
        _restore(task, saved)
        with contextlib.suppress(OSError):  # the task is gone; _restore already said so
            _ptrace.set_xstate(task.tid, fpstate)
