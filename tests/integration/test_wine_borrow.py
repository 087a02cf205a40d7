"""Which thread a Wine remote call borrows, and what a call that cannot be aborted leaves alone.

The target is built here from source with mingw-w64. Its main thread reads stdin (a synchronous ReadFile), one
thread loops ResetEvent (a wineserver request each time), one waits on an event, one sleeps and one
waits for a critical section the main thread holds. It exports
``stall``: a raw vfork whose child sleeps 3 s, so the calling thread waits killably (state D) and a ptrace
interrupt cannot stop it until then. With ``requests`` as argument only the main thread runs, looping
ResetEvent and reporting a request that fails.

To catch a thread in the middle of a request deterministically the tests stop the prefix's wineserver with
SIGSTOP, so they use a prefix of their own (no other test shares that server).
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends import _stop
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends.wine import WineBackend, WineProcess
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.errors import BackendError, CallLeftRunning
from tests.fixtures.wine import WineProcess as WineProgram
from tests.fixtures.wine import ensure_wineserver, wine_prefix
from tests.support.procmem import sample
from tests.support.running_fleet import have_wine

pytestmark = [pytest.mark.wine, pytest.mark.skipif(not have_wine(), reason="wine64 and mingw-w64 are needed")]

REPO = Path(__file__).resolve().parents[2]
PREFIX = REPO / ".cache" / "wineprefix-borrow"
TEB_CLIENT_THREAD = 0x48  # TEB.ClientId.UniqueThread: the Windows thread id

SOURCE = r"""
/* Threads in the states a remote call may meet: waiting (server wait, Sleep), mid-request (a loop of server
   calls), and an exported `stall` that a ptrace interrupt cannot stop for a while (a raw vfork: the parent
   waits killably until its child, which sleeps stall_time, exits). */
#include <windows.h>
#include <stdio.h>
#include <string.h>
static HANDLE ev, never;
static CRITICAL_SECTION cs;
struct timespec64 { long long sec, nsec; };
struct timespec64 stall_time = {3, 0};
long long raw_vfork_sleep(void);
__asm__(
    ".globl raw_vfork_sleep\n"
    "raw_vfork_sleep:\n"
    "    mov $58, %eax\n"            /* vfork: the child shares this stack, so it runs only these lines */
    "    syscall\n"
    "    test %rax, %rax\n"
    "    jnz 1f\n"
    "    mov $35, %eax\n"            /* nanosleep(&stall_time, NULL) */
    "    lea stall_time(%rip), %rdi\n"
    "    xor %esi, %esi\n"
    "    syscall\n"
    "    mov $60, %eax\n"            /* exit(0): the child only */
    "    xor %edi, %edi\n"
    "    syscall\n"
    "1:  ret\n");
__declspec(dllexport) __attribute__((noinline)) long long stall(long long x) {
    raw_vfork_sleep();
    SwitchToThread(); /* an NT system call after the stall: it saves its state in the frame the TEB names */
    return x + 1;
}
static DWORD WINAPI requests(LPVOID p) {
    int reported = 0;
    for (;;)
        if (!ResetEvent(ev) && !reported) { /* a reply that was not ours */
            reported = 1;
            printf("request failed %lu\n", GetLastError());
            fflush(stdout);
        }
    return 0;
}
static DWORD WINAPI waiter(LPVOID p) { WaitForSingleObject(never, INFINITE); return 0; }
static DWORD WINAPI sleeper(LPVOID p) { Sleep(INFINITE); return 0; }
static DWORD WINAPI cs_waiter(LPVOID p) { EnterCriticalSection(&cs); return 0; } /* held by main: waits */
int main(int argc, char **argv) {
    ev = CreateEventA(NULL, TRUE, FALSE, NULL);
    never = CreateEventA(NULL, TRUE, FALSE, NULL);
    int only_requests = argc > 1 && !strcmp(argv[1], "requests");
    DWORD ids[4] = {0, 0, 0, 0};
    InitializeCriticalSection(&cs);
    if (!only_requests) {
        CreateThread(NULL, 0, requests, NULL, 0, &ids[0]);
        CreateThread(NULL, 0, waiter, NULL, 0, &ids[1]);
        CreateThread(NULL, 0, sleeper, NULL, 0, &ids[2]);
        EnterCriticalSection(&cs);
        CreateThread(NULL, 0, cs_waiter, NULL, 0, &ids[3]);
        while (cs.LockCount < 1) SwitchToThread(); /* the waiter has queued (Wine counts from -1) */
    }
    printf("ready %p %lu %lu %lu %lu %lu\n", (void *)stall, GetCurrentThreadId(), ids[0], ids[1], ids[2], ids[3]);
    fflush(stdout);
    if (only_requests) requests(NULL);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "quit", 4)) break;
        printf("pong\n");
        fflush(stdout);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wine-borrow")
    (out / "borrow_target.c").write_text(SOURCE)
    subprocess.run(
        ["x86_64-w64-mingw32-gcc", "-O2", "-o", str(out / "borrow_target.exe"), str(out / "borrow_target.c")],
        check=True,
    )
    return out / "borrow_target.exe"


