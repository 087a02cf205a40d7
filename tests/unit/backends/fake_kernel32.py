"""A strict fake of the kernel32/kernelbase calls the Windows backend makes (no Windows runs here).

It models one machine: processes with modules, memory regions (state, protection, bytes), threads ("running" or
"frozen", contexts; thread ids unique across the machine, as Windows gives them) and the debug API (a debug object per
calling Python thread, a queue of debug events per debuggee). It is strict where Windows is lenient, so mistakes in
the backend fail loudly:
- every handle must be closed (``assert_no_leaks``), calls need the access rights the handle was opened with, and
  handles that debug events carry follow Windows: file handles are the debugger's to close, thread and process
  handles the system's (closed by DebugActiveProcessStop or by continuing their exit event: closing one is an error);
- threads are frozen exactly while a debug event raised by a live thread (the injected break-in thread's creation or
  breakpoint) is reported and not yet continued; code (executable pages) may be written only while every thread is
  frozen, and GetThreadContext of a running thread is an error (it also needs a 16-byte aligned CONTEXT);
- once the injected thread's creation is continued it runs to DbgBreakPoint: a detach (or the engine's death)
  before that breakpoint is answered with DBG_CONTINUE leaves it to the target's own exception handling, an error;
  a detach while its creation is still pending lets it exit without a breakpoint (the debugger flag is cleared first);
- WaitForDebugEvent / ContinueDebugEvent / DebugActiveProcessStop / DebugSetProcessKillOnExit must come from the
  Python thread that owns the debug object (the one that attached); an INFINITE wait is an error (it could hang);
- the engine's death (``die_before_call``, then ``engine_dies``) or the debugger thread's exit
  (``debugger_thread_exits``) closes the debug object: each debuggee is detached and runs on, or is killed when the
  object was still kill-on-exit (the default until DebugSetProcessKillOnExit(FALSE));
- WriteProcessMemory into a non-writable page fails (the backend must change the protection itself);
- executable protection fails with ERROR_DYNAMIC_CODE_BLOCKED in a process that prohibits dynamic code;
- CreateRemoteThread refuses while the target is attached or frozen (its CREATE_THREAD event would freeze the new
  thread; loader-lock deadlock), and "runs" only the known stub calling ntdll!RtlAddFunctionTable /
  RtlDeleteFunctionTable, recording the table.
Pointers arrive as ctypes objects (byref, c_void_p, buffers) or ints, exactly as the backend passes them.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends import _win32 as w
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends.windows import remote_call_stub

NTDLL_BASE = 0x7FFB_0000_0000
NTDLL_EXPORTS = {
    "RtlAddFunctionTable": 0x1000,
    "RtlDeleteFunctionTable": 0x2000,
    "DbgBreakPoint": 0x3000,
    "DbgUiRemoteBreakin": 0x3100,
    "RtlUserThreadStart": 0x3200,
}
FIRST_TID = 1000  # the first process's threads are 1000, 1001, ...; later processes continue the machine's count
BREAKIN_TID_BASE = 9000  # ids of the threads the system injects at attach
BREAKIN_STACK = 0x7F_0000  # where the injected thread's stack lives while it exists
ERROR_NOACCESS = 998
THREAD_GET_CONTEXT = 0x0008
DEBUG_THREAD_ACCESS = 0x0002 | 0x0008 | 0x0010  # SUSPEND_RESUME | GET_CONTEXT | SET_CONTEXT, as debug events give
INFINITE = 0xFFFFFFFF
STATUS_ACCESS_DENIED = -0x3FFFFFDE  # 0xC0000022 as the signed NTSTATUS ctypes returns


class EngineKilled(BaseException):
    """The engine's process died (the job object of a WinRM shell, OOM, a crash): nothing of it runs any more."""


class StrictnessError(AssertionError):
    """The backend broke a rule the real API would punish (a crash, a deadlock, a leak)."""


MEM_IMAGE = 0x1000000  # MEMORY_BASIC_INFORMATION.Type of an image mapping


@dataclass
class Region:
    base: int
    size: int
    protect: int
    data: bytearray
    allocation_base: int
    kind: str = "private"  # image | private


@dataclass
class Thread:
    tid: int
    rip: int
    rsp: int
    start: int = 0  # start address, as CREATE_THREAD reports it
    state: str = "running"  # running | frozen


@dataclass
class DebugEvent:
    """One debug event as the kernel queues it; ``live`` events are raised by a running thread and freeze the
    whole process until continued (attach-time messages about existing threads and modules do not)."""

    code: int
    tid: int
    live: bool = False
    start: int = 0
    exception_code: int = 0
    address: int = 0
    module: int = 0  # LOAD_DLL: base of the module
    with_file: bool = True


@dataclass
class DebugPort:
    """A process attached to a debug object: its pending events, the one reported and not yet continued, and how
    far the injected thread got (started running: it will execute DbgBreakPoint; its breakpoint answered)."""

    owner: int  # threading.get_ident() of the debugger thread
    queue: list[DebugEvent]
    reported: DebugEvent | None = None
    system_handles: set[int] = field(default_factory=set)  # thread/process handles the debug events carried
    breakin_running: bool = False
    breakpoint_answered: bool = False


