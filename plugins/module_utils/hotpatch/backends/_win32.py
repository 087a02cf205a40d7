"""Win32 declarations the Windows backend calls through ctypes: constants, structures, function prototypes.

Layouts per the Windows SDK headers (winnt.h, tlhelp32.h, memoryapi.h, processthreadsapi.h, minwinbase.h) for x64.
``load_api()`` binds the real DLLs; tests pass a strict fake with the same attribute names instead.
"""

from __future__ import annotations

import ctypes
from typing import Any, Dict

__all__ = ["CONTEXT", "DEBUG_EVENT", "ERROR_MESSAGES", "MEMORY_BASIC_INFORMATION", "load_api"]

# Fixed-width types: ctypes.wintypes.DWORD is c_ulong, 8 bytes on Linux, which would break the layouts
# checked by the tests that run there. WCHAR stays c_wchar (UTF-16 on Windows).
_DWORD = ctypes.c_uint32
_WORD = ctypes.c_uint16
_LONG = ctypes.c_int32

# Process and thread access rights (winnt.h).
PROCESS_CREATE_THREAD = 0x0002
PROCESS_VM_OPERATION = 0x0008
PROCESS_VM_READ = 0x0010
PROCESS_VM_WRITE = 0x0020
PROCESS_QUERY_INFORMATION = 0x0400
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
SYNCHRONIZE = 0x00100000
PATCH_ACCESS = (
    PROCESS_CREATE_THREAD
    | PROCESS_VM_OPERATION
    | PROCESS_VM_READ
    | PROCESS_VM_WRITE
    | PROCESS_QUERY_INFORMATION
    | SYNCHRONIZE
)

# Toolhelp snapshots (tlhelp32.h).
TH32CS_SNAPPROCESS = 0x2
TH32CS_SNAPMODULE = 0x8
INVALID_HANDLE_VALUE = ctypes.c_void_p(-1).value

# Memory (winnt.h).
MEM_COMMIT = 0x1000
MEM_PRIVATE = 0x20000
MEM_RESERVE = 0x2000
MEM_RELEASE = 0x8000
MEM_FREE = 0x10000
PAGE_READWRITE = 0x04
PAGE_EXECUTE_READ = 0x20
PAGE_EXECUTE_READWRITE = 0x40
PAGE_TARGETS_INVALID = 0x40000000  # with CFG: no address in the region is a valid call target until marked
PAGE_TARGETS_NO_UPDATE = 0x40000000  # same bit for VirtualProtect: keep the CFG bitmap as it is
EXECUTE_PROTECTIONS = 0x10 | 0x20 | 0x40 | 0x80
ALLOCATION_GRANULARITY = 0x10000

# Thread context (winnt.h): CONTEXT_AMD64 | CONTROL | INTEGER.
CONTEXT_CONTROL = 0x00100001
CONTEXT_INTEGER = 0x00100002

# Process information classes.
PROCESS_DYNAMIC_CODE_POLICY = 2  # PROCESS_MITIGATION_POLICY ProcessDynamicCodePolicy
PROCESS_CONTROL_FLOW_GUARD_POLICY = 7  # ProcessControlFlowGuardPolicy
PROCESS_PROTECTION_LEVEL_INFO = 7  # PROCESS_INFORMATION_CLASS ProcessProtectionLevelInfo
PROTECTION_LEVEL_NONE = 0xFFFFFFFE
IMAGE_FILE_MACHINE_UNKNOWN = 0
IMAGE_FILE_MACHINE_AMD64 = 0x8664
CFG_CALL_TARGET_VALID = 0x1

# Debug events (minwinbase.h) and how they are continued (winnt.h).
EXCEPTION_DEBUG_EVENT = 1
CREATE_THREAD_DEBUG_EVENT = 2
CREATE_PROCESS_DEBUG_EVENT = 3
EXIT_THREAD_DEBUG_EVENT = 4
EXIT_PROCESS_DEBUG_EVENT = 5
LOAD_DLL_DEBUG_EVENT = 6
UNLOAD_DLL_DEBUG_EVENT = 7
OUTPUT_DEBUG_STRING_EVENT = 8
RIP_EVENT = 9
DBG_CONTINUE = 0x00010002
DBG_EXCEPTION_NOT_HANDLED = 0x80010001
EXCEPTION_BREAKPOINT = 0x80000003

WAIT_OBJECT_0 = 0
WAIT_TIMEOUT = 0x102
STILL_ACTIVE = 259

