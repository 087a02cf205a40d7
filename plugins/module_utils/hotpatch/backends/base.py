"""The small interface every platform backend implements (Windows through ctypes, Wine through ptrace).

The engine's apply logic (host/) speaks only this interface; a backend never decides policy. Addresses are
virtual addresses in the target process as int; sizes are in bytes. Every method raises BackendError with the
operating system's reason (e.g. "access denied: run as Administrator", "dynamic code blocked by the process
mitigation policy (ACG)") and never leaves a target changed by a failed call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

try:  # Protocol is 3.8+; the engine must import on every host Python we support
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment]

__all__ = ["Backend", "ModuleInfo", "ProcessHandle", "ProcessInfo", "Quiesced", "ThreadState"]

PROT_RX = "rx"
PROT_RW = "rw"
PROT_RWX = "rwx"


@dataclass(frozen=True)
class ProcessInfo:
    """A process as the backend sees it.

    ``pid``: the id the backend's other calls take (Windows PID; on Wine the Linux PID of the Wine process).
    ``start_time``: an opaque, stable identity string (creation time) so a reused PID is never mistaken for the
    journaled process. ``name``: executable file name (e.g. "appsvc.exe"). ``windows_pid``: the Windows PID when
    it differs from ``pid`` (Wine), else None.
    """

    pid: int
    name: str
    start_time: str
    windows_pid: Optional[int] = None


@dataclass(frozen=True)
class ModuleInfo:
    """A loaded module: ``path`` on the host's file system, ``base`` (load address), ``size`` (SizeOfImage)."""

    name: str
    path: str
    base: int
    size: int


@dataclass(frozen=True)
class ThreadState:
    """A stopped thread: its id, instruction pointer, stack pointer, and (on demand) return-address candidates."""

    tid: int
    rip: int
    rsp: int
    stack: Tuple[int, ...] = field(default=())


class Quiesced(Protocol):
    """Every thread of the process stopped by ``ProcessHandle.quiesce``; ``threads`` reflects their state at the
    moment of stopping. ``pause_started_ns``: when the pause began, in nanoseconds of a monotonic clock the backend
    chooses (compare only with the same clock)."""

    pause_started_ns: int

    @property
    def threads(self) -> Sequence[ThreadState]:
        """The stopped threads (read-only for callers: a backend may keep them in a list): every thread of the
        target, plus any thread the stop itself made there (Windows: the debugger break-in thread, held at its
        start in ntdll, never in patched code)."""

    def resume(self) -> int:
        """Let every stopped thread run again and detach; returns the pause in microseconds (from the first stop
        to the last release). Must run on the engine thread that called ``quiesce``: the stop belongs to it
        (Windows: its debug object, and the backend refuses with BackendError from another thread; Wine: ptrace
        serves only the tracer thread)."""


class ProcessHandle(Protocol):
    """An open target process. Close it (context manager) when done, after resuming any quiesce: a backend may
    let a process that is still stopped go at close (Wine does), but callers must not rely on it."""

    info: ProcessInfo

    def refusal(self) -> Optional[str]:
        """None when the engine may patch this process, else why not (protected, ACG, WOW64, other machine)."""

    def modules(self) -> List[ModuleInfo]:
        """Loaded modules of the process."""

    def read(self, address: int, size: int) -> bytes:
        """Read ``size`` bytes at ``address``; raises BackendError when any byte is unreadable."""

    def write(self, address: int, data: bytes) -> None:
        """Write ``data`` at ``address`` (code pages included). Callers quiesce first when threads may run there."""

    def allocate_near(
        self, base: int, size: int, span: int = 0x7FFF0000, intent: Optional[Callable[[int], None]] = None
    ) -> int:
        """Reserve and commit ``size`` bytes, read-write, at an address in ``[base, base + span - size]``
        (above the module, so image-relative RVAs stay 32-bit); raises BackendError when no room exists.
        ``intent(address)`` runs before each attempt at an address, so the caller can journal it first: an
        engine killed right after the allocation leaves memory the next run can find (see ``fresh_region``)."""

    def fresh_region(self, address: int, size: int) -> bool:
        """True when exactly one private allocation of this backend's kind spans [address, address + size
        rounded up to pages): what an ``allocate_near`` interrupted before it returned would have left. False
        when nothing is mapped there or the memory belongs to something larger (never freed on a guess)."""

    def protect(self, address: int, size: int, protection: str) -> None:
        """Change page protection to "rx", "rw" or "rwx"."""

    def free(self, address: int, size: int) -> None:
        """Release memory returned by ``allocate_near``."""

    def quiesce(self, with_stacks: bool = False) -> Quiesced:
        """Stop every thread (and any thread created meanwhile) until ``Quiesced.resume``, and read each one's
        registers; with_stacks fills ThreadState.stack with candidate return addresses for the activeness check.

        Windows attaches with the debug API and holds a debug event (every thread of a debuggee stays stopped
        while one is pending); Wine seizes and interrupts every task with ptrace. Either way the stop does not
        outlive the engine: if it dies, the kernel detaches and the target runs on. Raises BackendError, with
        nothing left stopped or attached, when the process is gone, already debugged or traced, access is
        denied, or a thread does not stop in time.
        """

    def add_function_table(self, table: int, count: int, base: int) -> None:
        """Register ``count`` RUNTIME_FUNCTION entries at ``table`` relative to ``base`` inside the target
        (ntdll!RtlAddFunctionTable run in the target; the table must stay mapped until delete_function_table).

        Call it while staging, before the jump is written (an exception unwinding through blob code without its
        table kills the target) and never while the process is quiesced: Windows runs the call on a new thread
        (CreateRemoteThread), which a quiesced process would hold stopped at its creation until the call times
        out. Wine runs it on one of the target's own threads by ptrace, stopping the process for the call and
        restoring that thread's registers after it. Raises BackendError when the call fails or returns FALSE.
        """

    def delete_function_table(self, table: int) -> None:
        """Unregister a table added by ``add_function_table`` (RtlDeleteFunctionTable in the target), under the
        same rule: never while quiesced. Raises BackendError when the target reports the table as unknown."""

    def set_valid_call_targets(self, addresses: Sequence[int]) -> None:
        """Mark addresses as valid Control Flow Guard call targets (no-op where CFG is not enforced)."""

    def flush_instruction_cache(self, address: int, size: int) -> None:
        """Make written code visible to every processor (FlushInstructionCache)."""

    def close(self) -> None:
        """Release handles and detach."""


class Backend(Protocol):
    """A platform: lists processes and opens them."""

    name: str

    def processes(self) -> List[ProcessInfo]:
        """Every process the engine can see (it may not be able to open all of them)."""

    def open(self, pid: int) -> ProcessHandle:
        """Open a process for patching; raises BackendError (gone, access denied, ...)."""
