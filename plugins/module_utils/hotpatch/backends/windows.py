"""Windows backend: patch processes of the local machine through documented kernel32 calls (ctypes).

The sequence is the one shown to patch cross-process under Wine from a C program (ARCHITECTURE.md section 7):
OpenProcess, Toolhelp snapshots, VirtualQueryEx/VirtualAllocEx near the module, WriteProcessMemory,
VirtualProtectEx, GetThreadContext, FlushInstructionCache; unwind tables are registered by a small stub run with
CreateRemoteThread (it passes one pointer: the stub loads three arguments from a parameter block and calls
ntdll!RtlAddFunctionTable). Threads are stopped with the debug API, not SuspendThread, so that an engine killed
while they are stopped leaves the target running (see ``_Quiesced``).

Every failure raises BackendError with the Win32 error explained (ERROR_MESSAGES) and undoes what the failed
call had begun (threads resumed, handles closed, memory released).
"""

from __future__ import annotations

import contextlib
import ctypes
import struct
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import BackendError
from . import _win32 as w
from .base import ModuleInfo, ProcessInfo, ThreadState

__all__ = ["WindowsBackend", "WindowsProcess", "remote_call_stub"]

STACK_WINDOW = 64 * 1024  # bytes of each stack scanned for return addresses (activeness check)
REMOTE_CALL_TIMEOUT_MS = 5000
ATTACH_TIMEOUT_MS = 5000  # from DebugActiveProcess to the injected thread's event
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
        self._ntdll: Optional[int] = None  # ntdll's base in the target, once looked up
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

    def allocate_near(
        self, base: int, size: int, span: int = 0x7FFF0000, intent: Optional[Callable[[int], None]] = None
    ) -> int:
        """Commit ``size`` bytes read-write at the first free, granularity-aligned gap above ``base``
        (``intent(address)`` before each VirtualAllocEx)."""
        limit = base + span
        address = _align_up(base, w.ALLOCATION_GRANULARITY)
        while address + size <= limit:
            region = self._query(address)
            region_base = int(region.BaseAddress or 0)
            region_end = region_base + int(region.RegionSize)
            if region.State == w.MEM_FREE and region_end - address >= size:
                if intent is not None:
                    intent(address)
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

    def fresh_region(self, address: int, size: int) -> bool:
        """True when a committed private allocation starts at ``address`` and spans exactly ``size`` rounded up
        to pages (what VirtualAllocEx(MEM_COMMIT | MEM_RESERVE) at that address makes)."""
        try:
            region = self._query(address)
        except BackendError:
            return False
        return (
            int(region.BaseAddress or 0) == address
            and int(region.AllocationBase or 0) == address
            and int(region.RegionSize) == _align_up(max(size, 1), _PAGE)
            and region.State == w.MEM_COMMIT
            and region.Type == w.MEM_PRIVATE
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
        """Freeze every thread by attaching as a debugger and holding the injected thread's event; read contexts.

        The debug object belongs to the calling thread: ``resume()`` must run on this same thread. Engine threads
        may each handle their own process at the same time; one thread may patch several processes one after
        the other, but must resume one before quiescing the next. Nothing the engine does while frozen may
        create a thread in the target (remote calls run before and after, never in between). Raises
        BackendError, with the target detached and running, when the process is debugged by another process,
        access is denied, or it does not stop within ATTACH_TIMEOUT_MS.
        """
        ranges = _code_ranges(self) if with_stacks else []
        breakin_start, breakin_at = self._remote_functions(("DbgUiRemoteBreakin", "DbgBreakPoint"))
        quiesced = _Quiesced(self, breakin_start, breakin_at)
        quiesced.attach()
        try:
            quiesced.read_states(ranges if with_stacks else None)
        except BaseException:
            quiesced.abandon()
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

    def _remote_functions(self, names: Sequence[str]) -> List[int]:
        """Addresses of ntdll exports in the target: ntdll's base is the same for every process of one
        architecture in a boot session, but compute through the target's own module list to be sure."""
        local_ntdll = self.win.check(self.api.GetModuleHandleW("ntdll.dll"), "GetModuleHandleW(ntdll)")
        if self._ntdll is None:
            self._ntdll = next((m.base for m in self.modules() if m.name.lower() == "ntdll.dll"), None)
        if self._ntdll is None:
            raise BackendError(f"ntdll.dll is not loaded in pid {self.info.pid}: cannot use {', '.join(names)} there")
        result = []
        for name in names:
            local = self.win.check(
                self.api.GetProcAddress(local_ntdll, name.encode("ascii")), f"GetProcAddress({name})"
            )
            result.append(self._ntdll + (int(local) - int(local_ntdll)))
        return result

    def _remote_call(self, name: str, arg1: int, arg2: int, arg3: int) -> int:
        """Run ``name(arg1, arg2, arg3)`` on a new thread in the target; returns its BOOLEAN result."""
        (function,) = self._remote_functions((name,))
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
    """The target frozen under the debug API by ``WindowsProcess.quiesce``; ``resume`` lets it run and detaches.

    While a debug event raised by a live thread is pending (reported and not yet continued), Windows keeps every
    thread of the debuggee stopped. At attach the system injects a thread that starts at ntdll!DbgUiRemoteBreakin
    and, if it still finds a debugger, executes DbgBreakPoint. The engine holds that thread's CREATE_THREAD event,
    reported before it runs any code: detaching then (DebugActiveProcessStop, or the debug object closing when
    the engine dies) clears the process's debugger flag before waking it, so it exits without a breakpoint, and
    nothing depends on how the target would handle a breakpoint nobody answers. Only when that creation is not
    reported with this start address is the breakpoint itself held (then continued before the detach).

    Unlike SuspendThread, this survives the engine: the debug object is set to detach, not kill, when it is
    closed (DebugSetProcessKillOnExit(FALSE), set before attaching), and Windows closes it when the attaching
    thread or the engine's process ends however it ends; the pending event is dropped and every thread runs on.
    Thread and process handles that debug events carry belong to the system (closed by DebugActiveProcessStop or
    when their exit event is continued); file handles are ours to close.
    """

    def __init__(self, process: WindowsProcess, breakin_start: int, breakin_address: int) -> None:
        self.process = process
        self.pid = process.pid
        self.owner = threading.get_ident()
        self.breakin_start = breakin_start  # ntdll!DbgUiRemoteBreakin in the target
        self.breakin_address = breakin_address  # ntdll!DbgBreakPoint in the target
        self.handles: Dict[int, Any] = {}  # tid -> thread handle from its CREATE_PROCESS/CREATE_THREAD event
        self.threads: List[ThreadState] = []
        self.breakin_tid: Optional[int] = None  # the injected thread: listed, stopped in ntdll, never in patched code
        self.held: Optional[int] = None  # thread id of the event we hold (not continued) to keep the target stopped
        self.held_code = 0  # CREATE_THREAD_DEBUG_EVENT (detach without continuing) or EXCEPTION_DEBUG_EVENT
        self.attached = False
        self.pause_started_ns = time.perf_counter_ns()

    def attach(self) -> None:
        """Connect, make the connection detach on close, attach, and wait for the injected thread."""
        api, win = self.process.api, self.process.win
        status = api.DbgUiConnectToDbg()
        if status < 0:  # NTSTATUS failure
            raise win.fail("DbgUiConnectToDbg", int(api.RtlNtStatusToDosError(status)))
        # Before attaching, so that no instant exists where the engine's death would kill the target: the setting
        # lives on this thread's debug object (just made above, kept for later attaches) and applies to every
        # process it debugs from now on.
        win.check(api.DebugSetProcessKillOnExit(False), "DebugSetProcessKillOnExit(FALSE)")
        self.pause_started_ns = time.perf_counter_ns()  # Windows may hold each thread from its attach message on
        if not api.DebugActiveProcess(self.pid):
            raise self._refusal(api.get_last_error())
        self.attached = True
        try:
            self._wait_for_breakin()
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        """Resume after a failure, keeping the first error: a detach that fails too means the process is gone."""
        with contextlib.suppress(BackendError):
            self.resume()

    def _refusal(self, error: int) -> BackendError:
        present = ctypes.c_int(0)
        if self.process.api.CheckRemoteDebuggerPresent(self.process.handle, ctypes.byref(present)) and present.value:
            return BackendError(
                f"pid {self.pid} is being debugged by another process: the engine cannot stop its threads safely; "
                "detach that debugger (or wait for it to finish), then run the engine again"
            )
        return self.process.win.fail(f"DebugActiveProcess({self.pid})", error)

    def _wait_for_breakin(self) -> None:
        """Answer the attach events until the injected thread is reported (created, or at its breakpoint); keep
        that event pending."""
        api, win = self.process.api, self.process.win
        event = w.DEBUG_EVENT()
        deadline = time.monotonic() + ATTACH_TIMEOUT_MS / 1000.0
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not api.WaitForDebugEvent(ctypes.byref(event), remaining_ms):
                if remaining_ms > 0 and api.get_last_error() != w.ERROR_SEM_TIMEOUT:
                    raise win.fail(f"WaitForDebugEvent({self.pid})")
                raise BackendError(
                    f"pid {self.pid} did not stop within {ATTACH_TIMEOUT_MS} ms of attaching (the thread Windows "
                    "injects to stop it was not reported); detached, nothing changed: try again later"
                )
            code, tid = int(event.dwDebugEventCode), int(event.dwThreadId)
            status = w.DBG_CONTINUE
            if code == w.CREATE_PROCESS_DEBUG_EVENT:
                info = event.u.CreateProcessInfo
                self._close_file(info.hFile)
                self._add_thread(tid, info.hThread)
            elif code == w.CREATE_THREAD_DEBUG_EVENT:
                self._add_thread(tid, event.u.CreateThread.hThread)
                if int(event.u.CreateThread.lpStartAddress or 0) == self.breakin_start:
                    self._hold(code, tid)
                    return
            elif code == w.EXIT_THREAD_DEBUG_EVENT:
                self.handles.pop(tid, None)  # the system closes it when this event is continued
            elif code == w.LOAD_DLL_DEBUG_EVENT:
                self._close_file(event.u.LoadDll.hFile)
            elif code == w.EXIT_PROCESS_DEBUG_EVENT:
                win.check(api.ContinueDebugEvent(self.pid, tid, w.DBG_CONTINUE), "ContinueDebugEvent")
                raise BackendError(f"pid {self.pid} exited while the engine was stopping it; nothing to patch there")
            elif code == w.EXCEPTION_DEBUG_EVENT:
                record = event.u.Exception.ExceptionRecord
                if record.ExceptionCode == w.EXCEPTION_BREAKPOINT and int(record.ExceptionAddress or 0) == (
                    self.breakin_address
                ):
                    self._hold(code, tid)
                    return
                status = w.DBG_EXCEPTION_NOT_HANDLED  # the target's own exception: its handlers see it as always
            win.check(api.ContinueDebugEvent(self.pid, tid, status), f"ContinueDebugEvent({self.pid}, {tid})")

    def _hold(self, code: int, tid: int) -> None:
        self.breakin_tid = self.held = tid  # not continued: every thread stays stopped
        self.held_code = code

    def _add_thread(self, tid: int, handle: Any) -> None:
        if handle:
            self.handles[tid] = handle

    def _close_file(self, handle: Any) -> None:
        if handle:
            self.process.api.CloseHandle(handle)

    def read_states(self, ranges: Optional[List[Tuple[int, int]]]) -> None:
        """Read every thread's context; with ``ranges`` (code of the modules and our allocations), also the
        candidate return addresses on its stack."""
        # GetThreadContext needs a 16-byte aligned CONTEXT: over-allocate and place it by hand.
        raw = ctypes.create_string_buffer(ctypes.sizeof(w.CONTEXT) + 16)
        context = w.CONTEXT.from_address(_align_up(ctypes.addressof(raw), 16))
        for tid, handle in self.handles.items():
            ctypes.memset(ctypes.addressof(context), 0, ctypes.sizeof(context))
            context.ContextFlags = w.CONTEXT_CONTROL | w.CONTEXT_INTEGER
            self.process.win.check(
                self.process.api.GetThreadContext(handle, ctypes.byref(context)), f"GetThreadContext({tid})"
            )
            stack: Tuple[int, ...] = ()
            if ranges is not None:
                stack = tuple(_return_candidates(self.process, int(context.Rsp), ranges))
            self.threads.append(ThreadState(tid, int(context.Rip), int(context.Rsp), stack))

    def resume(self) -> int:
        """Detach (continuing a held breakpoint first); returns the pause in microseconds (from the attach to the
        detach). Raises BackendError when called from another thread than ``quiesce`` (nothing done then)."""
        if threading.get_ident() != self.owner:
            raise BackendError(
                f"pid {self.pid} was stopped by another engine thread: resume it from the thread that called "
                "quiesce (the debug object belongs to that thread)"
            )
        api, win = self.process.api, self.process.win
        failures = []
        # A held CREATE_THREAD is not continued: the detach releases it after clearing the debugger flag, so the
        # injected thread exits without its breakpoint (continuing first would race it to the breakpoint).
        held, self.held = self.held, None
        continue_first = self.held_code == w.EXCEPTION_DEBUG_EVENT and held is not None
        if continue_first and not api.ContinueDebugEvent(self.pid, held, w.DBG_CONTINUE):
            failures.append(win.fail(f"ContinueDebugEvent({self.pid}, {held})"))
        if self.attached:
            # Also releases any event raised since (the injected thread's exit): the threads run on.
            if not api.DebugActiveProcessStop(self.pid):
                failures.append(win.fail(f"DebugActiveProcessStop({self.pid})"))
            self.attached = False
            self.handles = {}
        pause_us = (time.perf_counter_ns() - self.pause_started_ns) // 1000
        if failures:
            raise failures[-1]
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
