"""The Wine backend against real Windows programs under Wine: quiesce, memory, allocation, remote calls, errors.

The target is built here from source with mingw-w64: ``hp.dll`` exports ``compute`` (hotpatchable entry:
ms_hook_prologue, 32 bytes of CC padding before an 8-byte first instruction) and ``guarded``; the exe runs N
threads calling ``compute`` in a loop and counting each result as old (2x+1), new (3x+7) or bad, and answers a
line protocol on stdin/stdout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends import _ptrace, _stop
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends._stop import StoppedTask
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends.wine import (
    WineBackend,
    WineProcess,
    WineQuiesced,
)
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import BackendError, CallLeftRunning
from tests.fixtures.wine import ensure_wineserver, wine_prefix
from tests.support.procmem import sample
from tests.support.wine_crashes import exit_problem, winedbg_processes

pytestmark = [pytest.mark.wine]

REPO = Path(__file__).resolve().parents[2]
WINE64 = Path("/usr/lib/wine/wine64")
PREFIX = REPO / ".cache" / "wineprefix-wine-backend"
EXE_NAME = "hotpatch_busy_target.exe"  # longer than the 15 characters of /proc/PID/comm

DLL_SOURCE = r"""
#define HOTPATCH __attribute__((ms_hook_prologue, noipa))
__declspec(dllexport) HOTPATCH long long compute(long long x) { return x * 2 + 1; }
__declspec(dllexport) HOTPATCH long long guarded(long long x) { return x; }
"""

EXE_SOURCE = r"""
#include <windows.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
typedef long long (*fn_t)(long long);
static fn_t compute, guarded;
struct alignas(64) Counts { volatile LONG64 calls, old_, new_, bad; };
extern "C" __declspec(dllexport) Counts counts[128];
Counts counts[128];
static int nthreads;
static volatile LONG64 churned;
static DWORD WINAPI brief(LPVOID p) { return 0; }
static DWORD WINAPI churner(LPVOID p) {
    for (;;) {
        HANDLE t = CreateThread(NULL, 0, brief, NULL, 0, NULL);
        WaitForSingleObject(t, INFINITE);
        CloseHandle(t);
        InterlockedIncrement64(&churned);
    }
    return 0;
}
extern "C" __declspec(dllexport) __attribute__((noinline)) long long thrower(long long x) {
    throw (int)(x + 1000);
}
static DWORD WINAPI worker(LPVOID p) {
    Counts *c = &counts[(INT_PTR)p];
    for (;;) {
        long long x = c->calls & 0xffff;
        long long r = compute(x);
        if (r == x * 2 + 1) c->old_ = c->old_ + 1;
        else if (r == x * 3 + 7) c->new_ = c->new_ + 1;
        else c->bad = c->bad + 1;
        c->calls = c->calls + 1;
    }
    return 0;
}
int main(int argc, char **argv) {
    HMODULE h = LoadLibraryA("hp.dll");
    compute = (fn_t)GetProcAddress(h, "compute");
    guarded = (fn_t)GetProcAddress(h, "guarded");
    nthreads = argc > 1 ? atoi(argv[1]) : 4;
    for (int i = 0; i < nthreads; i++) CreateThread(NULL, 0, worker, (LPVOID)(INT_PTR)i, 0, NULL);
    printf("ready %p\n", (void *)thrower);
    fflush(stdout);
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "stats", 5)) {
            long long calls = 0, o = 0, n = 0, b = 0;
            for (int i = 0; i < nthreads; i++) {
                calls += counts[i].calls; o += counts[i].old_; n += counts[i].new_; b += counts[i].bad;
            }
            printf("%lld %lld %lld %lld\n", calls, o, n, b);
        } else if (!strncmp(line, "call ", 5)) {
            printf("%lld\n", compute(atoll(line + 5)));
        } else if (!strncmp(line, "guard ", 6)) {
            try { printf("returned %lld\n", guarded(atoll(line + 6))); }
            catch (int e) { printf("caught %d\n", e); }
        } else if (!strncmp(line, "lookup ", 7)) {
            DWORD64 base = 0;
            PRUNTIME_FUNCTION f = RtlLookupFunctionEntry(strtoull(line + 7, NULL, 16), &base, NULL);
            if (f) printf("%llx %lx %lx\n", (unsigned long long)base, f->BeginAddress, f->EndAddress);
            else printf("none\n");
        } else if (!strncmp(line, "churn", 5)) {
            if (line[5] == 'e') printf("%lld\n", (long long)churned);
            else { CreateThread(NULL, 0, churner, NULL, 0, NULL); printf("churning\n"); }
        } else if (!strncmp(line, "quit", 4)) {
            break;
        }
        fflush(stdout);
    }
    return 0;
}
"""

# Replacement for compute: lea rax, [rcx + rcx*2]; add rax, 7; ret  -> 3x + 7
NEW_COMPUTE = bytes.fromhex("488d0449 4883c007 c3")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None or not WINE64.exists():
        pytest.skip(f"{name} or {WINE64} missing: install gcc-mingw-w64-x86-64, g++-mingw-w64-x86-64, wine64")
    return path


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wine-backend")
    (out / "hp.c").write_text(DLL_SOURCE)
    (out / "target.cpp").write_text(EXE_SOURCE)
    gcc, gxx = _tool("x86_64-w64-mingw32-gcc"), _tool("x86_64-w64-mingw32-g++")
    subprocess.run([gcc, "-O2", "-shared", "-o", str(out / "hp.dll"), str(out / "hp.c")], check=True)
    subprocess.run(
        [gxx, "-O2", "-static", "-o", str(out / EXE_NAME), str(out / "target.cpp")],
        check=True,
    )
    return out


@pytest.fixture(scope="module")
def prefix() -> Path:
    return wine_prefix(PREFIX)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env.update({"WINEPREFIX": str(PREFIX), "WINEDEBUG": "-all", "WINEDLLOVERRIDES": "mscoree,mshtml="})
    return env


class Target:
    """One running target process speaking the line protocol; its stderr is kept to judge how it ends."""

    def __init__(self, build: Path, threads: int) -> None:
        ensure_wineserver(PREFIX)  # a server started by the target itself would hold its stderr pipe open
        self.proc = subprocess.Popen(
            [str(WINE64), str(build / EXE_NAME), str(threads)],
            cwd=build,
            env=_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.killed = False
        self.stderr: deque[str] = deque(maxlen=200)
        assert self.proc.stderr is not None
        self._stderr_reader = threading.Thread(target=self.stderr.extend, args=(self.proc.stderr,), daemon=True)
        self._stderr_reader.start()
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().split()
        if not (ready and ready[0] == "ready"):
            code = self._wait_briefly()
            self.kill()
            pytest.fail(f"target did not start: {ready} (exit {code}); stderr: {self.stderr_text()}", pytrace=False)
        self.thrower = int(ready[1], 16)
        self.pid = self.proc.pid

    def stderr_text(self) -> str:
        self._stderr_reader.join(timeout=2.0)  # a crash's lines come just before the exit; winedbg may hold the pipe
        return "".join(self.stderr)

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer:
            code = self._wait_briefly()
            pytest.fail(f"target died answering {line!r} (exit {code}); stderr: {self.stderr_text()}", pytrace=False)
        return answer

    def _wait_briefly(self) -> int | None:
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def stats(self) -> tuple[int, int, int, int]:
        calls, old, new, bad = (int(v) for v in self.ask("stats").split())
        return calls, old, new, bad

    def wait_calls(self, more_than: int) -> tuple[int, int, int, int]:
        """Ask until the workers made more than ``more_than`` calls (they run freely; no sleep needed)."""
        while True:
            stats = self.stats()
            if stats[0] > more_than:
                return stats

    def tracers(self) -> set[int]:
        found: set[int] = set()
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/status") as handle:
                    found.update(int(line.split()[1]) for line in handle if line.startswith("TracerPid:"))
            except FileNotFoundError:  # a brief thread of the churner ended since the listing: it has no tracer
                continue
        return found

    def stop(self) -> None:
        """Send ``quit`` and fail the owning test unless the target ends cleanly (see :meth:`end`)."""
        problem = self.end()
        if problem is not None:
            pytest.fail(problem, pytrace=False)

    def end(self) -> str | None:
        """Send ``quit`` (unless it exited or was killed) and say why its end was not clean: a crash on stderr,
        an exit code other than 0, SIGKILL when the test did not kill it, or still running 20 s after ``quit``
        (then it is killed). None when clean. The reason carries the stderr tail (winedbg's backtrace)."""
        if self.proc.poll() is None and not self.killed:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=20)
            except OSError:
                pass  # its stdin is closed: it is on its way out, judged by its exit below
            except subprocess.TimeoutExpired:
                self.kill()
                return f"target still ran 20 s after quit: killed; stderr: {self.stderr_text()}"
        return exit_problem(EXE_NAME, self.proc.wait(timeout=20), 0, self.killed, self.stderr_text())

    def kill(self) -> None:
        """SIGKILL the target on purpose: :meth:`stop` then accepts that end."""
        self.killed = True
        self.proc.kill()
        self.proc.wait(timeout=20)


