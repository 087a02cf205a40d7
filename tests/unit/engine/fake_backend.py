"""A strict in-memory stand-in for a platform backend: processes with mapped memory, threads, unwind tables.

It exists because no Windows kernel runs here; it is strict so that the engine cannot pass a test by misusing it:
reads and writes outside mapped memory, writes to code while threads run, writes to RX blob pages, protect/free
of regions it did not allocate, freeing a blob whose unwind table is still registered or that a thread executes,
registering unwind tables under quiesce (deadlocks on Windows), quiescing twice, resuming a stale quiesce, and
any call on a closed handle all raise StrictViolation (an AssertionError: the test fails). Failures the platform
could really report are BackendError, injected through ``FakeProcess.fail``.

``FakeProcess.run(name)`` executes a patched function's entry the way a CPU would: the base bytes give "base", a
complete short jump + long jump into a live RX blob gives "patched", anything else is a crash.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends.base import (
    ModuleInfo,
    ProcessInfo,
    ThreadState,
)
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import BackendError, CallLeftRunning

PAGE = 0x1000
GRANULE = 0x10000


class StrictViolation(AssertionError):
    """The engine used the backend in a way a real platform would punish (crash, deadlock, corruption)."""


@dataclass
class Region:
    start: int
    data: bytearray
    prot: str
    kind: str  # "image" or "blob"

    @property
    def end(self) -> int:
        return self.start + len(self.data)


@dataclass
class FakeThread:
    tid: int
    rip: int
    rsp: int = 0x7FFE0000
    stack: tuple[int, ...] = ()


@dataclass(frozen=True)
class FakeFunction:
    """A hotpatchable function of the fake module: entry VA, base padding + entry bytes, blob offset."""

    entry: int
    padding_len: int
    base: bytes
    blob_offset: int


@dataclass
class Failures:
    """Injected platform failures (BackendError): counters count down on each matching call."""

    allocate: str | None = None
    allocate_left_running: bool = False  # the remote mmap outlives its timeout: CallLeftRunning, memory mapped
    code_write_number: int | None = None  # the Nth write to image memory fails (1-based)
    add_table: str | None = None
    delete_table: str | None = None
    protect: str | None = None
    quiesce: str | None = None


@dataclass
class FakeProcess:
    """A simulated process: the state the engine changes, shared by every handle opened on it."""

    info: ProcessInfo
    module: ModuleInfo
    functions: dict[str, FakeFunction]
    regions: list[Region] = field(default_factory=list)
    threads: list[FakeThread] = field(default_factory=list)
    tables: dict[int, tuple[int, int]] = field(default_factory=dict)  # table VA -> (count, base)
    valid_targets: list[int] = field(default_factory=list)
    refusal: str | None = None
    fail: Failures = field(default_factory=Failures)
    quiesced: bool = False
    quiesce_count: int = 0
    code_writes: int = 0
    log: list[str] = field(default_factory=list)
    # called at every quiesce (attempt number from 1) to move threads; default: threads stay where they are
    on_quiesce: Callable[[FakeProcess, int], None] | None = None

    # -- memory -------------------------------------------------------------------------------------------------

    def region_at(self, address: int, size: int) -> Region:
        for region in self.regions:
            if region.start <= address and address + size <= region.end:
                return region
        raise StrictViolation(f"access to unmapped memory 0x{address:x}+{size} in pid {self.info.pid}")

    def readable(self, address: int, size: int) -> bytes:
        """Reads may probe (ReadProcessMemory fails cleanly on unmapped pages); writes may not."""
        for region in self.regions:
            if region.start <= address and address + size <= region.end:
                return bytes(region.data[address - region.start : address - region.start + size])
        raise BackendError(f"ReadProcessMemory(0x{address:x}, {size}) failed: memory not mapped")

    def peek(self, address: int, size: int) -> bytes:
        region = self.region_at(address, size)
        return bytes(region.data[address - region.start : address - region.start + size])

    def blobs(self) -> list[Region]:
        return [r for r in self.regions if r.kind == "blob"]

    # -- execution ----------------------------------------------------------------------------------------------

    def run(self, name: str) -> str:
        """Execute the function's entry: "base", "patched", or raise StrictViolation (the process crashed)."""
        function = self.functions[name]
        entry, pad_len = function.entry, function.padding_len
        current = self.peek(entry - pad_len, len(function.base))
        if current[pad_len:] == function.base[pad_len:]:
            return "base"  # the padding is never executed, whatever it holds
        head = current[pad_len : pad_len + 2]
        if head != b"\xeb\xf9":
            raise StrictViolation(f"{name}: crashed executing {current[pad_len:].hex()} at the entry")
        jump = self.peek(entry - 5, 5)
        if jump[0] != 0xE9:
            raise StrictViolation(f"{name}: short jump lands on {jump.hex()}, not a long jump: crashed")
        target = entry + int.from_bytes(jump[1:], "little", signed=True)
        region = self.region_at(target, 1)
        if region.kind != "blob" or region.prot != "rx":
            raise StrictViolation(f"{name}: jumped to 0x{target:x}, not executable blob code: crashed")
        if target - region.start != function.blob_offset:
            raise StrictViolation(f"{name}: jumped into the middle of the blob: crashed")
        return "patched"

    def code(self) -> dict[str, str]:
        return {name: self.run(name) for name in self.functions}