@pytest.fixture(scope="module")
def prefix() -> Path:
    return wine_prefix(PREFIX)


class Target:
    """A running borrow_target.exe: its program, the engine's handle, ``stall`` and its threads' Windows ids."""

    def __init__(self, exe: Path, prefix: Path, *args: str) -> None:
        self.program = WineProgram.start([str(exe), *args], prefix, expect_ready=False)
        words = self.program.readline(60).split()
        assert words[0] == "ready", words
        self.stall = int(words[1], 16)
        self.windows_ids = dict(
            zip(("main", "requests", "waiter", "sleeper", "cs_waiter"), (int(w) for w in words[2:]), strict=True)
        )
        self.pid = self.program.find_linux_pid()
        self.handle = WineBackend().open(self.pid)

    def name_of(self, gs_base: int) -> str:
        windows_id = struct.unpack("<Q", self.handle.read(gs_base + TEB_CLIENT_THREAD, 8))[0]
        return next((name for name, wid in self.windows_ids.items() if wid == windows_id), f"wine:{windows_id}")

    def tracers(self) -> set[int]:
        found: set[int] = set()
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            with open(f"/proc/{self.pid}/task/{tid}/status") as status:
                found.update(int(line.split()[1]) for line in status if line.startswith("TracerPid:"))
        return found

    def close(self) -> None:
        self.handle.close()
        self.program.kill()


@pytest.fixture
def target(exe: Path, prefix: Path) -> Iterator[Target]:
    t = Target(exe, prefix)
    yield t
    t.close()


def _server_pid(prefix: Path) -> int:
    """The wineserver of ``prefix``: its working directory is named for the prefix's device and inode."""
    info = prefix.stat()
    wanted = f"server-{info.st_dev:x}-{info.st_ino:x}"
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd").endswith(wanted):
                    return int(entry)
            except OSError:
                continue
    raise AssertionError(f"no wineserver runs for {prefix}")


def _states(pid: int) -> dict[int, str]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as stat:
            out[int(tid)] = stat.read().rsplit(")", 1)[1].split()[0]
    return out


def _wait_until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


@contextmanager
def server_stopped(prefix: Path, pid: int) -> Iterator[None]:
    """The prefix's wineserver stopped (SIGSTOP) until the block ends, and every thread of ``pid`` asleep:
    a thread that sent a request is then blocked reading its reply."""
    ensure_wineserver(prefix)
    server = _server_pid(prefix)
    os.kill(server, signal.SIGSTOP)
    try:
        _wait_until(lambda: set(_states(pid).values()) == {"S"}, "every thread sleeps")
        yield
    finally:
        os.kill(server, signal.SIGCONT)