@dataclass
class Process:
    pid: int
    name: str
    modules: list[tuple[str, str, int, int]]
    regions: list[Region]
    threads: dict[int, Thread]
    start_time: int = 132_000_000_000_000_000
    machine: int = 0  # IsWow64Process2 process machine: 0 = not WOW64
    native_machine: int = w.IMAGE_FILE_MACHINE_AMD64
    protection: int = w.PROTECTION_LEVEL_NONE
    prohibit_dynamic_code: bool = False
    cfg: bool = False
    tables: dict[int, tuple[int, int]] = field(default_factory=dict)  # table -> (count, base)
    valid_call_targets: set[int] = field(default_factory=set)
    deny_open: int = 0  # Win32 error OpenProcess fails with, or 0
    deny_debug: int = 0  # Win32 error DebugActiveProcess fails with, or 0
    other_debugger: bool = False  # attached to a debugger outside the engine
    breakin_unreported: bool = False  # the injected thread is never reported (neither created nor at its breakpoint)
    breakin_start_reported: bool = True  # its CREATE_THREAD names DbgUiRemoteBreakin (else another start address)
    unanswered_breakpoints: int = 0  # injected breakpoints left to the target's own exception handling
    attach_extra: list[DebugEvent] = field(default_factory=list)  # events raised during the attach, before it
    debug: DebugPort | None = None
    alive: bool = True
    continued: list[tuple[int, int, int]] = field(default_factory=list)  # (event code, tid, continue status)


def _address(arg: Any) -> int:
    """The address a ctypes argument points at (byref, pointer-sized value, buffer, or int)."""
    if arg is None:
        return 0
    if isinstance(arg, int):
        return arg
    if isinstance(arg, ctypes.c_void_p):
        return int(arg.value or 0)
    if type(arg).__name__ == "CArgObject":
        return ctypes.addressof(arg._obj)
    if isinstance(arg, ctypes.Array | ctypes.Structure):
        return ctypes.addressof(arg)
    raise StrictnessError(f"unexpected pointer argument {arg!r}")


def _value(arg: Any) -> int:
    if isinstance(arg, ctypes.c_size_t | ctypes.c_void_p | ctypes.c_uint32):
        return int(arg.value or 0)
    return int(arg)


def _store(pointer: Any, fmt: str, *values: int) -> None:
    data = struct.pack(fmt, *values)
    ctypes.memmove(_address(pointer), data, len(data))