@pytest.fixture
def target(build: Path, prefix: Path) -> Iterator[Target]:
    t = Target(build, 4)
    yield t
    t.stop()


@pytest.fixture
def handle(target: Target) -> Iterator[WineProcess]:
    h = WineBackend().open(target.pid)
    yield h
    h.close()
    assert target.tracers() == {0}, "a task was left attached"


def _module(handle: WineProcess, name: str) -> tuple[int, int]:
    module = next(m for m in handle.modules() if m.name.lower() == name)
    return module.base, module.size


# -- discovery --------------------------------------------------------------------------------------------------


def test_processes_lists_the_wine_process_by_full_exe_name_with_stable_identity(target: Target) -> None:
    backend = WineBackend()
    mine = [p for p in backend.processes() if p.pid == target.pid]
    assert len(mine) == 1
    assert mine[0].name == EXE_NAME
    assert mine[0].windows_pid is None
    again = backend.open(target.pid)
    try:
        assert again.info.start_time == mine[0].start_time
        assert again.refusal() is None
    finally:
        again.close()


def test_modules_have_the_header_page_as_base_and_size_of_image(handle: WineProcess) -> None:
    modules = {m.name.lower(): m for m in handle.modules()}
    assert {"ntdll.dll", "kernel32.dll", "hp.dll", EXE_NAME} <= set(modules)
    hp = modules["hp.dll"]
    assert handle.read(hp.base, 2) == b"MZ"
    e_lfanew = struct.unpack("<I", handle.read(hp.base + 0x3C, 4))[0]
    assert struct.unpack("<I", handle.read(hp.base + e_lfanew + 24 + 56, 4))[0] == hp.size
    assert hp.path.endswith("/hp.dll")


