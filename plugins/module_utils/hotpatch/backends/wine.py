"""The Wine backend: Windows programs hosted by 64-bit Wine on Linux, patched with ptrace and /proc/PID/mem.

A Wine process is one Linux process; its threads are the tasks in /proc/PID/task. Memory is read and written
through /proc/PID/mem (root may write r-x pages; writes are plain copies, so callers quiesce first).
Executable memory near a module comes from a remote ``mmap`` system call with MAP_FIXED_NOREPLACE run on a
stopped thread; RtlAddFunctionTable / RtlDeleteFunctionTable run inside the target through a remote call.

Thread affinity: ptrace binds a stopped task to the tracer *thread*. Use one handle from one thread only
(quiesce, resume, allocate_near, protect, free and the function-table calls all use ptrace).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import os
import re
import struct
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import BackendError, CallLeftRunning
from . import _procfs
from ._procfs import Mapping
from ._ptrace import get_sigmask, get_xstate
from ._remote import CALL_TIMEOUT_NS, RED_ZONE, SLOW_FACTOR, FrameSwitch, Gadgets, remote_call, remote_syscall
from ._sigframe import CALL_STUB, CALL_STUB_MARKER, RESTORE_RT, SYSCALL_RET
from ._stop import StoppedProcess, StoppedTask, detach_lingering, stop_all
from ._winelayout import ThreadFds, WineLayout, probe, probe_thread_fds
from .base import PROT_RW, PROT_RWX, PROT_RX, ModuleInfo, ProcessInfo, ThreadState

__all__ = ["Allocation", "WineBackend", "WineProcess", "WineQuiesced"]

PAGE = 0x1000
GRANULARITY = 0x10000  # Windows allocation granularity: blobs start where VirtualAlloc could have put them
STACK_WINDOW = 0x10000  # bytes of each stack scanned for return addresses (activeness check)
MACHINE_AMD64 = 0x8664

SYS_MMAP, SYS_MPROTECT, SYS_MUNMAP = 9, 10, 11
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x02, 0x20, 0x100000
_PROT_BITS = {
    PROT_RX: PROT_READ | PROT_EXEC,
    PROT_RW: PROT_READ | PROT_WRITE,
    PROT_RWX: PROT_READ | PROT_WRITE | PROT_EXEC,
}

# NT_TIB in the TEB (gs base = TEB): StackBase, StackLimit. Wine puts each thread's Unix-side ("kernel") stack
# right above StackBase, with the syscall frame at its top (offsets of the frame: see _winelayout).
TEB_STACK_BASE = 0x08
KERNEL_STACK_MAX = 0x400000
FRAME_HEADER = 0xC0  # registers before the XSAVE area of Wine's syscall frame
NESTED_STACK = 0x40000  # Unix-side stack left below a fresh frame for a nested NT system call
_DELETED = " (deleted)"  # what /proc/PID/maps appends to a file removed or replaced since it was mapped
_WINE_PE_DIR = "-windows/"  # Wine's own PE DLLs live in .../wine/x86_64-windows/
_REASONS_SHOWN = 4  # refused threads named in a _pick_task error

# System calls in which an idle Windows thread waits (see WineProcess._not_waiting).
SYS_READ, SYS_FUTEX = 0, 202
_FUTEX_CMD, _FUTEX_WAIT, _FUTEX_WAIT_BITSET = 0x7F, 0, 9  # op without FUTEX_PRIVATE_FLAG / CLOCK_REALTIME
_SLEEPS = (35, 230)  # nanosleep, clock_nanosleep
_FD_WAITS = (7, 23, 270, 271)  # poll, select, pselect6, ppoll: with no fds, a sleep
_SERVER_SIGNAL = 1 << (10 - 1)  # SIGUSR1 in a blocked-signal mask: blocked by Wine for server requests and locks


@dataclass(frozen=True)
class _UnixSide:
    """A thread blocked in Wine's Unix-side code: its TEB, syscall frame, Windows-side rsp and StackBase (the
    low end of its Unix-side stack)."""

    teb: int
    frame: int
    windows_rsp: int
    stack_base: int


@dataclass(frozen=True)
class Allocation:
    """Memory this backend put into a target: [address, address + size), and how (so free() undoes it)."""

    address: int
    size: int
    method: str = "mmap"


def _page_up(value: int, unit: int = PAGE) -> int:
    return (value + unit - 1) & ~(unit - 1)


def _pe_name(path: str) -> str:
    return re.split(r"[\\/]", path)[-1]


class WineQuiesced:
    """Every thread of a Wine process stopped by ptrace; ``resume`` detaches them all and returns the pause (µs)."""

    def __init__(self, owner: WineProcess, stopped: StoppedProcess, threads: Sequence[ThreadState]) -> None:
        self._owner = owner
        self.stopped = stopped
        self.threads = list(threads)
        self.pause_started_ns = stopped.started_ns

    def resume(self) -> int:
        if self._owner._quiesced is self:
            self._owner._quiesced = None
        return self.stopped.release()


class WineProcess:
    """An open Wine process (see ProcessHandle in base.py for each method's contract)."""

    def __init__(self, info: ProcessInfo) -> None:
        self.info = info
        self._pid = info.pid
        try:
            self._mem = os.open(f"/proc/{info.pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise BackendError(f"process {info.pid} is gone") from exc
        except PermissionError as exc:
            raise BackendError(f"cannot open the memory of process {info.pid}: run the engine as root") from exc
        try:  # the fd pins this process's memory; make sure it is the one described (no PID reuse in between)
            same = f"{_procfs.boot_id()}:{_procfs.start_ticks(info.pid)}" == info.start_time
        except OSError:
            same = False
        if not same:
            os.close(self._mem)
            raise BackendError(f"process {info.pid} is gone (its PID now names another process)")
        self._allocations: Dict[int, Allocation] = {}
        self._quiesced: Optional[WineQuiesced] = None
        self._exports: Dict[str, int] = {}
        self._gadgets: Optional[Gadgets] = None
        self._wine_layout: Optional[WineLayout] = None
        self._layout_probed = False
        self._thread_fd_layout: Optional[ThreadFds] = None
        self._fds_probed = False

    # -- context manager -------------------------------------------------------------------------------------

    def __enter__(self) -> WineProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Detach any threads still stopped (a tracer must never leave a process stopped), close /proc/PID/mem.
        Also detaches a thread left running by a remote operation that has reached its stop by now."""
        if self._quiesced is not None:
            self._quiesced.resume()
        detach_lingering()
        if self._mem >= 0:
            os.close(self._mem)
            self._mem = -1

    # -- identity and refusal ----------------------------------------------------------------------------------

    def _maps(self) -> List[Mapping]:
        try:
            return _procfs.read_maps(self._pid)
        except OSError as exc:
            raise BackendError(f"process {self._pid} is gone") from exc

    def refusal(self) -> Optional[str]:
        """None for a 64-bit Wine process; a reason for 32-bit (i386 loader or WOW64 exe) or non-Wine ones."""
        try:
            if not _procfs.exe_is_64bit(self._pid):
                return (
                    f"{self.info.name} runs under the 32-bit Wine loader (x86 code): only x64 processes can be "
                    "hotpatched until x86 support lands; use the cold path"
                )
        except OSError:
            return f"process {self._pid} is gone"
        modules = self.modules()
        if not any(m.name.lower() == "ntdll.dll" for m in modules):
            return f"process {self._pid} ({self.info.name}) has no Wine ntdll.dll mapped: not a Wine process"
        exe = self._main_module(modules)
        if exe is not None:
            machine = self._machine(exe.base)
            if machine != MACHINE_AMD64:
                return (
                    f"{exe.name} is a machine {machine:#06x} image (WOW64): only x64 (0x8664) processes can be "
                    "hotpatched until x86 support lands; use the cold path"
                )
        return None

    def _main_module(self, modules: List[ModuleInfo]) -> Optional[ModuleInfo]:
        name = self.info.name.lower()
        exes = [m for m in modules if m.name.lower().endswith(".exe")]
        for module in exes:
            if module.name.lower() == name:
                return module
        return exes[0] if exes else None

    def _machine(self, base: int) -> int:
        e_lfanew = struct.unpack("<I", self.read(base + 0x3C, 4))[0]
        return int(struct.unpack("<H", self.read(base + e_lfanew + 4, 2))[0])

    # -- modules and memory ------------------------------------------------------------------------------------

    def modules(self) -> List[ModuleInfo]:
        """PE modules: every file mapping at file offset 0 whose first bytes are "MZ" and carry a PE header.
        ``base`` is that mapping's start (Wine shows the path only on the header page), ``size`` the
        SizeOfImage read from the header in memory. The path is the file's name now: " (deleted)" is dropped
        when the file was replaced on disk, and a file renamed since it was loaded shows its new name."""
        out: List[ModuleInfo] = []
        seen = set()
        for mapping in self._maps():
            if mapping.offset != 0 or not mapping.path.startswith("/") or mapping.start in seen:
                continue
            if not mapping.readable or mapping.perms[3] != "p":
                continue
            try:
                header = os.pread(self._mem, 0x40, mapping.start)
                if header[:2] != b"MZ":
                    continue
                e_lfanew = struct.unpack_from("<I", header, 0x3C)[0]
                nt = os.pread(self._mem, 0x58, mapping.start + e_lfanew)
            except OSError:
                continue
            if nt[:4] != b"PE\0\0" or len(nt) < 0x58:
                continue
            size = struct.unpack_from("<I", nt, 24 + 56)[0]  # OptionalHeader.SizeOfImage (PE32 and PE32+)
            seen.add(mapping.start)
            path = mapping.path[: -len(_DELETED)] if mapping.path.endswith(_DELETED) else mapping.path
            out.append(ModuleInfo(_pe_name(path), path, mapping.start, size))
        return out

    def read(self, address: int, size: int) -> bytes:
        try:
            data = os.pread(self._mem, size, address)
        except OSError:
            data = b""  # EIO: the first page is unmapped, or the process is gone
        if len(data) != size:
            raise BackendError(
                f"cannot read {size} bytes at {address:#x} in process {self._pid}: unmapped memory, or the "
                "process is gone"
            )
        return data

    def write(self, address: int, data: bytes) -> None:
        try:
            done = os.pwrite(self._mem, data, address)
        except OSError as exc:
            raise BackendError(f"cannot write {len(data)} bytes at {address:#x} in process {self._pid}: {exc}") from exc
        if done != len(data):
            raise BackendError(f"short write at {address:#x} in process {self._pid}: {done} of {len(data)} bytes")

    # -- stopped threads -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _stopped(self, limit: int = 0) -> Iterator[StoppedProcess]:
        """The current quiesce, or a brief stop of our own for a single operation (of ``limit`` threads when
        the operation needs only one to borrow, e.g. a system call; of all for a call into Windows code)."""
        if self._quiesced is not None:
            yield self._quiesced.stopped
            return
        stopped = stop_all(self._pid, limit=limit)
        try:
            yield stopped
        finally:
            stopped.release()

    def quiesce(self, with_stacks: bool = False) -> WineQuiesced:
        """Stop every thread (PTRACE_SEIZE + PTRACE_INTERRUPT, re-listing tasks until none is new). Raises
        BackendError when the process is gone, ptrace is refused or a thread does not stop; then nothing is
        left attached."""
        if self._quiesced is not None:
            raise BackendError(f"process {self._pid} is already quiesced by this handle: resume it first")
        stopped = stop_all(self._pid)
        try:
            if with_stacks:
                maps = self._maps()
                threads = [self._thread_state(task, maps) for task in stopped.tasks.values()]
            else:
                threads = [ThreadState(t.tid, t.regs.rip, t.regs.rsp) for t in stopped.tasks.values()]
        except BaseException:
            stopped.release()
            raise
        self._quiesced = WineQuiesced(self, stopped, threads)
        return self._quiesced

    def _thread_state(self, task: StoppedTask, maps: List[Mapping]) -> ThreadState:
        """Return-address candidates: 8-byte-aligned values pointing into executable mappings, read from the
        live part of each stack the thread uses (see _stack_windows)."""
        exec_ranges = [(m.start, m.end) for m in maps if m.executable]
        starts = [r[0] for r in exec_ranges]
        low = exec_ranges[0][0] if exec_ranges else 0
        high = exec_ranges[-1][1] if exec_ranges else 0
        found: List[int] = []
        for start, end in self._stack_windows(task, maps):
            data = self.read(start, end - start)
            for value in struct.unpack(f"<{len(data) // 8}Q", data):
                if low <= value < high:
                    index = bisect.bisect_right(starts, value) - 1
                    if index >= 0 and value < exec_ranges[index][1]:
                        found.append(value)
        return ThreadState(task.tid, task.regs.rip, task.regs.rsp, tuple(dict.fromkeys(found)))

    def _stack_windows(self, task: StoppedTask, maps: List[Mapping]) -> List[Tuple[int, int]]:
        """[start, end) ranges of live stack, each at most STACK_WINDOW bytes: rsp up to StackBase on the
        Windows stack; for a thread in Wine's Unix-side code, rsp up to its syscall frame plus the Windows-side
        rsp up to StackBase (the Windows caller's frames, e.g. a patched function waiting in Sleep, are there);
        elsewhere (a signal stack) STACK_WINDOW bytes above rsp within its mapping."""
        rsp = int(task.regs.rsp) & ~7
        windows: List[Tuple[int, int]] = []
        unix = self._unix_side(task)
        bounds = self._teb_stack(task)
        if unix is not None:
            windows = [(rsp, unix.frame), (unix.windows_rsp & ~7, unix.stack_base)]
        elif bounds is not None and bounds[1] <= rsp < bounds[0]:
            windows = [(rsp, bounds[0])]
        else:
            mapping = _procfs.find_mapping(maps, rsp)
            if mapping is not None:
                windows = [(rsp, mapping.end)]
        return [(start, start + (min(end - start, STACK_WINDOW) & ~7)) for start, end in windows if end > start]

    def _teb_stack(self, task: StoppedTask) -> Optional[Tuple[int, int]]:
        """(StackBase, StackLimit) of the thread's Windows stack from its TEB (gs base), or None."""
        teb = int(task.regs.gs_base)
        if not teb:
            return None
        try:
            base, limit = struct.unpack("<QQ", self.read(teb + TEB_STACK_BASE, 16))
        except BackendError:
            return None
        return (int(base), int(limit)) if limit < base else None

    # -- gadgets and remote work ----------------------------------------------------------------------------------

    def _find_bytes(self, pattern: bytes, prefer: Sequence[str]) -> int:
        """Address of ``pattern`` in an executable mapping, trying mappings whose path contains a ``prefer``
        entry first (an existing instruction we can borrow instead of writing code)."""
        maps = [m for m in self._maps() if m.executable and m.readable]
        ordered = sorted(maps, key=lambda m: next((i for i, p in enumerate(prefer) if p in m.path), len(prefer)))
        for mapping in ordered:
            address = mapping.start
            while address < mapping.end:
                chunk = min(0x10000, mapping.end - address)
                try:
                    data = os.pread(self._mem, chunk + len(pattern) - 1, address)
                except OSError:
                    break
                index = data.find(pattern)
                if index >= 0 and address + index + len(pattern) <= mapping.end:
                    return address + index
                address += chunk
        raise BackendError(f"process {self._pid}: no executable {pattern.hex()} found to borrow")

    def _syscall(
        self, stopped: StoppedProcess, number: int, args: Sequence[int], task: Optional[StoppedTask] = None
    ) -> int:
        if self._gadgets is None:
            prefer = ("libc.so", "ntdll.so")
            self._gadgets = Gadgets(self._find_bytes(SYSCALL_RET, prefer), self._find_bytes(RESTORE_RT, prefer))
        task = task or self._pick_task(stopped, for_call=False)
        return remote_syscall(stopped, task, self._gadgets, number, args, self.write)

    def _pick_task(self, stopped: StoppedProcess, for_call: bool) -> StoppedTask:
        """A task we may borrow. Tasks holding a signal are never used (their stop must stay as found).

        For a call into Windows code: first a thread parked in a wait inside an NT system call (see _not_waiting;
        the call gets a fresh syscall frame, see _call_on), then one stopped in the program's own code (outside
        Wine's DLLs, so it holds no ntdll lock). A thread anywhere else is never used: elsewhere in Wine's code a
        nested NT system call would overwrite its live syscall frame (measured: the thread dies at its next
        system call), and one in a server request or holding a Unix-side lock of Wine would have its request
        stream or lock re-entered. Raises BackendError naming why each thread was refused (callers retry).
        """
        usable = [t for t in stopped.tasks.values() if not t.held_signal]
        if not usable:
            raise BackendError(f"process {self._pid}: every thread is stopped on a pending signal; try again")
        if not for_call:
            return usable[0]
        refused: List[str] = []
        for task in usable:
            if task.in_syscall:
                reason = self._not_waiting(task)
                if reason is None:
                    return task
                refused.append(f"thread {task.tid} {reason}")
        own = [
            (m.base, m.base + m.size)
            for m in self.modules()
            if _WINE_PE_DIR not in m.path.replace("\\", "/") and m.name.lower() != "ntdll.dll"
        ]
        for task in usable:
            if task.in_syscall:
                continue
            if any(lo <= task.regs.rip < hi for lo, hi in own):
                return task
            refused.append(f"thread {task.tid} runs Wine's own code")
        shown = "; ".join(refused[:_REASONS_SHOWN]) + ("; ..." if len(refused) > _REASONS_SHOWN else "")
        raise BackendError(
            f"process {self._pid}: no thread is at a point where a call into the process is safe (one waiting "
            f"inside an NT system call, or running the program's own code): {shown}; try again"
        )

    def _not_waiting(self, task: StoppedTask) -> Optional[str]:
        """None when ``task``, stopped inside a Linux system call, is parked in a wait of an NT system call, so
        a call into Windows code may borrow it; otherwise why not (a phrase after "thread N").

        Measured on Wine 8 (tests/integration/test_wine_borrow.py): idle Windows threads sit in read() of the
        thread's wait pipe (WaitForSingleObject, blocking socket accept/recv), futex(FUTEX_WAIT_PRIVATE, 0)
        (critical section, condition variable, thread-pool worker: NtWaitForAlertByThreadId), pselect6 with
        no fds (Sleep), or read() of their own file (synchronous ReadFile of a pipe, e.g. stdin). In all of
        them Wine's server signals (SIGUSR1 ...) are deliverable. Wine blocks those signals around every
        server request and every Unix-side critical section (its SIGUSR1 handler itself makes server requests),
        so a thread with SIGUSR1 blocked is mid-request or holds a lock such as the virtual-memory mutex."""
        if self._unix_side(task) is None:
            return "is not blocked in an NT system call (or this Wine's syscall frame layout is unknown)"
        number = int(task.regs.orig_rax)
        try:
            mask = get_sigmask(task.tid)
        except OSError:
            return "could not be read (gone?)"
        if mask & _SERVER_SIGNAL:
            return (
                f"is in a wineserver request or holds a lock of Wine's Unix side (system call {number}, server "
                "signals blocked)"
            )
        regs = task.regs
        if number == SYS_FUTEX:
            if _alert_word(task) is not None:
                return None  # NtWaitForAlertByThreadId; a lock waiter (glibc) waits for value 2
            return f"is in a futex call that is not a thread-alert wait (op {int(regs.rsi):#x}, value {int(regs.rdx)})"
        if number in _SLEEPS or (number in _FD_WAITS and int(regs.rdi) == 0):
            return None  # Sleep: no fds to wait on, nothing held
        if number == SYS_READ:
            fds = self._thread_fds(task)
            if fds is None:
                return "is in read(), and this Wine's per-thread fds are unknown (wait pipe or server reply?)"
            fd = int(regs.rdi)
            if fd in (fds[0], fds[1]):
                return f"is in a wineserver request (read of its server pipe, fd {fd})"
            return None  # its wait pipe, or a synchronous ReadFile of its own file (nothing held: signals open)
        return f"is in system call {number}, not a wait"

    def _thread_fds(self, task: StoppedTask) -> Optional[Tuple[int, int, int]]:
        """(request, reply, wait) fds of the thread, read from its TEB (offsets probed once per process)."""
        teb = int(task.regs.gs_base)
        if not teb:
            return None
        if not self._fds_probed:
            self._thread_fd_layout = probe_thread_fds(self._pid, teb, self.read)
            self._fds_probed = True
        layout = self._thread_fd_layout
        if layout is None:
            return None
        try:
            data = self.read(teb + layout.request_fd, 12)
        except BackendError:
            return None
        request, reply, wait = struct.unpack("<iii", data)
        return int(request), int(reply), int(wait)

    def _layout(self) -> Optional[WineLayout]:
        if not self._layout_probed:
            self._wine_layout = probe(self._maps(), self.read)
            self._layout_probed = True
        return self._wine_layout

    def _unix_side(self, task: StoppedTask) -> Optional[_UnixSide]:
        """Where a thread running Wine's Unix-side code keeps its Windows-side state, or None when the thread
        is on its Windows stack (or the layout is unknown)."""
        layout = self._layout()
        bounds = self._teb_stack(task)
        if layout is None or bounds is None:
            return None
        teb = int(task.regs.gs_base)
        stack_base, stack_limit = bounds
        try:
            frame = struct.unpack("<Q", self.read(teb + layout.teb_syscall_frame, 8))[0]
            if not stack_base <= task.regs.rsp < frame or frame - task.regs.rsp > KERNEL_STACK_MAX:
                return None
            windows_rsp = struct.unpack("<Q", self.read(frame + layout.frame_rsp, 8))[0]
        except BackendError:
            return None
        if not stack_limit <= windows_rsp < stack_base:
            return None
        return _UnixSide(teb, int(frame), int(windows_rsp), int(stack_base))

    def _export(self, dll: str, name: str) -> int:
        """VA of ``dll!name`` parsed from the export directory of the module in memory (cached)."""
        key = f"{dll}!{name}".lower()
        if key in self._exports:
            return self._exports[key]
        module = next((m for m in self.modules() if m.name.lower() == dll.lower()), None)
        if module is None:
            raise BackendError(f"process {self._pid}: {dll} is not loaded")
        e_lfanew = struct.unpack("<I", self.read(module.base + 0x3C, 4))[0]
        export_rva, export_size = struct.unpack("<II", self.read(module.base + e_lfanew + 24 + 112, 8))
        directory = self.read(module.base + export_rva, 40)
        count_names, functions_rva, names_rva, ordinals_rva = struct.unpack_from("<IIII", directory, 24)
        names = struct.unpack(f"<{count_names}I", self.read(module.base + names_rva, 4 * count_names))
        ordinals = struct.unpack(f"<{count_names}H", self.read(module.base + ordinals_rva, 2 * count_names))
        wanted = name.encode()
        for index, name_rva in enumerate(names):
            if self.read(module.base + name_rva, len(wanted) + 1) == wanted + b"\0":
                rva = int(struct.unpack("<I", self.read(module.base + functions_rva + 4 * ordinals[index], 4))[0])
                if export_rva <= rva < export_rva + export_size:
                    raise BackendError(f"{dll}!{name} is a forwarder; cannot call it")
                self._exports[key] = module.base + rva
                return module.base + rva
        raise BackendError(f"process {self._pid}: {dll} exports no {name}")

    def _call(self, function: int, args: Sequence[int], timeout_ns: int = 0) -> int:
        with self._stopped() as stopped:
            return self._call_on(stopped, self._pick_task(stopped, for_call=True), function, args, timeout_ns)

    def _call_on(
        self, stopped: StoppedProcess, task: StoppedTask, function: int, args: Sequence[int], timeout_ns: int = 0
    ) -> int:
        """Call ``function`` on ``task`` through the call stub (see _sigframe.CALL_STUB), written into a page
        mapped for this call and unmapped after it. A thread blocked in an NT system call runs it on its Windows
        stack with a fresh syscall frame below the live one (the stub moves the TEB pointer there for the call
        and back after it, as Wine does for its own user-mode callbacks), so an NT system call made by
        ``function`` cannot clobber the blocked one."""
        timeout_ns = timeout_ns or CALL_TIMEOUT_NS
        # Outside a quiesce, a call still running at its timeout (waiting for a lock a stopped thread holds?) is
        # never aborted: the other threads run, and if it still does not return it is left to finish alone.
        # Under a quiesce the threads must stay stopped: it is aborted and its registers restored.
        slow_ns = 0 if self._quiesced is not None else SLOW_FACTOR * timeout_ns
        flags = MAP_PRIVATE | MAP_ANONYMOUS
        # First: a remote system call's own signal frame goes below some thread's stack pointer, where the
        # fresh syscall frame is about to be copied.
        page = self._syscall(stopped, SYS_MMAP, (0, PAGE, PROT_READ | PROT_EXEC, flags, -1, 0), task)
        if page < 0:
            raise BackendError(f"process {self._pid}: remote mmap of the call stub failed: {os.strerror(-page)}")
        stub = page + len(CALL_STUB_MARKER)
        switch = None
        left = False
        try:
            self.write(page, CALL_STUB_MARKER + CALL_STUB)
            unix = self._unix_side(task) if task.in_syscall else None
            layout = self._layout()
            if unix is None or layout is None:
                return remote_call(stopped, task, stub, function, args, self.write, timeout_ns, slow_ns=slow_ns)
            mapping = _procfs.find_mapping(self._maps(), unix.frame)
            room = (mapping.end - unix.frame) if mapping is not None else 0
            size = min(FRAME_HEADER + len(get_xstate(task.tid)[1]), room)
            fresh = (task.regs.rsp - RED_ZONE - 0x400 - size) & ~0x3F
            if size < FRAME_HEADER or fresh - NESTED_STACK < unix.stack_base:
                raise BackendError(f"process {self._pid}: thread {task.tid} has no room for a nested syscall frame")
            self.write(fresh, self.read(unix.frame, size))
            switch = FrameSwitch(unix.teb + layout.teb_syscall_frame, fresh, unix.frame)
            return remote_call(
                stopped, task, stub, function, args, self.write, timeout_ns, unix.windows_rsp, switch, slow_ns
            )
        except CallLeftRunning:
            left = True  # the thread still runs the stub: it puts the TEB pointer back itself; keep its page
            raise
        finally:
            # A task no longer stopped (it ran on out of our reach) is never touched: the stub, if it got there,
            # has put the pointer back, and its page stays mapped.
            if not left and task.tid in stopped.tasks:
                if switch is not None:  # the stub put it back unless the call was cut short
                    self.write(switch.pointer, struct.pack("<Q", switch.live))
                word = _alert_word(task)
                if word is not None:
                    # A nested NtWaitForAlertByThreadId in the call may have consumed (swapped to 0) an alert
                    # meant for this wait, which restarts as futex_wait(word, 0) with no timeout. Post one as
                    # NtAlertThreadByThreadId does (word = 1): the restarted wait returns at once with
                    # STATUS_ALERTED and its caller re-checks its condition (a spurious wake-up is allowed).
                    self.write(word, struct.pack("<I", 1))
                self._syscall(stopped, SYS_MUNMAP, (page, PAGE), task)

    # -- allocation ---------------------------------------------------------------------------------------------

    def allocate_near(
        self, base: int, size: int, span: int = 0x7FFF0000, intent: Optional[Callable[[int], None]] = None
    ) -> int:
        """Map ``size`` bytes read-write at the lowest 64 KiB-aligned free address in [base, base + span - size]
        with a free page before and after it, by a remote mmap(MAP_FIXED_NOREPLACE) on a stopped thread,
        ``intent(address)`` first. Wine's own
        bookkeeping does not know this region (VirtualQuery reports it free); free() removes it. Raises
        BackendError when no gap is free."""
        length = _page_up(max(size, 1))
        high = base + span
        candidates: List[int] = []
        for lo, hi in _procfs.free_gaps(self._maps(), base, high):
            # A free page on both sides: the kernel merges an anonymous mapping with an adjacent one of the same
            # protection, and recovery recognises an allocation only as exactly one mapping (fresh_region).
            address = _page_up(lo + PAGE, GRANULARITY)
            if address + length + PAGE <= min(hi, high):
                candidates.append(address)
            if len(candidates) == 8:
                break
        if not candidates:
            raise BackendError(
                f"process {self._pid}: no free {length:#x}-byte gap within {span:#x} bytes above {base:#x}; "
                "the patch cannot be staged near the module (restart the process to apply it cold)"
            )
        flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
        for address in candidates:
            if intent is not None:
                intent(address)
            with self._stopped(limit=1) as stopped:
                result = self._syscall(stopped, SYS_MMAP, (address, length, PROT_READ | PROT_WRITE, flags, -1, 0))
                if result >= 0 and result != address:  # a kernel without MAP_FIXED_NOREPLACE took it as a hint
                    self._syscall(stopped, SYS_MUNMAP, (result, length))
                    raise BackendError(f"process {self._pid}: the kernel ignored MAP_FIXED_NOREPLACE (needs 4.17+)")
            if result == address:
                self._allocations[address] = Allocation(address, length, "mmap")
                return address
            if result != -errno.EEXIST:  # EEXIST: mapped meanwhile, try the next gap
                raise BackendError(f"process {self._pid}: remote mmap at {address:#x} failed: {os.strerror(-result)}")
        raise BackendError(f"process {self._pid}: every free gap above {base:#x} was taken while allocating; retry")

    def fresh_region(self, address: int, size: int) -> bool:
        """True when one anonymous private mapping is exactly [address, address + size rounded up to pages)."""
        length = _page_up(max(size, 1))
        return any(
            m.start == address and m.end == address + length and not m.path and m.perms[3] == "p" for m in self._maps()
        )

    def protect(self, address: int, size: int, protection: str) -> None:
        """Remote mprotect of the pages covering [address, address + size) to "rx", "rw" or "rwx"."""
        if protection not in _PROT_BITS:
            raise BackendError(f"unknown protection {protection!r}: use 'rx', 'rw' or 'rwx'")
        start = address & ~(PAGE - 1)
        length = _page_up(address + size) - start
        with self._stopped(limit=1) as stopped:
            result = self._syscall(stopped, SYS_MPROTECT, (start, length, _PROT_BITS[protection]))
        if result != 0:
            raise BackendError(f"process {self._pid}: mprotect {start:#x}+{length:#x} failed: {os.strerror(-result)}")

    def free(self, address: int, size: int) -> None:
        """Unmap memory from ``allocate_near`` (also one journaled by an earlier engine run: then it must cover
        only anonymous private memory, so no image or file mapping can be unmapped by mistake)."""
        allocation = self._allocations.get(address)
        length = allocation.size if allocation is not None else _page_up(size)
        if allocation is None and not _anonymous(self._maps(), address, length):
            raise BackendError(
                f"process {self._pid}: {address:#x}+{length:#x} is not anonymous memory an engine allocated; "
                "nothing was freed"
            )
        with self._stopped(limit=1) as stopped:
            result = self._syscall(stopped, SYS_MUNMAP, (address, length))
        if result != 0:
            raise BackendError(f"process {self._pid}: munmap {address:#x} failed: {os.strerror(-result)}")
        self._allocations.pop(address, None)

    @property
    def allocations(self) -> List[Allocation]:
        """What this handle allocated and has not freed (for the journal)."""
        return list(self._allocations.values())

    # -- unwind information, CFG, caches ------------------------------------------------------------------------

    def add_function_table(self, table: int, count: int, base: int) -> None:
        """RtlAddFunctionTable(table, count, base) run inside the target (ntdll of Wine keeps the pointer: the
        table must stay mapped until delete_function_table). Raises BackendError when it returns FALSE."""
        result = self._call(self._export("ntdll.dll", "RtlAddFunctionTable"), (table, count, base))
        if result & 0xFF == 0:
            raise BackendError(f"process {self._pid}: RtlAddFunctionTable({table:#x}, {count}) returned FALSE")

    def delete_function_table(self, table: int) -> None:
        """RtlDeleteFunctionTable(table) run inside the target; BackendError when the table was not registered."""
        result = self._call(self._export("ntdll.dll", "RtlDeleteFunctionTable"), (table,))
        if result & 0xFF == 0:
            raise BackendError(f"process {self._pid}: RtlDeleteFunctionTable({table:#x}) found no such table")

    def set_valid_call_targets(self, addresses: Sequence[int]) -> None:
        """No-op: Wine does not enforce Control Flow Guard (its CFG bitmap is never checked)."""

    def flush_instruction_cache(self, address: int, size: int) -> None:
        """No-op: x86 keeps instruction fetch coherent with stores, and every patched thread is stopped while we
        write; resuming it from ptrace goes through the kernel's return to user mode, which serializes."""


def _alert_word(task: StoppedTask) -> Optional[int]:
    """Address of the thread's alert futex word when ``task`` is stopped in NtWaitForAlertByThreadId's
    futex(FUTEX_WAIT[_BITSET], value 0) on it (uaddr in rdi), else None."""
    regs = task.regs
    if not task.in_syscall or int(regs.orig_rax) != SYS_FUTEX:
        return None
    if int(regs.rsi) & _FUTEX_CMD not in (_FUTEX_WAIT, _FUTEX_WAIT_BITSET) or int(regs.rdx) & 0xFFFFFFFF:
        return None
    return int(regs.rdi)


def _anonymous(maps: List[Mapping], address: int, length: int) -> bool:
    """[address, address + length) is page-aligned and wholly covered by anonymous private mappings (the kernel
    may have merged our region with a neighbour of the same protection, so one mapping need not start there)."""
    if address % PAGE or length <= 0:
        return False
    cursor = address
    for mapping in maps:
        if mapping.end <= cursor or mapping.start >= address + length:
            continue
        if mapping.start > cursor or mapping.path or mapping.perms[3] != "p":
            return False
        cursor = mapping.end
    return cursor >= address + length


class WineBackend:
    """Every 64-bit or 32-bit Wine process on this Linux host (the wineserver itself is not one)."""

    name = "wine"

    def processes(self) -> List[ProcessInfo]:
        out: List[ProcessInfo] = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            info = _describe(int(entry))
            if info is not None:
                out.append(info)
        return sorted(out, key=lambda p: p.pid)

    def open(self, pid: int) -> WineProcess:
        info = _describe(pid)
        if info is None:
            raise BackendError(f"process {pid} is gone or is not a Wine process")
        return WineProcess(info)


def _describe(pid: int) -> Optional[ProcessInfo]:
    """ProcessInfo of a Wine-hosted Windows process, None for anything else (or a process gone meanwhile)."""
    try:
        loader = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        if not loader.startswith("wine") or loader.startswith("wineserver"):
            return None
        with open(f"/proc/{pid}/comm") as handle:
            comm = handle.read().rstrip("\n")
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv0 = handle.read().split(b"\0", 1)[0].decode("utf-8", "replace")
        ticks = _procfs.start_ticks(pid)
    except OSError:
        return None
    name = _pe_name(argv0)
    if not name or name[:15] != comm[:15]:  # argv rewritten or truncated comm: ask the maps for the .exe
        name = _exe_from_maps(pid, comm) or comm
    return ProcessInfo(pid=pid, name=name, start_time=f"{_procfs.boot_id()}:{ticks}", windows_pid=None)


def _exe_from_maps(pid: int, comm: str) -> Optional[str]:
    try:
        maps = _procfs.read_maps(pid)
    except OSError:
        return None
    for mapping in maps:
        if mapping.offset == 0 and mapping.path.lower().endswith(".exe"):
            name = _pe_name(mapping.path)
            if name[:15] == comm[:15]:
                return name
    return None