class FakeQuiesced:
    """Every thread of a FakeProcess stopped; strict about being resumed exactly once."""

    def __init__(self, process: FakeProcess, with_stacks: bool) -> None:
        self.process = process
        self.threads: Sequence[ThreadState] = [
            ThreadState(t.tid, t.rip, t.rsp, t.stack if with_stacks else ()) for t in process.threads
        ]
        self.pause_started_ns = time.monotonic_ns()
        self.resumed = False

    def resume(self) -> int:
        if self.resumed or not self.process.quiesced:
            raise StrictViolation("resume of a quiesce that was already resumed")
        self.resumed = True
        self.process.quiesced = False
        self.process.log.append("resume")
        return max(1, (time.monotonic_ns() - self.pause_started_ns) // 1000)


class FakeHandle:
    """The ProcessHandle the engine gets from FakeBackend.open."""

    def __init__(self, backend: FakeBackend, process: FakeProcess) -> None:
        self.backend = backend
        self.process = process
        self.info = process.info
        self.closed = False

    def _check(self, what: str) -> FakeProcess:
        if self.closed:
            raise StrictViolation(f"{what} on a closed handle")
        if self.process.info.pid not in self.backend.procs or self.backend.procs[self.info.pid] is not self.process:
            raise BackendError(f"process {self.info.pid} has exited")
        self.process.log.append(what)
        return self.process

    def refusal(self) -> str | None:
        return self._check("refusal").refusal

    def modules(self) -> list[ModuleInfo]:
        return [self._check("modules").module]

    def read(self, address: int, size: int) -> bytes:
        return self._check("read").readable(address, size)

    def write(self, address: int, data: bytes) -> None:
        proc = self._check("write")
        region = proc.region_at(address, len(data))
        if region.kind == "image":
            if not proc.quiesced:
                raise StrictViolation(f"write to code at 0x{address:x} while threads run")
            proc.code_writes += 1
            if proc.fail.code_write_number is not None and proc.code_writes == proc.fail.code_write_number:
                raise BackendError(f"injected: write to 0x{address:x} failed")
            proc.log.append(f"write code {len(data)} 0x{address:x}")
        elif region.prot != "rw":
            raise StrictViolation(f"write to {region.prot} blob page 0x{address:x}")
        region.data[address - region.start : address - region.start + len(data)] = data

    def allocate_near(
        self, base: int, size: int, span: int = 0x7FFF0000, intent: Callable[[int], None] | None = None
    ) -> int:
        proc = self._check("allocate_near")
        if proc.fail.allocate:
            raise BackendError(proc.fail.allocate)
        rounded = -(-size // PAGE) * PAGE
        address = (proc.module.base + proc.module.size + GRANULE - 1) // GRANULE * GRANULE
        while any(r.start < address + rounded and address < r.end for r in proc.regions):
            address += GRANULE
        if not base <= address <= base + span - size:
            raise StrictViolation("allocation outside the requested window")
        if intent is not None:
            intent(address)
        proc.regions.append(Region(address, bytearray(rounded), "rw", "blob"))
        if proc.fail.allocate_left_running:  # the system call completes after the engine gave up waiting
            raise CallLeftRunning(f"process {proc.info.pid}: remote mmap still running; left to finish alone")
        return address

    def fresh_region(self, address: int, size: int) -> bool:
        self._check("fresh_region")
        rounded = -(-max(size, 1) // PAGE) * PAGE
        return any(r.kind == "blob" and r.start == address and len(r.data) == rounded for r in self.process.regions)

    def _blob(self, address: int, what: str) -> Region:
        for region in self.process.regions:
            if region.kind == "blob" and region.start == address:
                return region
        raise StrictViolation(f"{what} of 0x{address:x}, which allocate_near never returned")

    def protect(self, address: int, size: int, protection: str) -> None:
        proc = self._check("protect")
        region = self._blob(address, "protect")
        if size > len(region.data) or protection not in ("rx", "rw", "rwx"):
            raise StrictViolation(f"protect {protection} of {size} bytes at 0x{address:x}")
        if proc.fail.protect:
            raise BackendError(proc.fail.protect)
        region.prot = protection

    def free(self, address: int, size: int) -> None:
        proc = self._check("free")
        region = self._blob(address, "free")
        for table in proc.tables:
            if region.start <= table < region.end:
                raise StrictViolation(f"free of blob 0x{address:x} while its unwind table is registered")
        for thread in proc.threads:
            if region.start <= thread.rip < region.end:
                raise StrictViolation(f"free of blob 0x{address:x} while thread {thread.tid} executes it: crash")
        proc.regions.remove(region)

    def quiesce(self, with_stacks: bool = False) -> FakeQuiesced:
        proc = self._check("quiesce")
        if proc.quiesced:
            raise StrictViolation("quiesce while already quiesced")
        if proc.fail.quiesce:
            raise BackendError(proc.fail.quiesce)
        proc.quiesce_count += 1
        if proc.on_quiesce is not None:
            proc.on_quiesce(proc, proc.quiesce_count)
        proc.quiesced = True
        return FakeQuiesced(proc, with_stacks)

    def add_function_table(self, table: int, count: int, base: int) -> None:
        proc = self._check("add_function_table")
        if proc.quiesced:
            raise StrictViolation("add_function_table under quiesce: deadlocks on the loader lock on Windows")
        region = proc.region_at(table, 12 * count)
        if region.kind != "blob" or region.prot != "rx" or base != proc.module.base or table in proc.tables:
            raise StrictViolation(f"add_function_table(0x{table:x}, {count}, 0x{base:x}) is wrong")
        if proc.fail.add_table:
            raise BackendError(proc.fail.add_table)
        proc.tables[table] = (count, base)

    def delete_function_table(self, table: int) -> None:
        proc = self._check("delete_function_table")
        if proc.quiesced:
            raise StrictViolation("delete_function_table under quiesce: deadlocks on the loader lock on Windows")
        if proc.fail.delete_table:
            raise BackendError(proc.fail.delete_table)
        if table not in proc.tables:
            raise BackendError(f"RtlDeleteFunctionTable(0x{table:x}) failed: no such table")
        del proc.tables[table]

    def set_valid_call_targets(self, addresses: Sequence[int]) -> None:
        proc = self._check("set_valid_call_targets")
        for address in addresses:
            region = proc.region_at(address, 1)
            if region.kind != "blob" or region.prot != "rx":
                raise StrictViolation(f"CFG target 0x{address:x} is not in executable blob code")
        proc.valid_targets.extend(addresses)

    def flush_instruction_cache(self, address: int, size: int) -> None:
        self._check("flush").region_at(address, size)

    def close(self) -> None:
        if self.closed:
            raise StrictViolation("close of a closed handle")
        self.closed = True
        self.backend.open_handles.remove(self)


class FakeBackend:
    """Processes by PID; ``open`` hands out strict handles and remembers them so tests can check they closed."""

    name = "wine"

    def __init__(self) -> None:
        self.procs: dict[int, FakeProcess] = {}
        self.open_handles: list[FakeHandle] = []
        self.unopenable: dict[int, str] = {}
        self._pids = itertools.count(100)

    def next_pid(self) -> int:
        return next(self._pids)

    def add(self, process: FakeProcess) -> FakeProcess:
        self.procs[process.info.pid] = process
        return process

    def kill(self, pid: int) -> None:
        del self.procs[pid]

    def processes(self) -> list[ProcessInfo]:
        return [p.info for p in self.procs.values()]

    def open(self, pid: int) -> FakeHandle:
        if pid in self.unopenable:
            raise BackendError(self.unopenable[pid])
        if pid not in self.procs:
            raise BackendError(f"process {pid} is gone")
        handle = FakeHandle(self, self.procs[pid])
        self.open_handles.append(handle)
        return handle

    def engine_died(self) -> None:
        """What the OS does when the engine is killed: ptrace detaches (threads run on), handles close."""
        for proc in self.procs.values():
            proc.quiesced = False
        for handle in list(self.open_handles):
            handle.closed = True
        self.open_handles.clear()