def test_a_module_replaced_on_disk_keeps_its_name(build: Path, prefix: Path, tmp_path: Path) -> None:
    for name in ("hp.dll", EXE_NAME):
        shutil.copy(build / name, tmp_path / name)
    t = Target(tmp_path, 1)
    try:
        (tmp_path / "hp.new").write_bytes((tmp_path / "hp.dll").read_bytes())
        os.replace(tmp_path / "hp.new", tmp_path / "hp.dll")  # the cold path's way: a new file under the old name
        with WineBackend().open(t.pid) as handle:
            hp = next(m for m in handle.modules() if m.name == "hp.dll")
            assert hp.path == str(tmp_path / "hp.dll")
            assert handle.read(hp.base, 2) == b"MZ"
    finally:
        t.stop()


def test_a_process_whose_exe_is_not_x64_is_refused_with_the_reason(target: Target, handle: WineProcess) -> None:
    exe_base, _unused = _module(handle, EXE_NAME.lower())
    machine_at = exe_base + struct.unpack("<I", handle.read(exe_base + 0x3C, 4))[0] + 4
    original = handle.read(machine_at, 2)
    handle.write(machine_at, struct.pack("<H", 0x014C))  # what a WOW64 (i386) exe's header says
    try:
        reason = handle.refusal()
    finally:
        handle.write(machine_at, original)
    assert reason is not None and "0x014c" in reason and "WOW64" in reason
    assert handle.refusal() is None


def test_read_of_unmapped_memory_is_a_backend_error(handle: WineProcess) -> None:
    with pytest.raises(BackendError, match="unmapped"):
        handle.read(0x10, 8)


# -- quiesce ----------------------------------------------------------------------------------------------------