ERROR_ACCESS_DENIED = 5
ERROR_INVALID_HANDLE = 6
ERROR_NOT_ENOUGH_MEMORY = 8
ERROR_NO_MORE_FILES = 18
ERROR_INVALID_PARAMETER = 87
ERROR_SEM_TIMEOUT = 121
ERROR_PARTIAL_COPY = 299
ERROR_INVALID_ADDRESS = 487
ERROR_PRIVILEGE_NOT_HELD = 1314
ERROR_DYNAMIC_CODE_BLOCKED = 1655

# What an operator should read for the codes a patching run meets; others fall back to FormatMessage text.
ERROR_MESSAGES: Dict[int, str] = {
    ERROR_ACCESS_DENIED: "access denied: run the engine as an Administrator with SeDebugPrivilege "
    "(processes of other sessions or services need it); protected processes cannot be patched",
    ERROR_INVALID_HANDLE: "invalid handle: the process or thread ended meanwhile",
    ERROR_NOT_ENOUGH_MEMORY: "not enough memory in the target process",
    ERROR_INVALID_PARAMETER: "invalid parameter: the process has exited or the address is not valid",
    ERROR_PARTIAL_COPY: "only part of the memory could be read or written (page not committed or process exiting)",
    ERROR_INVALID_ADDRESS: "the address range is not free or not valid in the target",
    ERROR_PRIVILEGE_NOT_HELD: "a required privilege is not held (SeDebugPrivilege)",
    ERROR_DYNAMIC_CODE_BLOCKED: "dynamic code blocked by the process mitigation policy (Arbitrary Code Guard): "
    "this process cannot be hotpatched; use the cold path",
}


class CONTEXT(ctypes.Structure):
    """x64 thread context (winnt.h CONTEXT), 1232 bytes; GetThreadContext needs it 16-byte aligned."""

    _fields_ = [
        ("P1Home", ctypes.c_uint64),
        ("P2Home", ctypes.c_uint64),
        ("P3Home", ctypes.c_uint64),
        ("P4Home", ctypes.c_uint64),
        ("P5Home", ctypes.c_uint64),
        ("P6Home", ctypes.c_uint64),
        ("ContextFlags", ctypes.c_uint32),
        ("MxCsr", ctypes.c_uint32),
        ("SegCs", ctypes.c_uint16),
        ("SegDs", ctypes.c_uint16),
        ("SegEs", ctypes.c_uint16),
        ("SegFs", ctypes.c_uint16),
        ("SegGs", ctypes.c_uint16),
        ("SegSs", ctypes.c_uint16),
        ("EFlags", ctypes.c_uint32),
        ("Dr0", ctypes.c_uint64),
        ("Dr1", ctypes.c_uint64),
        ("Dr2", ctypes.c_uint64),
        ("Dr3", ctypes.c_uint64),
        ("Dr6", ctypes.c_uint64),
        ("Dr7", ctypes.c_uint64),
        ("Rax", ctypes.c_uint64),
        ("Rcx", ctypes.c_uint64),
        ("Rdx", ctypes.c_uint64),
        ("Rbx", ctypes.c_uint64),
        ("Rsp", ctypes.c_uint64),
        ("Rbp", ctypes.c_uint64),
        ("Rsi", ctypes.c_uint64),
        ("Rdi", ctypes.c_uint64),
        ("R8", ctypes.c_uint64),
        ("R9", ctypes.c_uint64),
        ("R10", ctypes.c_uint64),
        ("R11", ctypes.c_uint64),
        ("R12", ctypes.c_uint64),
        ("R13", ctypes.c_uint64),
        ("R14", ctypes.c_uint64),
        ("R15", ctypes.c_uint64),
        ("Rip", ctypes.c_uint64),
        ("FltSave", ctypes.c_ubyte * 512),
        ("VectorRegister", ctypes.c_ubyte * (26 * 16)),
        ("VectorControl", ctypes.c_uint64),
        ("DebugControl", ctypes.c_uint64),
        ("LastBranchToRip", ctypes.c_uint64),
        ("LastBranchFromRip", ctypes.c_uint64),
        ("LastExceptionToRip", ctypes.c_uint64),
        ("LastExceptionFromRip", ctypes.c_uint64),
    ]


class PROCESSENTRY32W(ctypes.Structure):
    _fields_ = [
        ("dwSize", _DWORD),
        ("cntUsage", _DWORD),
        ("th32ProcessID", _DWORD),
        ("th32DefaultHeapID", ctypes.c_size_t),
        ("th32ModuleID", _DWORD),
        ("cntThreads", _DWORD),
        ("th32ParentProcessID", _DWORD),
        ("pcPriClassBase", _LONG),
        ("dwFlags", _DWORD),
        ("szExeFile", ctypes.c_wchar * 260),
    ]


