"""Windows backend: patch processes of the local machine through documented kernel32 calls (ctypes).

The sequence is the one shown to patch cross-process under Wine from a C program (ARCHITECTURE.md section 7):
OpenProcess, Toolhelp snapshots, VirtualQueryEx/VirtualAllocEx near the module, WriteProcessMemory,
VirtualProtectEx, SuspendThread/GetThreadContext/ResumeThread, FlushInstructionCache; unwind tables are
registered by a small stub run with CreateRemoteThread (it passes one pointer: the stub loads three arguments
from a parameter block and calls ntdll!RtlAddFunctionTable).

Every failure raises BackendError with the Win32 error explained (ERROR_MESSAGES) and undoes what the failed
call had begun (threads resumed, handles closed, memory released).
"""

from __future__ import annotations

import ctypes
import struct
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import BackendError
from . import _win32 as w
from .base import ModuleInfo, ProcessInfo, ThreadState

__all__ = ["WindowsBackend", "WindowsProcess", "remote_call_stub"]

STACK_WINDOW = 64 * 1024  # bytes of each stack scanned for return addresses (activeness check)
REMOTE_CALL_TIMEOUT_MS = 5000
QUIESCE_ROUNDS = 16  # snapshots taken until no new thread appears
_PAGE = 0x1000


def remote_call_stub() -> bytes:
    """x64 code run by CreateRemoteThread(stub, params): ``params`` holds four qwords (arg1, arg2, arg3,
    function); the stub calls ``function(arg1, (DWORD)arg2, arg3)`` and returns the BOOLEAN result zero-extended
    as the thread's exit code. Windows x64 calling convention: rcx, rdx, r8; 32 bytes of shadow space."""
    return bytes.fromhex(
        "4883ec28"  # sub rsp, 0x28      (shadow space + realign: rsp is 8 mod 16 at thread entry)
        "4889c8"  # mov rax, rcx        (rax = params)
        "488b08"  # mov rcx, [rax]      (arg1: FunctionTable)
        "8b5008"  # mov edx, [rax+8]    (arg2: EntryCount)
        "4c8b4010"  # mov r8, [rax+0x10] (arg3: BaseAddress)
        "ff5018"  # call [rax+0x18]     (RtlAddFunctionTable / RtlDeleteFunctionTable)
        "0fb6c0"  # movzx eax, al       (BOOLEAN -> exit code)
        "4883c428"  # add rsp, 0x28
        "c3"  # ret
    )