def test_busy_process_survives_thousands_of_quiesce_and_resume(target: Target, handle: WineProcess) -> None:
    before = target.wait_calls(0)
    threads = 0
    for _unused in range(2000):
        quiesced = handle.quiesce()
        threads = len(quiesced.threads)
        assert quiesced.resume() >= 0
    assert threads >= 5  # main thread + 4 workers
    after = target.wait_calls(before[0])
    assert after[0] > before[0] and after[3] == 0


def test_the_engine_thread_runs_real_time_only_while_the_process_is_paused(target: Target, handle: WineProcess) -> None:
    before = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
    quiesced = handle.quiesce()
    try:
        assert os.sched_getscheduler(0) == os.SCHED_FIFO  # shortens the pause on loaded CPUs (bench_quiesce)
    finally:
        quiesced.resume()
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == before
    _ptrace.seize(target.pid)  # a failed quiesce restores it too
    try:
        with pytest.raises(BackendError):
            handle.quiesce()
    finally:
        _ptrace.interrupt(target.pid)
        _ptrace.wait_stop(target.pid, 2**62)
        _ptrace.detach(target.pid)
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == before


def test_threads_starting_and_exiting_during_quiesce_are_stopped_or_skipped(
    target: Target, handle: WineProcess
) -> None:
    assert target.ask("churn") == "churning"
    counts = set()
    for _unused in range(300):
        quiesced = handle.quiesce(with_stacks=True)
        counts.add(len(quiesced.threads))
        quiesced.resume()
    first = int(target.ask("churned"))
    while int(target.ask("churned")) == first:  # the churner thread still creates and joins threads
        os.sched_yield()
    assert max(counts) >= 6  # main, 4 workers, the churner: plus a brief thread now and then
    assert target.tracers() == {0}
    assert target.stats()[3] == 0


def test_quiesce_stops_every_thread_until_resume(target: Target, handle: WineProcess) -> None:
    counter = handle._export(EXE_NAME, "counts")  # counts[0].calls, bumped by the first worker on every call
    target.wait_calls(0)
    quiesced = handle.quiesce()
    try:
        assert {int(t) for t in os.listdir(f"/proc/{target.pid}/task")} == {t.tid for t in quiesced.threads}
        assert all(_state(target.pid, t.tid) == "t" for t in quiesced.threads)
        first = handle.read(counter, 8)
        assert all(handle.read(counter, 8) == first for _unused in range(1000))
    finally:
        quiesced.resume()
    while handle.read(counter, 8) == first:
        os.sched_yield()


def _state(pid: int, tid: int) -> str:
    with open(f"/proc/{pid}/task/{tid}/stat") as handle:
        text = handle.read()
    return text[text.rindex(")") + 2]


def test_stacks_hold_return_addresses_including_windows_side_of_blocked_threads(
    target: Target, handle: WineProcess
) -> None:
    exe_base, exe_size = _module(handle, EXE_NAME.lower())
    # The premises: every worker runs its loop (on a loaded machine one may not have run yet: a thread caught at
    # its birth has no return address on its stack), and the main thread sleeps in fgets (or is on its way).
    counts = handle._export(EXE_NAME, "counts")
    for worker in range(4):
        while handle.read(counts + 64 * worker, 8) == bytes(8):  # Counts is 64 bytes, calls comes first
            os.sched_yield()
    for _attempt in range(1_000_000):
        if _state(target.pid, target.pid) == "S":
            break
        os.sched_yield()
    quiesced = handle.quiesce(with_stacks=True)
    try:
        threads = list(quiesced.threads)
    finally:
        quiesced.resume()
    # The main thread blocks in fgets -> ReadFile -> Wine's Unix side: its rsp is on Wine's Unix stack, yet its
    # return address into main() (on the Windows stack) must be found through the syscall frame.
    main = next(t for t in threads if t.tid == target.pid)
    assert not exe_base <= main.rip < exe_base + exe_size
    assert any(exe_base <= a < exe_base + exe_size for a in main.stack)
    # Every thread's stack yields return addresses (this target is the test's own: no churner runs).
    assert all(t.stack for t in threads), [(t.tid, len(t.stack)) for t in threads]