class FakeKernel32:
    """The fake API object handed to WindowsBackend(api=...)."""

    def __init__(self) -> None:
        self.processes: dict[int, Process] = {}
        self.handles: dict[int, tuple[str, int, int]] = {}  # handle -> (kind, id, access)
        self.snapshots: dict[int, list[Any]] = {}
        self.last_error = 0
        self.calls: list[str] = []  # every API call by name, in order
        self.flushed: list[tuple[int, int]] = []  # (address, size) of each FlushInstructionCache
        self._next_handle = 0x100
        self.fail_next: dict[str, int] = {}  # function name -> Win32 error to fail its next call with
        self.hang_remote_threads = False
        self.kill_on_exit: dict[int, bool] = {}  # debug object of each Python thread (by ident) -> kill on close
        self.debug_log: list[tuple[Any, ...]] = []  # debug API calls with their arguments, in order
        self.die_before_call: int | None = None  # index into ``calls`` at which the engine dies (EngineKilled)
        self.dead = False
        self.killed_at = ""  # the call the engine died before
        self._next_breakin = BREAKIN_TID_BASE
        self._next_tid = FIRST_TID
        self._ids = threading.Lock()  # engine threads call in at once: handle and thread ids are never handed out twice

    # -- model building ---------------------------------------------------------------------------------------

    def add_process(
        self, pid: int, name: str, module_base: int, module: bytes, threads: int = 2, first_tid: int = 0, **kw: Any
    ) -> Process:
        """A process with ``threads`` threads numbered from ``first_tid`` (default: the next ids of the machine).
        Thread ids are unique machine-wide while the thread exists (GetCurrentThreadId): reusing one is an error."""
        first_tid = first_tid or self._next_tid
        tids = range(first_tid, first_tid + threads)
        for other in self.processes.values():
            if taken := sorted(set(tids) & set(other.threads)):
                raise StrictnessError(
                    f"thread id {taken[0]} is already pid {other.pid}'s: Windows never reuses a live one"
                )
        self._next_tid = max(self._next_tid, first_tid + threads)
        image = Region(module_base, len(module), w.PAGE_EXECUTE_READ, bytearray(module), module_base, "image")
        ntdll = Region(NTDLL_BASE, 0x10000, w.PAGE_EXECUTE_READ, bytearray(0x10000), NTDLL_BASE, "image")
        stack_base = 0x10_0000
        stacks = [
            Region(stack_base + i * 0x20000, 0x20000, w.PAGE_READWRITE, bytearray(0x20000), stack_base + i * 0x20000)
            for i in range(threads)
        ]
        process = Process(
            pid,
            name,
            [
                (name, f"C:\\Program Files\\App\\{name}", module_base, len(module)),
                ("ntdll.dll", "C:\\Windows\\System32\\ntdll.dll", NTDLL_BASE, 0x10000),
            ],
            [image, ntdll, *stacks],
            {
                tid: Thread(tid, NTDLL_BASE + 0x500, stacks[i].base + stacks[i].size - 0x100, module_base)
                for i, tid in enumerate(tids)
            },
            **kw,
        )
        self.processes[pid] = process
        return process

    def assert_no_leaks(self) -> None:
        if self.handles:
            raise StrictnessError(f"handles left open: {self.handles}")
        self.assert_all_running()

    def assert_all_running(self) -> None:
        """Every process alive and detached, every thread running, no injected thread left."""
        for process in self.processes.values():
            if not process.alive:
                raise StrictnessError(f"pid {process.pid} was killed")
            if process.debug is not None:
                raise StrictnessError(f"pid {process.pid} left attached to the engine's debug object")
            if process.unanswered_breakpoints:
                raise StrictnessError(
                    f"pid {process.pid}: the injected thread's breakpoint was left unanswered, to the target's own "
                    "exception handling"
                )
            for thread in process.threads.values():
                if thread.state != "running":
                    raise StrictnessError(f"thread {thread.tid} of pid {process.pid} left {thread.state}")
                if thread.tid >= BREAKIN_TID_BASE:
                    raise StrictnessError(f"injected thread {thread.tid} of pid {process.pid} still there")

    # -- the engine's death -------------------------------------------------------------------------------------

    def debugger_thread_exits(self, ident: int | None = None) -> None:
        """The debugger thread ``ident`` (default: every one) exits: Windows closes its debug object, which
        detaches each debuggee (pending events dropped, threads thawed) or kills it while kill-on-exit is set."""
        for owner in [o for o in self.kill_on_exit if ident is None or o == ident]:
            kill = self.kill_on_exit.pop(owner)
            for process in self.processes.values():
                if process.debug is not None and process.debug.owner == owner:
                    if kill:
                        process.alive = False
                    self._detach(process)

    def engine_dies(self) -> None:
        """After EngineKilled: the engine's process is gone, so are its threads (debug objects) and handles."""
        self.dead = True
        self.debugger_thread_exits()
        self.handles.clear()
        self.snapshots.clear()

    # -- plumbing -----------------------------------------------------------------------------------------------

    def _fail(self, error: int, result: int = 0) -> int:
        self.last_error = error
        return result

    def _enter(self, name: str) -> int:
        if self.dead or (self.die_before_call is not None and len(self.calls) >= self.die_before_call):
            if not self.dead:
                self.dead, self.killed_at = True, name
            raise EngineKilled(f"the engine was killed before call {self.die_before_call} ({self.killed_at})")
        self.calls.append(name)
        return self.fail_next.pop(name, 0)

    def _new_handle(self, kind: str, ident: int, access: int) -> int:
        with self._ids:
            self._next_handle += 4
            handle = self._next_handle
            self.handles[handle] = (kind, ident, access)
        return handle

    def _process(self, handle: Any, access: int) -> Process:
        entry = self.handles.get(int(handle or 0))
        if entry is None or entry[0] != "process":
            raise StrictnessError(f"{handle!r} is not an open process handle")
        if entry[2] & access != access:
            raise StrictnessError(f"process handle lacks access 0x{access:x}")
        return self.processes[entry[1]]

    def _thread(self, handle: Any, access: int) -> tuple[Process, Thread]:
        entry = self.handles.get(int(handle or 0))
        if entry is None or entry[0] != "debug-thread":
            raise StrictnessError(f"{handle!r} is not an open thread handle")
        if entry[2] & access != access:
            raise StrictnessError(f"thread handle lacks access 0x{access:x}")
        owners = [process for process in self.processes.values() if entry[1] in process.threads]
        if len(owners) > 1:  # a handle names one thread object: never resolve it to another process's thread
            raise StrictnessError(
                f"thread id {entry[1]} is live in pids {[p.pid for p in owners]}: the model is broken"
            )
        if not owners:
            raise StrictnessError("thread vanished")
        return owners[0], owners[0].threads[entry[1]]

    @staticmethod
    def _region(process: Process, address: int, size: int = 1) -> Region | None:
        for region in process.regions:
            if region.base <= address and address + size <= region.base + region.size:
                return region
        return None

    # -- the API ------------------------------------------------------------------------------------------------

    def get_last_error(self) -> int:
        return self.last_error

    @staticmethod
    def format_error(code: int) -> str:
        return f"error {code}"

    def OpenProcess(self, access: int, inherit: bool, pid: int) -> int:
        if error := self._enter("OpenProcess"):
            return self._fail(error)
        process = self.processes.get(pid)
        if process is None:
            return self._fail(w.ERROR_INVALID_PARAMETER)
        if process.deny_open:
            return self._fail(process.deny_open)
        if process.protection != w.PROTECTION_LEVEL_NONE and access & ~(
            w.PROCESS_QUERY_LIMITED_INFORMATION | w.SYNCHRONIZE
        ):
            return self._fail(w.ERROR_ACCESS_DENIED)
        return self._new_handle("process", pid, access)

    def CloseHandle(self, handle: Any) -> int:
        self._enter("CloseHandle")
        entry = self.handles.get(int(handle or 0))
        if entry is not None and entry[0] in ("debug-thread", "debug-process"):
            raise StrictnessError(f"CloseHandle of a {entry[0]} handle from a debug event: the system closes it")
        if self.handles.pop(int(handle or 0), None) is None:
            raise StrictnessError(f"CloseHandle of a handle that is not open: {handle!r}")
        self.snapshots.pop(int(handle or 0), None)
        if entry is not None and entry[0] == "file":
            self.debug_log.append(("CloseHandle", "file"))
        return 1

    def CreateToolhelp32Snapshot(self, kind: int, pid: int) -> int:
        self._enter("CreateToolhelp32Snapshot")
        rows: list[Any] = []
        if kind == w.TH32CS_SNAPPROCESS:
            rows = [("process", p) for p in self.processes.values()]
        elif kind == w.TH32CS_SNAPMODULE:
            if pid not in self.processes:
                return self._fail(w.ERROR_INVALID_PARAMETER, int(w.INVALID_HANDLE_VALUE or 0))
            rows = [("module", pid, m) for m in self.processes[pid].modules]
        else:
            raise StrictnessError(f"snapshot kind 0x{kind:x} not modelled")
        handle = self._new_handle("snapshot", 0, 0)
        self.snapshots[handle] = rows
        return handle

    def _snapshot_next(self, handle: int, pointer: Any, expected: Any) -> int:
        rows = self.snapshots.get(int(handle))
        if rows is None:
            raise StrictnessError("toolhelp call on a closed snapshot")
        entry: Any = pointer._obj
        if not isinstance(entry, expected) or entry.dwSize != ctypes.sizeof(expected):
            raise StrictnessError(f"{expected.__name__}.dwSize must be set to its size")
        if not rows:
            return self._fail(w.ERROR_NO_MORE_FILES)
        row = rows.pop(0)
        if row[0] == "process":
            entry.th32ProcessID = row[1].pid
            entry.szExeFile = row[1].name
        else:
            name, path, base, size = row[2]
            entry.th32ProcessID = row[1]
            entry.szModule = name
            entry.szExePath = path
            entry.modBaseAddr = base
            entry.modBaseSize = size
        return 1

    def Process32FirstW(self, handle: int, pointer: Any) -> int:
        self._enter("Process32FirstW")
        return self._snapshot_next(handle, pointer, w.PROCESSENTRY32W)

    Process32NextW = Process32FirstW

    def Module32FirstW(self, handle: int, pointer: Any) -> int:
        self._enter("Module32FirstW")
        return self._snapshot_next(handle, pointer, w.MODULEENTRY32W)

    Module32NextW = Module32FirstW

    def GetProcessTimes(self, handle: Any, *pointers: Any) -> int:
        self._enter("GetProcessTimes")
        process = self._process(handle, w.PROCESS_QUERY_LIMITED_INFORMATION)
        _store(pointers[0], "<II", process.start_time & 0xFFFFFFFF, process.start_time >> 32)
        return 1

    def IsWow64Process2(self, handle: Any, process_machine: Any, native_machine: Any) -> int:
        self._enter("IsWow64Process2")
        process = self._process(handle, w.PROCESS_QUERY_INFORMATION)
        _store(process_machine, "<H", process.machine)
        _store(native_machine, "<H", process.native_machine)
        return 1

    def GetProcessInformation(self, handle: Any, klass: int, pointer: Any, size: int) -> int:
        self._enter("GetProcessInformation")
        process = self._process(handle, w.PROCESS_QUERY_INFORMATION)
        if klass != w.PROCESS_PROTECTION_LEVEL_INFO or size != 4:
            raise StrictnessError(f"GetProcessInformation class {klass} size {size} not modelled")
        _store(pointer, "<I", process.protection)
        return 1

    def GetProcessMitigationPolicy(self, handle: Any, policy: int, pointer: Any, size: int) -> int:
        self._enter("GetProcessMitigationPolicy")
        process = self._process(handle, w.PROCESS_QUERY_INFORMATION)
        flags = {
            w.PROCESS_DYNAMIC_CODE_POLICY: process.prohibit_dynamic_code,
            w.PROCESS_CONTROL_FLOW_GUARD_POLICY: process.cfg,
        }
        if policy not in flags or size != 4:
            raise StrictnessError(f"mitigation policy {policy} size {size} not modelled")
        _store(pointer, "<I", int(flags[policy]))
        return 1

    def VirtualQueryEx(self, handle: Any, address: Any, pointer: Any, size: int) -> int:
        self._enter("VirtualQueryEx")
        process = self._process(handle, w.PROCESS_QUERY_INFORMATION)
        addr = _address(address)
        info = pointer._obj
        region = self._region(process, addr)
        if region is not None:
            info.BaseAddress, info.AllocationBase = region.base, region.allocation_base
            info.RegionSize, info.State, info.Protect = region.size, w.MEM_COMMIT, region.protect
            info.Type = w.MEM_PRIVATE if region.kind == "private" else MEM_IMAGE
            return int(size)
        following = min((r.base for r in process.regions if r.base > addr), default=0x7FFF_FFFF_0000)
        page = addr & ~0xFFF
        info.BaseAddress, info.AllocationBase = page, 0
        info.RegionSize, info.State, info.Protect = following - page, w.MEM_FREE, 0x01
        info.Type = 0
        return int(size)

    def VirtualAllocEx(self, handle: Any, address: Any, size: int, kind: int, protect: int) -> int:
        if error := self._enter("VirtualAllocEx"):
            return self._fail(error)
        process = self._process(handle, w.PROCESS_VM_OPERATION)
        if kind != w.MEM_COMMIT | w.MEM_RESERVE or protect != w.PAGE_READWRITE:
            raise StrictnessError("the backend must commit read-write memory and make it executable later")
        addr = _address(address)
        if addr == 0:
            addr = 0x2000_0000 + 0x10000 * len(process.regions)
        if addr % w.ALLOCATION_GRANULARITY:
            return self._fail(w.ERROR_INVALID_ADDRESS)
        size = (size + 0xFFF) & ~0xFFF
        if any(r.base < addr + size and addr < r.base + r.size for r in process.regions):
            return self._fail(w.ERROR_INVALID_ADDRESS)
        process.regions.append(Region(addr, size, w.PAGE_READWRITE, bytearray(size), addr))
        return addr

    def VirtualProtectEx(self, handle: Any, address: Any, size: int, protect: int, old: Any) -> int:
        self._enter("VirtualProtectEx")
        process = self._process(handle, w.PROCESS_VM_OPERATION)
        region = self._region(process, _address(address), int(size))
        if region is None:
            return self._fail(ERROR_NOACCESS)
        base_protect = protect & ~w.PAGE_TARGETS_NO_UPDATE
        if process.prohibit_dynamic_code and base_protect & w.EXECUTE_PROTECTIONS and region.kind == "private":
            return self._fail(w.ERROR_DYNAMIC_CODE_BLOCKED)
        if protect & w.PAGE_TARGETS_NO_UPDATE and not process.cfg:
            raise StrictnessError("PAGE_TARGETS_NO_UPDATE only makes sense in a CFG process")
        _store(old, "<I", region.protect)
        region.protect = base_protect
        return 1

    def VirtualFreeEx(self, handle: Any, address: Any, size: int, kind: int) -> int:
        self._enter("VirtualFreeEx")
        process = self._process(handle, w.PROCESS_VM_OPERATION)
        addr = _address(address)
        if kind != w.MEM_RELEASE or size != 0:
            raise StrictnessError("MEM_RELEASE requires size 0")
        for region in process.regions:
            if region.base == addr and region.kind == "private" and region.allocation_base == addr:
                process.regions.remove(region)
                return 1
        return self._fail(w.ERROR_INVALID_ADDRESS)

    def ReadProcessMemory(self, handle: Any, address: Any, buffer: Any, size: Any, done: Any) -> int:
        self._enter("ReadProcessMemory")
        process = self._process(handle, w.PROCESS_VM_READ)
        addr, count = _address(address), _value(size)
        region = self._region(process, addr, count)
        if region is None:
            return self._fail(w.ERROR_PARTIAL_COPY)
        ctypes.memmove(_address(buffer), bytes(region.data[addr - region.base : addr - region.base + count]), count)
        _store(done, "<Q", count)
        return 1

    def WriteProcessMemory(self, handle: Any, address: Any, data: bytes, size: Any, done: Any) -> int:
        self._enter("WriteProcessMemory")
        process = self._process(handle, w.PROCESS_VM_WRITE | w.PROCESS_VM_OPERATION)
        addr, count = _address(address), _value(size)
        region = self._region(process, addr, count)
        if region is None:
            return self._fail(w.ERROR_PARTIAL_COPY)
        if not region.protect & (0x04 | 0x08 | 0x40 | 0x80):
            return self._fail(ERROR_NOACCESS)
        reachable = region.kind == "image" or region.protect & w.EXECUTE_PROTECTIONS
        if reachable and any(t.state != "frozen" for t in process.threads.values()):
            raise StrictnessError(f"code at 0x{addr:x} written while threads of pid {process.pid} run")
        region.data[addr - region.base : addr - region.base + count] = bytes(data)[:count]
        _store(done, "<Q", count)
        return 1

    def GetThreadContext(self, handle: Any, pointer: Any) -> int:
        if error := self._enter("GetThreadContext"):
            return self._fail(error)
        _process, thread = self._thread(handle, THREAD_GET_CONTEXT)
        if thread.state != "frozen":
            raise StrictnessError(f"GetThreadContext on running thread {thread.tid}: its context is not stable")
        self.debug_log.append(("GetThreadContext", thread.tid))
        context = pointer._obj
        if ctypes.addressof(context) % 16:
            raise StrictnessError("CONTEXT must be 16-byte aligned")
        if context.ContextFlags & w.CONTEXT_CONTROL != w.CONTEXT_CONTROL:
            raise StrictnessError("CONTEXT_CONTROL is needed for Rip/Rsp")
        context.Rip, context.Rsp = thread.rip, thread.rsp
        return 1

    def FlushInstructionCache(self, handle: Any, address: Any, size: int) -> int:
        self._enter("FlushInstructionCache")
        self._process(handle, 0)
        self.flushed.append((_address(address), int(size)))
        return 1

    def GetModuleHandleW(self, name: str) -> int:
        self._enter("GetModuleHandleW")
        return NTDLL_BASE if name.lower() == "ntdll.dll" else 0

    def GetProcAddress(self, module: int, name: bytes) -> int:
        self._enter("GetProcAddress")
        if module != NTDLL_BASE or name.decode() not in NTDLL_EXPORTS:
            return self._fail(127)
        return NTDLL_BASE + NTDLL_EXPORTS[name.decode()]

    def CreateRemoteThread(
        self, handle: Any, attrs: Any, stack: int, start: Any, param: Any, flags: int, tid: Any
    ) -> int:
        self._enter("CreateRemoteThread")
        process = self._process(handle, w.PROCESS_CREATE_THREAD)
        if process.debug is not None:
            raise StrictnessError("CreateRemoteThread while attached: its CREATE_THREAD event would freeze the process")
        if any(t.state != "running" for t in process.threads.values()):
            raise StrictnessError("CreateRemoteThread while threads are stopped can deadlock on the loader lock")
        start_addr, param_addr = _address(start), _address(param)
        code_region = self._region(process, start_addr, len(remote_call_stub()))
        if code_region is None or not code_region.protect & w.EXECUTE_PROTECTIONS:
            raise StrictnessError("remote thread starts in memory that is not executable")
        offset = start_addr - code_region.base
        if bytes(code_region.data[offset : offset + len(remote_call_stub())]) != remote_call_stub():
            raise StrictnessError("remote thread start is not the known stub")
        params = self._region(process, param_addr, 32)
        if params is None:
            raise StrictnessError("parameter block not in the target")
        table, count, base, function = struct.unpack_from("<QQQQ", params.data, param_addr - params.base)
        result = 0
        if function == NTDLL_BASE + NTDLL_EXPORTS["RtlAddFunctionTable"]:
            if self._region(process, table, 12 * count) is None:
                raise StrictnessError("function table outside the target's memory")
            process.tables[table] = (count, base)
            result = 1
        elif function == NTDLL_BASE + NTDLL_EXPORTS["RtlDeleteFunctionTable"]:
            result = int(process.tables.pop(table, None) is not None)
        else:
            raise StrictnessError(f"remote call to unknown function 0x{function:x}")
        return self._new_handle("remote-thread", result if not self.hang_remote_threads else -1, 0)

    def WaitForSingleObject(self, handle: Any, timeout: int) -> int:
        self._enter("WaitForSingleObject")
        entry = self.handles[int(handle)]
        return w.WAIT_TIMEOUT if entry[1] == -1 else w.WAIT_OBJECT_0

    def GetExitCodeThread(self, handle: Any, pointer: Any) -> int:
        self._enter("GetExitCodeThread")
        entry = self.handles[int(handle)]
        _store(pointer, "<I", w.STILL_ACTIVE if entry[1] == -1 else entry[1])
        return 1

    # -- the debug API ------------------------------------------------------------------------------------------

    def _owned(self, process: Process, what: str) -> DebugPort:
        if process.debug is None:
            raise StrictnessError(f"{what}: pid {process.pid} is not attached")
        if process.debug.owner != threading.get_ident():
            raise StrictnessError(
                f"{what} from Python thread {threading.get_ident()}, but pid {process.pid} was attached by "
                f"{process.debug.owner}: the debug object belongs to the attaching thread"
            )
        return process.debug

    def _attached(self, pid: int, what: str) -> tuple[Process, DebugPort]:
        process = self.processes.get(pid)
        if process is None:
            raise StrictnessError(f"{what}: no pid {pid}")
        return process, self._owned(process, what)

    def _set_frozen(self, process: Process) -> None:
        debug = process.debug
        frozen = debug is not None and debug.reported is not None and debug.reported.live
        for thread in process.threads.values():
            thread.state = "frozen" if frozen else "running"

    def _detach(self, process: Process) -> None:
        """What the kernel does when the debugger detaches or its debug object closes: pending events are
        dropped, the handles they carried into the debugger are closed, the injected thread finishes, threads run."""
        if process.debug is not None:
            for handle in process.debug.system_handles:
                self.handles.pop(handle, None)
            if process.debug.breakin_running and not process.debug.breakpoint_answered:
                # Its DbgBreakPoint reaches no debugger (STATUS_DEBUGGER_INACTIVE) and goes to the target's own
                # exception handling: Wine's DbgUiRemoteBreakin catches it; Windows' is not known to.
                process.unanswered_breakpoints += 1
        process.debug = None
        for tid in [t for t in process.threads if t >= BREAKIN_TID_BASE]:
            del process.threads[tid]  # it returns from DbgBreakPoint and exits; its stack goes with it
        process.regions = [r for r in process.regions if r.base != BREAKIN_STACK]
        self._set_frozen(process)
        if not process.alive:
            process.threads.clear()

    def DbgUiConnectToDbg(self) -> int:
        if error := self._enter("DbgUiConnectToDbg"):
            return error
        self.debug_log.append(("DbgUiConnectToDbg",))
        self.kill_on_exit.setdefault(threading.get_ident(), True)  # NtCreateDebugObject(DEBUG_KILL_ON_CLOSE)
        return 0

    def RtlNtStatusToDosError(self, status: int) -> int:
        self._enter("RtlNtStatusToDosError")
        return {STATUS_ACCESS_DENIED: w.ERROR_ACCESS_DENIED}.get(status, 317)

    def DebugSetProcessKillOnExit(self, kill: Any) -> int:
        self._enter("DebugSetProcessKillOnExit")
        self.debug_log.append(("DebugSetProcessKillOnExit", bool(kill)))
        if threading.get_ident() not in self.kill_on_exit:
            return self._fail(w.ERROR_INVALID_HANDLE)  # this thread has no debug object yet
        self.kill_on_exit[threading.get_ident()] = bool(kill)
        return 1

    def DebugActiveProcess(self, pid: int) -> int:
        if error := self._enter("DebugActiveProcess"):
            return self._fail(error)
        self.debug_log.append(("DebugActiveProcess", pid))
        process = self.processes.get(pid)
        if process is None or not process.alive:
            return self._fail(w.ERROR_INVALID_PARAMETER)
        if process.deny_debug:
            return self._fail(process.deny_debug)
        if process.other_debugger or process.debug is not None:
            return self._fail(w.ERROR_INVALID_PARAMETER)  # STATUS_PORT_ALREADY_SET as Win32 sees it
        self.kill_on_exit.setdefault(threading.get_ident(), True)
        first, *others = process.threads.values()
        queue = [DebugEvent(w.CREATE_PROCESS_DEBUG_EVENT, first.tid, start=first.start)]
        queue += [
            DebugEvent(w.LOAD_DLL_DEBUG_EVENT, first.tid, module=m[2], with_file=i % 2 == 0)
            for i, m in enumerate(process.modules)
        ]
        queue += [DebugEvent(w.CREATE_THREAD_DEBUG_EVENT, t.tid, start=t.start) for t in others]
        queue += process.attach_extra
        with self._ids:
            self._next_breakin += 1
            breakin_tid = self._next_breakin
        breakin = Thread(  # not started yet: its context is the initial one, in RtlUserThreadStart
            breakin_tid,
            NTDLL_BASE + NTDLL_EXPORTS["RtlUserThreadStart"],
            BREAKIN_STACK + 0xF000,
            NTDLL_BASE
            + NTDLL_EXPORTS["DbgUiRemoteBreakin" if process.breakin_start_reported else "RtlUserThreadStart"],
        )
        process.threads[breakin.tid] = breakin
        process.regions.append(Region(BREAKIN_STACK, 0x10000, w.PAGE_READWRITE, bytearray(0x10000), BREAKIN_STACK))
        if not process.breakin_unreported:
            queue.append(DebugEvent(w.CREATE_THREAD_DEBUG_EVENT, breakin.tid, live=True, start=breakin.start))
            breakpoint_at = NTDLL_BASE + NTDLL_EXPORTS["DbgBreakPoint"]
            queue.append(
                DebugEvent(
                    w.EXCEPTION_DEBUG_EVENT,
                    breakin.tid,
                    live=True,
                    exception_code=w.EXCEPTION_BREAKPOINT,
                    address=breakpoint_at,
                )
            )
        process.debug = DebugPort(threading.get_ident(), queue)
        return 1

    def WaitForDebugEvent(self, pointer: Any, timeout: int) -> int:
        self._enter("WaitForDebugEvent")
        if timeout == INFINITE:
            raise StrictnessError("WaitForDebugEvent(INFINITE) hangs the engine when the target never stops")
        ports = [p for p in self.processes.values() if p.debug is not None and p.debug.owner == threading.get_ident()]
        if not ports:
            raise StrictnessError("WaitForDebugEvent on a thread that debugs no process")
        for process in ports:
            debug = self._owned(process, "WaitForDebugEvent")
            if debug.reported is not None:
                raise StrictnessError(
                    f"WaitForDebugEvent while the event of thread {debug.reported.tid} is not continued"
                )
            if not debug.queue:
                continue
            event = debug.queue.pop(0)
            debug.reported = event
            record: Any = pointer._obj
            ctypes.memset(ctypes.addressof(record), 0, ctypes.sizeof(record))
            record.dwDebugEventCode, record.dwProcessId, record.dwThreadId = event.code, process.pid, event.tid
            self.debug_log.append(("WaitForDebugEvent", event.code, event.tid))
            if event.code in (w.CREATE_PROCESS_DEBUG_EVENT, w.CREATE_THREAD_DEBUG_EVENT):
                thread = self._new_handle("debug-thread", event.tid, DEBUG_THREAD_ACCESS)
                debug.system_handles.add(thread)
                if event.code == w.CREATE_THREAD_DEBUG_EVENT:
                    record.u.CreateThread.hThread, record.u.CreateThread.lpStartAddress = thread, event.start
                else:
                    info = record.u.CreateProcessInfo
                    info.hThread, info.lpStartAddress = thread, event.start
                    info.hProcess = self._new_handle("debug-process", process.pid, 0x1FFFFF)
                    info.hFile = self._new_handle("file", process.pid, 0)
                    debug.system_handles.add(info.hProcess)
            elif event.code == w.LOAD_DLL_DEBUG_EVENT:
                record.u.LoadDll.lpBaseOfDll = event.module
                record.u.LoadDll.hFile = self._new_handle("file", process.pid, 0) if event.with_file else None
            elif event.code == w.EXCEPTION_DEBUG_EVENT:
                record.u.Exception.ExceptionRecord.ExceptionCode = event.exception_code
                record.u.Exception.ExceptionRecord.ExceptionAddress = event.address
                record.u.Exception.dwFirstChance = 1
            elif event.code == w.EXIT_THREAD_DEBUG_EVENT:
                process.threads.pop(event.tid, None)
            self._set_frozen(process)
            return 1
        return self._fail(w.ERROR_SEM_TIMEOUT)

    def ContinueDebugEvent(self, pid: int, tid: int, status: int) -> int:
        self._enter("ContinueDebugEvent")
        self.debug_log.append(("ContinueDebugEvent", pid, tid, status))
        process, debug = self._attached(pid, "ContinueDebugEvent")
        event = debug.reported
        if event is None or event.tid != tid:
            raise StrictnessError(f"ContinueDebugEvent({pid}, {tid}) does not answer the reported event")
        if status not in (w.DBG_CONTINUE, w.DBG_EXCEPTION_NOT_HANDLED):
            raise StrictnessError(f"continue status 0x{status:x} is neither DBG_CONTINUE nor DBG_EXCEPTION_NOT_HANDLED")
        process.continued.append((event.code, tid, status))
        debug.reported = None
        if event.code == w.EXIT_THREAD_DEBUG_EVENT:  # the system closes the thread's handle now
            for handle in [h for h in debug.system_handles if self.handles[h][:2] == ("debug-thread", tid)]:
                debug.system_handles.discard(handle)
                del self.handles[handle]
        if event.code == w.EXIT_PROCESS_DEBUG_EVENT:  # the process is gone, and with it the debug port
            process.alive = False
            self._detach(process)
            return 1
        if event.code == w.CREATE_THREAD_DEBUG_EVENT and tid >= BREAKIN_TID_BASE:
            debug.breakin_running = True  # it runs on to DbgBreakPoint: from now on a breakpoint is due
            process.threads[tid].rip = NTDLL_BASE + NTDLL_EXPORTS["DbgBreakPoint"]
        if event.code == w.EXCEPTION_DEBUG_EVENT and tid >= BREAKIN_TID_BASE:
            if status != w.DBG_CONTINUE:
                process.unanswered_breakpoints += 1
            debug.breakpoint_answered = True
            debug.queue.append(DebugEvent(w.EXIT_THREAD_DEBUG_EVENT, tid, live=True))  # DbgUiRemoteBreakin returns
        self._set_frozen(process)
        return 1

    def DebugActiveProcessStop(self, pid: int) -> int:
        self._enter("DebugActiveProcessStop")
        self.debug_log.append(("DebugActiveProcessStop", pid))
        if pid in self.processes and not self.processes[pid].alive:
            return self._fail(w.ERROR_INVALID_PARAMETER)
        process, _debug = self._attached(pid, "DebugActiveProcessStop")
        self._detach(process)
        return 1

    def CheckRemoteDebuggerPresent(self, handle: Any, pointer: Any) -> int:
        self._enter("CheckRemoteDebuggerPresent")
        process = self._process(handle, w.PROCESS_QUERY_INFORMATION)
        _store(pointer, "<i", int(process.other_debugger or process.debug is not None))
        return 1

    def SetProcessValidCallTargets(self, handle: Any, base: Any, size: int, count: int, infos: Any) -> int:
        self._enter("SetProcessValidCallTargets")
        process = self._process(handle, w.PROCESS_VM_OPERATION)
        region_base = _address(base)
        for info in list(infos)[:count]:
            if info.Offset % 16 or info.Offset >= size:
                raise StrictnessError("CFG offsets must be 16-byte aligned and inside the region")
            process.valid_call_targets.add(region_base + info.Offset)
        return 1