class _Win32Caller:
    """Calls the API and turns failures into BackendError with an operator-readable reason."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def fail(self, what: str, code: Optional[int] = None) -> BackendError:
        code = self.api.get_last_error() if code is None else code
        reason = w.ERROR_MESSAGES.get(code) or self.api.format_error(code)
        return BackendError(f"{what} failed: {reason} (Win32 error {code})")

    def check(self, result: Any, what: str) -> Any:
        if not result:
            raise self.fail(what)
        return result


class WindowsBackend:
    """The local Windows machine. ``api`` defaults to the real kernel32; tests pass a strict fake."""

    name = "windows"

    def __init__(self, api: Any = None) -> None:
        self.api = api if api is not None else w.load_api()
        self.win = _Win32Caller(self.api)

    def processes(self) -> List[ProcessInfo]:
        """Every process in a Toolhelp snapshot; start_time is empty where the process cannot be opened."""
        result = []
        for entry in _snapshot(
            self.win, w.TH32CS_SNAPPROCESS, 0, w.PROCESSENTRY32W, "Process32FirstW", "Process32NextW"
        ):
            pid = int(entry.th32ProcessID)
            if pid == 0:
                continue
            result.append(ProcessInfo(pid, str(entry.szExeFile), _start_time(self.win, pid)))
        return result

    def open(self, pid: int) -> WindowsProcess:
        """Open ``pid`` with the rights patching needs; raises BackendError (gone, access denied, protected)."""
        return WindowsProcess(self.api, pid)


class WindowsProcess:
    """An open target process (one handle with patching rights)."""

    def __init__(self, api: Any, pid: int) -> None:
        self.api = api
        self.win = _Win32Caller(api)
        self.pid = pid
        self._allocations: Dict[int, int] = {}  # address -> size of what allocate_near committed
        self.handle = self.api.OpenProcess(w.PATCH_ACCESS, False, pid)
        if not self.handle:
            raise self.win.fail(f"OpenProcess({pid})")
        try:
            name = next((m.name for m in self.modules() if m.path.lower().endswith(".exe")), f"pid-{pid}")
            self.info = ProcessInfo(pid, name, _start_time(self.win, pid))
            self._cfg = self._policy_flag(w.PROCESS_CONTROL_FLOW_GUARD_POLICY)
        except BaseException:
            self.api.CloseHandle(self.handle)
            raise

    def __enter__(self) -> WindowsProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- facts ----------------------------------------------------------------------------------------------------

    def refusal(self) -> Optional[str]:
        """Why this process must not be patched (WOW64, emulated x64, protected, ACG), or None."""
        process_machine = ctypes.c_ushort(0)
        native_machine = ctypes.c_ushort(0)
        self.win.check(
            self.api.IsWow64Process2(self.handle, ctypes.byref(process_machine), ctypes.byref(native_machine)),
            "IsWow64Process2",
        )
        if process_machine.value != w.IMAGE_FILE_MACHINE_UNKNOWN:
            return (
                f"32-bit (WOW64) process, machine 0x{process_machine.value:04x}: x86 hotpatching is not supported yet"
            )
        if native_machine.value != w.IMAGE_FILE_MACHINE_AMD64:
            return f"process runs on a machine of type 0x{native_machine.value:04x} (x64 emulation): not supported"
        protection = ctypes.c_uint32(w.PROTECTION_LEVEL_NONE)
        if (
            self.api.GetProcessInformation(
                self.handle, w.PROCESS_PROTECTION_LEVEL_INFO, ctypes.byref(protection), ctypes.sizeof(protection)
            )
            and protection.value != w.PROTECTION_LEVEL_NONE
        ):
            return f"protected process (protection level 0x{protection.value:x}): its memory cannot be written"
        if self._policy_flag(w.PROCESS_DYNAMIC_CODE_POLICY):
            return w.ERROR_MESSAGES[w.ERROR_DYNAMIC_CODE_BLOCKED]
        return None

    def modules(self) -> List[ModuleInfo]:
        """Loaded modules from a Toolhelp module snapshot."""
        return [
            ModuleInfo(str(entry.szModule), str(entry.szExePath), int(entry.modBaseAddr or 0), int(entry.modBaseSize))
            for entry in _snapshot(
                self.win, w.TH32CS_SNAPMODULE, self.pid, w.MODULEENTRY32W, "Module32FirstW", "Module32NextW"
            )
        ]

    # -- memory ---------------------------------------------------------------------------------------------------

    def read(self, address: int, size: int) -> bytes:
        buffer = ctypes.create_string_buffer(size)
        done = ctypes.c_size_t(0)
        ok = self.api.ReadProcessMemory(
            self.handle, ctypes.c_void_p(address), buffer, ctypes.c_size_t(size), ctypes.byref(done)
        )
        if not ok or done.value != size:
            raise self.win.fail(f"ReadProcessMemory(0x{address:x}, {size})")
        return buffer.raw

    def write(self, address: int, data: bytes) -> None:
        """Write, making the pages writable for the copy and restoring their protection after."""
        old = ctypes.c_uint32(0)
        size = len(data)
        region = self._query(address)
        writable = region.Protect & (0x04 | 0x08 | 0x40 | 0x80)  # RW, WRITECOPY, ERW, EWRITECOPY
        if not writable:
            self.win.check(
                self.api.VirtualProtectEx(
                    self.handle, ctypes.c_void_p(address), size, w.PAGE_EXECUTE_READWRITE, ctypes.byref(old)
                ),
                f"VirtualProtectEx(0x{address:x}, {size}, RWX)",
            )
        try:
            done = ctypes.c_size_t(0)
            ok = self.api.WriteProcessMemory(
                self.handle, ctypes.c_void_p(address), data, ctypes.c_size_t(size), ctypes.byref(done)
            )
            if not ok or done.value != size:
                raise self.win.fail(f"WriteProcessMemory(0x{address:x}, {size})")
        finally:
            if not writable:
                restored = ctypes.c_uint32(0)
                self.win.check(
                    self.api.VirtualProtectEx(
                        self.handle, ctypes.c_void_p(address), size, old.value, ctypes.byref(restored)
                    ),
                    f"VirtualProtectEx(0x{address:x}, {size}, restore)",
                )

    def allocate_near(self, base: int, size: int, span: int = 0x7FFF0000) -> int:
        """Commit ``size`` bytes read-write at the first free, granularity-aligned gap above ``base``."""
        limit = base + span
        address = _align_up(base, w.ALLOCATION_GRANULARITY)
        while address + size <= limit:
            region = self._query(address)
            region_base = int(region.BaseAddress or 0)
            region_end = region_base + int(region.RegionSize)
            if region.State == w.MEM_FREE and region_end - address >= size:
                result = self.api.VirtualAllocEx(
                    self.handle, ctypes.c_void_p(address), size, w.MEM_COMMIT | w.MEM_RESERVE, w.PAGE_READWRITE
                )
                if result:
                    self._allocations[int(result)] = size
                    return int(result)
                if self.api.get_last_error() != w.ERROR_INVALID_ADDRESS:  # taken meanwhile: keep looking
                    raise self.win.fail(f"VirtualAllocEx(0x{address:x}, {size})")
            address = _align_up(max(region_end, address + 1), w.ALLOCATION_GRANULARITY)
        raise BackendError(
            f"no free {size}-byte range within {span // (1 << 20)} MiB above 0x{base:x}: "
            "the address space near the module is full; use the cold path"
        )

    def protect(self, address: int, size: int, protection: str) -> None:
        flags = {"rx": w.PAGE_EXECUTE_READ, "rw": w.PAGE_READWRITE, "rwx": w.PAGE_EXECUTE_READWRITE}[protection]
        if self._cfg and protection != "rw":
            flags |= w.PAGE_TARGETS_NO_UPDATE  # blob starts with no valid CFG targets; set_valid_call_targets adds
        old = ctypes.c_uint32(0)
        self.win.check(
            self.api.VirtualProtectEx(self.handle, ctypes.c_void_p(address), size, flags, ctypes.byref(old)),
            f"VirtualProtectEx(0x{address:x}, {size}, {protection})",
        )

    def free(self, address: int, size: int) -> None:
        self.win.check(
            self.api.VirtualFreeEx(self.handle, ctypes.c_void_p(address), 0, w.MEM_RELEASE),
            f"VirtualFreeEx(0x{address:x})",
        )
        self._allocations.pop(address, None)

    def flush_instruction_cache(self, address: int, size: int) -> None:
        self.win.check(
            self.api.FlushInstructionCache(self.handle, ctypes.c_void_p(address), size), "FlushInstructionCache"
        )

    # -- threads --------------------------------------------------------------------------------------------------

    def quiesce(self, with_stacks: bool = False) -> _Quiesced:
        """Suspend every thread, then read each one's context (which waits for the suspension to complete)."""
        quiesced = _Quiesced(self)
        try:
            for _round in range(QUIESCE_ROUNDS):
                fresh = [
                    int(t.th32ThreadID)
                    for t in _snapshot(
                        self.win, w.TH32CS_SNAPTHREAD, 0, w.THREADENTRY32, "Thread32First", "Thread32Next"
                    )
                    if int(t.th32OwnerProcessID) == self.pid and int(t.th32ThreadID) not in quiesced.handles
                ]
                if not fresh:
                    break
                for tid in fresh:
                    quiesced.suspend(tid)
            else:
                raise BackendError(f"threads of pid {self.info.pid} kept appearing while stopping them; try again")
            quiesced.read_states(with_stacks)
        except BaseException:
            quiesced.resume()
            raise
        return quiesced

    # -- unwind tables and CFG ------------------------------------------------------------------------------------

    def add_function_table(self, table: int, count: int, base: int) -> None:
        if not self._remote_call("RtlAddFunctionTable", table, count, base):
            raise BackendError(f"RtlAddFunctionTable(0x{table:x}, {count}, 0x{base:x}) returned FALSE in the target")

    def delete_function_table(self, table: int) -> None:
        if not self._remote_call("RtlDeleteFunctionTable", table, 0, 0):
            raise BackendError(f"RtlDeleteFunctionTable(0x{table:x}) returned FALSE: the table was not registered")

    def set_valid_call_targets(self, addresses: Sequence[int]) -> None:
        """Mark blob functions whose address the patch takes as CFG call targets (16-byte aligned offsets)."""
        if not self._cfg or not addresses:
            return
        for region_base, offsets in _group_by_allocation(self, addresses).items():
            infos = (w.CFG_CALL_TARGET_INFO * len(offsets))(
                *[w.CFG_CALL_TARGET_INFO(offset, w.CFG_CALL_TARGET_VALID) for offset in offsets]
            )
            size = self._allocations.get(region_base) or int(self._query(region_base).RegionSize)
            self.win.check(
                self.api.SetProcessValidCallTargets(
                    self.handle, ctypes.c_void_p(region_base), _align_up(size, _PAGE), len(offsets), infos
                ),
                "SetProcessValidCallTargets",
            )

    def close(self) -> None:
        if self.handle:
            self.api.CloseHandle(self.handle)
            self.handle = None

    # -- helpers --------------------------------------------------------------------------------------------------

    def _query(self, address: int) -> w.MEMORY_BASIC_INFORMATION:
        info = w.MEMORY_BASIC_INFORMATION()
        if not self.api.VirtualQueryEx(self.handle, ctypes.c_void_p(address), ctypes.byref(info), ctypes.sizeof(info)):
            raise self.win.fail(f"VirtualQueryEx(0x{address:x})")
        return info

    def _policy_flag(self, policy: int) -> bool:
        flags = ctypes.c_uint32(0)
        ok = self.api.GetProcessMitigationPolicy(self.handle, policy, ctypes.byref(flags), ctypes.sizeof(flags))
        return bool(ok) and bool(flags.value & 1)

    def _remote_function(self, name: str) -> int:
        """Address of an ntdll export in the target: ntdll's base is the same for every process of one
        architecture in a boot session, but compute through the target's own module list to be sure."""
        local_ntdll = self.win.check(self.api.GetModuleHandleW("ntdll.dll"), "GetModuleHandleW(ntdll)")
        local = self.win.check(self.api.GetProcAddress(local_ntdll, name.encode("ascii")), f"GetProcAddress({name})")
        remote_ntdll = next((m.base for m in self.modules() if m.name.lower() == "ntdll.dll"), None)
        if remote_ntdll is None:
            raise BackendError(f"ntdll.dll is not loaded in pid {self.info.pid}: cannot call {name} there")
        return remote_ntdll + (int(local) - int(local_ntdll))

    def _remote_call(self, name: str, arg1: int, arg2: int, arg3: int) -> int:
        """Run ``name(arg1, arg2, arg3)`` on a new thread in the target; returns its BOOLEAN result."""
        function = self._remote_function(name)
        scratch = self.api.VirtualAllocEx(self.handle, None, 2 * _PAGE, w.MEM_COMMIT | w.MEM_RESERVE, w.PAGE_READWRITE)
        if not scratch:
            raise self.win.fail("VirtualAllocEx(scratch)")
        scratch = int(scratch)
        thread = None
        finished = False
        try:
            self.write(scratch, remote_call_stub())
            self.write(scratch + _PAGE, struct.pack("<QQQQ", arg1, arg2, arg3, function))
            old = ctypes.c_uint32(0)
            self.win.check(
                self.api.VirtualProtectEx(
                    self.handle, ctypes.c_void_p(scratch), _PAGE, w.PAGE_EXECUTE_READ, ctypes.byref(old)
                ),
                "VirtualProtectEx(stub, RX)",
            )
            self.flush_instruction_cache(scratch, _PAGE)
            thread = self.api.CreateRemoteThread(
                self.handle, None, 0, ctypes.c_void_p(scratch), ctypes.c_void_p(scratch + _PAGE), 0, None
            )
            if not thread:
                raise self.win.fail(f"CreateRemoteThread({name})")
            waited = self.api.WaitForSingleObject(thread, REMOTE_CALL_TIMEOUT_MS)
            if waited != w.WAIT_OBJECT_0:
                raise BackendError(
                    f"{name} did not return within {REMOTE_CALL_TIMEOUT_MS} ms in pid {self.info.pid} "
                    "(a thread may hold the loader lock); the stub page is left allocated on purpose"
                )
            code = ctypes.c_uint32(0)
            self.win.check(self.api.GetExitCodeThread(thread, ctypes.byref(code)), "GetExitCodeThread")
            finished = True
            return int(code.value)
        finally:
            if thread:
                self.api.CloseHandle(thread)
            if finished or thread is None:  # never free code a still-running thread may execute
                self.api.VirtualFreeEx(self.handle, ctypes.c_void_p(scratch), 0, w.MEM_RELEASE)