def test_group_stopped_process_stays_stopped_after_quiesce(target: Target, handle: WineProcess) -> None:
    os.kill(target.pid, 19)  # SIGSTOP
    try:
        while _state(target.pid, target.pid) != "T":
            os.sched_yield()
        for _unused in range(50):
            handle.quiesce().resume()
            _wait_state(target.pid, True)  # detached tasks pass through "R" on their way back into the group-stop
    finally:
        os.kill(target.pid, 18)  # SIGCONT
    before = target.stats()
    assert target.wait_calls(before[0])[3] == 0


def _wait_state(pid: int, stopped: bool) -> None:
    """Wait (bounded) until the main thread is in group-stop ("T") or out of it."""
    for _unused in range(1_000_000):
        if (_state(pid, pid) == "T") == stopped:
            return
        os.sched_yield()
    raise AssertionError(f"process {pid} never {'stopped' if stopped else 'continued'}")


def test_a_stop_signal_sent_as_we_quiesce_is_delivered_not_swallowed(target: Target, handle: WineProcess) -> None:
    for _unused in range(20):
        _ptrace.tgkill(target.pid, target.pid, signal.SIGSTOP)
        handle.quiesce().resume()
        _wait_state(target.pid, True)
        os.kill(target.pid, signal.SIGCONT)
        _wait_state(target.pid, False)
    assert target.stats()[3] == 0


def _quiesce_for_call(handle: WineProcess) -> tuple[WineQuiesced, StoppedTask]:
    """A quiesce with a thread the backend may borrow for a call, and that thread; the caller resumes. The backend
    refuses threads caught mid-system-call outside a wait or inside Wine's code and asks callers to retry (a loaded
    machine catches the main thread writing its reply): quiesce again until one qualifies."""
    refusal = ""
    for _attempt in range(1000):
        quiesced = handle.quiesce()
        try:
            return quiesced, handle._pick_task(quiesced.stopped, for_call=True)
        except BackendError as exc:
            refusal = str(exc)
            quiesced.resume()
        os.sched_yield()
    raise AssertionError(f"no thread could be borrowed in 1000 quiesces: {refusal}")


def test_a_signal_arriving_during_a_remote_call_is_delivered_after_resume(target: Target, handle: WineProcess) -> None:
    base, _unused = _module(handle, "hp.dll")
    blob, _code, table = _unwind_blob(handle, base, target.thrower)
    quiesced, task = _quiesce_for_call(handle)
    try:
        _ptrace.tgkill(target.pid, task.tid, signal.SIGSTOP)  # pending until the thread runs our call
        handle.add_function_table(table, 1, base)
    finally:
        quiesced.resume()
    _wait_state(target.pid, True)
    os.kill(target.pid, signal.SIGCONT)
    _wait_state(target.pid, False)
    handle.delete_function_table(table)
    handle.free(blob, 0x1000)
    assert target.stats()[3] == 0


# -- allocation and patching -------------------------------------------------------------------------------------


def test_allocate_near_maps_rw_memory_above_the_module_within_2gb(target: Target, handle: WineProcess) -> None:
    base, size = _module(handle, "hp.dll")
    address = handle.allocate_near(base, 100)
    assert base + size <= address < base + 0x7FFF0000 and address % 0x10000 == 0
    handle.write(address, b"hello")
    assert handle.read(address, 5) == b"hello"
    handle.protect(address, 100, "rx")
    assert _perms(target.pid, address) == "r-xp"
    handle.free(address, 100)
    assert _perms(target.pid, address) is None
    assert handle.allocations == []


def _perms(pid: int, address: int) -> str | None:
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
            if lo <= address < hi:
                return line.split()[1]
    return None