def test_idle_threads_may_be_borrowed_and_one_in_a_server_request_never(prefix: Path, target: Target) -> None:
    """Measured verdicts: the main thread (ReadFile of stdin: read of its own pipe), a thread in
    WaitForSingleObject (read of its wait pipe), one in Sleep (pselect6 without fds) and one queued on a
    critical section (futex FUTEX_WAIT_PRIVATE for value 0: NtWaitForAlertByThreadId) may run a call; a
    thread waiting for its wineserver reply (read of its reply pipe, server signals blocked) may not."""
    handle: WineProcess = target.handle
    with server_stopped(prefix, target.pid):
        quiesced = handle.quiesce()
        try:
            verdicts = {}
            for task in quiesced.stopped.tasks.values():
                name = target.name_of(int(task.regs.gs_base))
                verdicts[name] = handle._not_waiting(task) if task.in_syscall else "not in a system call"
                fds = handle._thread_fds(task)
                assert fds is not None, "the thread's server fds were not found in its TEB"
                if name == "requests":
                    assert task.regs.orig_rax == 0 and task.regs.rdi == fds[1]  # read() of its reply pipe
                if name == "waiter":
                    assert task.regs.orig_rax == 0 and task.regs.rdi == fds[2]  # read() of its wait pipe
                if name == "cs_waiter":
                    assert task.regs.orig_rax == 202 and task.regs.rdx == 0  # futex wait for an alert
            picked = handle._pick_task(quiesced.stopped, for_call=True)
        finally:
            quiesced.resume()
    assert {name: verdicts[name] for name in ("main", "waiter", "sleeper", "cs_waiter")} == dict.fromkeys(
        ("main", "waiter", "sleeper", "cs_waiter")
    )
    assert "wineserver request" in str(verdicts["requests"])
    assert target.name_of(int(picked.regs.gs_base)) != "requests"
    assert target.tracers() == {0}


def test_a_call_finds_no_thread_when_the_only_one_is_in_a_server_request(exe: Path, prefix: Path) -> None:
    """Before the fix this thread was borrowed, and a nested request (NtClose) took the reply of its ResetEvent
    and left it NtClose's: the program's ResetEvent failed with ERROR_INVALID_HANDLE."""
    t = Target(exe, prefix, "requests")
    try:
        close = t.handle._export("ntdll.dll", "NtClose")
        refusal = pytest.raises(BackendError, match=r"thread \d+ is in a wineserver request.*try again")
        with server_stopped(prefix, t.pid), refusal:
            t.handle._call(close, (0xDEAD,))
        assert t.tracers() == {0}
        assert t.program.popen.poll() is None
    finally:
        t.close()


def _detached(target: Target) -> bool:
    """Detach what this (tracer) thread left lingering and has stopped by now; True once nothing traces the target."""
    _stop.detach_lingering()
    return target.tracers() == {0}


def test_an_aborted_call_whose_thread_will_not_stop_keeps_its_frame_pointer_and_page(target: Target) -> None:
    """Under a quiesce a call past its timeout is aborted; ``stall`` keeps its thread from stopping for 3 s.
    The engine must then leave the TEB's syscall-frame pointer on the call's fresh frame and the call page
    mapped: the thread's stub puts the pointer back and its signal frame the registers once the call returns.
    (Before the fix the pointer was rewritten under the running call, and the main thread never answered again.)"""
    handle = target.handle
    layout = handle._layout()
    assert layout is not None
    quiesced = handle.quiesce()
    try:
        task = quiesced.stopped.tasks[target.pid]  # the main thread, in ReadFile: it answers only if put back
        unix = handle._unix_side(task)
        assert unix is not None
        slot = unix.teb + layout.teb_syscall_frame
        with pytest.raises(CallLeftRunning, match="did not stop within"):
            handle._call_on(quiesced.stopped, task, target.stall, (5,), 200_000_000)
        assert struct.unpack("<Q", handle.read(slot, 8))[0] != unix.frame  # still the call's own frame
        assert sample(target.pid).call_pages == 1
        assert task.tid not in quiesced.stopped.tasks
    finally:
        quiesced.resume()
    _wait_until(lambda: _detached(target), "the thread is detached after its stall")
    assert target.program.request("ping") == "pong"
    assert struct.unpack("<Q", handle.read(slot, 8))[0] == unix.frame


def test_a_call_left_running_outside_a_quiesce_whose_thread_will_not_stop_is_detached_later(target: Target) -> None:
    """Outside a quiesce a slow call is let go rather than aborted; a thread that cannot even be stopped to be
    let go is detached at its next stop instead of staying traced."""
    with pytest.raises(CallLeftRunning):
        target.handle._call(target.stall, (5,), 100_000_000)
    _wait_until(lambda: _detached(target), "every thread is detached after the stall")
    assert target.program.request("ping") == "pong"
    assert sample(target.pid).call_pages == 1
