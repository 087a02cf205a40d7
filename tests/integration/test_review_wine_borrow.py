"""Review: a remote call borrowing a thread parked in NtWaitForAlertByThreadId must not eat that thread's wake-up.

A thread in SleepConditionVariableCS waits in Wine 8 with futex(FUTEX_WAIT_PRIVATE, 0) on its own alert futex, so
_not_waiting lets a call borrow it. RtlAddFunctionTable allocates from the process heap; when another thread holds
the heap lock, the call waits on it with the SAME per-thread alert (NtWaitForAlertByThreadId). The call's timeout
lets the other threads run; if one of them wakes the condition variable meanwhile, the nested wait consumes the
alert meant for the borrowed thread's own wait, which then sleeps on with nobody left to wake it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends.wine import WineBackend
from tests.fixtures.wine import WineProcess as WineProgram
from tests.fixtures.wine import wine_prefix
from tests.support.running_fleet import have_wine

pytestmark = [pytest.mark.wine, pytest.mark.skipif(not have_wine(), reason="wine64 and mingw-w64 are needed")]

SOURCE = r"""
#include <windows.h>
#include <stdio.h>
static CRITICAL_SECTION data;
static CONDITION_VARIABLE cv;
static volatile LONG pending, woken;
static DWORD WINAPI consumer(LPVOID p) {
    EnterCriticalSection(&data);
    for (;;) {
        while (!pending) SleepConditionVariableCS(&cv, &data, INFINITE);
        pending = 0;
        InterlockedIncrement(&woken);
    }
    return 0;
}
int main(int argc, char **argv) {
    char line[64];
    int lock = argc < 2; /* "nolock": the call never waits */
    InitializeCriticalSection(&data);
    CreateThread(NULL, 0, consumer, NULL, 0, NULL);
    Sleep(300); /* the consumer is parked in its wait */
    printf("ready\n");
    fflush(stdout);
    fgets(line, sizeof line, stdin); /* "hold": the engine's call starts right after our reply */
    if (lock) HeapLock(GetProcessHeap());
    printf("holding\n");
    fflush(stdout);
    ULONGLONG start = GetTickCount64();
    while (GetTickCount64() - start < 3000) {} /* spin in our own code (stopped for the call's first 2 s) */
    EnterCriticalSection(&data);
    pending = 1;
    WakeConditionVariable(&cv); /* during the call's slow phase: the consumer's alert */
    LeaveCriticalSection(&data);
    Sleep(300);
    if (lock) HeapUnlock(GetProcessHeap()); /* now the borrowed consumer's call can finish */
    start = GetTickCount64();
    while (!woken && GetTickCount64() - start < 5000) Sleep(10);
    printf("%s %ld\n", woken ? "woken" : "lost", woken);
    fflush(stdout);
    fgets(line, sizeof line, stdin);
    return 0;
}
"""


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("review-borrow")
    (out / "wake_target.c").write_text(SOURCE)
    subprocess.run(
        ["x86_64-w64-mingw32-gcc", "-O2", "-o", str(out / "wake_target.exe"), str(out / "wake_target.c")],
        check=True,
    )
    return out / "wake_target.exe"


@pytest.fixture(params=["lock"])
def program(exe: Path, request: pytest.FixtureRequest) -> Iterator[WineProgram]:
    args = [] if request.param == "lock" else [request.param]
    program = WineProgram.start([str(exe), *args], wine_prefix(), expect_ready=False)
    try:
        assert program.readline(60).strip() == "ready"
        yield program
    finally:
        program.kill()


def test_a_borrowed_waiting_thread_still_gets_its_wake_up(program: WineProgram) -> None:
    assert call_and_report(program)[0] == "woken"


def call_and_report(program: WineProgram) -> list[str]:
    """RtlAddFunctionTable on a borrowed thread while main holds (or not) the heap lock; the program's verdict."""
    pid = program.find_linux_pid()
    handle = WineBackend().open(pid)
    try:
        base = next(m.base for m in handle.modules() if m.name.lower() == "wake_target.exe")
        program.send("hold")
        assert program.readline(30).strip() == "holding"
        handle.add_function_table(base, 0, base)  # count 0: only its heap allocation and list insertion
        outcome = program.readline(30).split()
        handle.delete_function_table(base)
    finally:
        handle.close()
    return outcome


@pytest.mark.parametrize("program", ["nolock"], indirect=True)
def test_control_a_call_that_does_not_wait_leaves_the_wake_up(program: WineProgram) -> None:
    assert call_and_report(program)[0] == "woken"


def test_control_without_a_call_the_waiting_thread_is_woken(program: WineProgram) -> None:
    """The same program and timeline with no remote call: the consumer gets its wake-up (so the test above
    measures the call, not the program)."""
    program.send("hold")
    assert program.readline(30).strip() == "holding"
    assert program.readline(30).split()[0] == "woken"