def test_jump_through_padding_switches_results_and_busy_threads_see_only_old_or_new(
    target: Target, handle: WineProcess
) -> None:
    entry = handle._export("hp.dll", "compute")
    base, _unused = _module(handle, "hp.dll")
    original = handle.read(entry - 5, 7)
    assert original == b"\xcc" * 5 + b"\x48\x8d"  # padding, then the 8-byte `lea rsp, [rsp]`
    blob = handle.allocate_near(base, len(NEW_COMPUTE))
    handle.write(blob, NEW_COMPUTE)
    handle.protect(blob, len(NEW_COMPUTE), "rx")
    long_jump = b"\xe9" + struct.pack("<i", blob - entry)  # at entry - 5: jmp rel32 to the blob
    short_jump = b"\xeb\xf9"  # at entry: jmp entry - 5
    assert target.ask("call 5") == "11"
    for _round in range(100):
        quiesced = handle.quiesce()
        assert not any(entry < t.rip < entry + 2 for t in quiesced.threads)
        handle.write(entry - 5, long_jump)
        handle.write(entry, short_jump)
        quiesced.resume()
        assert target.ask("call 5") == "22"
        quiesced = handle.quiesce()
        handle.write(entry, original[5:])
        quiesced.resume()
        assert target.ask("call 5") == "11"
    # A worker the last quiesce stopped on the long jump (about 1 run in 4) still has to execute it: clearing the
    # padding before it has (a loaded machine may not run it for a while) would make it execute int3 (0x80000003),
    # and freeing the blob under a worker still in it would fault. So both wait for a quiesce that finds none there.
    _write_when_clear(handle, entry - 5, original[:5], [(entry - 5, entry), (blob, blob + len(NEW_COMPUTE))])
    _calls, old, new, bad = target.wait_calls(0)
    assert bad == 0 and old > 0 and new > 0
    handle.free(blob, len(NEW_COMPUTE))


def _write_when_clear(handle: WineProcess, address: int, data: bytes, ranges: list[tuple[int, int]]) -> None:
    """Write ``data`` at ``address`` under a quiesce in which no thread's instruction pointer lies in any of the
    ``ranges`` ([start, end) addresses); quiesce again until one does (a stopped thread there moves on once resumed)."""
    for _attempt in range(10_000):
        quiesced = handle.quiesce()
        try:
            if not any(start <= t.rip < end for t in quiesced.threads for start, end in ranges):
                handle.write(address, data)
                return
        finally:
            quiesced.resume()
        os.sched_yield()
    raise AssertionError(f"a thread stayed in {[(hex(a), hex(b)) for a, b in ranges]} through 10000 quiesces")


def test_no_free_gap_is_a_backend_error_that_allocates_nothing(target: Target, handle: WineProcess) -> None:
    base, size = _module(handle, "hp.dll")
    with open(f"/proc/{target.pid}/maps") as maps:
        before = maps.read()
    with pytest.raises(BackendError, match="no free"):
        handle.allocate_near(base, 0x1000, span=size)
    with open(f"/proc/{target.pid}/maps") as maps:
        assert maps.read() == before
    assert handle.allocations == []


def test_free_refuses_memory_that_is_not_anonymous(handle: WineProcess) -> None:
    base, _unused = _module(handle, "hp.dll")
    with pytest.raises(BackendError, match="nothing was freed"):
        handle.free(base, 0x1000)
    assert handle.read(base, 2) == b"MZ"


# -- remote calls and unwind information ----------------------------------------------------------------------


def _unwind_blob(handle: WineProcess, base: int, thrower: int) -> tuple[int, int, int]:
    """A blob with one function calling ``thrower`` (through a pointer in the blob) and its unwind info:
    sub rsp, 0x28; call [rip + ptr]; add rsp, 0x28; ret. Returns (blob, code address, table address)."""
    blob = handle.allocate_near(base, 0x1000)
    code = bytes.fromhex("4883ec28") + b"\xff\x15" + struct.pack("<i", 0x40 - 10) + bytes.fromhex("4883c428 c3")
    unwind = bytes([0x01, 0x04, 0x01, 0x00, 0x04, 0x42, 0x00, 0x00])  # v1, prolog 4, UWOP_ALLOC_SMALL 0x28
    page = bytearray(0x100)
    page[0 : len(code)] = code
    page[0x40:0x48] = struct.pack("<Q", thrower)
    page[0x80:0x88] = unwind
    page[0xC0:0xCC] = struct.pack("<III", blob - base, blob - base + len(code), blob - base + 0x80)
    handle.write(blob, bytes(page))
    handle.protect(blob, 0x1000, "rx")
    return blob, blob, blob + 0xC0


def _redirect(handle: WineProcess, entry: int, to: int) -> bytes:
    original = handle.read(entry - 5, 7)
    quiesced = handle.quiesce()
    try:
        handle.write(entry - 5, b"\xe9" + struct.pack("<i", to - entry))
        handle.write(entry, b"\xeb\xf9")
    finally:
        quiesced.resume()
    return original


