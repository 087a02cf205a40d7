"""The small interface every platform backend implements (Windows through ctypes, Wine through ptrace).

The engine's apply logic (host/) speaks only this interface; a backend never decides policy. Addresses are
virtual addresses in the target process as int; sizes are in bytes. Every method raises BackendError with the
operating system's reason (e.g. "access denied: run as Administrator", "dynamic code blocked by the process
mitigation policy (ACG)") and never leaves a target changed by a failed call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

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
    """Every thread of the process stopped; ``threads`` reflects their state at the moment of stopping."""

    pause_started_ns: int

    @property
    def threads(self) -> Sequence[ThreadState]:
        """The stopped threads (read-only for callers: a backend may keep them in a list)."""

    def resume(self) -> int:
        """Resume every thread stopped by ``quiesce``; returns the pause length in microseconds."""


class ProcessHandle(Protocol):
    """An open target process. Close it (context manager) when done; closing resumes nothing by itself."""

    info: ProcessInfo

    def refusal(self) -> Optional[str]:
        """None when the engine may patch this process, else why not (protected, ACG, WOW64, other machine)."""

    def modules(self) -> List[ModuleInfo]:
        """Loaded modules of the process."""

    def read(self, address: int, size: int) -> bytes:
        """Read ``size`` bytes at ``address``; raises BackendError when any byte is unreadable."""

    def write(self, address: int, data: bytes) -> None:
        """Write ``data`` at ``address`` (code pages included). Callers quiesce first when threads may run there."""

    def allocate_near(self, base: int, size: int, span: int = 0x7FFF0000) -> int:
        """Reserve and commit ``size`` bytes, read-write, at an address in ``[base, base + span - size]``
        (above the module, so image-relative RVAs stay 32-bit); raises BackendError when no room exists."""

    def protect(self, address: int, size: int, protection: str) -> None:
        """Change page protection to "rx", "rw" or "rwx"."""

    def free(self, address: int, size: int) -> None:
        """Release memory returned by ``allocate_near``."""

    def quiesce(self, with_stacks: bool = False) -> Quiesced:
        """Stop every thread (and any thread created meanwhile); with_stacks fills ThreadState.stack with
        candidate return addresses for the activeness check."""

    def add_function_table(self, table: int, count: int, base: int) -> None:
        """Register ``count`` RUNTIME_FUNCTION entries at ``table`` relative to ``base`` inside the target
        (RtlAddFunctionTable run in the target). Call it while staging, before quiescing: the blob is not
        reachable yet, and on Windows it runs a new thread in the target, which would deadlock against a
        suspended thread that holds the loader lock. A backend that must stop a thread to run the call (Wine,
        ptrace) stops and restores that thread itself."""

    def delete_function_table(self, table: int) -> None:
        """Unregister a table added by ``add_function_table`` (RtlDeleteFunctionTable in the target)."""

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