class _Quiesced:
    """Threads suspended by ``WindowsProcess.quiesce``; ``resume`` undoes exactly those suspensions."""

    def __init__(self, process: WindowsProcess) -> None:
        self.process = process
        self.handles: Dict[int, Any] = {}
        self.threads: List[ThreadState] = []
        self.pause_started_ns = time.perf_counter_ns()

    def suspend(self, tid: int) -> None:
        api = self.process.api
        access = w.THREAD_SUSPEND_RESUME | w.THREAD_GET_CONTEXT | w.THREAD_QUERY_LIMITED_INFORMATION
        handle = api.OpenThread(access, False, tid)
        if not handle:
            if api.get_last_error() == w.ERROR_INVALID_PARAMETER:
                return  # the thread exited after the snapshot
            raise self.process.win.fail(f"OpenThread({tid})")
        if api.SuspendThread(handle) == 0xFFFFFFFF:
            error = api.get_last_error()
            api.CloseHandle(handle)
            raise self.process.win.fail(f"SuspendThread({tid})", error)
        self.handles[tid] = handle

    def read_states(self, with_stacks: bool) -> None:
        # GetThreadContext needs a 16-byte aligned CONTEXT: over-allocate and place it by hand.
        raw = ctypes.create_string_buffer(ctypes.sizeof(w.CONTEXT) + 16)
        context = w.CONTEXT.from_address(_align_up(ctypes.addressof(raw), 16))
        ranges = _code_ranges(self.process) if with_stacks else []
        for tid, handle in self.handles.items():
            ctypes.memset(ctypes.addressof(context), 0, ctypes.sizeof(context))
            context.ContextFlags = w.CONTEXT_CONTROL | w.CONTEXT_INTEGER
            self.process.win.check(
                self.process.api.GetThreadContext(handle, ctypes.byref(context)), f"GetThreadContext({tid})"
            )
            stack: Tuple[int, ...] = ()
            if with_stacks:
                stack = tuple(_return_candidates(self.process, int(context.Rsp), ranges))
            self.threads.append(ThreadState(tid, int(context.Rip), int(context.Rsp), stack))

    def resume(self) -> int:
        """Resume and close every suspended thread; returns the pause in microseconds."""
        api = self.process.api
        errors = []
        for tid, handle in self.handles.items():
            if api.ResumeThread(handle) == 0xFFFFFFFF:
                errors.append(tid)
            api.CloseHandle(handle)
        self.handles = {}
        pause_us = (time.perf_counter_ns() - self.pause_started_ns) // 1000
        if errors:
            raise self.process.win.fail(f"ResumeThread({errors})")
        return int(pause_us)