def test_exception_through_blob_code_is_caught_once_its_function_table_is_registered(
    target: Target, handle: WineProcess
) -> None:
    base, _unused = _module(handle, "hp.dll")
    blob, code, table = _unwind_blob(handle, base, target.thrower)
    assert target.ask(f"lookup {code + 4:x}") == "none"
    quiesced = handle.quiesce()
    try:
        handle.add_function_table(table, 1, base)
    finally:
        quiesced.resume()
    assert target.ask(f"lookup {code + 4:x}") == f"{base:x} {blob - base:x} {blob - base + 15:x}"
    assert target.ask("guard 7") == "returned 7"
    original = _redirect(handle, handle._export("hp.dll", "guarded"), code)
    for _unused in range(50):
        assert target.ask("guard 7") == "caught 1007"
    quiesced = handle.quiesce()
    handle.write(handle._export("hp.dll", "guarded") - 5, original)
    quiesced.resume()
    assert target.ask("guard 7") == "returned 7"
    handle.delete_function_table(table)  # not quiesced: the backend stops the process briefly itself
    assert target.ask(f"lookup {code + 4:x}") == "none"
    with pytest.raises(BackendError, match="no such table"):
        handle.delete_function_table(table)
    handle.free(blob, 0x1000)
    assert target.stats()[3] == 0


def test_remote_calls_on_every_kind_of_thread_leave_its_registers_as_they_were(
    target: Target, handle: WineProcess
) -> None:
    base, _unused = _module(handle, "hp.dll")
    blob, _code, table = _unwind_blob(handle, base, target.thrower)
    add = handle._export("ntdll.dll", "RtlAddFunctionTable")
    delete = handle._export("ntdll.dll", "RtlDeleteFunctionTable")
    nt_yield = handle._export("ntdll.dll", "NtYieldExecution")  # an NT system call: nested inside a blocked one
    before = target.wait_calls(0)
    kinds = set()
    for _round in range(20):
        quiesced = handle.quiesce()
        try:
            for task in quiesced.stopped.tasks.values():
                if task.in_syscall and handle._unix_side(task) is None:
                    continue  # never picked for a call (see _pick_task)
                kinds.add("blocked in an NT system call" if task.in_syscall else "running its own code")
                regs = bytes(_ptrace.get_regs(task.tid))
                assert handle._call_on(quiesced.stopped, task, add, (table, 1, base)) & 0xFF
                assert handle._call_on(quiesced.stopped, task, delete, (table,)) & 0xFF
                assert handle._call_on(quiesced.stopped, task, nt_yield, ()) & 0xFFFFFFFF in (0, 0x40000024)
                assert bytes(_ptrace.get_regs(task.tid)) == regs
        finally:
            quiesced.resume()
    assert kinds == {"blocked in an NT system call", "running its own code"}
    assert target.ask("call 5") == "11"  # the main thread, blocked in ReadFile during every call, still answers
    after = target.wait_calls(before[0])
    assert after[3] == 0 and after[0] > before[0]
    handle.free(blob, 0x1000)


def test_remote_call_that_never_returns_times_out_and_the_process_keeps_running(
    target: Target, handle: WineProcess
) -> None:
    sleep = handle._export("kernel32.dll", "Sleep")
    quiesced, task = _quiesce_for_call(handle)
    try:
        with pytest.raises(BackendError, match="timed out"):
            handle._call_on(quiesced.stopped, task, sleep, (0xFFFFFFFF,), 200_000_000)
    finally:
        quiesced.resume()
    before = target.stats()
    after = target.wait_calls(before[0])
    assert after[3] == 0
    assert target.ask("call 5") == "11"


def test_a_slow_remote_call_outside_a_quiesce_is_never_aborted_the_others_run_until_it_returns(
    target: Target, handle: WineProcess
) -> None:
    """Outside a quiesce a call still running at its timeout is not cut short (half-run Windows code can leave a
    lock taken for good): the other threads run meanwhile, and a call that returns within SLOW_FACTOR timeouts
    more returns normally."""
    sleep = handle._export("kernel32.dll", "Sleep")
    before = target.stats()
    assert handle._call(sleep, (600,), 200_000_000) == 0
    assert target.wait_calls(before[0])[3] == 0
    assert target.ask("call 5") == "11"
    assert target.tracers() == {0}


