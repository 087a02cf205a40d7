"""A strict fake of the kernel32/kernelbase calls the Windows backend makes (no Windows runs here).

It models one machine: processes with modules, memory regions (state, protection, bytes) and threads (suspend
counts, contexts). It is strict where Windows is lenient, so mistakes in the backend fail loudly:
- every handle must be closed (``assert_no_leaks``), and calls need the access rights the handle was opened with;
- code (executable pages) may be written only while every thread of the process is suspended;
- WriteProcessMemory into a non-writable page fails (the backend must change the protection itself);
- executable protection fails with ERROR_DYNAMIC_CODE_BLOCKED in a process that prohibits dynamic code;
- GetThreadContext needs a suspended thread and a 16-byte aligned CONTEXT;
- CreateRemoteThread refuses while any thread of the target is suspended (loader-lock deadlock), and "runs"
  only the known stub calling ntdll!RtlAddFunctionTable / RtlDeleteFunctionTable, recording the table;
- ResumeThread on a thread that is not suspended is an error.
Pointers arrive as ctypes objects (byref, c_void_p, buffers) or ints, exactly as the backend passes them.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends import _win32 as w
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends.windows import remote_call_stub

NTDLL_BASE = 0x7FFB_0000_0000
NTDLL_EXPORTS = {"RtlAddFunctionTable": 0x1000, "RtlDeleteFunctionTable": 0x2000}
ERROR_NOACCESS = 998


class StrictnessError(AssertionError):
    """The backend broke a rule the real API would punish (a crash, a deadlock, a leak)."""


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
    suspended: int = 0


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
        self.calls: list[str] = []
        self._next_handle = 0x100
        self.fail_next: dict[str, int] = {}  # function name -> Win32 error to fail its next call with
        self.hang_remote_threads = False

    # -- model building ---------------------------------------------------------------------------------------

    def add_process(self, pid: int, name: str, module_base: int, module: bytes, threads: int = 2, **kw: Any) -> Process:
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
                1000 + i: Thread(1000 + i, NTDLL_BASE + 0x500, stacks[i].base + stacks[i].size - 0x100)
                for i in range(threads)
            },
            **kw,
        )
        self.processes[pid] = process
        return process

    def assert_no_leaks(self) -> None:
        if self.handles:
            raise StrictnessError(f"handles left open: {self.handles}")
        for process in self.processes.values():
            for thread in process.threads.values():
                if thread.suspended:
                    raise StrictnessError(f"thread {thread.tid} of pid {process.pid} left suspended")

    # -- plumbing -----------------------------------------------------------------------------------------------

    def _fail(self, error: int, result: int = 0) -> int:
        self.last_error = error
        return result

    def _enter(self, name: str) -> int:
        self.calls.append(name)
        return self.fail_next.pop(name, 0)

    def _new_handle(self, kind: str, ident: int, access: int) -> int:
        self._next_handle += 4
        self.handles[self._next_handle] = (kind, ident, access)
        return self._next_handle

    def _process(self, handle: Any, access: int) -> Process:
        entry = self.handles.get(int(handle or 0))
        if entry is None or entry[0] != "process":
            raise StrictnessError(f"{handle!r} is not an open process handle")
        if entry[2] & access != access:
            raise StrictnessError(f"process handle lacks access 0x{access:x}")
        return self.processes[entry[1]]

    def _thread(self, handle: Any, access: int) -> tuple[Process, Thread]:
        entry = self.handles.get(int(handle or 0))
        if entry is None or entry[0] != "thread":
            raise StrictnessError(f"{handle!r} is not an open thread handle")
        if entry[2] & access != access:
            raise StrictnessError(f"thread handle lacks access 0x{access:x}")
        for process in self.processes.values():
            if entry[1] in process.threads:
                return process, process.threads[entry[1]]
        raise StrictnessError("thread vanished")

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

    def OpenThread(self, access: int, inherit: bool, tid: int) -> int:
        if error := self._enter("OpenThread"):
            return self._fail(error)
        if not any(tid in p.threads for p in self.processes.values()):
            return self._fail(w.ERROR_INVALID_PARAMETER)
        return self._new_handle("thread", tid, access)

    def CloseHandle(self, handle: Any) -> int:
        self._enter("CloseHandle")
        if self.handles.pop(int(handle or 0), None) is None and self.snapshots.pop(int(handle or 0), None) is None:
            raise StrictnessError(f"CloseHandle of a handle that is not open: {handle!r}")
        return 1

    def CreateToolhelp32Snapshot(self, kind: int, pid: int) -> int:
        self._enter("CreateToolhelp32Snapshot")
        rows: list[Any] = []
        if kind == w.TH32CS_SNAPPROCESS:
            rows = [("process", p) for p in self.processes.values()]
        elif kind == w.TH32CS_SNAPTHREAD:
            rows = [("thread", p.pid, t) for p in self.processes.values() for t in list(p.threads.values())]
        elif kind == w.TH32CS_SNAPMODULE:
            if pid not in self.processes:
                return self._fail(w.ERROR_INVALID_PARAMETER, int(w.INVALID_HANDLE_VALUE or 0))
            rows = [("module", pid, m) for m in self.processes[pid].modules]
        else:
            raise StrictnessError(f"snapshot kind 0x{kind:x} not modelled")
        self._next_handle += 4
        self.snapshots[self._next_handle] = rows
        self.handles[self._next_handle] = ("snapshot", 0, 0)
        return self._next_handle

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
        elif row[0] == "thread":
            entry.th32ThreadID = row[2].tid
            entry.th32OwnerProcessID = row[1]
        else:
            name, path, base, size = row[2]
            entry.th32ProcessID = row[1]
            entry.szModule = name
            entry.szExePath = path
            entry.modBaseAddr = base
            entry.modBaseSize = size
        return 1

    def Process32FirstW(self, handle: int, pointer: Any) -> int:
        return self._snapshot_next(handle, pointer, w.PROCESSENTRY32W)

    Process32NextW = Process32FirstW

    def Thread32First(self, handle: int, pointer: Any) -> int:
        return self._snapshot_next(handle, pointer, w.THREADENTRY32)

    Thread32Next = Thread32First

    def Module32FirstW(self, handle: int, pointer: Any) -> int:
        return self._snapshot_next(handle, pointer, w.MODULEENTRY32W)

    Module32NextW = Module32FirstW

    def GetProcessTimes(self, handle: Any, *pointers: Any) -> int:
        process = self._process(handle, w.PROCESS_QUERY_LIMITED_INFORMATION)
        _store(pointers[0], "<II", process.start_time & 0xFFFFFFFF, process.start_time >> 32)
        return 1

    def IsWow64Process2(self, handle: Any, process_machine: Any, native_machine: Any) -> int:
        process = self._process(handle, w.PROCESS_QUERY_INFORMATION)
        _store(process_machine, "<H", process.machine)
        _store(native_machine, "<H", process.native_machine)
        return 1

    def GetProcessInformation(self, handle: Any, klass: int, pointer: Any, size: int) -> int:
        process = self._process(handle, w.PROCESS_QUERY_INFORMATION)
        if klass != w.PROCESS_PROTECTION_LEVEL_INFO or size != 4:
            raise StrictnessError(f"GetProcessInformation class {klass} size {size} not modelled")
        _store(pointer, "<I", process.protection)
        return 1

    def GetProcessMitigationPolicy(self, handle: Any, policy: int, pointer: Any, size: int) -> int:
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
        process = self._process(handle, w.PROCESS_QUERY_INFORMATION)
        addr = _address(address)
        info = pointer._obj
        region = self._region(process, addr)
        if region is not None:
            info.BaseAddress, info.AllocationBase = region.base, region.allocation_base
            info.RegionSize, info.State, info.Protect = region.size, w.MEM_COMMIT, region.protect
            return int(size)
        following = min((r.base for r in process.regions if r.base > addr), default=0x7FFF_FFFF_0000)
        page = addr & ~0xFFF
        info.BaseAddress, info.AllocationBase = page, 0
        info.RegionSize, info.State, info.Protect = following - page, w.MEM_FREE, 0x01
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
        process = self._process(handle, w.PROCESS_VM_READ)
        addr, count = _address(address), _value(size)
        region = self._region(process, addr, count)
        if region is None:
            return self._fail(w.ERROR_PARTIAL_COPY)
        ctypes.memmove(_address(buffer), bytes(region.data[addr - region.base : addr - region.base + count]), count)
        _store(done, "<Q", count)
        return 1

    def WriteProcessMemory(self, handle: Any, address: Any, data: bytes, size: Any, done: Any) -> int:
        process = self._process(handle, w.PROCESS_VM_WRITE | w.PROCESS_VM_OPERATION)
        addr, count = _address(address), _value(size)
        region = self._region(process, addr, count)
        if region is None:
            return self._fail(w.ERROR_PARTIAL_COPY)
        if not region.protect & (0x04 | 0x08 | 0x40 | 0x80):
            return self._fail(ERROR_NOACCESS)
        reachable = region.kind == "image" or region.protect & w.EXECUTE_PROTECTIONS
        if reachable and any(not t.suspended for t in process.threads.values()):
            raise StrictnessError(f"code at 0x{addr:x} written while threads of pid {process.pid} run")
        region.data[addr - region.base : addr - region.base + count] = bytes(data)[:count]
        _store(done, "<Q", count)
        return 1

    def SuspendThread(self, handle: Any) -> int:
        _process, thread = self._thread(handle, w.THREAD_SUSPEND_RESUME)
        thread.suspended += 1
        return thread.suspended - 1

    def ResumeThread(self, handle: Any) -> int:
        _process, thread = self._thread(handle, w.THREAD_SUSPEND_RESUME)
        if thread.suspended == 0:
            raise StrictnessError(f"ResumeThread on running thread {thread.tid}")
        thread.suspended -= 1
        return thread.suspended + 1

    def GetThreadContext(self, handle: Any, pointer: Any) -> int:
        _process, thread = self._thread(handle, w.THREAD_GET_CONTEXT)
        if not thread.suspended:
            raise StrictnessError(f"GetThreadContext on running thread {thread.tid}")
        context = pointer._obj
        if ctypes.addressof(context) % 16:
            raise StrictnessError("CONTEXT must be 16-byte aligned")
        if context.ContextFlags & w.CONTEXT_CONTROL != w.CONTEXT_CONTROL:
            raise StrictnessError("CONTEXT_CONTROL is needed for Rip/Rsp")
        context.Rip, context.Rsp = thread.rip, thread.rsp
        return 1

    def FlushInstructionCache(self, handle: Any, address: Any, size: int) -> int:
        self._process(handle, 0)
        self.calls.append(f"FlushInstructionCache:{_address(address):x}")
        return 1

    def GetModuleHandleW(self, name: str) -> int:
        return NTDLL_BASE if name.lower() == "ntdll.dll" else 0

    def GetProcAddress(self, module: int, name: bytes) -> int:
        if module != NTDLL_BASE or name.decode() not in NTDLL_EXPORTS:
            return self._fail(127)
        return NTDLL_BASE + NTDLL_EXPORTS[name.decode()]

    def CreateRemoteThread(
        self, handle: Any, attrs: Any, stack: int, start: Any, param: Any, flags: int, tid: Any
    ) -> int:
        process = self._process(handle, w.PROCESS_CREATE_THREAD)
        if any(t.suspended for t in process.threads.values()):
            raise StrictnessError("CreateRemoteThread while threads are suspended can deadlock on the loader lock")
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
        entry = self.handles[int(handle)]
        return w.WAIT_TIMEOUT if entry[1] == -1 else w.WAIT_OBJECT_0

    def GetExitCodeThread(self, handle: Any, pointer: Any) -> int:
        entry = self.handles[int(handle)]
        _store(pointer, "<I", w.STILL_ACTIVE if entry[1] == -1 else entry[1])
        return 1

    def SetProcessValidCallTargets(self, handle: Any, base: Any, size: int, count: int, infos: Any) -> int:
        process = self._process(handle, w.PROCESS_VM_OPERATION)
        region_base = _address(base)
        for info in list(infos)[:count]:
            if info.Offset % 16 or info.Offset >= size:
                raise StrictnessError("CFG offsets must be 16-byte aligned and inside the region")
            process.valid_call_targets.add(region_base + info.Offset)
        return 1