def _snapshot(win: _Win32Caller, kind: int, pid: int, entry_type: Any, first: str, following: str) -> Iterator[Any]:
    """Iterate a Toolhelp snapshot; the snapshot handle is always closed."""
    api = win.api
    snapshot = api.CreateToolhelp32Snapshot(kind, pid)
    if not snapshot or snapshot == w.INVALID_HANDLE_VALUE:
        raise win.fail(f"CreateToolhelp32Snapshot(0x{kind:x}, {pid})")
    try:
        entry = entry_type()
        entry.dwSize = ctypes.sizeof(entry_type)
        ok = getattr(api, first)(snapshot, ctypes.byref(entry))
        while ok:
            yield entry
            entry = entry_type()
            entry.dwSize = ctypes.sizeof(entry_type)
            ok = getattr(api, following)(snapshot, ctypes.byref(entry))
        if api.get_last_error() != w.ERROR_NO_MORE_FILES:
            raise win.fail(first)
    finally:
        api.CloseHandle(snapshot)


def _start_time(win: _Win32Caller, pid: int) -> str:
    """Creation time as a decimal FILETIME (100 ns since 1601): with the PID it identifies one process."""
    api = win.api
    handle = api.OpenProcess(w.PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        return ""
    try:
        times = [w.FILETIME(), w.FILETIME(), w.FILETIME(), w.FILETIME()]  # creation, exit, kernel, user
        if not api.GetProcessTimes(handle, *[ctypes.byref(t) for t in times]):
            return ""
        return str((times[0].dwHighDateTime << 32) | times[0].dwLowDateTime)
    finally:
        api.CloseHandle(handle)


def _code_ranges(process: WindowsProcess) -> List[Tuple[int, int]]:
    ranges = [(m.base, m.base + m.size) for m in process.modules()]
    ranges.extend((address, address + size) for address, size in process._allocations.items())
    return ranges


def _return_candidates(process: WindowsProcess, rsp: int, ranges: List[Tuple[int, int]]) -> Iterator[int]:
    """Qwords in the top STACK_WINDOW bytes of a stack that point into a module or an allocation of ours."""
    region = process._query(rsp)
    end = min(int(region.BaseAddress or 0) + int(region.RegionSize), rsp + STACK_WINDOW)
    if end <= rsp:
        return
    data = process.read(rsp, (end - rsp) & ~7)
    for (value,) in struct.iter_unpack("<Q", data):
        if any(low <= value < high for low, high in ranges):
            yield value


def _group_by_allocation(process: WindowsProcess, addresses: Sequence[int]) -> Dict[int, List[int]]:
    groups: Dict[int, List[int]] = {}
    for address in addresses:
        base = int(process._query(address).AllocationBase or 0)
        if (address - base) % 16:
            raise BackendError(f"CFG call target 0x{address:x} is not 16-byte aligned; rebuild the package")
        groups.setdefault(base, []).append(address - base)
    return groups


def _align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)