class MODULEENTRY32W(ctypes.Structure):
    _fields_ = [
        ("dwSize", _DWORD),
        ("th32ModuleID", _DWORD),
        ("th32ProcessID", _DWORD),
        ("GlblcntUsage", _DWORD),
        ("ProccntUsage", _DWORD),
        ("modBaseAddr", ctypes.c_void_p),
        ("modBaseSize", _DWORD),
        ("hModule", ctypes.c_void_p),
        ("szModule", ctypes.c_wchar * 256),
        ("szExePath", ctypes.c_wchar * 260),
    ]


class MEMORY_BASIC_INFORMATION(ctypes.Structure):
    _fields_ = [
        ("BaseAddress", ctypes.c_void_p),
        ("AllocationBase", ctypes.c_void_p),
        ("AllocationProtect", _DWORD),
        ("PartitionId", _WORD),
        ("RegionSize", ctypes.c_size_t),
        ("State", _DWORD),
        ("Protect", _DWORD),
        ("Type", _DWORD),
    ]


class CFG_CALL_TARGET_INFO(ctypes.Structure):
    _fields_ = [("Offset", ctypes.c_size_t), ("Flags", ctypes.c_size_t)]


class FILETIME(ctypes.Structure):
    _fields_ = [("dwLowDateTime", _DWORD), ("dwHighDateTime", _DWORD)]


class EXCEPTION_RECORD(ctypes.Structure):
    _fields_ = [
        ("ExceptionCode", _DWORD),
        ("ExceptionFlags", _DWORD),
        ("ExceptionRecord", ctypes.c_void_p),
        ("ExceptionAddress", ctypes.c_void_p),
        ("NumberParameters", _DWORD),
        ("ExceptionInformation", ctypes.c_uint64 * 15),
    ]


class EXCEPTION_DEBUG_INFO(ctypes.Structure):
    _fields_ = [("ExceptionRecord", EXCEPTION_RECORD), ("dwFirstChance", _DWORD)]


class CREATE_THREAD_DEBUG_INFO(ctypes.Structure):
    _fields_ = [
        ("hThread", ctypes.c_void_p),
        ("lpThreadLocalBase", ctypes.c_void_p),
        ("lpStartAddress", ctypes.c_void_p),
    ]


class CREATE_PROCESS_DEBUG_INFO(ctypes.Structure):
    _fields_ = [
        ("hFile", ctypes.c_void_p),
        ("hProcess", ctypes.c_void_p),
        ("hThread", ctypes.c_void_p),
        ("lpBaseOfImage", ctypes.c_void_p),
        ("dwDebugInfoFileOffset", _DWORD),
        ("nDebugInfoSize", _DWORD),
        ("lpThreadLocalBase", ctypes.c_void_p),
        ("lpStartAddress", ctypes.c_void_p),
        ("lpImageName", ctypes.c_void_p),
        ("fUnicode", _WORD),
    ]


class LOAD_DLL_DEBUG_INFO(ctypes.Structure):
    _fields_ = [
        ("hFile", ctypes.c_void_p),
        ("lpBaseOfDll", ctypes.c_void_p),
        ("dwDebugInfoFileOffset", _DWORD),
        ("nDebugInfoSize", _DWORD),
        ("lpImageName", ctypes.c_void_p),
        ("fUnicode", _WORD),
    ]


class _DEBUG_EVENT_INFO(ctypes.Union):
    # The members the backend reads; the others (exit codes, debug strings, RIP info) are smaller than these.
    _fields_ = [
        ("Exception", EXCEPTION_DEBUG_INFO),
        ("CreateThread", CREATE_THREAD_DEBUG_INFO),
        ("CreateProcessInfo", CREATE_PROCESS_DEBUG_INFO),
        ("LoadDll", LOAD_DLL_DEBUG_INFO),
    ]


class DEBUG_EVENT(ctypes.Structure):
    """minwinbase.h DEBUG_EVENT for x64, 176 bytes: what WaitForDebugEvent fills in."""

    _fields_ = [("dwDebugEventCode", _DWORD), ("dwProcessId", _DWORD), ("dwThreadId", _DWORD), ("u", _DEBUG_EVENT_INFO)]


