"""Internal: run one Linux system call, or call one function, on a task stopped by _stop.stop_all.

Both are self-restoring: the task's way out of the operation is an ``rt_sigreturn`` reading a signal frame that
holds its own registers (see _sigframe). With the engine alive, the task is driven from syscall stop to syscall
stop (PTRACE_SYSCALL) and the engine restores the registers at the entry of that rt_sigreturn (skipping it);
if the engine dies at any moment, the task runs on into the rt_sigreturn and resumes where it was stopped. A
syscall stop is also the only kind of stop a dead tracer may leave a task in without a signal being delivered
afterwards (TRACESYSGOOD makes its code unsendable), which is why neither operation single-steps or traps.

After an operation the task waits in an interrupt stop with its registers exactly as found: an interrupted system
call of its own is restarted by the kernel when it resumes, as if nothing had happened in between.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from ..errors import BackendError, CallLeftRunning
from . import _ptrace
from ._sigframe import (
    CALL_STUB_FRAME_OFFSET,
    CALL_STUB_SIGRETURN_END,
    NO_SYSCALL,
    RESTORE_RT,
    SYS_RT_SIGRETURN,
    frame_size,
    resume_registers,
    signal_frame,
)
from ._stop import StoppedProcess, StoppedTask

__all__ = ["CALL_TIMEOUT_NS", "RED_ZONE", "SLOW_FACTOR", "FrameSwitch", "Gadgets", "remote_call", "remote_syscall"]

_MASK64 = (1 << 64) - 1
ALL_SIGNALS = _MASK64  # blocked for the operation; the kernel keeps SIGKILL and SIGSTOP deliverable
_EFLAGS_TF = 0x100
_EFLAGS_DF = 0x400
RED_ZONE = 128
CALL_TIMEOUT_NS = 2_000_000_000
SLOW_FACTOR = 5  # a call still running at its timeout gets this many timeouts more with the other threads running
SYSCALL_TIMEOUT_NS = 2_000_000_000
_ABORT_WAIT_NS = 1_000_000_000  # how long an aborted or let-go task may take to reach its ptrace stop

Write = Callable[[int, bytes], None]


@dataclass(frozen=True)
class Gadgets:
    """Addresses of instructions borrowed from the target: ``syscall_ret`` (``syscall; ret``) and ``sigreturn``
    (glibc's ``mov rax, 15; syscall`` signal restorer)."""

    syscall_ret: int
    sigreturn: int


@dataclass(frozen=True)
class FrameSwitch:
    """For a call on a thread blocked in Wine's Unix-side code: the TEB slot holding its syscall-frame pointer,
    the fresh frame the call uses, and the live frame put back after it (by the stub itself, so a dead engine
    leaves the pointer right)."""

    pointer: int
    fresh: int
    live: int


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= (1 << 63) else value


class _Slow(Exception):
    """A call has not returned by its deadline; the task still runs it (internal to remote_call)."""


class _Operation:
    """One self-restoring operation on one task: saves its state, writes the signal frame, drives it."""

    def __init__(self, sp: StoppedProcess, task: StoppedTask, what: str) -> None:
        self.sp, self.task, self.tid, self.what = sp, task, task.tid, what
        self.saved = _ptrace.get_regs(task.tid)
        self.xstate = _ptrace.get_xstate(task.tid)
        self.sigmask = _ptrace.get_sigmask(task.tid)
        self.back = resume_registers(self.saved)
        self.restored = False

    def frame(self, write: Write, top: int, slot_align: int, pretcode: int) -> int:
        """Write the signal frame just below ``top`` with its pretcode slot at an address == ``slot_align``
        (mod 16); returns that address."""
        size = frame_size(self.xstate)
        address = ((top - size - 16) & ~0xF) + slot_align
        write(address, signal_frame(address, self.back, self.xstate, self.sigmask, pretcode))
        return address

    def start(self, regs: _ptrace.Regs) -> None:
        """Point the task at the operation, then block every signal for it: a signal sent meanwhile stays
        pending (delivered by the kernel once the mask is back, even if the engine dies), so any signal the
        operation meets is its own fault. Registers first: a death in between runs the operation with the
        task's own mask, and its rt_sigreturn restores that mask anyway."""
        regs.orig_rax = NO_SYSCALL
        regs.eflags &= ~(_EFLAGS_TF | _EFLAGS_DF)
        self.task.touched = True
        _ptrace.set_regs(self.tid, regs)
        _ptrace.set_sigmask(self.tid, ALL_SIGNALS)

    def until(
        self,
        deadline: int,
        want: Callable[[_ptrace.Regs], bool],
        block: bool = True,
        interrupt: bool = True,
        resume: bool = True,
    ) -> _ptrace.Regs:
        """Resume with PTRACE_SYSCALL until a syscall stop whose registers satisfy ``want``. Every signal is
        blocked, so a signal-delivery stop is the operation's own fault (SIGSEGV, SIGTRAP, ...: forced through the
        mask) and raises BackendError, like a timeout; only SIGSTOP cannot be blocked: it is held and re-sent
        after the release. Without ``block`` the wait polls (for code that may never stop: a blocking waitpid has
        no timeout). Without ``interrupt`` a deadline raises _Slow and leaves the task running its call; without
        ``resume`` the first wait is for a task already running (after _Slow)."""
        while True:
            if resume:
                _ptrace.syscall(self.tid, 0)
            resume = True
            result = _ptrace.wait_stop(self.tid, deadline, block=block)
            if result is None:
                if not interrupt:
                    raise _Slow()  # the task is still running its call
                if not self._interrupt():
                    self._abandon()
                    raise CallLeftRunning(
                        f"{self.what} on thread {self.tid} of process {self.sp.pid} timed out and the thread did not "
                        f"stop within {_ABORT_WAIT_NS // 1_000_000} ms (uninterruptible sleep?): it was left to "
                        "finish the operation alone; it puts its registers and mask back itself (and, for a call, "
                        "its TEB's syscall-frame pointer; its call page stays mapped)"
                    )
                raise BackendError(
                    f"{self.what} on thread {self.tid} of process {self.sp.pid} timed out; registers were restored"
                )
            if result.gone:
                raise BackendError(f"process {self.sp.pid} exited during {self.what}")
            if result.syscall_stop:
                regs = _ptrace.get_regs(self.tid)
                if want(regs):
                    return regs
                continue  # a system call made by the called function
            if not result.signal_delivery:  # group-stop or a stray interrupt: keep going
                continue
            if result.sig == signal.SIGSTOP:
                self.sp.resend.append((self.tid, result.sig))  # asynchronous: delivered after we let go
                continue
            rip = _ptrace.get_regs(self.tid).rip
            raise BackendError(f"{self.what} faulted ({_signal_name(result.sig)} at {rip:#x}); registers were restored")

    def finish(self, deadline: int) -> None:
        """At the rt_sigreturn entry stop: restore the FP state, then the registers with the call skipped
        (orig_rax -1; a death in between still runs the rt_sigreturn), then bring the task to an interrupt stop
        before it reaches user mode and put back its registers exactly as found there. From that stop the
        kernel restarts an interrupted system call itself, and until the task runs it still shows as blocked in
        that call (the next quiesce and _pick_task see it as it was)."""
        _ptrace.set_sigmask(self.tid, self.sigmask)  # a death from here on: rt_sigreturn or back, own mask
        _ptrace.set_xstate(self.tid, self.xstate)
        _ptrace.set_regs(self.tid, self.back)
        self.restored = True
        _ptrace.interrupt(self.tid)  # trapped now: the trap comes after this one ends, before user mode
        _ptrace.cont(self.tid, 0)
        delivered = False
        while True:
            result = _ptrace.wait_stop(self.tid, deadline)
            if result is None:
                self._abandon()  # it runs on with its registers put back; detached once it stops
                raise BackendError(f"thread {self.tid} of process {self.sp.pid} did not stop after {self.what}")
            if result.gone:
                raise BackendError(f"process {self.sp.pid} exited after {self.what}")
            if result.stopped and result.event == _ptrace.EVENT_STOP:
                break
            # The trap is taken before pending signals are dequeued, so this is rare: deliver the signal as the
            # kernel would have (its handler returns to the registers set above).
            delivered = delivered or result.signal_delivery
            _ptrace.cont(self.tid, result.sig if result.signal_delivery else 0)
        if not delivered:
            _ptrace.set_regs(self.tid, self.saved)

    def restore(self) -> None:
        """On failure: the registers as found, at whatever stop the task is in now."""
        if self.restored:
            return
        try:
            _ptrace.set_sigmask(self.tid, self.sigmask)
            _ptrace.set_regs(self.tid, self.back)
            _ptrace.set_xstate(self.tid, self.xstate)
        except OSError as exc:
            raise BackendError(f"thread {self.tid}: could not restore registers ({exc}); the process is gone") from exc

    def leave_running(self) -> None:
        """Detach the task in the middle of its call and let it finish alone: its stub puts the TEB pointer,
        its registers and its mask back through the rt_sigreturn frame (the self-restoring path)."""
        if self._interrupt():
            self.sp.let_go(self.tid)  # touched: no held signal to re-deliver
        else:
            self._abandon()
        self.restored = True  # nothing for restore() to do: the thread restores itself

    def _interrupt(self) -> bool:
        """Bring a task we let run back to a ptrace stop (after a timeout) so its registers can be restored;
        False when it does not stop within _ABORT_WAIT_NS (e.g. in uninterruptible sleep: it is still running)."""
        try:
            _ptrace.interrupt(self.tid)
        except OSError:
            return True  # gone: nothing runs any more
        return _ptrace.wait_stop(self.tid, time.monotonic_ns() + _ABORT_WAIT_NS) is not None

    def _abandon(self) -> None:
        """Leave a task that runs on and cannot be stopped now to finish alone: nothing of it is touched any more
        (its registers, the TEB pointer, the call page). It is no longer a stopped task of ``sp``, so neither
        _pick_task nor let_go use it, and ``release`` treats it as seized but never stopped: it detaches it at
        its next stop (or leaves that to the next stop_all of this thread)."""
        self.sp.tasks.pop(self.tid, None)
        self.restored = True


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _begin(sp: StoppedProcess, task: StoppedTask, what: str) -> _Operation:
    try:
        return _Operation(sp, task, what)
    except OSError as exc:
        raise BackendError(f"{what} on process {sp.pid}: cannot read thread {task.tid} ({exc}; process gone?)") from exc


def remote_syscall(
    sp: StoppedProcess, task: StoppedTask, gadgets: Gadgets, number: int, args: Sequence[int], write: Write
) -> int:
    """Run Linux system call ``number`` with up to six ``args`` on ``task``: it executes the borrowed
    ``syscall; ret`` and returns into the borrowed ``rt_sigreturn`` with the signal frame below its red zone.
    Returns the raw result as a signed int (-errno on failure). Raises BackendError when the process dies or
    the task does not come back."""
    op = _begin(sp, task, f"remote system call {number}")
    deadline = time.monotonic_ns() + SYSCALL_TIMEOUT_NS
    at = gadgets.syscall_ret + 2
    seen = []

    def ours(regs: _ptrace.Regs) -> bool:
        if regs.rip == at and regs.orig_rax == number:
            seen.append(regs)
            return len(seen) == 2  # entry, then exit
        return False

    try:
        slot = op.frame(write, int(op.saved.rsp) - RED_ZONE, 0, gadgets.sigreturn)
        regs = op.saved.copy()
        regs.rax = number
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(regs, name, value & _MASK64)
        regs.rip = gadgets.syscall_ret
        regs.rsp = slot
        op.start(regs)
        result = _signed(int(op.until(deadline, ours).rax))
        op.until(deadline, lambda r: r.rip == gadgets.sigreturn + len(RESTORE_RT) and r.orig_rax == SYS_RT_SIGRETURN)
        op.finish(deadline)
        return result
    except OSError as exc:
        raise BackendError(f"remote system call on process {sp.pid} failed: {exc} (process gone?)") from exc
    finally:
        op.restore()


def remote_call(
    sp: StoppedProcess,
    task: StoppedTask,
    stub: int,
    function: int,
    args: Sequence[int],
    write: Write,
    timeout_ns: int = CALL_TIMEOUT_NS,
    stack: int = 0,
    switch: Optional[FrameSwitch] = None,
    slow_ns: int = 0,
) -> int:
    """Call ``function(args...)`` (Windows x64 ABI: rcx, rdx, r8, r9) on ``task`` through the CALL_STUB written
    at ``stub``; returns rax. The signal frame goes below the red zone of ``stack`` (default: the task's rsp)
    and the call's stack below the frame. Only this task runs; every other task stays stopped, so a function
    that waits for a lock a stopped task holds times out (BackendError) instead of hanging. Faults inside the
    call (SIGSEGV, ...) are not delivered: the registers are restored and BackendError is raised."""
    op = _begin(sp, task, f"remote call at {function:#x}")
    end = stub + CALL_STUB_SIGRETURN_END

    def returned(regs: _ptrace.Regs) -> bool:
        return bool(regs.rip == end and regs.orig_rax == SYS_RT_SIGRETURN)

    try:
        slot = op.frame(write, (stack or int(op.saved.rsp)) - RED_ZONE, 8, 0)
        regs = op.saved.copy()
        for name, value in zip(("rcx", "rdx", "r8", "r9"), args):
            setattr(regs, name, value & _MASK64)
        regs.rbx, regs.rax, regs.rip = function, 0, stub
        regs.r12, regs.r13, regs.r14 = (switch.pointer, switch.live, switch.fresh) if switch else (0, 0, 0)
        regs.rsp = slot - CALL_STUB_FRAME_OFFSET
        op.start(regs)
        try:
            done = op.until(time.monotonic_ns() + timeout_ns, returned, block=False, interrupt=not slow_ns)
        except _Slow:
            # Waiting for a lock a stopped thread holds? Let the others run, and never abort a started call:
            # half-run Windows code can leave a lock taken for good.
            sp.let_run(task.tid)
            try:
                done = op.until(time.monotonic_ns() + slow_ns, returned, False, False, resume=False)
            except _Slow:
                op.leave_running()
                raise CallLeftRunning(
                    f"remote call at {function:#x} on thread {task.tid} of process {sp.pid} did not return within "
                    f"{(timeout_ns + slow_ns) / 1e9:.1f} s; the thread was left to finish it (it puts "
                    "itself back afterwards) and its call page stays mapped"
                ) from None
        op.finish(time.monotonic_ns() + SYSCALL_TIMEOUT_NS)
        return int(done.rdi)
    except OSError as exc:
        raise BackendError(f"remote call on process {sp.pid} failed: {exc} (process gone?)") from exc
    finally:
        op.restore()