def test_a_remote_call_that_outlasts_its_grace_is_left_to_finish_and_its_thread_comes_back(
    target: Target, handle: WineProcess
) -> None:
    """Past the grace the thread is let go mid-call: it finishes the call, its stub puts the TEB's syscall frame
    back and its rt_sigreturn frame its registers and mask, and the program's main thread (the one borrowed:
    blocked reading its input) answers again. Only the marked call page stays mapped."""
    sleep = handle._export("kernel32.dll", "Sleep")
    with pytest.raises(CallLeftRunning, match="left to finish it"):
        handle._call(sleep, (2500,), 200_000_000)
    assert target.tracers() == {0}
    assert target.ask("call 5") == "11"  # answered once the Sleep is over and the thread put itself back
    assert sample(target.pid).call_pages == 1
    assert target.stats()[3] == 0


# -- errors leave nothing attached ------------------------------------------------------------------------------


def test_ptrace_refusal_is_a_backend_error_and_leaves_no_other_thread_attached(
    target: Target, handle: WineProcess
) -> None:
    held = max(int(t) for t in os.listdir(f"/proc/{target.pid}/task"))
    _ptrace.seize(held)  # someone else (here: us, outside the handle) already traces one thread
    try:
        with pytest.raises(BackendError, match="already traced"):
            handle.quiesce()
        others = {int(t) for t in os.listdir(f"/proc/{target.pid}/task")} - {held}
        for tid in others:
            with open(f"/proc/{target.pid}/task/{tid}/status") as status:
                assert "TracerPid:\t0\n" in status.read()
    finally:
        _ptrace.interrupt(held)
        _ptrace.wait_stop(held, 2**62)
        _ptrace.detach(held)
    assert target.stats()[3] == 0


def test_a_process_that_exits_is_reported_gone(build: Path, prefix: Path) -> None:
    t = Target(build, 2)
    handle = WineBackend().open(t.pid)
    try:
        t.stop()
        with pytest.raises(BackendError, match="gone"):
            handle.quiesce()
        with pytest.raises(BackendError):
            handle.read(0x140000000, 2)
    finally:
        handle.close()


def test_a_process_killed_while_quiesced_is_released_without_error(build: Path, prefix: Path) -> None:
    t = Target(build, 2)
    handle = WineBackend().open(t.pid)
    try:
        quiesced = handle.quiesce()
        t.killed = True  # killed on purpose (not through t.kill(), which would wait for the end of a stopped process)
        t.proc.kill()
        assert quiesced.resume() >= 0
        assert t.proc.wait(timeout=20) == -signal.SIGKILL
        with pytest.raises(BackendError, match="gone"):
            handle.allocate_near(0x140000000, 0x1000)
    finally:
        handle.close()
        t.stop()


def test_stop_all_on_a_missing_pid_is_a_backend_error() -> None:
    with pytest.raises(BackendError, match="gone"):
        _stop.stop_all(2**22 + 12345)


@pytest.mark.winedbg_expected
def test_a_target_that_crashes_is_reported_with_wines_crash_lines_not_taken_for_a_clean_exit(
    build: Path, prefix: Path
) -> None:
    """The check every target's teardown relies on: an int3 written where the workers enter compute ends the
    program through Wine's unhandled-exception path (winedbg --auto), which its end must name."""
    t = Target(build, 1)
    before = set(winedbg_processes())
    try:
        with WineBackend().open(t.pid) as handle:
            entry = handle._export("hp.dll", "compute")
            quiesced = handle.quiesce()
            try:
                handle.write(entry, b"\xcc")
            finally:
                quiesced.resume()
        t.proc.wait(timeout=60)  # a `quit` now could end the process before Wine's crash path has run
        problem = t.end()
    finally:
        t.killed = True  # whatever happened above, the teardown below must not fail on this end
        if t.proc.poll() is None:
            t.kill()
        for key, debugger in winedbg_processes().items():  # one left waiting for the gone process (seen here)
            if key not in before and debugger.prefix == str(PREFIX) and not debugger.zombie:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(key[0], signal.SIGKILL)
    assert problem is not None and "crashed" in problem, problem
    assert "Unhandled exception 0x80000003" in problem, problem