# A wrong layout would make GetThreadContext/VirtualQueryEx/WaitForDebugEvent write past our buffers: fail at import.
if ctypes.sizeof(CONTEXT) != 1232 or ctypes.sizeof(MEMORY_BASIC_INFORMATION) != 48 or ctypes.sizeof(DEBUG_EVENT) != 176:
    raise ImportError("CONTEXT / MEMORY_BASIC_INFORMATION / DEBUG_EVENT layouts do not match the SDK headers for x64")

_H = ctypes.c_void_p
_P = ctypes.c_void_p
_B = ctypes.c_int
_D = _DWORD
_S = ctypes.c_size_t

# name -> (dll, restype, argtypes)
PROTOTYPES: Dict[str, Any] = {
    "OpenProcess": ("kernel32", _H, [_D, _B, _D]),
    "CloseHandle": ("kernel32", _B, [_H]),
    "CreateToolhelp32Snapshot": ("kernel32", _H, [_D, _D]),
    "Process32FirstW": ("kernel32", _B, [_H, _P]),
    "Process32NextW": ("kernel32", _B, [_H, _P]),
    "Module32FirstW": ("kernel32", _B, [_H, _P]),
    "Module32NextW": ("kernel32", _B, [_H, _P]),
    "GetProcessTimes": ("kernel32", _B, [_H, _P, _P, _P, _P]),
    "IsWow64Process2": ("kernel32", _B, [_H, _P, _P]),
    "GetProcessMitigationPolicy": ("kernel32", _B, [_H, ctypes.c_int, _P, _S]),
    "GetProcessInformation": ("kernel32", _B, [_H, ctypes.c_int, _P, _D]),
    "VirtualQueryEx": ("kernel32", _S, [_H, _P, _P, _S]),
    "VirtualAllocEx": ("kernel32", _P, [_H, _P, _S, _D, _D]),
    "VirtualProtectEx": ("kernel32", _B, [_H, _P, _S, _D, _P]),
    "VirtualFreeEx": ("kernel32", _B, [_H, _P, _S, _D]),
    "ReadProcessMemory": ("kernel32", _B, [_H, _P, _P, _S, _P]),
    "WriteProcessMemory": ("kernel32", _B, [_H, _P, _P, _S, _P]),
    "GetThreadContext": ("kernel32", _B, [_H, _P]),
    "DbgUiConnectToDbg": ("ntdll", ctypes.c_int32, []),  # NTSTATUS; gives the calling thread its debug object
    "RtlNtStatusToDosError": ("ntdll", _D, [ctypes.c_int32]),
    "DebugSetProcessKillOnExit": ("kernel32", _B, [_B]),
    "DebugActiveProcess": ("kernel32", _B, [_D]),
    "DebugActiveProcessStop": ("kernel32", _B, [_D]),
    "WaitForDebugEvent": ("kernel32", _B, [_P, _D]),
    "ContinueDebugEvent": ("kernel32", _B, [_D, _D, _D]),
    "CheckRemoteDebuggerPresent": ("kernel32", _B, [_H, _P]),
    "FlushInstructionCache": ("kernel32", _B, [_H, _P, _S]),
    "CreateRemoteThread": ("kernel32", _H, [_H, _P, _S, _P, _P, _D, _P]),
    "WaitForSingleObject": ("kernel32", _D, [_H, _D]),
    "GetExitCodeThread": ("kernel32", _B, [_H, _P]),
    "GetModuleHandleW": ("kernel32", _H, [ctypes.c_wchar_p]),
    "GetProcAddress": ("kernel32", _P, [_H, ctypes.c_char_p]),
    "SetProcessValidCallTargets": ("kernelbase", _B, [_H, _P, _S, _DWORD, _P]),
}


class Win32Api:
    """The real functions, bound with their prototypes; ``get_last_error`` reads the thread's last error."""

    def __init__(self) -> None:
        dlls = {name: ctypes.WinDLL(name, use_last_error=True) for name in ("kernel32", "kernelbase", "ntdll")}  # type: ignore[attr-defined]
        for name, (dll, restype, argtypes) in PROTOTYPES.items():
            function = getattr(dlls[dll], name)
            function.restype = restype
            function.argtypes = argtypes
            setattr(self, name, function)

    def __getattr__(self, name: str) -> Any:  # for mypy: functions are set in __init__
        raise AttributeError(name)

    @staticmethod
    def get_last_error() -> int:
        return int(ctypes.get_last_error())  # type: ignore[attr-defined]

    @staticmethod
    def format_error(code: int) -> str:
        return str(ctypes.FormatError(code)).strip()  # type: ignore[attr-defined]


def load_api() -> Win32Api:
    """Bind kernel32/kernelbase; raises OSError off Windows."""
    return Win32Api()
